"""Sub-commands of the simulation area: ``moevit sim`` runs every cocotb suite."""

__all__ = ["register"]


def register(subparsers):
    sim = subparsers.add_parser(
        "sim", help="run every cocotb simulation suite (slow ones included) with pytest")
    sim.add_argument("--simulator", choices=("icarus", "verilator"), default=None,
                     help="simulator (default: $SIM, else icarus)")
    sim.add_argument("-k", dest="expression", default=None,
                     help="only the tests matching this pytest -k expression")
    sim.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARG",
                     help="more pytest arguments, after -- (e.g. -- --durations=10 -x)")
    sim.set_defaults(handler=_sim)


def _sim(args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from moevit.errors import MoevitError
    from moevit.sim.runner import default_simulator

    simulator = args.simulator or default_simulator()
    tests = Path(__file__).resolve().parent.parent / "tests"
    suites = sorted(str(p) for p in tests.glob("test_sim_*.py"))
    if not suites:
        raise MoevitError(f"No cocotb suites (test_sim_*.py) under {tests}")
    command = [sys.executable, "-m", "pytest", "-q", *suites]
    if args.expression:
        command += ["-k", args.expression]
    command += args.pytest_args
    env = dict(os.environ, SIM=simulator)
    return subprocess.call(command, env=env)
