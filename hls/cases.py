"""The cases of the per-kernel C simulations, each with its expected outputs.

A :class:`Case` holds one kernel's inputs, in the order its testbench
(``hls/tb/tb_<kernel>.cpp``) reads them, and the outputs it must write, in
order, each compared in full. Two sources:

* :func:`model_cases`: the golden model (``moevit.model.integer.golden``)
  run on a quantized model for every task; each kernel gets the real inputs
  of every layer that uses it and must reproduce the golden model's named
  tensors (``blocks.0.attn.ctx``, ``blocks.1.mlp.gate.topk``, ...). The
  linear kernel also runs with its fused residual add where the RTL fuses it
  (``attn.proj`` + ``add1``, a dense ``mlp.fc2`` + ``add2``,
  ``patch_embed.proj`` + the position embedding).
* :func:`random_cases`: ragged random shapes within the HwConfig's buffers
  and constants across their ranges, drawn from ``(kernel, seed)``; the
  expected outputs come from :mod:`moevit.model.integer.intops`.
"""

from dataclasses import dataclass, field

import numpy as np

from moevit.model.integer import golden, intops

__all__ = ["KERNELS", "Case", "model_cases", "random_cases", "random_hw", "quantized_model"]

#: The kernels with a testbench, in the order of the table.
KERNELS = ("linear", "softmax", "gelu", "layernorm", "attention", "moe_gate", "moe_combine")


@dataclass
class Case:
    """One testbench case.

    Attributes
    ----------
    kernel : str
    label : str
        Where it comes from: a layer of the model, or ``random seed S #n``.
    shape : str
        Its shape in words (``65x64->192``).
    inputs : list
        Integers and integer arrays, in the testbench's reading order.
    expected : list of (str, numpy.ndarray)
        The outputs, named, in the testbench's writing order.
    """

    kernel: str
    label: str
    shape: str
    inputs: list
    expected: list = field(default_factory=list)

    def values(self) -> np.ndarray:
        """The inputs as one flat int64 array."""
        return np.concatenate([np.ravel(np.asarray(v, dtype=np.int64)) for v in self.inputs])

    @property
    def output_size(self) -> int:
        return sum(int(np.size(array)) for _, array in self.expected)


# One builder per kernel: the testbench's field order lives here and in the .cpp only.
def linear_case(label, x, w, bias, mult, shift, gelu=None, skip=None, residual=None,
                expected=None):
    """``golden.linear`` (``gelu`` a :class:`golden.GeluConsts`), then
    ``intops.residual_add(y, skip, *residual)`` when ``skip`` is given."""
    tokens, n_in = x.shape
    n_out = w.shape[0]
    g = gelu or golden.GeluConsts(0, 0, 0, 0)
    r = residual or (0, 0, 0)
    if expected is None:
        expected = golden.linear(x, w, bias, mult, shift, gelu)
        if skip is not None:
            expected = intops.residual_add(expected, skip, *r)
    inputs = [tokens, n_in, n_out, int(gelu is not None), *g, int(skip is not None), *r,
              x, w, bias, mult, shift] + ([skip] if skip is not None else [])
    suffix = (" gelu" if gelu else "") + (" +res" if skip is not None else "")
    return Case("linear", label, f"{tokens}x{n_in}->{n_out}{suffix}", inputs,
                [("y", np.asarray(expected))])


def softmax_case(label, scores, mult, shift, expected=None):
    scores = np.atleast_2d(scores)
    rows, n = scores.shape
    if expected is None:
        expected = intops.softmax(scores, mult, shift)
    return Case("softmax", label, f"{rows}x{n}", [rows, n, mult, shift, scores],
                [("probs", np.asarray(expected))])


def gelu_case(label, q, consts, expected=None):
    """``intops.gelu`` (s31) and its requantization (``consts`` a :class:`golden.GeluConsts`)."""
    q = np.ravel(q)
    raw = intops.gelu(q, consts.b, consts.c)
    if expected is None:
        expected = intops.requantize(raw, consts.mult, consts.shift)
    return Case("gelu", label, f"{q.size}", [q.size, *consts, q],
                [("gelu", raw), ("out", np.ravel(expected))])


def layernorm_case(label, x, eps, gamma, beta, shift, expected=None):
    rows, dim = x.shape
    if expected is None:
        expected = intops.layernorm(x, eps, gamma, beta, shift)
    return Case("layernorm", label, f"{rows}x{dim}", [rows, dim, eps, shift, gamma, beta, x],
                [("y", np.asarray(expected))])


