"""The instruction engines of the top, each against the instruction-level interpreter,
byte for byte over the whole memory, instructions back to back under memory stalls."""


import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import CopyDescriptor
from moevit.hw.top.copy import CopyEngine
from moevit.sim.benches.engines import compare_images, replay_seed, run_engine


@pytest.mark.parametrize("memory_pauses", ["none", "random"])
def test_copy_engine(memory_pauses):
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw = DEFAULT_HW["tiny"]
    nbytes = hw.bus_width // 8
    memory = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    copies = []
    for _ in range(6):
        length = int(rng.integers(1, 3000))
        # Source and destination apart (a program never copies onto its own source).
        src = int(rng.integers(0, (len(memory) // 2 - length) // nbytes)) * nbytes
        dst = len(memory) // 2 + int(rng.integers(0, (len(memory) // 2 - length) // nbytes)) \
            * nbytes
        if rng.random() < 0.5:
            src, dst = dst, src
        copies.append(CopyDescriptor(hw, length=length, src_addr=src, dst_addr=dst))
    want = memory.copy()
    run_instructions(want, hw, copies)
    got, summary = run_engine(CopyEngine(hw), hw, memory, [c.to_int() for c in copies],
                              test_id=f"engine-copy-{memory_pauses}", seed=seed,
                              memory_pauses=memory_pauses, gaps="random")
    print(summary)
    compare_images(got, want)
