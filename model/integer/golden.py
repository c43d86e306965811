"""The integer golden model: one image, one task, integers only, every tensor named.

:func:`run` executes a :class:`~moevit.model.integer.quantize.QuantizedModel` on one
image for one task with the units of :mod:`moevit.model.integer.intops` (numpy
integers; no float touches an activation after the input is quantized). The
MoE layers run M³ViT's computation reordering: only the task's gate runs,
and expert by expert, each selected expert gathers its tokens and runs once;
experts that no token selected do not run. RTL, HLS C++ and the host driver
are checked against these tensors bit for bit.

Tensor names (``i`` block, ``h`` head, ``e`` expert, ``t`` the task's index)
----------------------------------------------------------------------------
=======================================  ===========  ==================================
name                                     dtype        shape / meaning
=======================================  ===========  ==================================
``input``                                int8         (C, H, W) image, ``scale.input``
``patch_embed.in``                       int8         (P, C*p*p) patches, (chan, row, col) order
``patch_embed.out``                      int8         (P, D)
``embed.out``                            int8         (T, D): class token, then patches + position
``blocks.{i}.norm1.out``                 int8         (T, D)
``blocks.{i}.attn.qkv.out``              int8         (T, 3D): [q | k | v], each D = heads x head_dim
``blocks.{i}.attn.scores.h{h}``          int32        (T, T): q_h . k_h (int32 accumulator)
``blocks.{i}.attn.probs.h{h}``           int32        (T, T): softmax, Q0.15 in [0, 2**15]
``blocks.{i}.attn.ctx``                  int8         (T, D): heads' probs . v_h, concatenated
``blocks.{i}.attn.proj.out``             int8         (T, D)
``blocks.{i}.add1.out``                  int8         (T, D): input + attention
``blocks.{i}.norm2.out``                 int8         (T, D)
dense blocks:
``blocks.{i}.mlp.fc1.pre``               int8         (T, hidden): before GELU
``blocks.{i}.mlp.fc1.out``               int8         (T, hidden): after GELU
``blocks.{i}.mlp.fc2.out``               int8         (T, D)
MoE blocks:
``blocks.{i}.mlp.gate.logits``           int8         (T, E): task t's gate
``blocks.{i}.mlp.gate.topk``             int64        (T, k): experts, best first (ties: lowest index)
``blocks.{i}.mlp.gate.probs``            int32        (T, E): ``"vmoe"`` gate only: Q0.15 softmax
                                                      over the E logits
``blocks.{i}.mlp.gate.weights``          int32        (T, k): Q0.15 weights of the selected experts:
                                                      ``"vmoe"``, their ``gate.probs``;
                                                      ``"renorm"``, the softmax over the k logits
``blocks.{i}.mlp.experts.{e}.tokens``    int64        (n_e,): the tokens routed to e, ascending
``blocks.{i}.mlp.experts.{e}.fc1.pre``   int8         (n_e, hidden) (only experts that ran)
``blocks.{i}.mlp.experts.{e}.fc1.out``   int8         (n_e, hidden)
``blocks.{i}.mlp.experts.{e}.fc2.out``   int8         (n_e, D)
``blocks.{i}.mlp.combine.acc``           int64        (T, D): sum_k weight x expert output (int32 range)
both:
``blocks.{i}.mlp.out``                   int8         (T, D)
``blocks.{i}.add2.out``                  int8         (T, D): the block's output
``norm.out``                             int8         (T, D)
``heads.{t}.out``                        int8         (P, classes*p*p), features (class, row, col)
``heads.{t}.map``                        int8         (classes, H, W): pixel-shuffled
=======================================  ===========  ==================================

(``P`` patches, ``T = P + 1`` tokens, ``D`` dim.) The real value of an int8
tensor is ``value * qmodel.scale(name)``: every int8 tensor above has its
``scale.<name>`` in the quantized model except three: the thirds of
``attn.qkv.out`` have ``blocks.{i}.attn.q``, ``.k`` and ``.v``;
``mlp.gate.logits`` has ``blocks.{i}.mlp.gates.{t}.out`` (one per task);
``heads.{t}.map`` has ``heads.{t}.out`` (and ``patch_embed.in``, ``input``).

Each linear layer that ran is also recorded as a :class:`LinearRecord`
(name as in :func:`~moevit.model.integer.quantize.linear_names`, its int8 input and
output and its constants), so a hardware test can replay every linear layer
with :func:`linear`.
"""

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from moevit.errors import check_finite
from moevit.model.integer import intops
from moevit.model.integer.intops import QuantizationError

