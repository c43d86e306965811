"""The ``moevit`` command line: one entry point, one sub-command per job.

Each area of the flow owns a ``commands`` module with a ``register(subparsers)``
function that adds its sub-commands and, optionally, ``register_bench(benches)``
that adds kinds to ``moevit bench KIND``. Handlers import heavy libraries
(torch, amaranth, cocotb) only when they run, so ``moevit --help`` stays fast.

Every bad input ends as one line ``moevit: error: ...`` and exit status 2:
a :class:`~moevit.errors.MoevitError` raised by a handler, and argparse's own
complaints (an unknown option, a value that is not a number, or one out of
the range of the types below, checked before any work starts).
"""

import argparse
import importlib
import sys

from moevit import __version__
from moevit.errors import MoevitError

__all__ = ["main", "build_parser", "positive_int", "non_negative_int", "positive_float"]


class _Parser(argparse.ArgumentParser):
    """argparse with moevit's one-line errors (argparse's own print the usage first)."""

    def error(self, message):
        self.exit(2, f"moevit: error: {message} (see: {self.prog} --help)\n")


def _number(kind, test, rule):
    """An argparse type: ``kind(text)`` that passes ``test``, else "must be <rule>"."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}")
        return value

    parse.__name__ = rule  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
# NaN fails every comparison, and inf is not below itself: both are rejected.
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive finite number")

# Areas that contribute sub-commands, in the order --help lists them.
COMMAND_MODULES = (
    "moevit.model.commands",
    "moevit.hw.commands",
    "moevit.hls.commands",
    "moevit.sim.commands",
    "moevit.host.bitstream",
    "moevit.host.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad option (already printed)
        return stop.code
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for handlers that start workers
    try:
        return args.handler(args) or 0
    except MoevitError as error:
        print(f"moevit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moevit: interrupted", file=sys.stderr)
        return 130
