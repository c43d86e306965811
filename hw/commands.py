"""Sub-commands of the hardware area: ``hw generate``, ``hw estimate``, ``hw compile``,
``hw disassemble``, ``hw boards``, ``hw cost``, ``hw resources``, ``dse``, ``report``, ``bench linear``,
``bench attention``, ``bench top``, ``bench reliability``."""

import json

__all__ = ["register", "register_bench"]


def register(subparsers):
    from moevit.cli import positive_int
    from moevit.hw.cost.resources import FEATURES as RESOURCE_UNITS

    hw = subparsers.add_parser("hw", help="hardware: Verilog emission and resource estimates")
    commands = hw.add_subparsers(dest="hw_command", metavar="ACTION", required=True)

    generate = commands.add_parser("generate", help="write the Verilog of every unit")
    generate.add_argument("--config", default="tiny", help="model config (default: tiny)")
    generate.add_argument("-o", "--output", default=None,
                          help="output folder (default: build/rtl/CONFIG)")
    generate.add_argument("--unit", action="append", default=None,
                          help="only this unit (repeatable)")
    _add_packing(generate)
    generate.set_defaults(handler=_generate)

    estimate = commands.add_parser(
        "estimate", help="Yosys synth_xilinx -family xcup: DSP48E2, LUT, FF, BRAM, URAM per unit")
    estimate.add_argument("--config", default="tiny", help="model config (default: tiny)")
    estimate.add_argument("--unit", action="append", default=None,
                          help="only this unit (repeatable)")
    estimate.add_argument("--json", action="store_true", help="one JSON list of rows")
    estimate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_packing(estimate)
    estimate.set_defaults(handler=_estimate)

    compile_ = commands.add_parser(
        "compile", help="a quantized model -> one program for all of its tasks "
                        "(program.bin, weights.bin, layout.json, program.lst)")
    compile_.add_argument("--quantized", required=True, help="a quantized-model file (.npz)")
    compile_.add_argument("--hw", default=None,
                          help="hardware instance: a model config's default (default: the "
                               "quantized model's)")
    compile_.add_argument("--bus-bits", type=int, default=None,
                          choices=(32, 64, 128, 256, 512, 1024),
                          help="data width of the memory bus in bits, replacing the hardware "
                               "instance's bus_width (default: the instance's)")
    compile_.add_argument("--onchip", type=int, default=None, metavar="BYTES",
                          help="on-chip activation memory in bytes, replacing the hardware "
                               "instance's onchip_bytes: activations placed there by liveness "
                               "(default: the instance's)")
    compile_.add_argument("--batch", type=positive_int, default=1, metavar="B",
                          help="images one run of the program computes together, each weight "
                               "read once for them (default 1; at most max_tokens // tokens)")
    compile_.add_argument("-o", "--output", required=True, help="output folder")
    compile_.set_defaults(handler=_compile)

    disassemble = commands.add_parser(
        "disassemble", help="read a compiled program back and print its listing")
    disassemble.add_argument("folder", help="a folder written by `moevit hw compile`")
    disassemble.set_defaults(handler=_disassemble)

    boards = commands.add_parser(
        "boards", help="the target boards' resources, memories and tools, with --sources their sources")
    boards.add_argument("board", nargs="*",
                        help="board names or board .json files (default: every known board)")
    boards.add_argument("--sources", action="store_true", help="each figure's source, board by board")
    boards.add_argument("--json", action="store_true", help="one JSON list of rows")
    boards.set_defaults(handler=_boards)

    cost = commands.add_parser(
        "cost", help="predicted cycles of a compiled program, per instruction and per unit "
                     "(compute or memory bound), and its latency")
    source = cost.add_mutually_exclusive_group(required=True)
    source.add_argument("--quantized", help="a quantized-model file (.npz)")
    source.add_argument("--config", help="a model config, quantized as `moevit bench top` does")
    source.add_argument("--check", action="store_true",
                        help="run bench linear, bench attention and bench top (tiny; minutes) "
                             "and print the cost model's error on every row and whether it is "
                             "within the 5 %% aim (exit status 1 when a row is not)")
    cost.add_argument("--simulator", choices=("icarus", "verilator"), default=None,
                      help="with --check: the benches' simulator (default: verilator)")
    cost.add_argument("--quick", action="store_true",
                      help="with --check: the benches' --quick rows (the tiny shapes only)")
    cost.add_argument("--slow", action="store_true",
                      help="with --check: also bench top --config edge-moe on its default "
                           "hardware, and the whole zcu102-edge-moe behind the ZCU102's "
                           "memory (hours)")
    _add_hw(cost, "instead of the model's default")
    cost.add_argument("--routing", choices=("model", "balanced"), default=None,
                      help="the MoE gates: the model's (default) or balanced (random gates: "
                           "every expert chosen, as the search assumes)")
    cost.add_argument("--task", default=None, help="task name or index (default: every task)")
    cost.add_argument("--board", default=None,
                      help="a board's memory bandwidth (default: one bus word a cycle)")
    cost.add_argument("--latency", type=int, default=None, metavar="CYCLES",
                      help="cycles from a burst's address to its first answer (default: the "
                           "board's memory latency with --board, else 0)")
    cost.add_argument("--per-instruction", action="store_true",
                      help="one row per instruction (default: one row per unit)")
    cost.add_argument("--json", action="store_true", help="one JSON list of rows")
    cost.add_argument("--quiet", action="store_true", help="no progress bar")
    cost.set_defaults(handler=_cost)

    resources = commands.add_parser(
        "resources", help="the resource formulas (DSP, LUT, FF, BRAM36, URAM per unit) against "
                          "the Yosys points they are fitted to: the error per point")
    resources.add_argument("--measure", action="store_true",
                           help="synthesize the points again with Yosys (minutes) and write them")
    resources.add_argument("--output", default=None,
                           help="with --measure: the points file to write (default: "
                                "build/resources/yosys_points.json; the committed one is "
                                "hw/cost/yosys_points.json)")
    resources.add_argument("--unit", default=None, choices=RESOURCE_UNITS,
                           help="with --measure: only this unit's points (the others kept "
                                "from the committed file)")
    resources.add_argument("--json", action="store_true", help="one JSON list of rows")
    resources.add_argument("--quiet", action="store_true", help="no progress bar")
    resources.set_defaults(handler=_resources)
    register_dse(subparsers)


