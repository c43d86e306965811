"""The LAYERNORM and ATTENTION engines against the instruction-level interpreter, byte for
byte over the whole memory, instructions back to back under memory stalls and descriptor gaps.

Two kinds of case:

* the compiled ``tiny`` program's own instructions, on the memory image the
  interpreter left after running the whole program for one image (every
  activation has its own region, so each instruction's operands are what they
  were when it ran), with the instructions' outputs scrambled first;
* random design points (bus width, LayerNorm lanes, score lanes, head lanes, buffer
  sizes) and random instructions over random memory, shapes ragged.

Each case prints its seed (``MOEVIT_SEED=N`` replays it) and the cycles of each
instruction beside its descriptor's ``expected_cycles()`` (the unit alone, fed
without gaps): the difference is the engine's own cost (memory latency, the
descriptor check, the last write's response).
"""

import dataclasses
import math

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.descriptor import AttentionDescriptor, Fault, LayerNormDescriptor
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.layout import pack_ln_params
from moevit.hw.top.attention_engine import AttentionEngine
from moevit.hw.top.layernorm_engine import LayerNormEngine
from moevit.model.integer import intops
from moevit.sim.benches.engines import compare_images, replay_seed, run_engine


def _run(engine, hw, memory, ops, *, test_id, seed, simulator=None, **kwargs):
    """Run ``ops`` back to back on the engine and compare the whole memory with the
    interpreter's; returns the summary. An op is a descriptor, or a forged descriptor
    image (an int) that the engine must refuse, changing nothing."""
    descs = [op for op in ops if not isinstance(op, int)]
    want = memory.copy()
    run_instructions(want, hw, descs)
    images = [op if isinstance(op, int) else op.to_int() for op in ops]
    got, summary = run_engine(engine, hw, memory, images, test_id=test_id, seed=seed,
                              simulator=simulator, **kwargs)
    print(f"{'instruction':<64} {'cycles':>8} {'expected':>9} {'extra':>6}")
    for op, cycles, error in zip(ops, summary["cycles"], summary["errors"]):
        if isinstance(op, int):
            print(f"{'(forged, refused)':<64} {cycles:>8}")
            continue
        assert error == Fault.NONE, f"{op} refused with {Fault(error)!r}"
        expected = op.expected_cycles()
        print(f"{op.MNEMONIC + ' ' + _shape(op):<64} {cycles:>8} {expected:>9} "
              f"{cycles - expected:>6}")
        # The unit alone, fed without gaps, is the bound: the engine only adds to it.
        assert cycles > expected, f"{cycles} cycles, fewer than the unit alone's {expected}"
    print(f"{summary['seconds']:.1f} s in the simulator")
    compare_images(got, want)
    return summary


def _shape(desc):
    if isinstance(desc, LayerNormDescriptor):
        return f"tokens={desc.tokens} dim={desc.dim}"
    return f"tokens={desc.tokens} heads={desc.heads} head_dim={desc.head_dim} " \
           f"pitch={desc.row_pitch}"


# The tiny program's instructions ----------------------------------------------------
def _tiny_program(trained):
    """The compiled tiny program and the memory after it ran on one image (task 0)."""
    from moevit.hw.program.compiler import compile_program
    from moevit.hw.program.interpreter import run_image
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=trained)
    program = compile_program(qmodel, DEFAULT_HW["tiny"])
    memory, _ = run_image(program, golden.quantize_image(image, qmodel.scale("input")), 0)
    return program, memory


def _program_case(program, memory, mnemonic, rng):
    """The program's ``mnemonic`` instructions and the memory they start from: the final
    image with their outputs scrambled (so an engine that writes nothing fails)."""
    descs = [d for d in program.instructions if d.MNEMONIC == mnemonic]
    start = memory.copy()
    for d in descs:
        region = program.layout.at(getattr(d, d.OUTPUT))
        start[region.offset:region.end] = rng.integers(0, 256, region.size, dtype=np.uint8)
    # The outputs written anew from the final image's operands are the final image's:
    # the operands were not overwritten after the instructions ran.
    again = start.copy()
    run_instructions(again, program.hw, descs)
    compare_images(again, memory)
    return descs, start


@pytest.fixture(scope="module")
def tiny_untrained():
    return _tiny_program(trained=False)


