"""Run the attention kernel and the integer units in a cocotb simulation.

Each ``run_*`` function writes the Verilog of its unit for a
:class:`~moevit.hw.config.HwConfig`, the inputs and the golden model's
expected outputs (``moevit.model.integer.golden`` / ``intops``) to
``build/sim/_cases/<test id>.npz``, runs the unit's cocotb bench
(``moevit.sim.benches.<unit>``) with seeded gaps on the inputs and
back-pressure on the outputs, and returns what the design produced and how
many cycles it took. The bench compares every output with the golden model
bit for bit, in full, and fails on the first difference. :func:`run_linear`
is the exception: it takes the linear kernel's operations as they are and
leaves the comparison to its caller.
"""

import json
from dataclasses import dataclass

import numpy as np

from moevit.paths import build_dir

__all__ = ["UnitRun", "beats", "unbeats", "run_linear", "run_attention", "run_softmax",
           "run_gelu", "run_layernorm", "attention_descriptor", "tiny_quantized",
           "attention_layer"]


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


def _verilog(unit, hw, test_id):
    from moevit.hw.generate import verilog_file
    from moevit.sim.runner import sim_folder

    # Written afresh (not the HwConfig-keyed cache), so a changed unit is never stale.
    return verilog_file(unit, hw, build_dir("sim", "_rtl", sim_folder(test_id).name))


def _run(unit, hw, test_id, arrays, case, *, simulator=None, seed=0):
    from moevit.hw.generate import module_name
    from moevit.sim.runner import run_cocotb, sim_folder

    source = _verilog(unit, hw, test_id)
    data = build_dir("sim", "_cases") / f"{sim_folder(test_id).name}.npz"
    np.savez(data, **arrays)
    case = dict(case, data=str(data.resolve()), seed=seed)
    result = run_cocotb(toplevel=module_name(unit), sources=[source],
                        test_module=f"moevit.sim.benches.{unit}", test_id=test_id,
                        simulator=simulator, env={"MOEVIT_CASE": json.dumps(case)}, seed=seed)
    summary = result.json("summary.json")
    out = np.load(result.output("out.npy"))
    return UnitRun(out, summary["cycles"], result.seconds)


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


def attention_descriptor(hw, tokens, heads, head_dim, consts):
    """The :class:`~moevit.hw.program.descriptor.AttentionDescriptor` of one attention layer.

    ``consts`` is a :class:`~moevit.model.integer.golden.AttentionConsts` (or its four
    integers: softmax multiplier and shift, context multiplier and shift).
    """
    from moevit.hw.program.descriptor import AttentionDescriptor

    sm_mult, sm_shift, out_mult, out_shift = (int(c) for c in consts)
    return AttentionDescriptor(hw, tokens=tokens, heads=heads, head_dim=head_dim,
                               sm_mult=sm_mult, sm_shift=sm_shift, out_mult=out_mult,
                               out_shift=out_shift)


def run_attention(hw, q, k, v, consts, *, test_id, simulator=None, gaps="random",
                  stall="random", seed=0) -> UnitRun:
    """Simulate the attention kernel on ``heads`` heads and check it against the golden model.

    Parameters
    ----------
    hw : HwConfig
    q, k, v : int8 arrays ``(heads, tokens, head_dim)``
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
        ``out`` int8 ``(heads, tokens, head_dim)``; ``cycles`` from the
        descriptor to the last context beat.
    """
    from moevit.model.integer.golden import AttentionConsts, attention_head

    q, k, v = (np.asarray(a, dtype=np.int8) for a in (q, k, v))
    heads, tokens, head_dim = q.shape
    consts = AttentionConsts(*(int(c) for c in consts))
    desc = attention_descriptor(hw, tokens, heads, head_dim, consts)
    expected = np.stack([attention_head(q[h], k[h], v[h], consts).out for h in range(heads)])
    lanes = hw.score_lanes
    arrays = {"desc": np.array(desc.pack(), dtype=np.uint32)}
    for name, tensor in (("q", q), ("k", k), ("v", v), ("expected", expected)):
        arrays[name] = _text([beats(tensor[h], lanes) for h in range(heads)])
    case = {"heads": heads, "tokens": tokens, "head_dim": head_dim, "lanes": lanes,
            "heads_parallel": hw.heads_parallel, "gaps": gaps, "stall": stall,
            "ideal_cycles": desc.ideal_cycles()}
    run = _run("attention", hw, test_id, arrays, case, simulator=simulator, seed=seed)
    run.out = np.stack([unbeats(row, (tokens, head_dim), lanes) for row in run.out])
    return run