def register_dse(subparsers):
    dse = subparsers.add_parser(
        "dse", help="two-stage design-space search of a board for a model config: the chosen "
                    "HwConfig, latency, throughput, GOPS, binding limit, resources")
    dse.add_argument("--board", required=True, help="a board name or a board .json file")
    dse.add_argument("--config", required=True, help="model config (edge-moe, m3vit-s, tiny)")
    dse.add_argument("--quick", action="store_true", help="a reduced grid (the tests')")
    dse.add_argument("--no-fabric-limits", action="store_true",
                     help="ignore the LUT and FF limits (Yosys's counts are upper bounds: "
                          "it leaves in fabric the accumulators Vivado packs into the DSPs)")
    dse.add_argument("--save", action="store_true",
                     help="write the chosen point as the named HwConfig <board>-<config> "
                          "(hw/configs/)")
    dse.add_argument("--confirm", action="store_true",
                     help="synthesize a slice of the chosen linear array with Yosys (minutes) "
                          "and print predicted vs estimated DSP/BRAM/URAM")
    dse.add_argument("--json", action="store_true", help="one JSON list of rows")
    dse.add_argument("--quiet", action="store_true", help="no progress bar")
    dse.set_defaults(handler=_dse)

    report = subparsers.add_parser(
        "report", help="one Markdown page and PNG charts under build/report/: rooflines, "
                       "latency per unit, the anchors' published figures beside ours")
    report.add_argument("--quick", action="store_true", help="the searches' reduced grid")
    report.add_argument("-o", "--output", default=None,
                        help="output folder (default: build/report)")
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    report.set_defaults(handler=_report_page)


def _add_packing(parser):
    parser.add_argument("--packing", type=int, choices=(1, 2), default=None,
                        help="int8 MACs per DSP48E2 in the linear array, replacing the "
                             "instance's dsp_packing (2: neighbouring output columns share "
                             "one multiplier, AMD WP486)")
    parser.add_argument("--chain", type=int, choices=range(1, 9), default=None, metavar="D",
                        help="multipliers a position of the linear array, summed along a "
                             "DSP48E2 cascade (1 to 8, at most 7 with packing 2), replacing "
                             "the instance's chain_depth")
    parser.add_argument("--score-packing", type=int, choices=(1, 2), default=None,
                        help="int8 multiplies per DSP48E2 in the attention's QK stage, "
                             "replacing the instance's score_packing (2: two keys share the "
                             "query's value, AMD WP486)")


