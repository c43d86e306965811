"""Sub-commands of the HLS area: ``moevit hls csim``, ``moevit hls scripts``, ``moevit hls synth``."""

import json

__all__ = ["register"]


def register(subparsers):
    from moevit.cli import non_negative_int, positive_int

    hls = subparsers.add_parser("hls", help="the HLS C++ kernels: C simulation, Vitis HLS scripts")
    commands = hls.add_subparsers(dest="hls_command", metavar="COMMAND", required=True)
    csim = commands.add_parser(
        "csim", help="compile and run every kernel's C simulation (g++) and the whole model "
                     "through the HLS top, compared bit for bit with the golden model")
    csim.add_argument("--config", default="tiny",
                      help="model config: its quantized model and default HwConfig (default: tiny)")
    csim.add_argument("--seed", type=non_negative_int, default=0,
                      help="seed of the random cases (default: 0)")
    csim.add_argument("--random", type=non_negative_int, default=20, metavar="N",
                      help="random cases per kernel (default: 20)")
    csim.add_argument("--kernel", action="append", default=None,
                      help="only this kernel, or 'top' (repeatable)")
    csim.add_argument("--max-tokens", type=positive_int, default=None, metavar="N",
                      help="cap the random cases' tokens (default: the HwConfig's buffers)")
    csim.add_argument("--json", action="store_true", help="one JSON list of rows")
    csim.add_argument("--quiet", action="store_true", help="no progress bar")
    csim.set_defaults(handler=_csim)

    from moevit.hw.boards import BOARDS

    for name, text in (
            ("scripts", "write the Vitis HLS / v++ scripts of the HLS top for a board "
                        "(--dry-run: check them in tclsh, no AMD tools)"),
            ("synth", "write the scripts, then run Vitis HLS (Zynq) or v++ -c (Alveo)")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", default="tiny",
                             help="model config: its default HwConfig (default: tiny)")
        command.add_argument("--board", required=True,
                             help=f"board: {', '.join(BOARDS)}, or a board .json file")
        command.add_argument("-o", "--output", default=None, metavar="DIR",
                             help="folder of the scripts (default: build/hls/CONFIG/BOARD)")
        if name == "scripts":
            command.add_argument("--dry-run", action="store_true",
                                 help="check the scripts: named files, top, part, tclsh parse")
        command.set_defaults(handler=_scripts if name == "scripts" else _synth)


def _csim(args):
    from moevit.errors import UsageError
    from moevit.hls.cases import KERNELS
    from moevit.hls.csim import TOP, run_suite
    from moevit.hls.generate import PARAMETERS
    from moevit.paths import build_dir

    for kernel in args.kernel or ():
        if kernel not in (*KERNELS, TOP):
            raise UsageError(f"Unknown kernel {kernel!r}; the kernels: {', '.join(KERNELS)}, "
                             f"and {TOP} (the whole program through the HLS top)")
    rows = run_suite(args.config, seed=args.seed, random_count=args.random, kernels=args.kernel,
                     max_tokens=args.max_tokens, progress=not (args.quiet or args.json))
    exact = all(row["bit_exact"] for row in rows)
    if args.json:
        print(json.dumps(rows))
        return 0 if exact else 1
    from moevit.hw.bench import print_rows

    table = [dict(row, exact_text="yes" if row["bit_exact"] else "NO") for row in rows]
    kernels = [row for row in table if row["kernel"] != TOP]
    calls = [dict(row, call=k) for k, row in enumerate(r for r in table if r["kernel"] == TOP)]
    if kernels:
        print_rows(kernels, [("kernel", "kernel", "<13", ""), ("cases from", "set", "<16", ""),
                             ("shape", "shape", "<32", ""), ("cases", "cases", ">6", ""),
                             ("bit-exact", "exact_text", ">11", "")],
                   "(every output compared in full with the golden model: the model's named "
                   "tensors, or moevit.model.integer.intops on the random cases)")
    if calls:
        if kernels:
            print()
        print_rows(calls, [("call", "call", "<6", ""), ("task, images", "shape", "<30", ""),
                           ("instructions", "instructions", ">13", ""),
                           ("bytes compared", "bytes_compared", ">16", ""),
                           ("seconds", "seconds", ">9", ".2f"),
                           ("bit-exact", "exact_text", ">11", "")],
                   "(the HLS top running the compiled program, calls one after the other on "
                   "one memory: each image's output and the whole activation scratch compared "
                   "in full with the instruction-level interpreter)")
    for row in rows:
        for line in row["mismatches"][:5]:
            print(f"mismatch: {row['kernel']}: {line}")
    print(f"configuration header: {build_dir('hls', args.config) / PARAMETERS}")
    return 0 if exact else 1


def _scripts(args):
    from moevit.hls.scripts import dry_run, write_scripts

    scripts = write_scripts(args.config, args.board, args.output)
    for path in scripts.files:
        print(f"wrote {path}")
    if not args.dry_run:
        return 0
    checks = dry_run(scripts)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    failed = [check for check in checks if not check.ok]
    print(f"dry run of {scripts.board.name}: {len(checks) - len(failed)} of {len(checks)} "
          f"checks pass")
    return 1 if failed else 0


def _synth(args):
    from moevit.hls.scripts import run_synthesis, write_scripts

    scripts = write_scripts(args.config, args.board, args.output)
    for path in scripts.files:
        print(f"wrote {path}")
    run_synthesis(scripts)
    return 0


def register_bench(benches):
    from moevit.cli import positive_int
    from moevit.hls.hls4ml_baseline import PRECISION, REUSE_FACTOR

    bench = benches.add_parser(
        "hls4ml", help="one tiny expert FFN through hls4ml (C simulation) beside the golden "
                       "model and our linear kernel: agreement and cost")
    bench.add_argument("--config", default="tiny", help="model config (default: tiny)")
    bench.add_argument("--precision", default=PRECISION,
                       help=f"hls4ml's precision of every tensor (default: {PRECISION})")
    bench.add_argument("--reuse-factor", type=positive_int, default=REUSE_FACTOR,
                       help=f"hls4ml's ReuseFactor of every layer (default: {REUSE_FACTOR})")
    bench.add_argument("--json", action="store_true", help="one JSON list of rows")
    bench.set_defaults(handler=_bench_hls4ml)


def _bench_hls4ml(args):
    import re

    from moevit.errors import UsageError
    from moevit.hls.hls4ml_baseline import bench_hls4ml, print_table

    if not re.fullmatch(r"ap_(u)?fixed<\d+,-?\d+>", args.precision.replace(" ", "")):
        raise UsageError(f"Precision {args.precision!r} is not an ap_fixed<W,I> type "
                         f"(e.g. ap_fixed<16,6>)")
    rows = bench_hls4ml(args.config, args.precision.replace(" ", ""), args.reuse_factor,
                        progress=not args.json)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)
    return 0
