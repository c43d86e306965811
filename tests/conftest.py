"""Fixtures shared by several test modules."""

import pytest

import moevit  # noqa: F401  first: it pins the float kernels' ISA before any test loads torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: these tensors are tiny, and on a loaded machine more threads only wait.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch  # here, so that test modules without torch do not pay for it

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    """The counts of the randomized unit simulations, when some ran (moevit.sim.randomized)."""
    import sys

    randomized = sys.modules.get("moevit.sim.randomized")
    if randomized is None or not randomized.TALLY:
        return
    terminalreporter.section("randomized unit simulations")
    for (unit, simulator), (cases, ops, seconds) in sorted(randomized.TALLY.items()):
        terminalreporter.write_line(f"{unit:<10} {simulator:<10} {cases:>4} design points "
                                    f"{ops:>5} operations {seconds:>8.1f} s in the simulator")