def _hw_and_name(args):
    """The config's hardware instance, with ``--packing``, ``--chain`` and
    ``--score-packing`` applied, and the name of its default output folder (``CONFIG``, with
    ``-packing2``, ``-chain4`` or ``-score-packing2`` for each field replaced)."""
    from moevit.hw.config import get_hw_config

    hw, name, changes = get_hw_config(args.config), args.config, {}
    for field, flag, value in (("dsp_packing", "packing", args.packing),
                               ("chain_depth", "chain", args.chain),
                               ("score_packing", "score-packing", args.score_packing)):
        if value is not None and value != getattr(hw, field):
            changes[field], name = value, f"{name}-{flag}{value}"
    # (one replace: the two fields are checked together, as a saved config would be)
    return hw.replace(**changes), name


def register_bench(benches):
    _add_bench(benches, "linear", "linear kernel", "only the tiny shapes (skip the ViT-S layer)",
               _bench_linear)
    _add_bench(benches, "attention", "attention kernel",
               "only the tiny layer (skip the edge-moe layer and the ViT-S head)",
               _bench_attention)
    top = benches.add_parser(
        "top", help="the whole accelerator in co-simulation: cycles per image per task, task "
                    "switch, busy shares, bytes read, MAC utilization")
    top.add_argument("--config", default="tiny", choices=("tiny", "edge-moe"),
                     help="model config (default: tiny; edge-moe takes long)")
    _add_hw(top, "instead of the config's default")
    top.add_argument("--blocks", type=int, default=None, metavar="N",
                     help="only the first N transformer blocks (the program cut after them: "
                          "a shorter run of a large model; default: all)")
    top.add_argument("--prefetch", type=int, choices=(0, 1), default=None,
                     help="only this expert_prefetch setting (default: 0 and 1 on the default "
                          "hardware, a named config's own)")
    top.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator",
                     help="simulator (default: verilator)")
    top.add_argument("--onchip", type=int, default=0, metavar="BYTES",
                     help="also the rows of a top with this many bytes of on-chip activation "
                          "memory (HwConfig onchip_bytes; its own build): DRAM bytes with "
                          "and without")
    top.add_argument("--per-instruction", action="store_true",
                     help="also every instruction's simulated cycles (the sequencer's issues, "
                          "watched) beside the cost model's, per task")
    top.add_argument("--latency", type=int, default=0, metavar="CYCLES",
                     help="the memory answers each burst this many cycles after its address "
                          "(default: 0); the cost model's figures take it too")
    top.add_argument("--board", default=None, metavar="NAME",
                     help="the memory at this board's rates (a port's, all ports') and "
                          "latency, and the cost model with it (not with --latency)")
    top.add_argument("--memory", choices=("python", "verilog"), default="python",
                     help="the bench's memory: python (cocotbext-axi's RAM, default) or "
                          "verilog (every beat in the simulator: far faster on a large top)")
    top.add_argument("--routing", choices=("model", "balanced"), default="model",
                     help="the MoE gates: the model's (default) or balanced (random gates: "
                          "every expert chosen, as the search assumes)")
    top.add_argument("--json", action="store_true", help="one JSON list of rows")
    top.set_defaults(handler=_bench_top)

    reliability = benches.add_parser(
        "reliability", help="proofs, faults injected and survived, fuzz cases, long-regression "
                            "seeds: what the last runs of those suites wrote under build/")
    reliability.add_argument("--run", action="store_true",
                             help="run the fast fault and fuzz suites first (pytest, minutes)")
    reliability.add_argument("--json", action="store_true", help="one JSON list of rows")
    reliability.set_defaults(handler=_bench_reliability)


def _add_bench(benches, name, what, quick_help, handler):
    bench = benches.add_parser(
        name, help=f"{what}: simulated cycles vs ideal (MACs / MAC units)")
    bench.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator",
                       help="simulator for the cycle counts (default: verilator)")
    bench.add_argument("--quick", action="store_true", help=quick_help)
    _add_hw(bench, "instead of the default cases: the layers of the model it serves, on it")
    bench.add_argument("--json", action="store_true", help="one JSON list of rows")
    bench.set_defaults(handler=handler)


