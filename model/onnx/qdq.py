"""The quantized model as a QDQ ONNX graph, and its distance from the golden model.

:func:`export_qdq` writes a :class:`~moevit.model.integer.quantize.QuantizedModel`
as a standard ONNX graph (opset :data:`~moevit.model.onnx.export.OPSET`) in
the QDQ form that ONNX Runtime, TensorRT and other tools read: every int8
tensor of the golden model (:mod:`moevit.model.integer.golden`, same names) is the
output of a ``QuantizeLinear`` at that tensor's calibrated scale
(``scale.<name>`` of the quantized file), and each consumer reads it through
a ``DequantizeLinear``. The integer layers keep their integer data:

- a linear layer is ``Gemm`` (``Conv`` for the patch embedding) of
  ``DequantizeLinear`` inputs: int8 weights per output channel, int32 biases
  at the accumulator's scale. The file stores the requantization ``(M, S)``,
  not the weight scales; the weight scale of channel ``o`` is taken as
  ``M[o] / 2**S[o] * S_out / S_in``, so that ``Gemm`` then ``QuantizeLinear``
  compute ``round(acc * M / 2**S)``: the golden model's requantization, with
  round-half-to-even instead of round-half-up and float32 instead of exact
  integer arithmetic;
- routing is the float graph's (``TopK`` on the dequantized int8 logits, so
  equal logits tie exactly and the lower expert index wins, as in
  :func:`~moevit.model.integer.intops.topk`; the gate weights by the config's rule,
  as the golden model: ``"vmoe"``, ``Softmax`` over the E logits then
  ``GatherElements`` of the selected, ``"renorm"``, ``Softmax`` over the k
  selected; then one ``NonZero``/``Gather``/``ScatterND`` subgraph per
  expert, gathering int8 tokens).

The non-linear units run in float in ONNX Runtime: erf GELU (the golden model:
I-BERT's polynomial, within 0.0185 + 0.1 S), ``Softmax`` for attention and
gate weights (the golden model: a shift-and-polynomial exponent and Q0.15
probabilities), ``LayerNormalization`` with gamma, beta and epsilon read back
from the integer constants (the golden model: integer mean, variance and
square root), residual adds in float (the golden model: two 15-bit
multipliers). Their outputs are quantized at the same scales, so a
difference shows as a few int8 steps, and it can grow through the blocks.
Even the integer layers are not always bit-equal: ``Gemm`` or ``Conv`` in
float32 then ``QuantizeLinear`` (round half to even) lands on the other side
of a .5 now and then (``patch_embed.out``: 1 step on 1 entry in 150 000).

Routing flips. Both select experts on their own int8 gate logits, computed
from ``norm2.out``, which already differs by a step here and there. A token
whose k-th and (k+1)-th logits are a step or two apart can then select
another expert in the graph than in the golden model (a *flip*; it is the
selection that flips, on the logits, not the softmax after it). That token's
MoE output is another expert's, with another weight: its row differs by up
to 18 steps at ``mlp.out``, the difference passes through the later blocks
(and, weakly, to the other tokens through attention), and the outputs of
its patch can be anywhere (measured up to 114 steps). So the graph's
distance is stated as :data:`QDQ_BOUNDS`: bounds on the outputs of the tokens
routed alike in every MoE layer, and on the fraction of tokens that flip;
:func:`compare_with_golden` measures both.
Graph inputs and outputs: ``images`` float32 (1, in_chans, height, width),
quantized at ``scale.input``; ``prediction_int8`` int8 (1, classes, height,
width), the golden model's ``heads.{t}.map``; ``prediction`` float32, the
same dequantized. Every golden int8 tensor name is a value of the graph, so
:func:`compare_with_golden` can also read intermediate tensors.
"""

from dataclasses import dataclass

import numpy as np

from moevit.errors import ConfigError

__all__ = ["export_qdq", "compare_with_golden", "qdq_tensor_names", "QdqBounds", "QDQ_BOUNDS"]


