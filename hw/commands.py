"""Sub-commands of the hardware area: ``hw generate``, ``hw estimate``, ``bench linear``,
``bench attention``."""

import json

__all__ = ["register", "register_bench"]


def register(subparsers):
    hw = subparsers.add_parser("hw", help="hardware: Verilog emission and resource estimates")
    commands = hw.add_subparsers(dest="hw_command", metavar="ACTION", required=True)

    generate = commands.add_parser("generate", help="write the Verilog of every unit")
    generate.add_argument("--config", default="tiny", help="model config (default: tiny)")
    generate.add_argument("-o", "--output", default=None,
                          help="output folder (default: build/rtl/CONFIG)")
    generate.add_argument("--unit", action="append", default=None,
                          help="only this unit (repeatable)")
    generate.set_defaults(handler=_generate)

    estimate = commands.add_parser(
        "estimate", help="Yosys synth_xilinx -family xcup: DSP48E2, LUT, FF, BRAM, URAM per unit")
    estimate.add_argument("--config", default="tiny", help="model config (default: tiny)")
    estimate.add_argument("--unit", action="append", default=None,
                          help="only this unit (repeatable)")
    estimate.add_argument("--json", action="store_true", help="one JSON list of rows")
    estimate.set_defaults(handler=_estimate)


def register_bench(benches):
    linear = benches.add_parser(
        "linear", help="linear kernel: simulated cycles vs ideal (MACs / MAC units)")
    linear.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator",
                        help="simulator for the cycle counts (default: verilator)")
    linear.add_argument("--quick", action="store_true",
                        help="only the tiny shapes (skip the ViT-S layer)")
    linear.add_argument("--json", action="store_true", help="one JSON list of rows")
    linear.set_defaults(handler=_bench_linear)

    attention = benches.add_parser(
        "attention", help="attention kernel: simulated cycles vs ideal (MACs / MAC units)")
    attention.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator",
                           help="simulator for the cycle counts (default: verilator)")
    attention.add_argument("--quick", action="store_true",
                           help="only the tiny layer (skip the ViT-S head)")
    attention.add_argument("--json", action="store_true", help="one JSON list of rows")
    attention.set_defaults(handler=_bench_attention)


def _generate(args):
    from moevit.hw.config import get_hw_config
    from moevit.hw.generate import generate
    from moevit.paths import build_dir

    hw = get_hw_config(args.config)
    folder = args.output or build_dir("rtl", args.config)
    for path in generate(hw, folder, args.unit):
        print(path)


def _estimate(args):
    import warnings

    from moevit.hw.config import get_hw_config
    from moevit.hw.estimate import CAVEAT, estimate_verilog
    from moevit.hw.generate import UNITS, module_name, verilog_file
    from moevit.paths import build_dir

    hw = get_hw_config(args.config)
    rows = []
    for unit in args.unit or UNITS:
        folder = build_dir("estimate", args.config)
        path = verilog_file(unit, hw, folder)
        rows.append(estimate_verilog(unit, path, module_name(unit), folder).row())
    if args.json:
        print(json.dumps(rows))
        return
    print(f"config {args.config}: {hw.rows}x{hw.cols} MAC array ({hw.macs} MAC units)")
    print(f"{'unit':<12}{'DSP48E2':>9}{'LUT':>9}{'FF':>9}{'BRAM36':>9}{'URAM':>7}")
    for row in rows:
        print(f"{row['unit']:<12}{row['dsp']:>9}{row['lut']:>9}{row['ff']:>9}"
              f"{row['bram']:>9g}{row['uram']:>7}")
    warnings.warn(CAVEAT, stacklevel=1)


def _bench_linear(args):
    from moevit.hw.bench import bench_linear, print_table

    rows = bench_linear(simulator=args.simulator, quick=args.quick)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)


def _bench_attention(args):
    from moevit.hw.bench_attention import bench_attention, print_table

    rows = bench_attention(simulator=args.simulator, quick=args.quick)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)