def _text(payloads):
    """Payloads (possibly wider than 64 bits) as an array of decimal strings."""
    return np.array(payloads, dtype=object).astype(str)


def run_softmax(hw, rows, multiplier, shift, *, test_id, simulator=None, gaps="random",
                stall="random", seed=0) -> UnitRun:
    """Simulate the softmax unit on a list of int32 score rows (any lengths).

    ``out`` is the concatenation of the rows' Q0.15 probabilities.
    """
    from moevit.model.integer import intops

    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    expected = np.concatenate([intops.softmax(r, multiplier, shift) for r in rows])
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    arrays = {"scores": np.concatenate(rows), "lengths": lengths, "expected": expected}
    case = {"multiplier": int(multiplier), "shift": int(shift), "gaps": gaps, "stall": stall}
    return _run("softmax", hw, test_id, arrays, case, simulator=simulator, seed=seed)


def run_gelu(hw, x, consts, *, test_id, simulator=None, gaps="random", stall="random",
             seed=0) -> UnitRun:
    """Simulate the GELU unit: ``requantize(gelu(x, b, c), mult, shift)``.

    ``x`` int8 of any size (padded with zeros to whole beats of ``hw.cols``);
    ``consts`` a :class:`~moevit.model.integer.golden.GeluConsts` or ``(b, c, mult, shift)``.
    """
    from moevit.model.integer import intops

    b, c, mult, shift = (int(v) for v in consts)
    flat = np.asarray(x, dtype=np.int64).ravel()
    lanes = hw.cols
    padded = np.zeros(-(-flat.size // lanes) * lanes, dtype=np.int64)
    padded[:flat.size] = flat
    expected = intops.requantize(intops.gelu(padded, b, c), mult, shift)
    arrays = {"x": _text(beats(padded.reshape(-1, lanes), lanes)),
              "expected": _text(beats(expected.reshape(-1, lanes), lanes))}
    case = {"b": b, "c": c, "mult": mult, "shift": shift, "lanes": lanes, "gaps": gaps,
            "stall": stall}
    run = _run("gelu", hw, test_id, arrays, case, simulator=simulator, seed=seed)
    run.out = unbeats(run.out, (-1,), lanes)[:flat.size]
    return run


def run_layernorm(hw, x, eps, gamma, beta, shift, *, test_id, simulator=None,
                  gaps="random", stall="random", seed=0) -> UnitRun:
    """Simulate the LayerNorm unit on int8 rows ``x`` ``(tokens, dim)``."""
    from moevit.hw.program.descriptor import LayerNormDescriptor
    from moevit.model.integer import intops

    x = np.asarray(x, dtype=np.int64)
    tokens, dim = x.shape
    desc = LayerNormDescriptor(hw, tokens=tokens, dim=dim, eps=int(eps), shift=int(shift))
    expected = intops.layernorm(x, eps, gamma, beta, shift).astype(np.int64)
    gamma = np.asarray(gamma, dtype=np.int64)
    beta = np.asarray(beta, dtype=np.int64)
    params = [(int(g) & 0xFFFF) | ((int(b) & ((1 << 41) - 1)) << 16) for g, b in zip(gamma, beta)]
    arrays = {"desc": np.array(desc.pack(), dtype=np.uint32), "x": x.ravel(),
              "params": np.array(params, dtype=np.uint64), "expected": expected.ravel()}
    case = {"tokens": tokens, "dim": dim, "gaps": gaps, "stall": stall}
    run = _run("layernorm", hw, test_id, arrays, case, simulator=simulator, seed=seed)
    run.out = run.out.reshape(tokens, dim).astype(np.int8)
    return run


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