__all__ = [
    "GeluConsts",
    "AttentionConsts",
    "HeadResult",
    "LinearRecord",
    "GoldenResult",
    "linear",
    "attention_head",
    "quantize_image",
    "run",
    "predict",
]


class GeluConsts(NamedTuple):
    """A linear layer's fused GELU: :func:`intops.gelu` ``(b, c)`` then :func:`intops.requantize` ``(mult, shift)``."""

    b: int
    c: int
    mult: int
    shift: int


class AttentionConsts(NamedTuple):
    """Softmax ``(softmax_mult, softmax_shift)`` of the scores and requantize
    ``(ctx_mult, ctx_shift)`` of probs x V."""

    softmax_mult: int
    softmax_shift: int
    ctx_mult: int
    ctx_shift: int


class HeadResult(NamedTuple):
    scores: np.ndarray  # int32 (T, T)
    probs: np.ndarray  # Q0.15 (T, T)
    out: np.ndarray  # int8 (T, head_dim)


@dataclass
class LinearRecord:
    """One linear layer as it ran: ``out = linear(x, weight, bias, mult, shift, gelu)``."""

    name: str
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    gelu: Optional[GeluConsts]
    out: np.ndarray
    pre: Optional[np.ndarray] = None  # int8 before the fused GELU


@dataclass
class GoldenResult:
    """What :func:`run` returns."""

    task: int
    output: np.ndarray  # heads.{t}.map, int8 (classes, H, W)
    prediction: np.ndarray  # the map in the target's unit (float64)
    tensors: dict = field(default_factory=dict)
    linears: list = field(default_factory=list)


def linear(x, w, b, mult, shift, gelu=None, *, return_pre=False):
    """The integer linear layer, optionally with a fused GELU.

    ``y = requantize(x @ w.T + b, mult, shift)`` (per output channel); with
    ``gelu`` (a :class:`GeluConsts`), ``y = requantize(gelu(y, b, c), gm, gs)``.
    ``x`` int8 (N, I), ``w`` int8 (O, I), ``b`` int32 (O,), ``mult``/``shift``
    (O,). Returns int8 (N, O); with ``return_pre`` also the int8 before GELU.
    """
    pre = intops.requantize(intops.linear_acc(x, w, b), mult, shift)
    if gelu is None:
        return (pre, pre) if return_pre else pre
    out = intops.requantize(intops.gelu(pre, gelu.b, gelu.c), gelu.mult, gelu.shift)
    return (out, pre) if return_pre else out


def attention_head(q, k, v, consts: AttentionConsts) -> HeadResult:
    """One attention head: ``scores = q . k^T`` (int32), ``probs =
    softmax(scores)`` (Q0.15, one reciprocal per row), ``out =
    requantize(probs . v)`` (int8). ``q``, ``k``, ``v`` int8 (T, head_dim)."""
    scores = intops.linear_acc(q, k)
    probs = intops.softmax(scores, consts.softmax_mult, consts.softmax_shift)
    out = intops.requantize(intops.weighted_sum(probs, v), consts.ctx_mult, consts.ctx_shift)
    return HeadResult(scores.astype(np.int32), probs, out)


def quantize_image(image, scale):
    """``clip8(floor(image / scale + 1/2))``: the host's float -> int8 step."""
    return np.clip(np.floor(np.asarray(image, np.float64) / scale + 0.5), -128, 127).astype(np.int8)