def attention_case(label, qkv, heads, consts, expected=None, rows=None, first=0):
    """``qkv`` one QKV output ``(tokens, 3 * heads * head_dim)``; ``consts`` an
    :class:`golden.AttentionConsts`; the query rows ``first .. first + rows - 1`` (all
    by default) against every key."""
    tokens, width = qkv.shape
    rows = tokens if rows is None else rows
    dim = width // 3
    head_dim = dim // heads
    if expected is None:
        def part(k, h):
            return qkv[:, k * dim + h * head_dim:][:, :head_dim]

        expected = np.concatenate([
            golden.attention_head(part(0, h)[first:first + rows], part(1, h), part(2, h),
                                  consts).out
            for h in range(heads)], axis=1)
    shape = f"{tokens}x{heads}x{head_dim}" + ("" if rows == tokens else f" rows {first}+{rows}")
    return Case("attention", label, shape, [tokens, rows, first, heads, head_dim, *consts, qkv],
                [("ctx", np.asarray(expected))])


def _lists(top, experts):
    """Per expert: its count, then its tokens (ascending), as the testbench writes them."""
    parts = []
    for e in range(experts):
        tokens = np.nonzero((top == e).any(axis=1))[0]
        parts += [[tokens.size], tokens]
    return np.concatenate([np.asarray(p, np.int64) for p in parts])


def gate_weights(logits, top, mult, shift, renorm):
    """The gate weights of ``golden._Runner.moe``: V-MoE's or the renormalised rule."""
    if renorm:
        return intops.softmax(np.take_along_axis(logits.astype(np.int64), top, axis=1), mult,
                              shift)
    return np.take_along_axis(intops.softmax(logits, mult, shift), top, axis=1)


def moe_gate_case(label, logits, top_k, renorm, mult, shift, expected=None):
    """``expected``: ``(top, weights, lists)`` of the golden model, else computed."""
    tokens, experts = logits.shape
    if expected is None:
        top = intops.topk(logits, top_k)
        expected = (top, gate_weights(logits, top, mult, shift, renorm), _lists(top, experts))
    top, weights, lists = expected
    return Case("moe_gate", label, f"{tokens}x{experts} top{top_k}{' renorm' if renorm else ''}",
                [tokens, experts, top_k, int(renorm), mult, shift, logits],
                [("top", top), ("weights", weights), ("lists", lists)])


def moe_combine_case(label, top, weights, fc2, experts, dim, mult, shift, expected=None):
    """``fc2``: per expert, its ``dim``-wide output rows for its tokens in
    ascending order (an empty array for an expert no token selected)."""
    tokens, top_k = top.shape
    if expected is None:
        selected = np.zeros((tokens, top_k, dim), np.int8)
        for e in range(experts):
            rows, slots = np.nonzero(top == e)
            selected[rows, slots] = fc2[e]
        acc = intops.weighted_sum(weights[:, None, :], selected)[:, 0]
        expected = (acc, intops.requantize(acc, mult, shift))
    acc, out = expected
    blocks = [np.reshape(f, -1) for f in fc2]
    return Case("moe_combine", label, f"{tokens}x{dim} top{top_k} of {experts}",
                [tokens, experts, top_k, dim, mult, shift, top, weights, *blocks],
                [("acc", acc), ("out", out)])


# The model's cases ---------------------------------------------------------------
def quantized_model(name="tiny"):
    """A quantized model of the named config and one image: the untrained
    ``signal_model`` (weights that carry signal), calibrated on eight images
    (seconds for ``tiny``; ``moevit.sim.units.tiny_quantized(trained=False)``)."""
    if name == "tiny":
        from moevit.sim.units import tiny_quantized

        return tiny_quantized(trained=False)
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize

    config = get_config(name)
    image = SyntheticDataset(config, "val", size=1, seed=0).images[0].numpy()
    data = SyntheticDataset(config, "val", size=8, seed=1)
    return quantize(signal_model(config), data.images), image