@dataclass(frozen=True)
class QdqBounds:
    """How far a QDQ graph's int8 prediction may be from the golden model's.

    Attributes
    ----------
    max_steps_alike : int
        Largest difference, in int8 steps, on the outputs of tokens routed
        alike (the same experts as the golden model in every MoE layer).
    mean_steps_alike : float
        Mean difference on those outputs.
    min_routing_agreement : float
        Smallest fraction of tokens routed alike.
    mean_steps : float
        Mean difference on all outputs, flipped tokens included (their own
        largest difference is not bounded).
    """

    max_steps_alike: int
    mean_steps_alike: float
    min_routing_agreement: float
    mean_steps: float

    def violations(self, row) -> list:
        """What in a :func:`compare_with_golden` prediction row exceeds the bounds (empty: none)."""
        found = []
        if row["max_steps_alike"] > self.max_steps_alike:
            found.append(f"{row['max_steps_alike']} steps on a token routed alike (bound {self.max_steps_alike:g})")
        if row["mean_steps_alike"] > self.mean_steps_alike:
            found.append(f"mean {row['mean_steps_alike']:.3f} steps on tokens routed alike "
                         f"(bound {self.mean_steps_alike})")
        if row["routing_agreement"] < self.min_routing_agreement:
            found.append(f"{row['routing_agreement']:.1%} of tokens routed alike "
                         f"(bound {self.min_routing_agreement:.0%})")
        if row["mean_steps"] > self.mean_steps:
            found.append(f"mean {row['mean_steps']:.3f} steps (bound {self.mean_steps})")
        return found


#: The stated distance of a QDQ graph from the golden model, the default
#: tolerance of ``moevit check-onnx`` for QDQ graphs. Measured image by image
#: (:func:`compare_with_golden` on one image; 1176 image-task runs), the
#: extremes over the runs of each kind (depth / semseg):
#:
#: - the trained ``tiny`` (``make demo``, V-MoE gate) on its 256 validation
#:   scenes: largest difference 36 / 41 steps, but 6 / 18 on the tokens routed
#:   alike, mean there at most 0.56 / 1.95; 68 % to 100 % of tokens routed
#:   alike; mean over all outputs at most 1.27 / 2.97;
#: - the same on 256 standard-normal images (as ``check-onnx`` draws): 82 /
#:   114 steps, 22 / 20 on tokens routed alike, mean there at most 1.03 / 1.91;
#:   at least 77 % / 78 % routed alike; mean at most 2.65 / 3.45;
#: - random weights (``tests/test_model_onnx.py``'s models), standard-normal
#:   images: ``tiny`` (64 images) at most 5 steps anywhere, at least 83 %
#:   routed alike; ``edge-moe`` (12 images, 6 MoE layers) at most 7 steps,
#:   at least 57 % routed alike, mean at most 1.21.
#:
#: The bounds leave about 25 % over the worst of these.
QDQ_BOUNDS = QdqBounds(max_steps_alike=28, mean_steps_alike=2.5, min_routing_agreement=0.5, mean_steps=4.5)

_FLOAT, _INT8, _INT32, _INT64 = 1, 3, 6, 7


class _Graph:
    """A small builder of one ONNX graph: nodes, named initializers, unique names."""

    def __init__(self):
        self.nodes, self.initializers, self.names = [], {}, set()

    def unique(self, base):
        name, number = base, 0
        while name in self.names:
            number += 1
            name = f"{base}_{number}"
        self.names.add(name)
        return name

    def init(self, name, array):
        """An initializer (weights, scales, constants); the same name is made once."""
        from onnx import numpy_helper

        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
            self.names.add(name)
        return name

    def const(self, values, dtype=np.int64):
        array = np.asarray(values, dtype)
        key = f"const.{array.dtype}.{'_'.join(str(v) for v in array.reshape(-1).tolist())}.{array.ndim}"
        return self.init(key, array)

    def op(self, op_type, inputs, *, out=None, outputs=1, **attrs):
        from onnx import helper

        names = [self.unique(out or op_type.lower())] if outputs == 1 else [
            self.unique(f"{out or op_type.lower()}.{i}") for i in range(outputs)
        ]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.unique(f"node.{names[0]}"), **attrs))
        return names[0] if outputs == 1 else names