def _pair(array):
    return int(array[0]), int(array[1])


class _Runner:
    def __init__(self, qmodel, record):
        self.q = qmodel
        self.record = record
        self.tensors = {}
        self.linears = []

    def keep(self, name, value):
        if self.record:
            self.tensors[name] = value
        return value

    def linear(self, name, x, out_name=None):
        q = self.q
        gelu = None
        if f"{name}.gelu" in q.arrays:
            gelu = GeluConsts(*(int(v) for v in q[f"{name}.gelu"]))
        w, b, mult, shift = (q[f"{name}.{part}"] for part in ("weight", "bias", "mult", "shift"))
        out, pre = linear(x, w, b, mult, shift, gelu, return_pre=True)
        if self.record:
            self.linears.append(LinearRecord(name, x, w, b, mult, shift, gelu, out, pre if gelu else None))
            if gelu is not None:
                self.keep(f"{name}.pre", pre)
            self.keep(out_name or f"{name}.out", out)
        return out

    def layernorm(self, name, x):
        q = self.q
        y = intops.layernorm(x, int(q[f"{name}.eps"]), q[f"{name}.gamma"], q[f"{name}.beta"], int(q[f"{name}.shift"]))
        return self.keep(f"{name}.out", y)

    def residual(self, name, a, b):
        ma, mb, shift = (int(v) for v in self.q[name])
        return self.keep(f"{name}.out", intops.residual_add(a, b, ma, mb, shift))

    def attention(self, p, x):
        config = self.q.config
        d, hd = config.dim, config.head_dim
        qkv = self.linear(f"{p}.attn.qkv", x)
        consts = AttentionConsts(*_pair(self.q[f"{p}.attn.softmax"]), *_pair(self.q[f"{p}.attn.ctx"]))
        outs = []
        for h in range(config.heads):
            cols = slice(h * hd, (h + 1) * hd)
            head = attention_head(qkv[:, cols], qkv[:, d:][:, cols], qkv[:, 2 * d :][:, cols], consts)
            self.keep(f"{p}.attn.scores.h{h}", head.scores)
            self.keep(f"{p}.attn.probs.h{h}", head.probs)
            outs.append(head.out)
        ctx = self.keep(f"{p}.attn.ctx", np.concatenate(outs, axis=1))
        return self.linear(f"{p}.attn.proj", ctx)

    def moe(self, p, x, task):
        q, config = self.q, self.q.config
        logits = self.linear(f"{p}.mlp.gates.{task}", x, f"{p}.mlp.gate.logits")
        top = self.keep(f"{p}.mlp.gate.topk", intops.topk(logits, config.top_k))
        mult, shift = _pair(q[f"{p}.mlp.gate.softmax"][task])
        if config.gate == "vmoe":  # the softmax over all E logits; the selected keep theirs
            probs = self.keep(f"{p}.mlp.gate.probs", intops.softmax(logits, mult, shift))
            weights = np.take_along_axis(probs, top, axis=1)
        else:  # "renorm": the softmax over the k selected logits
            weights = intops.softmax(np.take_along_axis(logits.astype(np.int64), top, axis=1), mult, shift)
        self.keep(f"{p}.mlp.gate.weights", weights)
        selected = np.zeros((x.shape[0], config.top_k, config.dim), np.int8)
        for e in range(config.experts):
            tokens, slots = np.nonzero(top == e)  # tokens ascending; a token picks e at most once
            if tokens.size == 0:
                continue  # an expert no token selected does not run
            self.keep(f"{p}.mlp.experts.{e}.tokens", tokens)
            hidden = self.linear(f"{p}.mlp.experts.{e}.fc1", x[tokens])
            selected[tokens, slots] = self.linear(f"{p}.mlp.experts.{e}.fc2", hidden)
        acc = self.keep(f"{p}.mlp.combine.acc", intops.weighted_sum(weights[:, None, :], selected)[:, 0])
        return intops.requantize(acc, *_pair(q[f"{p}.mlp.combine"]))

    def forward(self, image, task):
        q, config = self.q, self.q.config
        channels, (height, width), patch = config.in_chans, config.image_size, config.patch
        grid_h, grid_w = config.grid
        patches = image.reshape(channels, grid_h, patch, grid_w, patch).transpose(1, 3, 0, 2, 4)
        patches = self.keep("patch_embed.in", patches.reshape(config.patches, config.patch_dim))
        pe = self.linear("patch_embed.proj", patches, "patch_embed.out")
        ma, mb, shift = (int(v) for v in q["embed.add"])
        x = np.concatenate([q["cls"][None, :], intops.residual_add(pe, q["pos_embed"], ma, mb, shift)])
        self.keep("embed.out", x)
        for i in range(config.depth):
            p = f"blocks.{i}"
            add1 = self.residual(f"{p}.add1", x, self.attention(p, self.layernorm(f"{p}.norm1", x)))
            h = self.layernorm(f"{p}.norm2", add1)
            if config.is_moe(i):
                mlp = self.moe(p, h, task)
            else:
                mlp = self.linear(f"{p}.mlp.fc2", self.linear(f"{p}.mlp.fc1", h))
            self.keep(f"{p}.mlp.out", mlp)
            x = self.residual(f"{p}.add2", add1, mlp)
        x = self.layernorm("norm", x)
        out = self.linear(f"heads.{task}", x[1:])
        classes = config.tasks[task].classes
        grid = out.reshape(grid_h, grid_w, classes, patch, patch).transpose(2, 0, 3, 1, 4)
        return self.keep(f"heads.{task}.map", grid.reshape(classes, height, width))


