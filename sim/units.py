"""Run the attention kernel and the integer units in a cocotb simulation.

The attention kernel, softmax, GELU and LayerNorm run through one bench,
:mod:`moevit.sim.benches.sequences`: :func:`run_sequences` writes the
Verilog of the unit for a :class:`~moevit.hw.config.HwConfig`, and beside
the test's folder (``build/sim/<test id>.npz``) each operation's input beats
and the golden model's expected outputs (``moevit.model.integer.golden`` /
``intops``), made by the ``*_op`` functions; the bench runs sequences of
operations back to back with a pause pattern per stream and compares every
output with the golden model bit for bit, in full. The ``run_*`` functions
are the one-sequence shortcuts the unit tests use. :func:`run_linear` is
the exception: it takes the linear kernel's operations as they are and
leaves the comparison to its caller.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from moevit.paths import build_dir

__all__ = ["UnitRun", "Sequence", "SequenceRun", "beats", "unbeats", "run_linear",
           "run_sequences", "uniform_pauses", "random_pauses", "run_attention", "attention_op",
           "attention_streams", "run_softmax", "softmax_op", "run_gelu", "gelu_op",
           "gelu_ports", "run_layernorm", "layernorm_op", "attention_descriptor", "sharp_head",
           "tiny_quantized", "tiny_compiled", "attention_layer", "SOFTMAX_STREAMS", "GELU_STREAMS",
           "LAYERNORM_STREAMS"]


@dataclass
class UnitRun:
    """What a simulation returned: the outputs and the cycles they took.

    Attributes
    ----------
    out : numpy.ndarray
        The design's outputs, in the golden model's shape.
    cycles : int
        Clock cycles from the first input to the last output.
    seconds : float
        Wall time of the simulation (the build excluded).
    """

    out: np.ndarray
    cycles: int
    seconds: float


def beats(matrix, lanes):
    """Stream beats of a ``(T, D)`` int8 matrix: token-major, ``lanes`` values a beat.

    Returns a list of payload integers (lane ``l`` in bits ``8l..8l+7``).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    tokens, dim = matrix.shape
    groups = (matrix & 0xFF).reshape(tokens * (dim // lanes), lanes)
    weights = [1 << (8 * lane) for lane in range(lanes)]
    return [sum(int(v) * w for v, w in zip(row, weights)) for row in groups]


def unbeats(payloads, shape, lanes):
    """Inverse of :func:`beats`: payload integers back to an int8 ``shape`` array."""
    values = [((int(p) >> (8 * lane)) & 0xFF) for p in payloads for lane in range(lanes)]
    array = np.array(values, dtype=np.int64).reshape(shape)
    return np.where(array >= 128, array - 256, array).astype(np.int8)


def run_linear(hw, runs, *, test_id, simulator=None):
    """Simulate runs of linear-kernel operations (:mod:`moevit.sim.benches.linear`).

    Unlike the other units, the bench only records: the caller compares the
    outputs with the golden model (``moevit.hw.units.linear.linear_reference``).
    All runs share one build of the design and one simulation.

    Parameters
    ----------
    hw : HwConfig
    runs : list of dict
        As for :func:`moevit.sim.benches.linear.write_case`: each a sequence of
        operations sent back to back, with its pause patterns.
    test_id : str
        Names the simulation's folder (and the case file beside it).
    simulator : str, optional

    Returns
    -------
    results : list of dict
        Per run: ``outputs`` (each operation's int8 output; None for a skipped
        descriptor), ``cycles``, ``stalls`` (per good operation) and ``errors``
        (the codes the kernel raised).
    result : SimResult
    """
    from moevit.hw.generate import verilog_file
    from moevit.sim.benches.linear import write_case
    from moevit.sim.runner import run_cocotb, sim_folder

    folder = sim_folder(test_id)
    case = write_case(folder.parent / f"{folder.name}.npz", hw, runs)
    result = run_cocotb(toplevel="moevit_linear", sources=[verilog_file("linear", hw)],
                        test_module="moevit.sim.benches.linear", test_id=test_id,
                        simulator=simulator, env={"MOEVIT_CASE": case})
    summary = result.json("summary.json")
    for r, (run, got) in enumerate(zip(runs, summary)):
        got["outputs"] = [None if "bad" in op else np.load(result.output(f"y{r}_{k}.npy"))
                          for k, op in enumerate(run["ops"])]
    return summary, result


def attention_descriptor(hw, tokens, heads, head_dim, consts, rows=0):
    """The :class:`~moevit.hw.program.descriptor.AttentionDescriptor` of one attention layer
    (``rows`` query rows; 0: every token).

    ``consts`` is a :class:`~moevit.model.integer.golden.AttentionConsts` (or its four
    integers: softmax multiplier and shift, context multiplier and shift).
    """
    from moevit.hw.program.descriptor import AttentionDescriptor

    sm_mult, sm_shift, out_mult, out_shift = (int(c) for c in consts)
    return AttentionDescriptor(hw, tokens=tokens, rows=rows, heads=heads, head_dim=head_dim,
                               sm_mult=sm_mult, sm_shift=sm_shift, out_mult=out_mult,
                               out_shift=out_shift)


# Sequences of operations (moevit.sim.benches.sequences) ----------------------------
@dataclass
class Sequence:
    """Operations run back to back, each stream with its own pause pattern.

    Attributes
    ----------
    ops : list of dict
        Per operation, each input stream's payloads (``name``) and each output
        stream's expected payloads (``name + ".expected"``).
    pauses : dict
        Per stream, ``{"kind": "none" | "fixed" | "random", "pattern": [...]}``
        (:func:`moevit.sim.streams.pauses`).
    ports : dict
        Constant input ports set before the sequence (the unit is idle then).
    """

    ops: list
    pauses: dict
    ports: dict = field(default_factory=dict)

    @property
    def paused(self) -> bool:
        return any(spec["kind"] != "none" for spec in self.pauses.values())


@dataclass
class SequenceRun:
    """What :func:`run_sequences` returned.

    Attributes
    ----------
    cycles : list of list of int
        Per sequence, the cycle of each operation's last output beat, counted
        from the sequence's first beat on the origin stream.
    beats : dict
        Every payload each output stream carried, in order.
    held : list of dict
        Per sequence, per output stream, the cycles a beat waited on back-pressure.
    seconds : float
        Wall time of the simulation (the build excluded).
    """

    cycles: list
    beats: dict
    held: list
    seconds: float


def uniform_pauses(inputs, outputs, gaps, stall):
    """One pause kind on every input (``gaps``) and on every output (``stall``)."""
    return {**{name: {"kind": gaps} for name in inputs},
            **{name: {"kind": stall} for name in outputs}}


def random_pauses(rng, names):
    """A pause spec per stream drawn from ``rng``: none, a fixed pattern of its own
    (2 to 7 cycles, at least one pause and one active cycle), or seeded random."""
    specs = {}
    for name in names:
        kind = ("none", "fixed", "random")[int(rng.integers(3))]
        pattern = [bool(b) for b in rng.integers(2, size=int(rng.integers(2, 8)))]
        beat, pause = rng.permutation(len(pattern))[:2]  # at least one of each
        pattern[beat], pattern[pause] = False, True
        specs[name] = {"kind": kind, "pattern": pattern}
    return specs


def run_sequences(unit, hw, streams, sequences, *, test_id, simulator=None,
                  seed=0) -> SequenceRun:
    """Simulate ``sequences`` of operations on ``unit`` in one simulation.

    The bench (:mod:`moevit.sim.benches.sequences`) compares every output
    beat with the expected one and fails on the first difference.

    Parameters
    ----------
    unit : str
        A unit of :data:`moevit.hw.generate.UNITS`.
    hw : HwConfig
    streams : tuple
        ``(inputs, outputs, origin)``: the stream names, and the input from
        whose first beat each sequence's cycles count.
    sequences : list of Sequence
    test_id : str
        Names the simulation's folder.
    simulator : str, optional
    seed : int
        Seeds the random pause patterns.
    """
    from moevit.hw.generate import module_name, verilog_file
    from moevit.sim.runner import run_cocotb, sim_folder

    inputs, outputs, origin = streams
    arrays, numbered = {}, []
    for sequence in sequences:
        ops = []
        for op in sequence.ops:
            k = sum(len(n["ops"]) for n in numbered) + len(ops)
            for name in inputs:
                arrays[f"{name}.{k}"] = _text(op[name])
            for name in outputs:
                arrays[f"{name}.{k}.expected"] = _text(op[f"{name}.expected"])
            ops.append(k)
        numbered.append({"ops": ops, "pauses": sequence.pauses,
                         "ports": {k: int(v) for k, v in sequence.ports.items()}})
    folder = sim_folder(test_id)
    data = folder.parent / f"{folder.name}.npz"
    np.savez(data, **arrays)
    case = {"data": str(data), "seed": seed, "inputs": list(inputs), "outputs": list(outputs),
            "origin": origin, "sequences": numbered}
    result = run_cocotb(toplevel=module_name(unit), sources=[verilog_file(unit, hw)],
                        test_module="moevit.sim.benches.sequences", test_id=test_id,
                        simulator=simulator, env={"MOEVIT_CASE": json.dumps(case)}, seed=seed)
    beats = np.load(result.output("beats.npz"))
    return SequenceRun(result.json("cycles.json"),
                       {name: [int(b) for b in beats[name]] for name in outputs},
                       result.json("held.json"), result.seconds)


def _text(payloads):
    """Payloads (possibly wider than 64 bits) as an array of decimal strings."""
    return np.array([str(int(p)) for p in payloads], dtype=str)


# Attention -----------------------------------------------------------------------
def attention_streams(hw):
    """``(inputs, outputs, origin)`` of the attention kernel's streams."""
    lanes = range(hw.heads_parallel)
    inputs = ["desc"] + [f"{n}__{p}" for p in lanes for n in "kvq"]
    return inputs, [f"o__{p}" for p in lanes], "desc"


def attention_op(desc, q, k, v):
    """One attention operation's beats; the context from ``golden.attention_head``.

    ``k``, ``v``: int8 ``(heads, tokens, head_dim)``, ``q`` ``(heads, desc.rows,
    head_dim)``; head ``h`` runs on lane ``h % heads_parallel``.
    """
    from moevit.model.integer.golden import AttentionConsts, attention_head

    hw, lanes = desc.hw, desc.hw.score_lanes
    consts = AttentionConsts(desc.sm_mult, desc.sm_shift, desc.out_mult, desc.out_shift)
    op = {"desc": [desc.to_int()]}
    for p in range(hw.heads_parallel):
        heads = range(p, desc.heads, hw.heads_parallel)
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            op[f"{name}__{p}"] = [b for h in heads for b in beats(tensor[h], lanes)]
        op[f"o__{p}.expected"] = [b for h in heads for b in beats(
            attention_head(q[h], k[h], v[h], consts).out, lanes)]
    return op


def run_attention(hw, q, k, v, consts, *, test_id, simulator=None, gaps="random",
                  stall="random", seed=0) -> UnitRun:
    """Simulate the attention kernel on ``heads`` heads and check it against the golden model.

    Parameters
    ----------
    hw : HwConfig
    q, k, v : int8 arrays ``(heads, rows, head_dim)`` and two of ``(heads, tokens,
        head_dim)``: the query rows (all the tokens, or fewer) against every key
    consts : AttentionConsts or four ints
    test_id : str
        Names the simulation's folder.
    simulator : str, optional
    gaps, stall : str
        Pause kinds (:func:`moevit.sim.streams.pauses`) of the inputs and outputs.
    seed : int

    Returns
    -------
    UnitRun
        ``out`` int8 ``(heads, rows, head_dim)``; ``cycles`` from the
        descriptor's acceptance to the last context beat.
    """
    q, k, v = (np.asarray(a, dtype=np.int8) for a in (q, k, v))
    heads, rows, head_dim = q.shape
    tokens = k.shape[1]
    desc = attention_descriptor(hw, tokens, heads, head_dim, consts, rows)
    streams = attention_streams(hw)
    sequence = Sequence([attention_op(desc, q, k, v)], uniform_pauses(*streams[:2], gaps, stall))
    run = run_sequences("attention", hw, streams, [sequence], test_id=test_id,
                        simulator=simulator, seed=seed)
    out = np.zeros(q.shape, dtype=np.int8)
    for p, name in enumerate(streams[1]):
        # dtype=object: numpy turns ints in [2**63, 2**64) into float64, losing the low lanes.
        per_head = np.array(run.beats[name], dtype=object).reshape(-1, rows * head_dim // hw.score_lanes)
        for n, h in enumerate(range(p, heads, hw.heads_parallel)):
            out[h] = unbeats(per_head[n], (rows, head_dim), hw.score_lanes)
    return UnitRun(out, run.cycles[0][0], run.seconds)


def sharp_head(rng, tokens, head_dim):
    """A head whose every score counts, for the packed QK's arithmetic: q and k in -1..1 at
    the softmax's coarsest scale, so one unit more on any one score changes every query
    row's context (checked here), half the products negative (a packed low product's
    borrow). Returns ``(q, k, v, consts, context)``, ``consts`` an ``AttentionConsts``."""
    from moevit.model.integer import intops
    from moevit.model.integer.golden import AttentionConsts, attention_head

    consts = AttentionConsts(*intops.softmax_constants(1 / 4),
                             *map(int, intops.quantize_multiplier(1 / 4096)))
    q, k = (rng.integers(-1, 2, (tokens, head_dim)) for _ in range(2))
    v = rng.integers(-64, 65, (tokens, head_dim))
    context = attention_head(q, k, v, consts).out
    exact = intops.linear_acc(q, k)
    for j in range(tokens):
        scores = exact.copy()
        scores[:, j] += 1
        probs = intops.softmax(scores, consts.softmax_mult, consts.softmax_shift)
        bumped = intops.requantize(intops.weighted_sum(probs, v), consts.ctx_mult,
                                   consts.ctx_shift)
        if not (bumped != context).any(axis=1).all():
            raise AssertionError(f"a unit more on key {j}'s scores leaves a context row as it was")
    return q, k, v, consts, context


# Softmax -------------------------------------------------------------------------
SOFTMAX_STREAMS = (["i"], ["o"], "i")


def softmax_op(row, multiplier, shift):
    """One row of int32 scores and its ``intops.softmax`` probabilities, as beats."""
    from moevit.model.integer import intops

    row = np.asarray(row, dtype=np.int64)
    probs = intops.softmax(row, multiplier, shift)
    ends = np.arange(len(row)) == len(row) - 1
    return {"i": [(int(s) & 0xFFFFFFFF) | (int(e) << 32) for s, e in zip(row, ends)],
            "o.expected": [int(p) | (int(e) << 16) for p, e in zip(probs, ends)]}


def run_softmax(hw, rows, multiplier, shift, *, test_id, simulator=None, gaps="random",
                stall="random", seed=0) -> UnitRun:
    """Simulate the softmax unit on a list of int32 score rows (any lengths).

    ``out`` is the concatenation of the rows' Q0.15 probabilities.
    """
    sequence = Sequence([softmax_op(r, multiplier, shift) for r in rows],
                        uniform_pauses(["i"], ["o"], gaps, stall),
                        {"multiplier": multiplier, "shift": shift})
    run = run_sequences("softmax", hw, SOFTMAX_STREAMS, [sequence], test_id=test_id,
                        simulator=simulator, seed=seed)
    out = np.array([b & 0xFFFF for b in run.beats["o"]], dtype=np.int64)
    return UnitRun(out, run.cycles[0][-1], run.seconds)


# GELU ----------------------------------------------------------------------------
GELU_STREAMS = (["i"], ["o"], "i")


def gelu_ports(consts):
    """The GELU unit's constant ports from ``(b, c, mult, shift)``."""
    return dict(zip(("b", "c", "mult", "shift"), (int(v) for v in consts)))


def gelu_op(hw, x, consts):
    """``x`` (int8, any size, zero-padded to whole beats of ``hw.cols``) and its
    ``requantize(intops.gelu(x, b, c), mult, shift)``, as beats."""
    from moevit.model.integer import intops

    b, c, mult, shift = (int(v) for v in consts)
    flat = np.asarray(x, dtype=np.int64).ravel()
    padded = np.zeros(-(-flat.size // hw.cols) * hw.cols, dtype=np.int64)
    padded[:flat.size] = flat
    expected = intops.requantize(intops.gelu(padded, b, c), mult, shift)
    return {"i": beats(padded.reshape(-1, hw.cols), hw.cols),
            "o.expected": beats(expected.reshape(-1, hw.cols), hw.cols)}


def run_gelu(hw, x, consts, *, test_id, simulator=None, gaps="random", stall="random",
             seed=0) -> UnitRun:
    """Simulate the GELU unit: ``requantize(gelu(x, b, c), mult, shift)``.

    ``x`` int8 of any size (padded with zeros to whole beats of ``hw.cols``);
    ``consts`` a :class:`~moevit.model.integer.golden.GeluConsts` or ``(b, c, mult, shift)``.
    """
    flat = np.asarray(x).ravel()
    sequence = Sequence([gelu_op(hw, flat, consts)], uniform_pauses(["i"], ["o"], gaps, stall),
                        gelu_ports(consts))
    run = run_sequences("gelu", hw, GELU_STREAMS, [sequence], test_id=test_id,
                        simulator=simulator, seed=seed)
    out = unbeats(run.beats["o"], (-1,), hw.cols)[:flat.size]
    return UnitRun(out, run.cycles[0][0], run.seconds)


# LayerNorm -----------------------------------------------------------------------
LAYERNORM_STREAMS = (["desc", "param", "i"], ["o"], "desc")


def layernorm_op(desc, x, gamma, beta):
    """One LayerNorm operation's beats (``desc.hw.norm_lanes`` values a beat); the output
    from ``intops.layernorm``."""
    from moevit.hw.units.layernorm import param_layout
    from moevit.model.integer import intops

    lanes = desc.hw.norm_lanes
    x = np.asarray(x, dtype=np.int64)
    expected = intops.layernorm(x, desc.eps, gamma, beta, desc.shift).astype(np.int64)
    width = param_layout().size
    words = [(int(g) & 0xFFFF) | ((int(b) & ((1 << 41) - 1)) << 16)
             for g, b in zip(np.asarray(gamma), np.asarray(beta))]
    params = [sum(w << (width * k) for k, w in enumerate(words[at:at + lanes]))
              for at in range(0, len(words), lanes)]
    return {"desc": [desc.to_int()], "param": params, "i": beats(x, lanes),
            "o.expected": beats(expected, lanes)}


def run_layernorm(hw, x, eps, gamma, beta, shift, *, test_id, simulator=None,
                  gaps="random", stall="random", seed=0) -> UnitRun:
    """Simulate the LayerNorm unit on int8 rows ``x`` ``(tokens, dim)``."""
    from moevit.hw.program.descriptor import LayerNormDescriptor

    tokens, dim = np.shape(x)
    desc = LayerNormDescriptor(hw, tokens=tokens, dim=dim, eps=int(eps), shift=int(shift))
    sequence = Sequence([layernorm_op(desc, x, gamma, beta)],
                        uniform_pauses(*LAYERNORM_STREAMS[:2], gaps, stall))
    run = run_sequences("layernorm", hw, LAYERNORM_STREAMS, [sequence], test_id=test_id,
                        simulator=simulator, seed=seed)
    out = unbeats(run.beats["o"], (tokens, dim), hw.norm_lanes)
    return UnitRun(out, run.cycles[0][0], run.seconds)


def tiny_quantized(trained=True):
    """A quantized ``tiny`` model and one validation image.

    ``trained``: trained briefly (cached as ``build/sim/_models/tiny-<config
    hash>-quantized.npz``, so a changed config trains anew; shared by every
    unit's and the linear kernel's tests; the first call trains for a minute
    or more). Otherwise the golden model's untrained
    ``signal_model`` (weights that carry signal), quantized on eight images:
    seconds, for the fast tests. Returns ``(QuantizedModel, image)``,
    the image a float ``(C, H, W)`` array.
    """
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.onnx.check import config_hash
    from moevit.model.integer.quantize import load_quantized, quantize, save_quantized
    from moevit.model.train import TrainOptions, train

    config = get_config("tiny")
    image = SyntheticDataset(config, "val", size=1, seed=0).images[0].numpy()
    if not trained:
        from moevit.model.integer.evaluate import signal_model

        data = SyntheticDataset(config, "val", size=8, seed=1)
        return quantize(signal_model(config), data.images), image
    path = build_dir("sim", "_models") / f"tiny-{config_hash(config)}-quantized.npz"
    if not path.exists():
        data = SyntheticDataset(config, "train", size=64, seed=0)
        options = TrainOptions(steps=40, batch_size=16, lr=1e-3, warmup=10, seed=0,
                               checkpoint=str(build_dir("sim", "_models") / "tiny.pt"))
        model = train(config, options, data, progress=False).model
        save_quantized(path, quantize(model, data.images[:32]))
    return load_quantized(path, config), image


def tiny_compiled(images, seed, *, trained=False):
    """``(QuantizedModel, Program, int8 images)``: :func:`tiny_quantized` compiled for the
    ``tiny`` HwConfig, and ``images`` validation images (``seed``) quantized as its input."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer import golden

    qmodel, _ = tiny_quantized(trained=trained)
    program = compile_program(qmodel, DEFAULT_HW["tiny"])
    floats = SyntheticDataset(qmodel.config, "val", size=images, seed=seed).images.numpy()
    return qmodel, program, np.stack([golden.quantize_image(i, qmodel.scale("input"))
                                      for i in floats])


def attention_layer(qmodel, tensors, block):
    """One block's attention as the golden model ran it.

    Parameters
    ----------
    qmodel : QuantizedModel
    tensors : dict
        ``GoldenResult.tensors`` of a recorded run.
    block : int

    Returns
    -------
    q, k, v : int8 ``(heads, tokens, head_dim)``
        The heads of ``blocks.{block}.attn.qkv.out``.
    consts : AttentionConsts
    ctx : int8 ``(tokens, dim)``
        ``blocks.{block}.attn.ctx``, the heads' outputs side by side.
    """
    from moevit.model.integer.golden import AttentionConsts

    config = qmodel.config
    qkv = tensors[f"blocks.{block}.attn.qkv.out"]
    tokens = qkv.shape[0]
    parts = qkv.reshape(tokens, 3, config.heads, config.head_dim).transpose(1, 2, 0, 3)
    consts = AttentionConsts(*(int(c) for c in qmodel[f"blocks.{block}.attn.softmax"]),
                             *(int(c) for c in qmodel[f"blocks.{block}.attn.ctx"]))
    return parts[0], parts[1], parts[2], consts, tensors[f"blocks.{block}.attn.ctx"]