def _add_hw(parser, what):
    parser.add_argument("--hw", default=None, metavar="NAME",
                        help=f"a hardware config: a saved one (zcu102-edge-moe, hw/configs/) or "
                             f"a model config's default, {what}")


def _generate(args):
    from moevit.hw.generate import generate
    from moevit.paths import build_dir, output_folder

    hw, name = _hw_and_name(args)
    folder = output_folder(args.output, "Verilog folder") if args.output else build_dir("rtl", name)
    for path in generate(hw, folder, args.unit):
        print(path)


def _estimate(args):
    import warnings

    from tqdm import tqdm

    from moevit.hw.bench import print_rows
    from moevit.hw.estimate import CAVEAT, estimate_verilog
    from moevit.hw.generate import UNITS, module_name, verilog_file
    from moevit.paths import build_dir

    hw, name = _hw_and_name(args)
    folder = build_dir("estimate", name)
    # The Verilog of every unit first (seconds; an unknown unit fails here), then Yosys:
    # minutes per unit, so a bar names the one running.
    sources = {unit: verilog_file(unit, hw, folder) for unit in args.unit or UNITS}
    rows = []
    bar = tqdm(sources.items(), desc="estimate", unit="unit", disable=args.quiet, dynamic_ncols=True)
    for unit, path in bar:
        bar.set_postfix_str(f"{unit}: Yosys synth_xilinx")
        rows.append(estimate_verilog(unit, path, module_name(unit), folder).row())
    if args.json:
        print(json.dumps(rows))
        return
    chains = f"x{hw.chain_depth} (chains of {hw.chain_depth})" if hw.chain_depth > 1 else ""
    print(f"config {args.config}: {hw.rows}x{hw.cols}{chains} MAC array ({hw.macs} MAC units, "
          f"{hw.dsp_packing} per DSP48E2: {hw.macs // hw.dsp_packing} DSP48E2 in the array)")
    print_rows(rows, [("unit", "unit", "<12", ""), ("DSP48E2", "dsp", ">9", ""),
                      ("LUT", "lut", ">9", ""), ("FF", "ff", ">9", ""),
                      ("BRAM36", "bram", ">9", "g"), ("URAM", "uram", ">7", "")])
    warnings.warn(CAVEAT, stacklevel=1)


def _compile(args):
    from moevit.hw.config import HwConfig, get_hw_config
    from moevit.hw.program.compiler import compile_program
    from moevit.hw.program.program import write_program
    from moevit.model.integer.quantize import load_quantized
    from moevit.paths import output_folder

    folder = output_folder(args.output, "program folder")
    qmodel = load_quantized(args.quantized)
    hw = get_hw_config(args.hw) if args.hw else HwConfig.for_model(qmodel.config)
    if args.onchip is not None:
        hw = hw.replace(onchip_bytes=args.onchip)
    program = compile_program(qmodel, hw, bus_bits=args.bus_bits, batch=args.batch)
    paths = write_program(program, folder)
    print(f"{len(program.instructions)} instructions for {len(program.tasks)} tasks"
          f"{f', batch {program.batch} images per run' if program.batch > 1 else ''}, "
          f"memory image {program.layout.size} bytes ({len(program.weights)} of weights), "
          f"hardware {program.hw.name!r}, bus {program.hw.bus_width} bits")
    onchip = program.layout.onchip()
    if onchip["tensors"]:
        print(f"on chip: {onchip['tensors']} tensors in a {onchip['window']}-byte window "
              f"(peak live {onchip['peak']} bytes; {onchip['sum']} one after the other)")
    for path in paths:
        print(path)


def _disassemble(args):
    from moevit.hw.program.program import read_program

    program = read_program(args.folder)
    tasks = ", ".join(f"{t['index']} {t['name']}" for t in program.tasks)
    print(f"# model {program.model.get('name')!r} on hardware {program.hw.name!r}: "
          f"{len(program.instructions)} instructions, tasks {tasks}")
    print(f"# memory image {program.layout.size} bytes, bus {program.layout.bus_bits} bits, "
          f"batch {program.batch} image(s) per run")
    for region in program.layout.regions:
        if region.kind != "weights":
            print(f"# {region.kind:<8} {region.name:<36} {region.offset:#010x} {region.size:>9} "
                  f"{region.dtype} {tuple(region.shape)}")
    print(program.listing(), end="")


