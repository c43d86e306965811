"""The ``moevit`` command line: one entry point, one sub-command per job.

Each area of the flow owns a ``commands`` module with a ``register(subparsers)``
function that adds its sub-commands and, optionally, ``register_bench(benches)``
that adds kinds to ``moevit bench KIND``. Handlers import heavy libraries
(torch, amaranth, cocotb) only when they run, so ``moevit --help`` stays fast.
"""

import argparse
import importlib
import sys

from moevit import __version__
from moevit.errors import MoevitError

__all__ = ["main", "build_parser"]

# Areas that contribute sub-commands, in the order --help lists them.
COMMAND_MODULES = (
    "moevit.model.commands",
    "moevit.hw.commands",
    "moevit.sim.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moevit",
        description="Co-design flow for Mixture-of-Experts Vision Transformers on FPGAs.",
    )
    parser.add_argument("--version", action="version", version=f"moevit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = subparsers.add_parser(
        "bench", help="benchmarks: a table, or one JSON list of rows with --json"
    )
    benches = bench.add_subparsers(dest="bench", metavar="KIND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # a missing dependency, not a missing area
                raise
            continue
        module.register(subparsers)
        if hasattr(module, "register_bench"):
            module.register_bench(benches)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except MoevitError as error:
        print(f"moevit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moevit: interrupted", file=sys.stderr)
        return 130
