"""The PATCHIFY engine against the instruction-level interpreter, byte for byte over the
whole memory: the tiny model's own instruction, and random images (any channel count,
patch side, width; aligned and unaligned rows and image addresses) with refused
descriptors among them, back to back under memory stalls, on several bus widths."""


import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.descriptor import Fault
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import PatchifyDescriptor
from moevit.hw.top.patchify_engine import PatchifyEngine
from moevit.sim.benches.engines import compare_images, replay_seed, run_engine


def random_case(rng, hw, size, count, *, faults=True, max_grid=5):
    """``count`` instructions over a memory of ``size`` bytes: ``(payloads, expected
    errors, the good descriptors in order)``. Images and patches never overlap within
    one instruction; later ones may read what earlier ones wrote."""
    nbytes = hw.bus_width // 8
    payloads, errors, good = [], [], []
    for _ in range(count):
        while True:
            channels = int(rng.integers(1, 5))
            patch = int(rng.integers(1, 9))
            if channels * patch * patch <= hw.max_in:
                break
        rows = patch * int(rng.integers(1, max_grid + 1))
        columns = patch * int(rng.integers(1, max_grid + 1))
        image = channels * rows * columns
        x_half, y_half = (0, size // 2) if rng.random() < 0.5 else (size // 2, 0)
        x_addr = x_half + int(rng.integers(0, size // 2 - image + 1))
        if rng.random() < 0.5:
            x_addr -= x_addr % nbytes
        y_addr = y_half + int(rng.integers(0, size // 2 - image + 1)) // nbytes * nbytes
        desc = PatchifyDescriptor(hw, channels=channels, rows=rows, columns=columns, patch=patch,
                                  x_addr=x_addr, y_addr=y_addr)
        kind = int(rng.integers(1, 5)) if faults and rng.random() < 0.3 else 0
        if kind == 1:
            payloads.append(desc.to_int_with(opcode=5))
            errors.append(Fault.OPCODE)
        elif kind == 2:
            payloads.append(desc.to_int_with(rows=rows + 1 if patch > 1 else 0))
            errors.append(Fault.SHAPE)
        elif kind == 3:
            payloads.append(desc.to_int_with(patch=16, channels=hw.max_in // 256 + 1,
                                             rows=16, columns=16))
            errors.append(Fault.SHAPE)
        elif kind == 4:
            payloads.append(desc.to_int_with(y_addr=y_addr + 1))
            errors.append(Fault.SHAPE)
        else:
            payloads.append(desc.to_int())
            errors.append(Fault.NONE)
            good.append(desc)
    return payloads, errors, good


def run_case(hw, memory, payloads, errors, good, *, test_id, seed, simulator=None,
             memory_pauses="random", patches=8):
    want = memory.copy()
    run_instructions(want, hw, good)
    got, summary = run_engine(PatchifyEngine(hw, patches=patches), hw, memory, payloads,
                              test_id=test_id, seed=seed, simulator=simulator, gaps="random",
                              memory_pauses=memory_pauses)
    print(summary)
    assert summary["errors"] == [int(e) for e in errors]
    compare_images(got, want)
    return summary


@pytest.mark.parametrize("memory_pauses", [
    "none", pytest.param("random", marks=pytest.mark.slow)])
def test_patchify_tiny_model_instruction(memory_pauses):
    """The tiny program's PATCHIFY on a real quantized image, in the program's memory image."""
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    seed = replay_seed()
    hw = DEFAULT_HW["tiny"]
    qmodel, image = tiny_quantized(trained=False)
    program = compile_program(qmodel, hw)
    first = program.instructions[0]
    assert isinstance(first, PatchifyDescriptor)
    memory = program.memory_image()
    region = program.layout["input"]
    memory[region.offset:region.end] = \
        golden.quantize_image(image, qmodel.scale("input")).reshape(-1).view(np.uint8)
    summary = run_case(hw, memory, [first.to_int()], [Fault.NONE], [first],
                       test_id=f"engine-patchify-tiny-{memory_pauses}", seed=seed, memory_pauses=memory_pauses)
    if memory_pauses == "none":
        # A block (here a grid row) loads a bus beat a cycle while the one before it
        # emits a patch row (8 bytes) a cycle: the emission, and the first load.
        size = first.channels * first.rows * first.columns
        block = size // (first.rows // first.patch)
        ideal = size // first.patch + block // (hw.bus_width // 8)
        print(f"{summary['cycles'][0]} cycles for {size} bytes; {ideal} at full rate")
        assert summary["cycles"][0] < 1.1 * ideal


@pytest.mark.parametrize("bus_width", [32, pytest.param(128, marks=pytest.mark.slow)])
def test_patchify_random_back_to_back(bus_width):
    """Patches wider than the bus (32 bits: runs cut in parts) in the fast suite."""
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw = DEFAULT_HW["tiny"].replace(bus_width=bus_width)
    memory = rng.integers(0, 256, 1 << 14, dtype=np.uint8)
    payloads, errors, good = random_case(rng, hw, len(memory), 8)
    run_case(hw, memory, payloads, errors, good, seed=seed, patches=int(rng.integers(1, 4)),
             test_id=f"engine-patchify-random-{bus_width}")


@pytest.mark.slow
@pytest.mark.parametrize("case", range(4))
def test_patchify_random_design_points(case):
    """Random bus widths, block sizes, buffer depths and longer sequences (Verilator)."""
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw = DEFAULT_HW["tiny"].replace(bus_width=int(rng.choice([32, 64, 128, 256, 512])),
                                    max_outstanding=int(rng.integers(1, 6)))
    memory = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    payloads, errors, good = random_case(rng, hw, len(memory), 24, max_grid=8)
    run_case(hw, memory, payloads, errors, good, seed=seed, simulator="verilator",
             patches=int(rng.integers(1, 10)),
             memory_pauses=str(rng.choice(["none", "fixed", "random"])),
             test_id=f"engine-patchify-point-{case}")