def _boards(args):
    from moevit.hw.bench import print_rows
    from moevit.hw.boards import BOARDS, get_board

    boards = [get_board(name) for name in args.board or BOARDS]  # every file checked before printing
    if args.json:
        print(json.dumps([b.row() for b in boards]))
        return
    if args.sources:
        for board in boards:
            print(f"{board.name}: {board.title}")
            for figure, source in board.sources.items():
                unconfirmed = "" if board.checked[figure] else "  [not confirmed in a public copy]"
                print(f"  {figure:<26} {source}{unconfirmed}")
        return
    rows = [dict(b.row(), memory_text="  " + ", ".join(f"{m['kind']} {m['bandwidth_gbs']:g} GB/s"
                                                 for m in b.row()["memories"]),
                 ports_text=f"{b.ports}x{b.port_bits}b", host_text=f"  {b.host}",
                 platform=b.vitis_platform or "-")
            for b in boards]
    print_rows(rows, [("board", "name", "<8", ""), ("part", "part", "<22", ""),
                      ("DSP", "dsp", ">6", ""), ("LUT", "lut", ">9", ""), ("FF", "ff", ">9", ""),
                      ("BRAM36", "bram36", ">7", ""), ("URAM", "uram", ">6", ""),
                      ("  memory (peak)", "memory_text", "<34", ""), ("ports", "ports_text", "<8", ""),
                      ("MHz", "clock_mhz", ">5", "g"), ("  host", "host_text", "<9", ""),
                      ("Vitis platform", "platform", "<36", "")],
               "(whole-device resources; peak memory bandwidth; sources: moevit hw boards --sources)")


def _cost_options_apply(args):
    """One error naming the options that do not apply: --check runs the benches' own
    hardware, gates, memory and tasks; the others choose what a prediction costs."""
    from moevit.errors import UsageError

    if args.check:
        given = {"--hw": args.hw is not None, "--routing": args.routing is not None,
                 "--task": args.task is not None, "--board": args.board is not None,
                 "--latency": args.latency is not None,
                 "--per-instruction": args.per_instruction}
        why = ("--check compares the benches' rows on their own hardware, gates and memory "
               "(a bus word a cycle, no latency), every task")
    else:
        given = {"--simulator": args.simulator is not None, "--quick": args.quick,
                 "--slow": args.slow}
        why = "they choose --check's benches; without --check no bench runs"
    stray = [name for name, on in given.items() if on]
    if stray:
        verb = "does" if len(stray) == 1 else "do"
        raise UsageError(f"{' and '.join(stray)} {verb} not apply: {why}")


def _cost(args):
    from moevit.hw.cost.report import check_rows, cost_rows, print_check, print_cost, record_check

    _cost_options_apply(args)
    if args.check:
        rows = check_rows(simulator=args.simulator or "verilator", quick=args.quick,
                          slow=args.slow, progress=not args.quiet)
        record_check(rows)
        if args.json:
            print(json.dumps(rows))
        else:
            print_check(rows)
        return 0 if all(r["within_aim"] for r in rows) else 1

    rows = cost_rows(quantized=args.quantized, config=args.config, task=args.task,
                     board=args.board, latency=args.latency,
                     per_instruction=args.per_instruction, progress=not args.quiet,
                     hw=args.hw, routing=args.routing or "model")
    if args.json:
        print(json.dumps(rows))
    else:
        print_cost(rows)


def _resources(args):
    from moevit.hw.cost.resources import fit_rows, load_points, measure, print_fit
    from moevit.paths import build_dir, output_file

    if args.measure:
        output = output_file(args.output, "resource points file") if args.output \
            else build_dir("resources") / "yosys_points.json"
        command = "moevit hw resources --measure" + (
            f" --unit {args.unit}" if args.unit else "") + (
            f" --output {args.output}" if args.output else "")
        points = measure(unit=args.unit, output=output, progress=not args.quiet,
                         command=command)
    else:
        if args.output or args.unit:
            from moevit.errors import UsageError

            raise UsageError(f"{'--output' if args.output else '--unit'} needs --measure")
        points = load_points()
    rows = fit_rows(points)
    if args.json:
        print(json.dumps(rows))
    else:
        print_fit(rows, points)