def test_layernorm_engine_tiny_program(tiny_untrained):
    seed = replay_seed()
    program, memory = tiny_untrained
    descs, start = _program_case(program, memory, "LAYERNORM", np.random.default_rng(seed))
    _run(LayerNormEngine(program.hw), program.hw, start, descs[:2],
         test_id="engine-layernorm-tiny", seed=seed, memory_pauses="random", gaps="random")


def test_attention_engine_tiny_program(tiny_untrained):
    """The program's first attention cut to its first 9 tokens, and its query rows 3 to 7
    against them: real q, k, v and constants in a few seconds (the whole instructions run
    in the slow set)."""
    seed = replay_seed()
    program, memory = tiny_untrained
    descs, start = _program_case(program, memory, "ATTENTION", np.random.default_rng(seed))
    cut = dataclasses.replace(descs[0], tokens=9, rows=9)
    rows = dataclasses.replace(cut, rows=5, q_addr=cut.q_addr + 3 * cut.row_pitch,
                               out_addr=cut.out_addr + 3 * cut.heads * cut.head_dim)
    _run(AttentionEngine(program.hw), program.hw, start, [cut, rows],
         test_id="engine-attention-tiny", seed=seed, memory_pauses="random", gaps="random")


# Random design points -----------------------------------------------------------------
class _Arena:
    """Random memory handed out in bus-aligned pieces, with random gaps between them."""

    def __init__(self, rng, nbytes):
        self.rng, self.nbytes, self.top, self.contents = rng, nbytes, 0, []

    def place(self, size, contents=None):
        at = -(-(self.top + int(self.rng.integers(0, 3)) * self.nbytes) // self.nbytes) \
            * self.nbytes
        self.top = at + size
        if contents is not None:
            self.contents.append((at, np.frombuffer(contents, np.uint8)))
        return at

    def memory(self):
        memory = self.rng.integers(0, 256, self.top + 4096, dtype=np.uint8)
        for at, data in self.contents:
            memory[at:at + len(data)] = data
        return memory


def _layernorm_case(rng, *, ops, bus_widths, max_in, max_tokens, lanes=(1, 2, 4, 8, 16)):
    """A random hardware point (a lane count the bus carries; rows of up to ``max_in``
    beats, within the unit's 1024 values) and ``ops`` LayerNorm descriptors over random
    memory."""
    bus = int(rng.choice(bus_widths))
    lanes = int(rng.choice([n for n in lanes if 8 * n <= bus]))
    max_in = min(max_in, 1024 // lanes)
    hw = HwConfig(name="ln-random", max_in=max_in * lanes, bus_width=bus, norm_lanes=lanes)
    arena = _Arena(rng, hw.bus_width // 8)
    descs = []
    for _ in range(ops):
        tokens = int(rng.integers(1, max_tokens + 1))
        dim = lanes * int(rng.choice([1, max_in, int(rng.integers(1, max_in + 1))]))
        shift = int(rng.integers(12, 24)) if rng.random() < 0.7 else int(rng.integers(1, 48))
        eps = int(rng.choice([0, int(rng.integers(0, 2**12)), int(rng.integers(0, 2**34))]))
        gamma = rng.integers(-2**15 + 1, 2**15, dim)
        beta = rng.integers(-2**min(40, shift + 7) + 1, 2**min(40, shift + 7), dim)
        param_addr = arena.place(8 * dim, pack_ln_params(gamma, beta))
        # x of one instruction may be y of the one before: back to back, in order.
        last = descs[-1] if descs else None
        x_addr = last.y_addr if last and last.dim == dim and last.tokens >= tokens \
            and rng.random() < 0.3 else arena.place(tokens * dim)
        descs.append(LayerNormDescriptor(hw, tokens=tokens, dim=dim, eps=eps, shift=shift,
                                         x_addr=x_addr, param_addr=param_addr,
                                         y_addr=arena.place(tokens * dim)))
    return hw, arena.memory(), descs


def test_layernorm_engine_random():
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw, memory, descs = _layernorm_case(rng, ops=4, bus_widths=(32, 64, 128),
                                        max_in=int(rng.integers(1, 40)), max_tokens=7)
    print(f"bus {hw.bus_width} bits, max_in {hw.max_in}, lanes {hw.norm_lanes}")
    # A refused descriptor among them: the unit's check (too wide; with lanes, a width
    # not a multiple of them) and the engine's (an address off the bus) each end it at
    # once, writing nothing.
    good = descs[1]
    bad_width = hw.max_in + 1 if hw.norm_lanes == 1 else good.dim - 1
    ops = [descs[0], good.to_int_with(dim=bad_width), good.to_int_with(y_addr=good.y_addr + 1),
           *descs[1:]]
    summary = _run(LayerNormEngine(hw), hw, memory, ops, test_id="engine-layernorm-random",
                   seed=seed, memory_pauses="random", gaps="random")
    assert summary["errors"] == [0, Fault.SHAPE, Fault.SHAPE, 0, 0, 0]


def _attention_case(rng, *, ops, bus_widths, max_tokens, heads_parallel):
    """A random hardware point and ``ops`` attention descriptors over random memory, each
    with its own q, k, v layout (one fused QKV tensor, or three tensors with padded rows),
    a third of them on a range of the query rows (a token chunk's). A score takes at most
    16 chunks (``head_dim / score_lanes``)."""
    nbytes = int(rng.choice(bus_widths)) // 8
    P = int(rng.choice(heads_parallel))

    def step(lanes):  # the engine's rule: P * head_dim a whole number of bus words
        return math.lcm(lanes, nbytes // math.gcd(nbytes, P))

    lanes = int(rng.choice([n for n in (1, 2, 4, 8) if step(n) <= 16 * n]))
    unit = step(lanes)
    hw = HwConfig(name="attention-random", bus_width=8 * nbytes, score_lanes=lanes,
                  heads_parallel=P,
                  max_head_dim=unit * int(rng.integers(1, 16 * lanes // unit + 1)),
                  kv_depth=int(rng.integers(1, max_tokens + 1)))
    if P == 1 and lanes > 1 and rng.random() < 0.5:  # fewer requantizers (one head lane)
        hw = hw.replace(context_lanes=lanes // 2)
    arena = _Arena(rng, nbytes)
    place = arena.place
    descs = []
    for _ in range(ops):
        tokens = int(rng.choice([1, hw.kv_depth, int(rng.integers(1, hw.kv_depth + 1))]))
        heads = P * int(rng.integers(1, 3))
        head_dim = unit * int(rng.integers(1, hw.max_head_dim // unit + 1))
        width = heads * head_dim
        if rng.random() < 0.5:
            pitch = 3 * width
            q = place(tokens * pitch)
            k, v = q + width, q + 2 * width
        else:
            pitch = width + nbytes * int(rng.integers(0, 3))
            q, k, v = (place(tokens * pitch) for _ in range(3))
        rows = int(rng.integers(1, tokens + 1)) if rng.random() < 1 / 3 else tokens
        first = int(rng.integers(0, tokens - rows + 1))
        scale = float(np.exp(rng.uniform(np.log(1 / 4096), np.log(1 / 4))))
        sm_mult, sm_shift = intops.softmax_constants(scale)
        out_mult, out_shift = intops.quantize_multiplier(float(rng.uniform(1e-3, 1)))
        descs.append(AttentionDescriptor(hw, tokens=tokens, rows=rows, heads=heads,
                                         head_dim=head_dim, sm_mult=int(sm_mult),
                                         sm_shift=int(sm_shift), out_mult=int(out_mult),
                                         out_shift=int(out_shift), q_addr=q + first * pitch,
                                         k_addr=k, v_addr=v, row_pitch=pitch,
                                         out_addr=place(rows * width)))
    return hw, arena.memory(), descs


@pytest.mark.parametrize("heads_parallel", [1, 2])
def test_attention_engine_random(heads_parallel):
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw, memory, descs = _attention_case(rng, ops=3, bus_widths=(32, 64, 128), max_tokens=12,
                                        heads_parallel=(heads_parallel,))
    print(f"bus {hw.bus_width} bits, score lanes {hw.score_lanes}, heads in parallel "
          f"{hw.heads_parallel}, max head dim {hw.max_head_dim}, kv depth {hw.kv_depth}")
    # Refused, writing nothing: the kernel's checks (too many tokens; more query rows than
    # keys) and the engine's (a row pitch off the bus; a pitch shorter than a row).
    good = descs[1]
    ops = [descs[0], good.to_int_with(tokens=hw.kv_depth + 1),
           good.to_int_with(rows=good.tokens + 1),
           good.to_int_with(row_pitch=good.row_pitch + 1),
           good.to_int_with(row_pitch=0), *descs[1:]]
    summary = _run(AttentionEngine(hw), hw, memory, ops,
                   test_id=f"engine-attention-random-{heads_parallel}", seed=seed,
                   memory_pauses="random", gaps="random")
    assert summary["errors"] == [0, Fault.SHAPE, Fault.SHAPE, Fault.SHAPE, Fault.SHAPE, 0, 0]


# Slow: the whole instructions of the trained tiny program, and wider sweeps (Verilator) ------
@pytest.fixture(scope="module")
def tiny_trained():
    return _tiny_program(trained=True)


@pytest.mark.slow
@pytest.mark.parametrize("mnemonic", ["LAYERNORM", "ATTENTION"])
@pytest.mark.parametrize("memory_pauses", ["none", "random"])
def test_engine_tiny_program_all(tiny_trained, mnemonic, memory_pauses):
    """Every LAYERNORM (ATTENTION) of the program back to back; without memory stalls the
    cycles are the engine's own cost over the unit's."""
    seed = replay_seed()
    program, memory = tiny_trained
    descs, start = _program_case(program, memory, mnemonic, np.random.default_rng(seed))
    engine = (LayerNormEngine if mnemonic == "LAYERNORM" else AttentionEngine)(program.hw)
    _run(engine, program.hw, start, descs, test_id=f"engine-{mnemonic}-tiny-{memory_pauses}",
         seed=seed, simulator="verilator", memory_pauses=memory_pauses,
         gaps="none" if memory_pauses == "none" else "random")


SLOW_SEEDS = 4
ALL_BUSES = (32, 64, 128, 256, 512, 1024)


@pytest.mark.slow
@pytest.mark.parametrize("case", range(SLOW_SEEDS))
def test_layernorm_engine_random_sweep(case):
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw, memory, descs = _layernorm_case(rng, ops=6, bus_widths=ALL_BUSES,
                                        max_in=int(rng.integers(1, 300)), max_tokens=20)
    print(f"bus {hw.bus_width} bits, max_in {hw.max_in}, lanes {hw.norm_lanes}")
    _run(LayerNormEngine(hw), hw, memory, descs, test_id=f"engine-layernorm-sweep-{case}",
         seed=seed, simulator="verilator", memory_pauses="random", gaps="random")


@pytest.mark.slow
@pytest.mark.parametrize("case", range(SLOW_SEEDS))
def test_attention_engine_random_sweep(case):
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw, memory, descs = _attention_case(rng, ops=5, bus_widths=ALL_BUSES, max_tokens=40,
                                        heads_parallel=(1, 2, 3))
    print(f"bus {hw.bus_width} bits, score lanes {hw.score_lanes}, heads in parallel "
          f"{hw.heads_parallel}, max head dim {hw.max_head_dim}, kv depth {hw.kv_depth}")
    _run(AttentionEngine(hw), hw, memory, descs, test_id=f"engine-attention-sweep-{case}",
         seed=seed, simulator="verilator", memory_pauses="random", gaps="random")


#: The LAYERNORM engine's own cycles over the unit's model and the parameters' wait, in
#: the engine bench without stalls (the descriptor check, the memory's first beat, the last
#: write's response): measured with one lane before lanes existed ("about +9",
#: moevit.hw.cost.cycles.LAYERNORM_TAIL's note).
ENGINE_OWN_CYCLES = 9


@pytest.mark.slow
@pytest.mark.parametrize("lanes, bus", [(1, 128), (2, 32), (8, 64), (16, 128), (16, 256)])
def test_layernorm_engine_cycles_with_lanes(lanes, bus):
    """Without stalls, each instruction takes the unit's model (``norm_lanes`` a cycle) plus
    the wait for its parameters (:func:`~moevit.hw.cost.cycles.layernorm_param_wait`) plus
    the engine's own constant: the cost model's LayerNorm term, exact; the error printed."""
    from moevit.hw.cost.cycles import layernorm_param_wait

    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw, memory, descs = _layernorm_case(rng, ops=3, bus_widths=(bus,), max_in=48, max_tokens=12,
                                        lanes=(lanes,))
    summary = _run(LayerNormEngine(hw), hw, memory, descs, test_id=f"engine-layernorm-cycles-"
                   f"{lanes}-{bus}", seed=seed, simulator="verilator")
    print(f"{'lanes':>5} {'bus':>4} {'tokens':>6} {'dim':>5} {'simulated':>9} {'model':>6} "
          f"{'error':>7}")
    for d, cycles in zip(descs, summary["cycles"]):
        model = d.expected_cycles() + layernorm_param_wait(d, hw) + ENGINE_OWN_CYCLES
        print(f"{lanes:>5} {bus:>4} {d.tokens:>6} {d.dim:>5} {cycles:>9} {model:>6} "
              f"{(model - cycles) / cycles:>7.2%}")
        assert cycles == model


@pytest.mark.slow
@pytest.mark.parametrize("lanes_parallel, score_lanes, context_lanes, kv_banks, pipelined, "
                         "packing",
                         [(1, 32, 0, 1, 0, 1), (2, 32, 0, 1, 0, 1), (3, 16, 0, 1, 0, 1),
                          (2, 8, 0, 1, 0, 1), (1, 32, 4, 1, 0, 1), (1, 8, 2, 1, 0, 1),
                          (1, 32, 0, 2, 0, 1), (3, 16, 0, 2, 0, 1), (1, 8, 2, 2, 0, 1),
                          (1, 32, 0, 2, 1, 1), (3, 16, 0, 2, 1, 1), (1, 8, 2, 2, 1, 1),
                          (1, 32, 0, 2, 1, 2), (3, 16, 0, 1, 0, 2), (1, 8, 2, 2, 1, 2)])
def test_attention_engine_cycles_with_head_lanes(lanes_parallel, score_lanes, context_lanes,
                                                 kv_banks, pipelined, packing):
    """Without stalls on a 512-bit bus (the memory never binds), each ATTENTION of two rounds
    of 64-wide heads (three on two banks of K and V) takes the kernel's model plus the
    engine's tail (:func:`~moevit.hw.cost.cycles.attention_tail`: a cycle a token a round,
    and the head lanes' K and V dealt one score-lane beat a cycle; on two banks the first
    round's only, and :data:`~moevit.hw.cost.cycles.KV_BANKS_FIXED`): the cost model's
    attention term, within 8 cycles an instruction (on two banks, exact; with pipelined
    heads too; with QK's keys in pairs, ``packing`` 2, too); the error printed. Icarus: one
    small build a point."""
    from moevit.hw.cost.cycles import attention_tail, compute_cycles, memory_wait, moved_bytes

    hw = HwConfig(name="attention-lanes", bus_width=512, score_lanes=score_lanes,
                  heads_parallel=lanes_parallel, max_head_dim=64, kv_depth=24,
                  context_lanes=context_lanes, kv_banks=kv_banks, pipelined_heads=pipelined,
                  score_packing=packing)
    rng = np.random.default_rng(replay_seed())
    rounds = 2 if kv_banks == 1 else 3      # two banks: a round's K and V behind the last
    width = rounds * lanes_parallel * 64
    descs, arena = [], _Arena(rng, hw.bus_width // 8)
    sm_mult, sm_shift = intops.softmax_constants(1 / 8)
    out_mult, out_shift = intops.quantize_multiplier(0.3)
    for tokens, rows, first in ((7, 7, 0), (24, 24, 0), (24, 10, 7)):  # the last a chunk's
        q = arena.place(tokens * 3 * width)
        descs.append(AttentionDescriptor(hw, tokens=tokens, rows=rows,
                                         heads=rounds * lanes_parallel, head_dim=64,
                                         sm_mult=int(sm_mult), sm_shift=int(sm_shift),
                                         out_mult=int(out_mult), out_shift=int(out_shift),
                                         q_addr=q + first * 3 * width, k_addr=q + width,
                                         v_addr=q + 2 * width, row_pitch=3 * width,
                                         out_addr=arena.place(rows * width)))
    summary = _run(AttentionEngine(hw), hw, arena.memory(), descs, seed=0, simulator="icarus",
                   test_id=f"engine-attention-cycles-{lanes_parallel}-{score_lanes}-"
                           f"{context_lanes}-{kv_banks}-{pipelined}-{packing}")
    print(f"{'lanes':>5} {'chunks':>6} {'tokens':>6} {'rows':>4} {'simulated':>9} {'model':>6} "
          f"{'error':>7}")
    for d, cycles in zip(descs, summary["cycles"]):
        model = compute_cycles(d, hw) + memory_wait(d, hw, moved_bytes(d, hw), hw.bus_width / 8)
        assert compute_cycles(d, hw) == d.expected_cycles() + attention_tail(d)
        print(f"{lanes_parallel:>5} {d.chunks:>6} {d.tokens:>6} {d.rows:>4} {cycles:>9} {model:>6} "
              f"{(model - cycles) / cycles:>7.2%}")
        assert abs(model - cycles) <= (8 if kv_banks == 1 else 0), (model, cycles)
