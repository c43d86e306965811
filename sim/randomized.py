"""Randomized differential cases for the attention kernel, softmax, LayerNorm and GELU.

:func:`draw` turns ``(unit, seed)`` into one design point (a random
:class:`~moevit.hw.config.HwConfig` within what the generator accepts) and
sequences of random operations for it, run one after the other in one
simulation (:func:`moevit.sim.units.run_sequences`), each sequence's
operations back to back: the first with no pauses anywhere, whose cycles
must equal the unit's cost model; the next (one, or three for ``large``)
with a pause pattern of its own on every stream (none, a fixed pattern or
seeded random gaps on each input, the descriptor included, and
back-pressure on each output). Shapes are ragged and reach their limits
(one token, the full buffers), constants reach the extremes of their
ranges. Every output is compared in full with the golden model's integer
primitives (:mod:`moevit.model.integer.intops`).

A seed replays its case exactly: ``MOEVIT_SEED=<seed>`` runs only that one
(tests/test_sim_random_units.py).
"""

from dataclasses import dataclass

import numpy as np

from moevit.hw.config import HwConfig
from moevit.model.integer import intops

__all__ = ["UNITS", "RandomCase", "draw", "TALLY", "tally"]

UNITS = ("attention", "softmax", "layernorm", "gelu")

#: Per (unit, simulator): cases, operations and simulated seconds run in this process
#: (printed at the end of a pytest session by tests/conftest.py).
TALLY = {}


def tally(case, simulator, seconds):
    """Count one simulated case into :data:`TALLY`."""
    cases, ops, total = TALLY.get((case.unit, simulator), (0, 0, 0.0))
    TALLY[case.unit, simulator] = (cases + 1, ops + case.operations, total + seconds)


@dataclass
class RandomCase:
    """One design point and its sequences.

    Attributes
    ----------
    unit : str
    hw : HwConfig
    streams : tuple
        ``(inputs, outputs, origin)`` for :func:`~moevit.sim.units.run_sequences`.
    sequences : list of Sequence
        The first has no pauses.
    model_cycles : list of int
        The cost model's end cycle of each operation of the first sequence.
    """

    unit: str
    hw: HwConfig
    streams: tuple
    sequences: list
    model_cycles: list

    @property
    def operations(self) -> int:
        return sum(len(s.ops) for s in self.sequences)

    def describe(self) -> str:
        fields = _FIELDS[self.unit]
        point = ", ".join(f"{name}={getattr(self.hw, name)}" for name in fields)
        return f"{self.unit} on {point}: {self.operations} operations"


def draw(unit, seed, *, large=False, hw=None) -> RandomCase:
    """The random case of ``unit`` for ``seed``; ``large`` allows longer shapes (slow set);
    ``hw``: this design point instead of a random one (many seeds on one build)."""
    rng = np.random.default_rng([UNITS.index(unit), seed])
    return _DRAW[unit](rng, seed, large, hw)


def _sequences(rng, streams, make_ops, ports=None, *, large=False):
    """Sequences of one design point: no pauses, then one (``large``: three) with a
    pattern per stream."""
    from moevit.sim.units import Sequence, random_pauses, uniform_pauses

    inputs, outputs, _ = streams
    sequences = []
    paused = [random_pauses(rng, inputs + outputs) for _ in range(3 if large else 1)]
    for pauses in [uniform_pauses(inputs, outputs, "none", "none"), *paused]:
        constants = ports() if ports else {}  # first: the operations' expected values use them
        sequences.append(Sequence(make_ops(), pauses, constants))
    return sequences


def _ends(descs):
    """The cost model's end cycle of each operation, counted from the first descriptor."""
    return [int(n) for n in np.cumsum(descs[0].sequence_cycles(descs))]


def _pick(rng, low, high):
    """An integer in ``[low, high]``, the two ends more often than the inside."""
    r = rng.random()
    return low if r < 0.15 else high if r < 0.3 else int(rng.integers(low, high + 1))


def _requant(rng):
    """A requantization ``(multiplier, shift)``: ordinary, or an extreme of the ranges."""
    r = rng.random()
    if r < 0.1:
        return 2**15 - 1, 1
    if r < 0.2:
        return 1, 47
    mult, shift = intops.quantize_multiplier(float(np.exp(rng.uniform(np.log(1e-3), 0))))
    return int(mult), int(shift)


