"""``moevit train --nproc-per-node N``: start N training processes on this machine.

It does what ``torchrun --standalone`` does for moevit (the environment of
``torch.distributed``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), with one difference that matters to a user: when a worker
stops on a bad input, the command ends as that worker's one line
``moevit: error: ...`` and its exit status, where torchrun prints its own
traceback. When one worker fails the others are stopped (they would wait for
it in a collective). Rank 0 writes to the terminal; the other ranks' output
is kept and shown only if they fail first.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["launch_workers"]

POLL_SECONDS = 0.2
GRACE_SECONDS = 3.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(processes):
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_workers(count: int, arguments) -> int:
    """Run ``python <arguments>`` as ``count`` ranks; returns the exit status.

    ``arguments`` is the command line of one worker (``["-m", "moevit",
    "train", ...]``); each worker sees ``WORLD_SIZE`` and does not launch again.
    """
    port = _free_port()
    processes, logs = [], []
    try:
        for rank in range(count):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(count),
                       LOCAL_WORLD_SIZE=str(count), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            logs.append(None if rank == 0 else tempfile.TemporaryFile("w+"))
            processes.append(subprocess.Popen(
                [sys.executable, *arguments], env=env,
                stdout=None if rank == 0 else subprocess.DEVNULL, stderr=logs[-1],
            ))
        while not any(process.poll() for process in processes):  # until one fails or all end
            if all(process.poll() == 0 for process in processes):
                return 0
            time.sleep(POLL_SECONDS)
        # A bad input stops every rank alike: give the others a moment to end on their own.
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(process.poll() is None for process in processes):
            time.sleep(POLL_SECONDS)
        failed = [rank for rank, process in enumerate(processes) if process.poll() not in (None, 0)]
    finally:
        _stop(processes)
    if failed[0] != 0:  # rank 0 speaks on the terminal; another rank's words are in its log
        logs[failed[0]].seek(0)
        text = logs[failed[0]].read()
        errors = [line for line in text.splitlines() if line.startswith("moevit: error: ")]
        print(errors[-1] if errors else text.rstrip(), file=sys.stderr)
    return processes[failed[0]].returncode