class _Builder:
    """Writes the QDQ graph of one task, following :mod:`moevit.model.integer.golden`."""

    def __init__(self, qmodel, task):
        self.q = qmodel
        self.config = qmodel.config
        self.task = task
        self.g = _Graph()
        self.zero8 = self.g.init("zero.int8", np.array(0, np.int8))

    # quantization ----------------------------------------------------------
    def scale(self, tensor):
        return self.g.init(f"scale.{tensor}", np.array(self.q.scale(tensor), np.float32))

    def zero(self, channels=None):
        """The int8 zero point: a scalar, or ``channels`` zeros for a per-axis scale."""
        if channels is None:
            return self.zero8
        return self.g.init(f"zero.int8.{channels}", np.zeros(channels, np.int8))

    def quantize(self, x, tensor, scale=None, axis=None, channels=None):
        """``QuantizeLinear`` at ``scale.<tensor>``; the output is named ``tensor``."""
        attrs = {} if axis is None else {"axis": axis}
        zero = self.zero(channels)
        return self.g.op("QuantizeLinear", [x, scale or self.scale(tensor), zero], out=tensor, **attrs)

    def dequantize(self, x, tensor, scale=None, axis=None):
        attrs = {} if axis is None else {"axis": axis}
        return self.g.op("DequantizeLinear", [x, scale or self.scale(tensor), self.zero8], out=f"{tensor}.dq", **attrs)

    def linear(self, name, x, in_tensor, out_tensor, *, conv=False, out_scales=None, value=None):
        """Integer linear layer ``name`` on int8 ``x`` → int8 named ``out_tensor``.

        ``out_scales``: per-channel output scales (the qkv layer's thirds);
        default ``scale.<out_tensor>``.
        """
        q, g = self.q, self.g
        weight, bias = q[f"{name}.weight"], q[f"{name}.bias"]
        ratio = q[f"{name}.mult"].astype(np.float64) / np.exp2(q[f"{name}.shift"].astype(np.float64))
        s_in = q.scale(in_tensor)
        s_out = np.full(weight.shape[0], q.scale(out_tensor)) if out_scales is None else out_scales
        w_scale = ratio * s_out / s_in  # makes Gemm + QuantizeLinear compute round(acc * M / 2**S)
        if conv:
            weight = weight.reshape(weight.shape[0], self.config.in_chans, self.config.patch, self.config.patch)
        w = g.op("DequantizeLinear", [g.init(f"{name}.weight", weight),
                                      g.init(f"scale.{name}.weight", w_scale.astype(np.float32))],
                 out=f"{name}.weight.dq", axis=0)
        inputs = [self.dequantize(x, in_tensor), w]
        if ".mlp.gates." not in name:  # the float gates have no bias (the quantized one is 0)
            inputs.append(g.op("DequantizeLinear", [g.init(f"{name}.bias", bias),
                                                    g.init(f"scale.{name}.bias", (w_scale * s_in).astype(np.float32))],
                               out=f"{name}.bias.dq", axis=0))
        if conv:
            y = g.op("Conv", inputs, out=f"{name}.acc", strides=[self.config.patch] * 2)
        else:
            y = g.op("Gemm", inputs, out=f"{name}.acc", transB=1)
        if out_scales is None:
            return self.quantize(y, value or out_tensor, scale=self.scale(out_tensor))
        scale = g.init(f"scale.{out_tensor}", np.asarray(out_scales, np.float32))
        return self.quantize(y, out_tensor, scale=scale, axis=1, channels=len(out_scales))

    def gelu(self, x_float):
        g = self.g
        inner = g.op("Erf", [g.op("Mul", [x_float, g.const(2.0**-0.5, np.float32)])])
        return g.op("Mul", [g.op("Mul", [x_float, g.const(0.5, np.float32)]),
                            g.op("Add", [inner, g.const(1.0, np.float32)])])

    def linear_gelu(self, name, x, in_tensor, pre_tensor, out_tensor):
        pre = self.linear(name, x, in_tensor, pre_tensor)
        return self.quantize(self.gelu(self.dequantize(pre, pre_tensor)), out_tensor)

    def layernorm(self, name, x, in_tensor):
        """Float LayerNormalization with gamma, beta and epsilon read back from the integers."""
        q, g = self.q, self.g
        s_in, s_out = q.scale(in_tensor), q.scale(f"{name}.out")
        shift = float(2.0 ** int(q[f"{name}.shift"]))
        gamma = q[f"{name}.gamma"].astype(np.float64) * s_out * 2.0**12 / shift
        beta = q[f"{name}.beta"].astype(np.float64) * s_out / shift
        eps = int(q[f"{name}.eps"]) * s_in * s_in / self.config.dim**2
        y = g.op("LayerNormalization", [self.dequantize(x, in_tensor), g.init(f"{name}.weight", gamma.astype(np.float32)),
                                        g.init(f"{name}.bias", beta.astype(np.float32))],
                 out=f"{name}.float", axis=-1, epsilon=float(max(eps, 1e-30)))
        return self.quantize(y, f"{name}.out")

    def residual(self, name, a, a_tensor, b, b_tensor, out_tensor=None):
        """Float add of two int8 tensors, quantized at ``scale.<out_tensor>`` (default ``name.out``)."""
        total = self.g.op("Add", [self.dequantize(a, a_tensor), self.dequantize(b, b_tensor)])
        scale = self.scale(out_tensor) if out_tensor else None
        return self.quantize(total, f"{name}.out", scale=scale)

    # blocks ------------------------------------------------------------------
    def attention(self, p, x):
        config, g, q = self.config, self.g, self.q
        d, heads, hd, tokens = config.dim, config.heads, config.head_dim, config.tokens
        thirds = np.repeat([q.scale(f"{p}.attn.{part}") for part in "qkv"], d)
        qkv = self.linear(f"{p}.attn.qkv", x, f"{p}.norm1.out", f"{p}.attn.qkv.out", out_scales=thirds)
        qkv = g.op("DequantizeLinear", [qkv, f"scale.{p}.attn.qkv.out", self.zero(3 * d)], out=f"{p}.attn.qkv.dq", axis=1)
        qkv = g.op("Transpose", [g.op("Reshape", [qkv, g.const([tokens, 3, heads, hd])])], perm=[1, 2, 0, 3])
        parts = g.op("Split", [qkv, g.const([1, 1, 1])], axis=0, outputs=3)
        qh, kh, vh = (g.op("Squeeze", [part, g.const([0])]) for part in parts)  # (heads, T, hd)
        scores = g.op("MatMul", [qh, g.op("Transpose", [kh], perm=[0, 2, 1])], out=f"{p}.attn.scores")
        scores = g.op("Mul", [scores, g.const(hd**-0.5, np.float32)])
        probs = g.op("Softmax", [scores], out=f"{p}.attn.probs", axis=-1)
        ctx = g.op("MatMul", [probs, vh])  # (heads, T, hd)
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[1, 0, 2]), g.const([tokens, d])])
        ctx = self.quantize(ctx, f"{p}.attn.ctx")
        return self.linear(f"{p}.attn.proj", ctx, f"{p}.attn.ctx", f"{p}.attn.proj.out")

    def moe(self, p, x):
        from onnx import helper

        config, g, t = self.config, self.g, self.task
        logits = self.linear(f"{p}.mlp.gates.{t}", x, f"{p}.norm2.out", f"{p}.mlp.gates.{t}.out")
        logits = self.g.op("Identity", [logits], out=f"{p}.mlp.gate.logits")  # the golden model's name
        logits = self.dequantize(logits, f"{p}.mlp.gates.{t}.out")
        values, indices = (g.unique(f"{p}.mlp.gate.top_logits"), g.unique(f"{p}.mlp.gate.topk"))
        g.nodes.append(helper.make_node("TopK", [logits, g.const([config.top_k])], [values, indices],
                                        name=g.unique(f"node.{indices}"), axis=-1, largest=1, sorted=1))
        if config.gate == "vmoe":  # the softmax over all E logits; the selected keep theirs
            probs = g.op("Softmax", [logits], out=f"{p}.mlp.gate.probs", axis=-1)
            weights = g.op("GatherElements", [probs, indices], out=f"{p}.mlp.gate.weights", axis=-1)
        else:  # "renorm": the softmax over the k selected logits
            weights = g.op("Softmax", [values], out=f"{p}.mlp.gate.weights", axis=-1)
        out = g.op("Mul", [self.dequantize(x, f"{p}.norm2.out"), g.const(0.0, np.float32)])  # zeros (T, D)
        axis1 = g.const([1])
        for e in range(config.experts):
            q = f"{p}.mlp.experts.{e}"
            pairs = g.op("NonZero", [g.op("Equal", [indices, g.const(e)])], out=f"{q}.pairs")
            rows = g.op("Gather", [pairs, g.const(0)], out=f"{q}.tokens", axis=0)
            gate = g.op("GatherND", [weights, g.op("Transpose", [pairs], perm=[1, 0])])
            xe = g.op("Gather", [x, rows], out=f"{q}.in", axis=0)  # int8 tokens
            # the experts' tensors share their layer's scales (quantize.py)
            hidden = self.linear(f"{q}.fc1", xe, f"{p}.norm2.out", f"{q}.fc1.pre")
            hidden = self.quantize(self.gelu(self.dequantize(hidden, f"{q}.fc1.pre")), f"{q}.fc1.out")
            y = self.linear(f"{q}.fc2", hidden, f"{q}.fc1.out", f"{q}.fc2.out")
            y = g.op("Mul", [self.dequantize(y, f"{q}.fc2.out"), g.op("Unsqueeze", [gate, axis1])])
            out = g.op("ScatterND", [out, g.op("Unsqueeze", [rows, axis1]), y], reduction="add")
        return self.quantize(out, f"{p}.mlp.out")

    def build(self):
        from onnx import helper

        config, g, t = self.config, self.g, self.task
        channels, (height, width), patch = config.in_chans, config.image_size, config.patch
        grid_h, grid_w = config.grid
        image = self.quantize("images", "input")
        pe = self.linear("patch_embed.proj", image, "input", "patch_embed.out", conv=True, value="patch_embed.map")
        pe = g.op("Reshape", [pe, g.const([config.dim, config.patches])])  # (1, D, gh, gw) -> (P, D)
        pe = g.op("Transpose", [pe], perm=[1, 0], out="patch_embed.out")
        patches = self.residual("embed.add", pe, "patch_embed.out", g.init("pos_embed", self.q["pos_embed"]), "pos_embed", "embed.out")
        x = g.op("Concat", [g.init("cls", self.q["cls"][None, :]), patches], out="embed.out", axis=0)
        x_tensor = "embed.out"
        for i in range(config.depth):
            p = f"blocks.{i}"
            h = self.layernorm(f"{p}.norm1", x, x_tensor)
            add1 = self.residual(f"{p}.add1", x, x_tensor, self.attention(p, h), f"{p}.attn.proj.out")
            h = self.layernorm(f"{p}.norm2", add1, f"{p}.add1.out")
            if config.is_moe(i):
                mlp = self.moe(p, h)
            else:
                hidden = self.linear_gelu(f"{p}.mlp.fc1", h, f"{p}.norm2.out", f"{p}.mlp.fc1.pre", f"{p}.mlp.fc1.out")
                mlp = self.linear(f"{p}.mlp.fc2", hidden, f"{p}.mlp.fc1.out", f"{p}.mlp.out")
            x = self.residual(f"{p}.add2", add1, f"{p}.add1.out", mlp, f"{p}.mlp.out")
            x_tensor = f"{p}.add2.out"
        x = self.layernorm("norm", x, x_tensor)
        x = g.op("Slice", [x, g.const([1]), g.const([config.tokens]), g.const([0])])  # patch tokens
        out = self.linear(f"heads.{t}", x, "norm.out", f"heads.{t}.out")
        classes = config.tasks[t].classes
        out = g.op("Reshape", [out, g.const([grid_h, grid_w, classes, patch, patch])])
        out = g.op("Transpose", [out], perm=[2, 0, 3, 1, 4])
        out_q = g.op("Reshape", [out, g.const([1, classes, height, width])], out="prediction_int8")
        out_f = g.op("DequantizeLinear", [out_q, self.scale(f"heads.{t}.out"), self.zero8], out="prediction")
        graph = helper.make_graph(
            g.nodes,
            f"moevit_{config.name}_{config.task_names[t]}_qdq",
            [helper.make_tensor_value_info("images", _FLOAT, [1, channels, height, width])],
            [helper.make_tensor_value_info(out_f, _FLOAT, [1, classes, height, width]),
             helper.make_tensor_value_info(out_q, _INT8, [1, classes, height, width])],
            initializer=list(g.initializers.values()),
        )
        return graph