def _int8(rng, shape):
    """int8 values: uniform, or mostly the extremes."""
    if rng.random() < 0.2:
        return rng.choice(np.array([-128, 127, 0, -1]), shape).astype(np.int64)
    return rng.integers(-128, 128, shape)


def _attention(rng, seed, large, hw):
    from moevit.hw.program.descriptor import AttentionDescriptor
    from moevit.sim.units import attention_op, attention_streams

    if hw is None:
        lanes = int(rng.choice([1, 2, 4, 8]))
        hw = HwConfig(name=f"attention-{seed}", score_lanes=lanes,
                      max_head_dim=lanes * int(rng.integers(1, 5)),
                      kv_depth=int(rng.integers(1, 49 if large else 17)),
                      heads_parallel=int(rng.integers(1, 4)),
                      row_lanes=int(rng.choice([1, 1, 2, 4, 8])))
        # Fewer requantizers than score lanes: on one head lane (HwConfig's rule).
        context = int(rng.choice([0, 0] + [k for k in (1, 2, 4) if k < lanes]))
        if hw.heads_parallel == 1:
            hw = hw.replace(context_lanes=context)
        hw = hw.replace(kv_banks=int(rng.choice([1, 2])))
        if hw.kv_banks == 2:
            hw = hw.replace(pipelined_heads=int(rng.integers(2)))
        if lanes % 2 == 0:
            hw = hw.replace(score_packing=int(rng.choice([1, 2])))
    lanes = hw.score_lanes
    descs = []

    def make_ops():
        ops = []
        for _ in range(int(rng.integers(2, 5))):
            tokens = _pick(rng, 1, hw.kv_depth)
            # A third of the operations on fewer query rows than keys (a token chunk's).
            rows = _pick(rng, 1, tokens) if rng.random() < 1 / 3 else tokens
            # Up to four rounds: a third head reuses the first one's bank of K and V.
            heads = hw.heads_parallel * int(rng.integers(1, 5))
            head_dim = lanes * _pick(rng, 1, hw.max_head_dim // lanes)
            scale = float(np.exp(rng.uniform(np.log(1 / 4096), np.log(1 / 4))))
            sm = intops.softmax_constants(scale) if rng.random() < 0.8 else _requant(rng)
            desc = AttentionDescriptor(hw, tokens=tokens, rows=rows, heads=heads,
                                       head_dim=head_dim, sm_mult=sm[0], sm_shift=sm[1],
                                       **dict(zip(("out_mult", "out_shift"), _requant(rng))))
            q = _int8(rng, (heads, rows, head_dim))
            k, v = (_int8(rng, (heads, tokens, head_dim)) for _ in range(2))
            ops.append(attention_op(desc, q, k, v))
            descs.append(desc)
        return ops

    streams = attention_streams(hw)
    sequences = _sequences(rng, streams, make_ops, large=large)
    first = descs[:len(sequences[0].ops)]
    return RandomCase("attention", hw, streams, sequences, _ends(first))


def _softmax(rng, seed, large, hw):
    from moevit.hw.units.softmax import row_ends
    from moevit.sim.units import SOFTMAX_STREAMS, softmax_op

    hw = hw or HwConfig(name=f"softmax-{seed}", kv_depth=int(rng.integers(1, 97 if large else 33)))
    lengths, consts = [], {}

    def ports():
        mult, shift = (intops.softmax_constants(float(np.exp(rng.uniform(-12, -1.1))))
                       if rng.random() < 0.7 else _requant(rng))
        consts.update(multiplier=mult, shift=shift)
        return dict(consts)

    def make_ops():
        ops = []
        for _ in range(int(rng.integers(3, 9))):
            n = _pick(rng, 1, hw.kv_depth)
            r = rng.random()
            if r < 0.15:
                row = np.full(n, int(rng.integers(-2**31, 2**31)))  # all equal
            elif r < 0.3:
                row = rng.choice(np.array([intops.INT32_MIN, intops.INT32_MAX]), n)
            else:
                bits = int(rng.integers(1, 32))
                row = rng.integers(-2**bits, 2**bits, n)
            ops.append(softmax_op(row, consts["multiplier"], consts["shift"]))
            lengths.append(n)
        return ops

    sequences = _sequences(rng, SOFTMAX_STREAMS, make_ops, ports, large=large)
    return RandomCase("softmax", hw, SOFTMAX_STREAMS, sequences,
                      row_ends(lengths[:len(sequences[0].ops)]))


def _gelu(rng, seed, large, hw):
    from moevit.hw.units.gelu import gelu_cycles
    from moevit.sim.units import GELU_STREAMS, gelu_op, gelu_ports

    hw = hw or HwConfig(name=f"gelu-{seed}", cols=int(rng.integers(1, 33)), post_lanes=1)
    sizes, consts = [], {}

    def ports():
        scale = float(np.exp(rng.uniform(np.log(1.4e-3), np.log(0.5))))
        b, c = intops.gelu_constants(scale)
        mult, shift = (intops.quantize_multiplier(1 / (2 * c) / rng.uniform(0.3, 3))
                       if rng.random() < 0.8 else _requant(rng))
        consts.update(gelu_ports((b, c, mult, shift)))
        return dict(consts)

    def make_ops():
        ops = []
        for _ in range(int(rng.integers(2, 6))):
            count = int(rng.integers(1, 20 if large else 8)) * hw.cols - int(rng.integers(hw.cols))
            ops.append(gelu_op(hw, _int8(rng, count), consts.values()))
            sizes.append(len(ops[-1]["i"]))
        return ops

    sequences = _sequences(rng, GELU_STREAMS, make_ops, ports, large=large)
    ends = np.cumsum(sizes[:len(sequences[0].ops)])
    return RandomCase("gelu", hw, GELU_STREAMS, sequences, [gelu_cycles(int(n)) for n in ends])


def _layernorm(rng, seed, large, hw):
    from moevit.hw.program.descriptor import LayerNormDescriptor
    from moevit.sim.units import LAYERNORM_STREAMS, layernorm_op

    # Lanes 1 to 16 (a bus wide enough for them), rows of 1 to 32 (96) beats, at most
    # the unit's 1024 values; or the given design point (the long regression's).
    if hw is None:
        lanes = 1 << int(rng.integers(0, 5))
        beats = min(96 if large else 32, 1024 // lanes)
        hw = HwConfig(name=f"layernorm-{seed}", norm_lanes=lanes, bus_width=max(128, 8 * lanes),
                      max_in=lanes * int(rng.integers(1, beats + 1)))
    lanes = hw.norm_lanes
    descs = []

    def make_ops():
        ops = []
        for _ in range(int(rng.integers(2, 5))):
            tokens = _pick(rng, 1, (8 if large else 4) * (1 if lanes == 1 else 3))
            dim = lanes * _pick(rng, 1, hw.max_in // lanes)
            eps = int(rng.choice([0, int(rng.integers(0, 2**34))])) if rng.random() < 0.5 \
                else int(rng.integers(0, 2**12))
            shift = _pick(rng, 1, 47) if rng.random() < 0.3 else int(rng.integers(12, 24))
            desc = LayerNormDescriptor(hw, tokens=tokens, dim=dim, eps=eps, shift=shift)
            gamma = rng.integers(-2**15 + 1, 2**15, dim)
            beta = rng.integers(-2**min(40, shift + 7) + 1, 2**min(40, shift + 7), dim)
            ops.append(layernorm_op(desc, _int8(rng, (tokens, dim)), gamma, beta))
            descs.append(desc)
        return ops

    sequences = _sequences(rng, LAYERNORM_STREAMS, make_ops, large=large)
    first = descs[:len(sequences[0].ops)]
    return RandomCase("layernorm", hw, LAYERNORM_STREAMS, sequences, _ends(first))


_FIELDS = {"attention": ("score_lanes", "max_head_dim", "kv_depth", "heads_parallel",
                         "row_lanes", "context_lanes", "kv_banks", "pipelined_heads",
                         "score_packing"),
           "softmax": ("kv_depth",), "layernorm": ("norm_lanes", "max_in"), "gelu": ("cols",)}
_DRAW = {"attention": _attention, "softmax": _softmax, "gelu": _gelu, "layernorm": _layernorm}