def model_cases(qmodel, image, kernels=KERNELS) -> dict:
    """Per kernel, the cases of every layer of ``qmodel`` on ``image``, for every task."""
    config = qmodel.config
    cases = {kernel: [] for kernel in kernels}

    def add(kernel, make):
        if kernel in cases:
            cases[kernel].append(make())

    for task in range(len(config.tasks)):
        run = golden.run(qmodel, image, task)
        t = run.tensors
        tag = f"task {task} "
        for rec in run.linears:
            add("linear", lambda: linear_case(tag + rec.name, rec.x, rec.weight, rec.bias,
                                              rec.mult, rec.shift, rec.gelu, expected=rec.out))
            if rec.gelu is not None:
                add("gelu", lambda: gelu_case(tag + rec.name, rec.pre, rec.gelu, expected=rec.out))
        # The residual adds the RTL fuses into the linear kernel.
        records = {rec.name: rec for rec in run.linears}
        pe = records["patch_embed.proj"]
        add("linear", lambda: linear_case(
            tag + "patch_embed.proj + pos_embed", pe.x, pe.weight, pe.bias, pe.mult, pe.shift,
            skip=qmodel["pos_embed"], residual=tuple(int(v) for v in qmodel["embed.add"]),
            expected=t["embed.out"][1:]))
        block_in = t["embed.out"]
        for i in range(config.depth):
            p = f"blocks.{i}"
            proj = records[f"{p}.attn.proj"]
            add("linear", lambda: linear_case(
                tag + f"{p}.attn.proj + add1", proj.x, proj.weight, proj.bias, proj.mult,
                proj.shift, skip=block_in, residual=_skip_residual(qmodel, f"{p}.add1"),
                expected=t[f"{p}.add1.out"]))
            if not config.is_moe(i):
                fc2 = records[f"{p}.mlp.fc2"]
                add("linear", lambda: linear_case(
                    tag + f"{p}.mlp.fc2 + add2", fc2.x, fc2.weight, fc2.bias, fc2.mult, fc2.shift,
                    skip=t[f"{p}.add1.out"],
                    residual=_skip_residual(qmodel, f"{p}.add2"),
                    expected=t[f"{p}.add2.out"]))
            for norm, x in (("norm1", block_in), ("norm2", t[f"{p}.add1.out"])):
                add("layernorm", lambda: _layernorm_case(qmodel, tag, f"{p}.{norm}", x,
                                                         t[f"{p}.{norm}.out"]))
            consts = golden.AttentionConsts(*(int(v) for v in qmodel[f"{p}.attn.softmax"]),
                                            *(int(v) for v in qmodel[f"{p}.attn.ctx"]))
            add("attention", lambda: attention_case(tag + f"{p}.attn", t[f"{p}.attn.qkv.out"],
                                                    config.heads, consts,
                                                    expected=t[f"{p}.attn.ctx"]))
            for h in range(config.heads):
                add("softmax", lambda: softmax_case(
                    tag + f"{p}.attn.probs.h{h}", t[f"{p}.attn.scores.h{h}"],
                    consts.softmax_mult, consts.softmax_shift,
                    expected=t[f"{p}.attn.probs.h{h}"]))
            if config.is_moe(i):
                _moe_cases(qmodel, t, tag, p, task, add)
            block_in = t[f"{p}.add2.out"]
        add("layernorm", lambda: _layernorm_case(qmodel, tag, "norm", block_in, t["norm.out"]))
    return cases


def _skip_residual(qmodel, name):
    """``(mult of this op's output, mult of the skip, shift)`` of the residual add
    ``name``, whose first operand in the golden model is the skip."""
    skip_mult, out_mult, shift = (int(v) for v in qmodel[name])
    return out_mult, skip_mult, shift


def _layernorm_case(qmodel, tag, name, x, expected):
    return layernorm_case(tag + name, x, int(qmodel[f"{name}.eps"]), qmodel[f"{name}.gamma"],
                          qmodel[f"{name}.beta"], int(qmodel[f"{name}.shift"]), expected)