def run(qmodel, image, task, *, record=True) -> GoldenResult:
    """Run the integer model on one image for one task.

    Parameters
    ----------
    qmodel : QuantizedModel
    image : array (C, H, W)
        A float image (normalised as the float model's input; quantized with
        :func:`quantize_image` at ``scale.input``) or an int8 image.
    task : str or int
        A task of the model's config.
    record : bool
        Keep every intermediate tensor and linear layer (default); False
        keeps only the output (for timing).

    Returns
    -------
    GoldenResult
    """
    config = qmodel.config
    task = config.task_index(task)
    image = np.asarray(image)
    expected = (config.in_chans, *config.image_size)
    if image.shape != expected:
        raise QuantizationError(f"Image of shape {image.shape} does not fit model {config.name!r}; expected {expected}")
    if image.dtype != np.int8:
        if not np.issubdtype(image.dtype, np.floating):
            raise QuantizationError(f"Image must be float or int8, not {image.dtype}")
        check_finite("Image", image)
        image = quantize_image(image, qmodel.scale("input"))
    runner = _Runner(qmodel, record)
    runner.keep("input", image)
    output = runner.forward(image, task)
    prediction = output * qmodel.scale(f"heads.{task}.out")
    return GoldenResult(task, output, prediction, runner.tensors, runner.linears)


def predict(qmodel, images, task) -> np.ndarray:
    """The golden model's predictions for a batch of images, in the target's unit.

    Parameters
    ----------
    qmodel : QuantizedModel
    images : array or tensor (B, C, H, W)
        Float images (normalised as the float model's input) or int8 images.
    task : str or int
        A task name or index (any integer type: see ``ModelConfig.task_index``).

    Returns
    -------
    ndarray float64 (B, classes, H, W)
        Class scores (``semseg``) or depth (``depth``), as :attr:`GoldenResult.prediction`.
    """
    config = qmodel.config
    task = config.task_index(task)
    images = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    expected = (config.in_chans, *config.image_size)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise QuantizationError(
            f"Images of shape {images.shape} do not fit model {config.name!r}; expected (batch, {', '.join(map(str, expected))})"
        )
    predictions = [run(qmodel, image, task, record=False).prediction for image in images]
    classes = config.tasks[task].classes
    return np.stack(predictions) if predictions else np.zeros((0, classes, *config.image_size))