def _dse(args):
    from moevit.hw.boards import get_board
    from moevit.hw.cost.dse import dse_rows, print_dse, save_config
    from moevit.model.config import get_config

    board = get_board(args.board)  # bad input fails here, before the search
    get_config(args.config)
    if args.save and (args.quick or args.no_fabric_limits):
        from moevit.errors import UsageError

        raise UsageError("--save keeps the full search's point: without --quick and "
                         "--no-fabric-limits")
    rows = dse_rows(board, args.config, quick=args.quick, fabric=not args.no_fabric_limits,
                    progress=not args.quiet)
    if args.confirm:
        from moevit.hw.cost.confirm import confirm

        from moevit.hw.cost.report import record_confirm

        for row in rows:
            row["confirm"] = confirm(row, progress=not args.quiet)
        record_confirm(rows)
    if args.json:
        print(json.dumps(rows))
    else:
        print_dse(rows)
        if args.confirm:
            from moevit.hw.cost.confirm import print_confirm

            print_confirm(rows)
    if args.save:
        for row in rows:
            path = save_config(row)
            if not args.json:
                print(f"saved {path}")


def _report_page(args):
    from moevit.hw.cost.page import write_report
    from moevit.paths import build_dir, output_folder

    from moevit.sim.reliability import reliability_markdown

    folder = output_folder(args.output, "report folder") if args.output else build_dir("report")
    reliability = ("Reliability (what the last `make formal`, fault, fuzz and long runs under "
                   "build/ found; `moevit bench reliability`)", reliability_markdown())
    from moevit.hw.cost.report import measured_sections

    print(write_report(folder, quick=args.quick, progress=not args.quiet,
                       sections=[*measured_sections(), reliability]))


def _bench_cases(args):
    """--quick trims the default cases; --hw replaces them: not both."""
    if args.quick and args.hw is not None:
        from moevit.errors import UsageError

        raise UsageError("--quick does not apply with --hw: the named instance runs every layer "
                         "of the model it serves")


def _bench_linear(args):
    from moevit.hw.bench import bench_linear, print_table

    _bench_cases(args)
    _report(bench_linear(simulator=args.simulator, quick=args.quick, hw=args.hw), args,
            print_table)


def _bench_attention(args):
    from moevit.hw.bench_attention import bench_attention, print_table

    _bench_cases(args)
    _report(bench_attention(simulator=args.simulator, quick=args.quick, hw=args.hw), args,
            print_table)


def _bench_top(args):
    from moevit.hw.bench_top import bench_top, plot, print_table
    from moevit.paths import build_dir

    from moevit.hw.cost.report import print_instructions, record_bench_top

    rows = bench_top(args.config, simulator=args.simulator, hw=args.hw, blocks=args.blocks,
                     prefetch=None if args.prefetch is None else (args.prefetch,),
                     onchip=args.onchip, per_instruction=args.per_instruction,
                     latency=args.latency, board=args.board, memory=args.memory,
                     routing=args.routing)
    name = (f"top-{args.config}{'-' + args.hw if args.hw else ''}"
            f"{f'-blocks{args.blocks}' if args.blocks else ''}"
            f"{f'-latency{args.latency}' if args.latency else ''}"
            f"{f'-{args.board}' if args.board else ''}"
            f"{'-balanced' if args.routing == 'balanced' else ''}")
    record_bench_top(rows, name)
    path = build_dir("bench") / f"{name}.png"
    plot(rows, path)
    _report(rows, args, print_table)
    if not args.json:
        for row in rows if args.per_instruction else ():
            print_instructions(row)
        print(f"chart: {path}")


def _bench_reliability(args):
    from moevit.sim.reliability import print_table, reliability_rows, run_fast_suites

    status = run_fast_suites(to_stderr=args.json) if args.run else 0
    _report(reliability_rows(), args, print_table)
    return 1 if status else 0


def _report(rows, args, print_table):
    """The rows as one JSON list (``--json``) or as a table."""
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)