def _moe_cases(qmodel, t, tag, p, task, add):
    config = qmodel.config
    mult, shift = (int(v) for v in qmodel[f"{p}.mlp.gate.softmax"][task])
    renorm = config.gate == "renorm"
    logits, top = t[f"{p}.mlp.gate.logits"], t[f"{p}.mlp.gate.topk"]
    weights = t[f"{p}.mlp.gate.weights"]
    lists = np.concatenate([np.asarray(part, np.int64) for e in range(config.experts)
                            for part in _expert_tokens(t, p, e)])
    add("moe_gate", lambda: moe_gate_case(tag + f"{p}.mlp.gate", logits, config.top_k, renorm,
                                          mult, shift, expected=(top, weights, lists)))
    if not renorm:
        add("softmax", lambda: softmax_case(tag + f"{p}.mlp.gate.probs", logits, mult, shift,
                                            expected=t[f"{p}.mlp.gate.probs"]))
    fc2 = [t.get(f"{p}.mlp.experts.{e}.fc2.out", np.zeros((0, config.dim), np.int8))
           for e in range(config.experts)]
    out_mult, out_shift = (int(v) for v in qmodel[f"{p}.mlp.combine"])
    add("moe_combine", lambda: moe_combine_case(
        tag + f"{p}.mlp.combine", top, weights, fc2, config.experts, config.dim, out_mult,
        out_shift,
        expected=(t[f"{p}.mlp.combine.acc"], t[f"{p}.mlp.out"])))


def _expert_tokens(t, p, e):
    tokens = t.get(f"{p}.mlp.experts.{e}.tokens", np.zeros(0, np.int64))
    return [[tokens.size], tokens]


# Random cases ------------------------------------------------------------------------
def random_hw(seed):
    """A small random design point for ``seed``: the linear array of
    :func:`moevit.sim.linear_cases.random_hw` (rows, cols, post lanes, buffers)
    with random attention parameters (score lanes, head width, K/V depth,
    head lanes, row lanes, score packing when the lanes are even); the MoE unit takes its
    sizes from these."""
    from moevit.hw.config import products_width
    from moevit.sim.linear_cases import random_hw as random_array

    rng = np.random.default_rng([len(KERNELS), seed])
    hw = random_array(rng, name=f"random-{seed}")
    lanes = int(rng.choice([1, 2, 4, 8]))
    # The narrowest accumulator that holds max_in products, or wider.
    acc_width = int(rng.integers(products_width(hw.max_in), 33))
    hw = hw.replace(score_lanes=lanes, max_head_dim=lanes * int(rng.integers(1, 9)),
                    kv_depth=int(rng.integers(1, 97)), heads_parallel=int(rng.integers(1, 3)),
                    acc_width=acc_width, row_lanes=int(rng.choice([1, 2, 4])))
    # Drawn last, so the points before it keep their draws.
    return hw.replace(score_packing=int(rng.choice([1, 2]))) if lanes % 2 == 0 else hw


def random_cases(kernel, hw, seed, count, *, max_tokens=None) -> list:
    """``count`` random cases of ``kernel`` for HwConfig ``hw``, drawn from ``(kernel, seed)``.

    ``max_tokens`` caps the sequence length of the attention and the token
    count of the linear and MoE cases (a quick sweep); default: the buffers.
    """
    rng = np.random.default_rng([KERNELS.index(kernel), seed])
    draw = _DRAW[kernel]
    return [draw(rng, hw, f"random seed {seed} #{n}", max_tokens) for n in range(count)]


def _size(rng, limit):
    """A ragged size in 1..limit: often an edge (1, the limit), else uniform."""
    pick = rng.random()
    if pick < 0.15:
        return 1
    if pick < 0.3:
        return limit
    return int(rng.integers(1, limit + 1))


def _int8(rng, shape):
    """int8 values: uniform, or narrow (ties, small sums), or only the extremes, or
    all near one extreme (sums at the edge of their widths: -128 * -128 * n)."""
    kind = rng.integers(4)
    if kind == 0:
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    if kind == 1:
        return rng.integers(-4, 5, size=shape).astype(np.int8)
    if kind == 2:
        return rng.choice(np.array([-128, -127, 0, 126, 127], np.int8), size=shape)
    return (rng.integers(-128, -120, size=shape) if rng.random() < 0.5
            else rng.integers(120, 128, size=shape)).astype(np.int8)


def _requant(rng, magnitude):
    """A (mult, shift) that maps values of about ``magnitude`` near the int8 range
    (so the outputs are not all saturated), sometimes an extreme of the ranges."""
    pick = rng.random()
    if pick < 0.05:
        return int(rng.integers(1, 2**15)), 1
    if pick < 0.1:
        return 2**15 - 1, 47
    if pick < 0.3:
        return _tie_requant(rng, magnitude)
    mult = int(rng.integers(2**14, 2**15))
    shift = 15 + max(int(magnitude).bit_length() - 7, 0) + int(rng.integers(-2, 3))
    return mult, min(max(shift, 1), 47)


