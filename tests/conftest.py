"""Fixtures shared by several test modules."""

import pytest


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