def export_qdq(qmodel, task, path, *, source: str = "unknown"):
    """Write the QDQ graph of ``qmodel`` for ``task`` (a name or index) to ``path``.

    ``source`` (the quantized file's path) is stored in the metadata with the
    quantized model's checksum. Returns the path.
    """
    from onnx import helper

    from moevit.model.onnx.check import ANY_TASK
    from moevit.model.onnx.export import OPSET, finish_graph, graph_metadata

    config = qmodel.config
    if task == ANY_TASK:
        raise ConfigError("QDQ graphs are exported per task, not 'any' (the float graph takes the task as an input)")
    t = config.task_index(task)
    graph = _Builder(qmodel, t).build()
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 10
    metadata = graph_metadata(config, config.task_names[t], "qdq", f"quantized {source}", qmodel.checksum()[:16])
    doc = (
        f"moevit {config.name!r} quantized MoE-ViT (QDQ), task {config.task_names[t]!r}: images float32 "
        f"(1, {config.in_chans}, {config.image_size[0]}, {config.image_size[1]}) -> prediction float32 and "
        "prediction_int8 (the golden model's heads map); non-linear units in float"
    )
    return finish_graph(proto, path, metadata, doc)


def qdq_tensor_names(proto) -> set:
    """The golden model's int8 tensor names that are values of a QDQ graph."""
    return {node.output[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"}


def _steps_row(task, name, steps):
    counts = np.bincount(steps.reshape(-1))
    return {
        "task": task,
        "output": name,
        "shape": list(steps.shape[1:]),
        "images": int(steps.shape[0]),
        "max_steps": int(steps.max()),
        "mean_steps": float(steps.mean()),
        "equal_fraction": float(counts[0] / steps.size),
        "steps_histogram": {int(k): int(v) for k, v in enumerate(counts) if v},
    }


def _routed_alike(config, golden_tensors, onnx_topk):
    """Per token, whether its set of selected experts is the golden model's in every MoE layer."""
    alike = np.ones(config.tokens, bool)
    for block, got in zip(config.moe_blocks, onnx_topk):
        expected = golden_tensors[f"blocks.{block}.mlp.gate.topk"]
        alike &= np.all(np.sort(got, axis=1) == np.sort(expected, axis=1), axis=1)
    return alike


def compare_with_golden(onnx_model, images, *, quantized=None, tensors=()) -> list:
    """Integer steps between ONNX Runtime's int8 prediction and the golden model's.

    Parameters
    ----------
    onnx_model : OnnxModel
        A QDQ graph.
    images : array (N, in_chans, height, width), N >= 1
        Run one at a time; the figures are over all of them.
    quantized : path-like, optional
        The quantized-model file (default: the one named in the graph); its
        checksum must be the graph's.
    tensors : sequence of str
        Also compare these intermediate int8 tensors (golden names).

    Returns
    -------
    list of dict
        Per output: ``task``, ``output``, ``shape`` (of one image's),
        ``images``, ``max_steps``, ``mean_steps``, ``equal_fraction``,
        ``steps_histogram`` (steps -> count). The prediction's row also has
        the routing (see :data:`QDQ_BOUNDS`): ``routing_agreement``, the
        fraction of tokens whose selected experts are the golden model's in
        every MoE layer; ``max_steps_alike`` and ``mean_steps_alike``, over
        the pixels of those tokens' patches; ``max_steps_flipped``, over the
        others' (None when there are none).
    """
    import onnxruntime as ort
    from onnx import helper

    from moevit.model.integer import golden
    from moevit.model.onnx.check import OnnxFileError, read_graph
    from moevit.model.integer.quantize import load_quantized

    meta = onnx_model.metadata
    source = meta.get("moevit.weights", "")
    if quantized is None:
        if not source.startswith("quantized "):
            raise OnnxFileError(f"ONNX file {onnx_model.path} names no quantized model; give one")
        quantized = source[len("quantized ") :]
    qmodel = load_quantized(quantized, onnx_model.config)
    if qmodel.checksum()[:16] != meta["moevit.weights_hash"]:
        raise OnnxFileError(
            f"ONNX file {onnx_model.path} was exported from another quantized model than {quantized} "
            f"(checksum {meta['moevit.weights_hash']}, not {qmodel.checksum()[:16]})"
        )
    config = qmodel.config
    t = onnx_model.task_ids()[0]
    routing = [f"blocks.{i}.mlp.gate.topk" for i in config.moe_blocks]
    names = ["prediction_int8", *routing, *tensors]
    proto, _ = read_graph(onnx_model.path)
    for name in names[1:]:
        proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.asarray(images, np.float32)
    steps = {name: [] for name in ["prediction_int8", *tensors]}
    alike = []
    for image in images:
        got = dict(zip(names, session.run(names, {"images": image[None]})))
        ref = golden.run(qmodel, image, t)
        steps["prediction_int8"].append(np.abs(got["prediction_int8"][0].astype(np.int64) - ref.output))
        for name in tensors:
            expected = ref.tensors[name]
            steps[name].append(np.abs(got[name].reshape(expected.shape).astype(np.int64) - expected))
        alike.append(_routed_alike(config, ref.tensors, [got[name] for name in routing]))
    task = config.task_names[t]
    rows = [_steps_row(task, name, np.stack(values)) for name, values in steps.items()]
    # A pixel belongs to its patch's token (token 0 is the class token).
    grid_h, grid_w = config.grid
    per_pixel = np.stack(alike)[:, 1:].reshape(len(images), 1, grid_h, 1, grid_w, 1)
    per_pixel = np.broadcast_to(per_pixel, (len(images), 1, grid_h, config.patch, grid_w, config.patch))
    per_pixel = per_pixel.reshape(len(images), 1, *config.image_size)
    out = np.stack(steps["prediction_int8"])
    per_pixel = np.broadcast_to(per_pixel, out.shape)
    rows[0].update(
        routing_agreement=float(np.mean(alike)),
        max_steps_alike=int(out[per_pixel].max(initial=0)),
        mean_steps_alike=float(out[per_pixel].mean()) if per_pixel.any() else 0.0,
        max_steps_flipped=int(out[~per_pixel].max()) if (~per_pixel).any() else None,
    )
    return rows