def _tie_requant(rng, magnitude):
    """A small odd multiplier and the shortest shift that keeps values of about
    ``magnitude`` near int8: on small values, exact ties are common."""
    mult = int(rng.integers(0, 16)) * 2 + 1
    return mult, min(max((int(magnitude) * mult).bit_length() - 7, 1), 47)


def _gelu_consts(rng):
    scale = 2.0 ** rng.uniform(-8, -1)
    b, c = intops.gelu_constants(scale)
    mult, shift = _requant(rng, 128 * 2 * c)
    return golden.GeluConsts(b, c, mult, shift)


def _draw_linear(rng, hw, label, max_tokens):
    tokens = _size(rng, min(hw.max_tokens, max_tokens or hw.max_tokens))
    n_out = _size(rng, 3 * hw.cols + 5)
    if rng.random() < 0.25:  # small sums, whose short shifts meet exact ties
        n_in = _size(rng, min(8, hw.max_in))
        x, w = (rng.integers(-4, 5, size=shape) for shape in ((tokens, n_in), (n_out, n_in)))
        bias = rng.integers(-16, 17, size=n_out)
    else:
        n_in = _size(rng, hw.max_in)
        x, w = _int8(rng, (tokens, n_in)), _int8(rng, (n_out, n_in))
        bias = rng.integers(-(2**20), 2**20, size=n_out)
    acc = np.abs(x.astype(np.int64) @ w.T.astype(np.int64)).max(axis=0) + np.abs(bias)
    chans = [_requant(rng, magnitude) for magnitude in acc]
    mult, shift = (np.array(v) for v in zip(*chans))
    gelu = _gelu_consts(rng) if rng.random() < 0.5 else None
    skip = residual = None
    if rng.random() < 0.5:
        skip = _int8(rng, (tokens, n_out))
        pick = rng.random()
        if pick < 0.3:  # small multipliers, a short shift: ties
            residual = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        else:
            residual = (int(rng.integers(1, 2**15)), int(rng.integers(1, 2**15)),
                        int(rng.integers(14, 18)) if pick < 0.85 else int(rng.integers(1, 48)))
    return linear_case(label, x, w, bias, mult, shift, gelu, skip, residual)


def _draw_softmax(rng, hw, label, max_tokens):
    n = _size(rng, min(hw.kv_depth, max_tokens or hw.kv_depth))
    rows = int(rng.integers(1, 4))
    span = 2 ** int(rng.integers(2, 32))
    scores = rng.integers(-span, span, size=(rows, n))
    if rng.random() < 0.2:  # the clamp of max(s - max(s), -2**31)
        scores[:, 0], scores[:, -1] = 2**31 - 1, -(2**31)
    mult, shift = intops.softmax_constants(2.0 ** rng.uniform(-20, -2))
    pick = rng.random()
    if pick < 0.2:
        mult, shift = int(rng.integers(1, 2**15)), int(rng.integers(1, 48))
    elif pick < 0.4:  # x = d * 2**k / 2**S: ties, and whole multiples of 2**15 (2**-16 and below)
        mult, shift = 2 ** int(rng.integers(0, 15)), int(rng.integers(1, 4))
        scores = scores >> max(int(span).bit_length() - 12, 0)
    return softmax_case(label, scores, mult, shift)


def _draw_gelu(rng, hw, label, max_tokens):
    q = np.concatenate([np.arange(-128, 128), rng.integers(-128, 128, size=int(rng.integers(0, 64)))])
    q = q.astype(np.int8)
    pick = rng.random()
    if pick < 0.3:  # the constants of an input scale, as the quantizer makes them
        return gelu_case(label, q, _gelu_consts(rng))
    # Constants anywhere in their ranges (2*c >= b*b, c < 2**22), or small ones
    # with a short requantization shift (ties).
    b = int(rng.integers(1, 2897 if pick < 0.65 else 9))
    c = int(rng.integers((b * b + 1) // 2, 2**22 if pick < 0.65 else b * b + 4))
    mult, shift = (_requant if pick < 0.65 else _tie_requant)(rng, 128 * 2 * c)
    return gelu_case(label, q, golden.GeluConsts(b, c, mult, shift))


def _draw_layernorm(rng, hw, label, max_tokens):
    pick = rng.random()
    if pick < 0.25:
        return _layernorm_ties(rng, hw, label)
    dim = _size(rng, min(hw.max_in, 2**10))
    rows = int(rng.integers(1, 5))
    x = _int8(rng, (rows, dim))
    if pick < 0.4:  # the widest rows of -128 but a few: sums at the edge of their widths
        dim = min(hw.max_in, 2**10)
        x = np.full((rows, dim), -128)
        x[:, rng.integers(0, dim, size=3)] = rng.integers(-128, 128, size=(rows, 3))
    eps = int(rng.choice([0, int(rng.integers(0, 2**20)), 2**34 - 1]))
    gamma = rng.integers(-(2**15) + 1, 2**15, size=dim)
    if rng.random() < 0.8:  # n (Q.12, a few units) times gamma back near int8
        shift = int(rng.integers(20, 27))
        beta = rng.integers(-(2**(shift + 7)), 2**(shift + 7), size=dim)
    else:
        shift = int(rng.integers(1, 48))
        beta = rng.integers(-(2**40) + 1, 2**40, size=dim)
    return layernorm_case(label, x, eps, gamma, beta, shift)


def _layernorm_ties(rng, hw, label):
    """One short row whose eps makes sigma = 2**22, so that n = (D*x_i - s1) / 16
    and y = n / 2 (gamma 1, shift 1) both meet exact ties."""
    dim = _size(rng, min(hw.max_in, 16))
    x = rng.integers(-128, 128, size=(1, dim))
    s1, s2 = int(x.sum()), int((x * x).sum())
    eps = 2**32 - (dim * s2 - s1 * s1)  # (v + eps) << 12 = (2**22)**2
    gamma = np.ones(dim, np.int64)
    beta = rng.integers(-2, 3, size=dim)
    return layernorm_case(label, x, eps, gamma, beta, 1)


def _draw_attention(rng, hw, label, max_tokens):
    tokens = _size(rng, min(hw.kv_depth, max_tokens or hw.kv_depth))
    heads = int(rng.integers(1, 4)) * hw.heads_parallel
    head_dim = hw.score_lanes * _size(rng, hw.max_head_dim // hw.score_lanes)
    qkv = _int8(rng, (tokens, 3 * heads * head_dim))
    sm_mult, sm_shift = intops.softmax_constants(2.0 ** rng.uniform(-16, -4))
    out_mult, out_shift = _requant(rng, 128 * 2**15)
    # Half the cases on a range of the query rows (a token chunk's), against every key.
    rows = int(rng.integers(1, tokens + 1)) if rng.random() < 0.5 else tokens
    first = int(rng.integers(0, tokens - rows + 1))
    return attention_case(label, qkv, heads,
                          golden.AttentionConsts(sm_mult, sm_shift, out_mult, out_shift),
                          rows=rows, first=first)


def _draw_moe_gate(rng, hw, label, max_tokens):
    tokens = _size(rng, min(hw.max_tokens, max_tokens or hw.max_tokens))
    experts = _size(rng, min(hw.cols, 255))
    top_k = _size(rng, experts)
    logits = _int8(rng, (tokens, experts))
    mult, shift = intops.softmax_constants(2.0 ** rng.uniform(-8, -2))
    return moe_gate_case(label, logits, top_k, bool(rng.integers(2)), mult, shift)


def _draw_moe_combine(rng, hw, label, max_tokens):
    tokens = _size(rng, min(hw.max_tokens, max_tokens or hw.max_tokens))
    experts = _size(rng, min(hw.cols, 255))
    top_k = _size(rng, experts)
    dim = _size(rng, hw.max_in)
    top = np.argsort(rng.random((tokens, experts)), axis=1)[:, :top_k]
    weights = rng.integers(0, intops.PROB_ONE + 1, size=(tokens, top_k))
    fc2 = [_int8(rng, (int((top == e).any(axis=1).sum()), dim)) for e in range(experts)]
    mult, shift = _requant(rng, 128 * 2**15)
    return moe_combine_case(label, top, weights, fc2, experts, dim, mult, shift)


_DRAW = {"linear": _draw_linear, "softmax": _draw_softmax, "gelu": _draw_gelu,
         "layernorm": _draw_layernorm, "attention": _draw_attention,
         "moe_gate": _draw_moe_gate, "moe_combine": _draw_moe_combine}
