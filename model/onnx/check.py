"""Run exported ONNX graphs in ONNX Runtime, compare them, and count their work.

:class:`OnnxModel` opens a graph written by :mod:`moevit.model.onnx.export`
(or :mod:`moevit.model.onnx.qdq`), checks its metadata and runs it; it checks
the task id and the images before ONNX Runtime sees them.
:func:`compare_with_torch` runs the same images through the graph and the
PyTorch reference; :func:`graph_stats` counts parameters and multiply-
accumulates from the graph alone, for comparison with
:func:`moevit.model.stats.model_stats`. :func:`check_graph` runs a graph beside
its reference and gives a verdict (``moevit check-onnx``).

The verdict
-----------
- A float graph against the PyTorch model, per task: the largest
  ``|ONNX Runtime - PyTorch|`` of the output is at most
  ``atol + rtol * max|PyTorch|`` (default :data:`FLOAT_ATOL`,
  :data:`FLOAT_RTOL`), and every token of every MoE layer selects the same
  set of experts as in PyTorch (the order within the ``k`` does not change
  the output: two equal logits may come out swapped).
- A QDQ graph against the integer golden model: the int8 prediction within
  the measured bounds :data:`~moevit.model.onnx.qdq.QDQ_BOUNDS` (``atol``
  replaces its ``max_steps_alike``): the steps on the tokens routed alike,
  the fraction of tokens routed alike, the mean over all outputs.
- Both: the graph's weights are its reference's, bit for bit
  (:func:`check_weights`). The hash in the metadata says which weights the
  graph was exported from; it is not trusted to describe the weights the
  file holds now. In a float graph every initializer is a parameter of the
  model (``model.<name>``, :class:`~moevit.model.onnx.export.ExportView`);
  a QDQ graph's initializers are compared with those of the same graph
  rebuilt from the quantized model. An edited weight is a failed check
  (exit status 1), like a wrong output: the file is a valid graph, it just
  does not hold the model it names. A reference whose hash differs from the
  metadata's (another checkpoint) is bad input (:class:`OnnxFileError`).

What :func:`graph_stats` counts
-------------------------------
- ``params``: the elements of the graph's weight initializers: the
  floating-point ones in a float graph (exported without constant folding,
  they are the model's parameters under their PyTorch names); in a QDQ graph
  the int8 weights, int32 biases and float LayerNorm parameters (the
  ``scale.*``, ``zero.*`` and ``const.*`` initializers are not parameters).
- MACs: every ``MatMul``, ``Gemm`` and ``Conv`` node, in the main graph and in
  the ``If`` branch of each task: output elements × reduced length. Nodes
  with a fixed shape count exactly.
- Routing-dependent nodes: an expert's ``Gemm`` has ``n_e`` rows, the length
  of a ``NonZero`` over ``indices == e`` where ``indices`` is a ``TopK``
  output of shape (tokens, k). Every one of the ``tokens × k`` entries names
  exactly one expert, so the ``n_e`` of one layer sum to ``tokens × k``
  whatever the routing; with the same per-row cost ``c`` for every expert
  (checked), the layer's expert MACs are exactly ``tokens × k × c``
  (``macs``), and ``tokens × experts × c`` if every expert ran on every
  token (``macs_all_experts``).
- ``moe_layers``: per ``TopK``: tokens, k and the number of experts with a
  subgraph; each token touches ``k`` of them. Which experts an input
  actually touches is returned by :meth:`OnnxModel.run` with ``routing=True``.
"""

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from moevit.errors import CheckpointError, MoevitError, first_line

__all__ = [
    "FORMAT",
    "ANY_TASK",
    "FLOAT_ATOL",
    "FLOAT_RTOL",
    "config_hash",
    "OnnxFileError",
    "OnnxInputError",
    "OnnxModel",
    "read_graph",
    "graph_stats",
    "compare_with_torch",
    "torch_model_for",
    "judge_float",
    "judge_qdq",
    "graph_initializers",
    "check_weights",
    "check_graph",
]


# metadata "moevit.format": bumped if the graph interface or the model it computes changes
# (2: the config carries the gate rule; a /1 graph computes the renormalised gate)
FORMAT = "moevit-onnx/2"
ANY_TASK = "any"

#: Default tolerance of a float graph: ``|ONNX Runtime - PyTorch| <= FLOAT_ATOL
#: + FLOAT_RTOL * max|PyTorch|`` per output. Measured on task-any graphs with
#: random-init and :func:`~moevit.model.integer.evaluate.signal_model` weights
#: (random images and synthetic scenes) and on ``tiny`` trained 400 steps
#: (depth outputs up to 9.8): at most 5.7e-6 for ``tiny`` (89 images),
#: 5.3e-6 for ``edge-moe`` (36), 5.7e-6 for ``m3vit-s`` (16), never above
#: 1.5e-6 of max|PyTorch|. The default allows 1.6e-5 at outputs of 0.6 and 1.1e-4 at
#: 9.8: ten times the worst or more. The relative term is what keeps trained
#: models with large outputs inside (an absolute 1e-5 would leave 2x at
#: 9.8); an edited LayerNorm epsilon (1.29 on outputs of 1.5) is far outside.
FLOAT_ATOL = 1e-5
FLOAT_RTOL = 1e-5



def config_hash(config) -> str:
    """Short SHA-256 of a config's shapes (its JSON with sorted keys, without the prose)."""
    data = config.to_dict()
    data.pop("source", None)
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OnnxFileError(CheckpointError):
    """An ONNX file is missing, damaged, not from moevit, or from another model."""


class OnnxInputError(MoevitError, ValueError):
    """An input handed to an ONNX graph does not fit it."""


def _check_path(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"ONNX file {path} does not exist")
    return path


def _parse_metadata(path, props: dict) -> dict:
    """The moevit metadata of a graph, checked; the config parsed."""
    from moevit.model.config import ModelConfig

    if "moevit.format" not in props:
        raise OnnxFileError(f"ONNX file {path} was not exported by moevit (no moevit metadata)")
    if props["moevit.format"] != FORMAT:
        raise OnnxFileError(
            f"ONNX file {path} has format {props['moevit.format']!r}; this moevit reads {FORMAT!r}"
        )
    try:
        config = ModelConfig.from_dict(json.loads(props["moevit.config"]))
    except (KeyError, ValueError, TypeError) as error:
        raise OnnxFileError(f"ONNX file {path} holds an invalid model config: {error}") from None
    if config_hash(config) != props.get("moevit.config_hash"):
        raise OnnxFileError(f"ONNX file {path} has a config that does not match its hash")
    meta = dict(props)
    meta["config"] = config
    return meta


def read_graph(path):
    """Load an ONNX file written by moevit: ``(ModelProto, metadata)``.

    Raises
    ------
    OnnxFileError
        Missing, truncated or not ONNX, or not written by moevit.
    """
    import onnx

    path = _check_path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError, onnx its own types
        raise OnnxFileError(
            f"ONNX file {path} is truncated or not an ONNX model: {first_line(error)}"
        ) from None
    if not proto.graph.node:
        raise OnnxFileError(f"ONNX file {path} is truncated or not an ONNX model: it has no graph")
    props = {entry.key: entry.value for entry in proto.metadata_props}
    return proto, _parse_metadata(path, props)


class OnnxModel:
    """An exported graph in an ONNX Runtime session, with its moevit metadata.

    Parameters
    ----------
    path : path-like
    config : ModelConfig, optional
        The model the caller expects; a graph of another model is an error.
    routing : bool
        Also return, from :meth:`run`, the experts each MoE layer selected
        (the graph's ``TopK`` indices become extra outputs of the session).

    Attributes
    ----------
    config : ModelConfig
    task : str
        The graph's task, or ``"any"`` (then :meth:`run` needs a task id).
    kind : str
        ``"float"`` or ``"qdq"``.
    metadata : dict
        Every ``moevit.*`` metadata entry.
    """

    def __init__(self, path, *, config=None, routing=False):
        import onnxruntime as ort

        self.path = _check_path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; ours are raised, not logged
        self._routing = []
        try:
            if routing:
                proto, _ = read_graph(self.path)
                self._routing = _expose_routing(proto)
                source = proto.SerializeToString()
            else:
                source = str(self.path)
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except OnnxFileError:
            raise
        except Exception as error:
            raise OnnxFileError(
                f"ONNX file {self.path} is truncated or not an ONNX model: {first_line(error)}"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = _parse_metadata(self.path, props)
        self.config = self.metadata["config"]
        self.task = self.metadata["moevit.task"]
        self.kind = self.metadata["moevit.kind"]
        if config is not None:
            self.check_config(config)
        self.inputs = [arg.name for arg in self.session.get_inputs()]

    def check_config(self, config):
        """A clear error unless the graph was exported from ``config``."""
        found, digest = self.config, self.metadata["moevit.config_hash"]
        if config_hash(config) != digest:
            raise OnnxFileError(
                f"ONNX file {self.path} holds model {found.name!r} (config hash {digest}), "
                f"not {config.name!r} (config hash {config_hash(config)})"
            )

    def task_ids(self) -> list:
        """The task indices this graph computes."""
        if self.task == "any":
            return list(range(len(self.config.tasks)))
        return [self.config.task_index(self.task)]

    def _task_feed(self, task):
        config = self.config
        if self.task != "any":
            own = config.task_index(self.task)
            if task is not None and config.task_index(task) != own:
                raise OnnxInputError(
                    f"ONNX file {self.path} computes task {self.task!r} only, "
                    f"not {config.task_names[config.task_index(task)]!r}"
                )
            return {}
        if task is None:
            raise OnnxInputError(
                f"ONNX file {self.path} takes the task as an input; "
                f"give a task id in 0..{len(config.tasks) - 1} or a name of {list(config.task_names)}"
            )
        if isinstance(task, np.integer):
            task = int(task)
        return {"task": np.array([config.task_index(task)], dtype=np.int64)}

    def run(self, images, task=None):
        """Run the graph on ``images`` (batch, in_chans, height, width).

        Parameters
        ----------
        images : array-like of float32
        task : int or str, optional
            Required by a task-any graph (checked against the config's tasks:
            an id out of range is a :class:`~moevit.errors.ConfigError`); a
            per-task graph accepts only its own task.

        Returns
        -------
        dict
            Output name -> array; with ``routing=True`` also ``"routing"``, a
            list per MoE layer of the (tokens, k) selected experts.
        """
        images = np.asarray(images, dtype=np.float32)
        feed = self._task_feed(task)
        expected = self.session.get_inputs()[0].shape
        if list(images.shape) != list(expected):
            raise OnnxInputError(
                f"Images of shape {tuple(images.shape)} do not fit ONNX file {self.path}; "
                f"expected {tuple(expected)}"
            )
        feed["images"] = images
        names = [out.name for out in self.session.get_outputs()]
        values = self.session.run(names, feed)
        result = dict(zip(names, values))
        if self._routing:
            result["routing"] = [result.pop(name) for name in self._routing]
        return result


def _expose_routing(proto) -> list:
    """Add every TopK's indices to the graph outputs; their names, in graph order."""
    import onnx

    names = []
    for node in proto.graph.node:
        if node.op_type == "TopK":
            name = node.output[1]
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            names.append(name)
    return names


# Statistics -------------------------------------------------------------------
# float32/16/64/bf16; a QDQ graph adds int8 weights and int32 biases
_WEIGHT_TYPES = {"float": (1, 10, 11, 16), "qdq": (1, 3, 6)}


def _light_copy(proto):
    """The graph without its large tensors' data (shape inference needs shapes only)."""
    import onnx

    light = onnx.ModelProto()
    light.CopyFrom(proto)
    graph = light.graph
    kept = []
    for tensor in graph.initializer:
        if math.prod(tensor.dims) > 4096:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return light


def _all_graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_graphs(attr.g)


def _shape_table(graph) -> dict:
    table = {}
    for g in _all_graphs(graph):
        for info in list(g.value_info) + list(g.input) + list(g.output):
            dims = info.type.tensor_type.shape.dim
            table[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
        for tensor in g.initializer:
            table[tensor.name] = list(tensor.dims)
    return table


def _constant_value(name, producers, initializers):
    """The integer value of a constant (Constant node or initializer), else None."""
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name == "value_int":
                return np.array(attr.i)
            if attr.name == "value_ints":
                return np.array(list(attr.ints))
    if node is not None and node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Cast"):
        return _constant_value(node.input[0], producers, initializers)
    return None


def _shape(shapes, name, node, rank, *, exact=False):
    """The inferred shape of tensor ``name``, an input or output of ``node``, of ``rank``
    dimensions at least (``exact``: just that many): a graph whose node names a tensor
    nothing defines, or one of another rank, is an error of one line, not a ``KeyError``
    or an ``IndexError``."""
    if name not in shapes:
        raise MoevitError(f"Cannot count {node.op_type} node {node.name!r}: its tensor {name!r} "
                          f"has no inferred shape (not defined in the graph?)")
    shape = shapes[name]
    if len(shape) < rank or (exact and len(shape) != rank):
        raise MoevitError(f"Cannot count {node.op_type} node {node.name!r}: its tensor {name!r} "
                          f"has shape {shape}, not of {rank} dimensions")
    return shape


def _node_macs(node, shapes):
    """``(rows_symbol, macs_per_row)`` or ``(None, macs)`` of a MatMul/Gemm/Conv."""
    out = shapes.get(node.output[0])
    if out is None or any(d is None for d in out):
        raise MoevitError(f"Cannot count the MACs of {node.op_type} node {node.name!r}: unknown output shape")
    if node.op_type == "Conv":
        weight = _shape(shapes, node.input[1], node, 3)
        reduced = math.prod(weight[1:])
    else:
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        a = _shape(shapes, node.input[0], node, 2 if trans_a else 1)
        reduced = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
    symbols = [d for d in out if isinstance(d, str)]
    if not symbols:
        return None, math.prod(out) * reduced
    if len(symbols) > 1:
        raise MoevitError(f"Cannot count the MACs of {node.op_type} node {node.name!r}: shape {out}")
    fixed = math.prod(d for d in out if isinstance(d, int))
    return symbols[0], fixed * reduced


def graph_stats(proto, metadata=None) -> dict:
    """Parameters, MACs per task and MoE routing of an exported graph (see the module doc).

    Returns
    -------
    dict
        ``params``, ``tasks`` (task name -> ``macs``, ``macs_all_experts``,
        ``moe_macs``, ``moe_macs_all_experts``), ``moe_layers`` (a list of
        ``tokens``, ``k``, ``experts``, ``macs_per_token_expert``).
    """
    import onnx

    kind = (metadata or {}).get("moevit.kind", "float")
    params = 0
    for g in _all_graphs(proto.graph):
        for tensor in g.initializer:
            if tensor.data_type in _WEIGHT_TYPES[kind] and len(tensor.dims) >= 1 and _is_weight(tensor, kind):
                params += math.prod(tensor.dims)
    try:
        light = onnx.shape_inference.infer_shapes(_light_copy(proto), strict_mode=True,
                                                  data_prop=True)
    except Exception as error:  # onnx raises its own InferenceError and ValidationError
        raise MoevitError(f"Cannot infer the graph's shapes: {first_line(error)}") from None
    shapes = _shape_table(light.graph)
    producers, initializers = {}, {}
    for g in _all_graphs(light.graph):
        for node in g.node:
            for output in node.output:
                producers[output] = node
        for tensor in g.initializer:
            initializers[tensor.name] = tensor
    # Each NonZero's row symbol -> (its TopK, the expert it selects).
    symbol_route = {}
    for node in producers.values():
        if node.op_type != "NonZero":
            continue
        symbol = _shape(shapes, node.output[0], node, 2, exact=True)[1]
        equal = producers.get(node.input[0])
        topk = producers.get(equal.input[0]) if equal is not None and equal.op_type == "Equal" else None
        expert = _constant_value(equal.input[1], producers, initializers) if topk is not None else None
        if topk is None or topk.op_type != "TopK" or expert is None or not isinstance(symbol, str):
            raise MoevitError(f"Cannot attribute NonZero node {node.name!r} to a TopK routing")
        symbol_route[symbol] = (topk.name, int(expert))
    layers = {}
    for node in producers.values():
        if node.op_type == "TopK":
            tokens, experts = _shape(shapes, node.input[0], node, 2, exact=True)
            k = int(_constant_value(node.input[1], producers, initializers).reshape(-1)[0])
            layers[node.name] = {"tokens": tokens, "k": k, "experts_in_gate": experts, "per_row": defaultdict(int)}

    def count(graph):
        fixed = 0
        for node in graph.node:
            if node.op_type in ("MatMul", "Gemm", "Conv"):
                symbol, macs = _node_macs(node, shapes)
                if symbol is None:
                    fixed += macs
                elif symbol in symbol_route:
                    topk, expert = symbol_route[symbol]
                    layers[topk]["per_row"][expert] += macs
                else:
                    raise MoevitError(f"Cannot count {node.op_type} node {node.name!r}: rows {symbol!r}")
        return fixed

    main = count(light.graph)
    moe_selected = moe_all = 0
    moe_layers = []
    for name, layer in layers.items():
        per_row = layer["per_row"]
        costs = set(per_row.values())
        if sorted(per_row) != list(range(layer["experts_in_gate"])) or len(costs) != 1:
            raise MoevitError(f"MoE layer {name!r}: expert subgraphs {dict(per_row)} are not one per expert of equal cost")
        cost = costs.pop()
        moe_selected += layer["tokens"] * layer["k"] * cost
        moe_all += layer["tokens"] * len(per_row) * cost
        moe_layers.append(
            {"tokens": layer["tokens"], "k": layer["k"], "experts": len(per_row), "macs_per_token_expert": cost}
        )
    branches = _task_branches(light.graph, producers, initializers, metadata)
    tasks = {}
    for task, subgraphs in branches.items():
        macs = main + sum(count(g) for g in subgraphs) + moe_selected  # gates: fixed, in main
        tasks[task] = {
            "macs": macs,
            "macs_all_experts": macs - moe_selected + moe_all,
            "moe_macs_experts": moe_selected,
            "moe_macs_experts_all": moe_all,
        }
    return {"params": params, "tasks": tasks, "moe_layers": moe_layers}


def _is_weight(tensor, kind) -> bool:
    """Whether an initializer is a parameter (not a scale, zero point or index)."""
    if kind == "qdq":
        return not tensor.name.startswith(("scale.", "zero.", "const."))
    return True


def _task_branches(graph, producers, initializers, metadata) -> dict:
    """Task name -> the ``If`` branch subgraphs that run for it (none in a per-task graph)."""
    config = metadata["config"] if metadata else None
    names = list(config.task_names) if config else []
    task = (metadata or {}).get("moevit.task", "any")
    if task != "any":
        return {task: []}
    result = {}
    ifs = [node for node in graph.node if node.op_type == "If"]
    if not ifs:
        raise MoevitError("A task-any graph without If nodes: cannot attribute the heads to tasks")

    def walk(node, path, remaining):
        cond = producers.get(node.input[0])
        value = None
        if cond is not None and cond.op_type == "Equal":
            value = _constant_value(cond.input[1], producers, initializers)
        if value is None:
            raise MoevitError(f"If node {node.name!r}: its condition is not task == constant")
        then_g = next(a.g for a in node.attribute if a.name == "then_branch")
        else_g = next(a.g for a in node.attribute if a.name == "else_branch")
        t = int(np.asarray(value).reshape(-1)[0])
        result[names[t]] = path + [then_g]
        remaining = [r for r in remaining if r != t]
        inner = [n for n in else_g.node if n.op_type == "If"]
        if inner:
            walk(inner[0], path + [else_g], remaining)
        elif len(remaining) == 1:
            result[names[remaining[0]]] = path + [else_g]

    walk(ifs[0], [], list(range(len(names))))
    return result


# Comparison with PyTorch ----------------------------------------------------------
def torch_model_for(metadata, checkpoint=None):
    """The PyTorch model a float graph was exported from.

    ``checkpoint`` (or the checkpoint named in the metadata) is loaded; a
    graph of random weights is rebuilt from its seed. A model whose weights
    hash differs from the graph's is an error.
    """
    import torch

    from moevit.model.checkpoint import load_checkpoint
    from moevit.model.moevit import MoEViT
    from moevit.model.onnx.export import weights_hash

    config = metadata["config"]
    source = metadata.get("moevit.weights", "")
    if checkpoint is None and source.startswith("checkpoint "):
        checkpoint = source[len("checkpoint ") :]
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint, config)
    elif source.startswith("random seed "):
        torch.manual_seed(int(source[len("random seed ") :]))
        model = MoEViT(config).eval()
    else:
        raise OnnxFileError(f"The graph's weights come from {source!r}; give the checkpoint they came from")
    digest = weights_hash(model.state_dict())
    if digest != metadata["moevit.weights_hash"]:
        raise OnnxFileError(
            f"The graph holds other weights (hash {metadata['moevit.weights_hash']}) than "
            f"{checkpoint or source} (hash {digest})"
        )
    return model


def _record_routing(model):
    """Wrap each MoE layer's ``route`` of ``model`` (this instance only) to record
    the selected experts; returns the list they are appended to and an undo."""
    recorded = []

    def recording(route):
        def wrapped(*args, **kwargs):
            result = route(*args, **kwargs)
            recorded.append(result[0].numpy())  # (tokens, k) selected experts
            return result

        return wrapped

    layers = model.moe_layers
    for layer in layers:
        layer.route = recording(layer.route)

    def undo():
        for layer in layers:
            del layer.route  # back to the class's method

    return recorded, undo


def _routing_differences(graph_routes, torch_routes) -> list:
    """``(layer, token, graph experts, PyTorch experts)`` wherever the selected sets differ."""
    if len(graph_routes) != len(torch_routes):
        raise MoevitError(f"The graph has {len(graph_routes)} MoE layers, PyTorch's model {len(torch_routes)}")
    found = []
    for layer, (got, ref) in enumerate(zip(graph_routes, torch_routes)):
        got, ref = np.sort(got, axis=-1), np.sort(ref, axis=-1)
        for token in np.flatnonzero((got != ref).any(axis=-1)):
            found.append((layer, int(token), got[token].tolist(), ref[token].tolist()))
    return found


def compare_with_torch(onnx_model: OnnxModel, torch_model, images) -> list:
    """Largest difference per task and output between ONNX Runtime and PyTorch.

    With an :class:`OnnxModel` opened with ``routing=True``, each row also
    says how many distinct experts each MoE layer touched in the graph and
    whether every token selected the same set of experts as in PyTorch.

    Returns
    -------
    list of dict
        ``task``, ``output``, ``shape``, ``max_abs_diff``, ``max_abs_ref``
        (and ``experts_touched``, ``routing_equal``, ``routing_differences``:
        a list of ``(MoE layer, token, graph experts, PyTorch experts)``).
    """
    import torch

    onnx_model.check_config(torch_model.config)
    torch_model.eval()
    experts = torch_model.config.experts
    rows = []
    for t in onnx_model.task_ids():
        result = onnx_model.run(images, t)
        got = result["prediction"]
        recorded, undo = _record_routing(torch_model)
        try:
            with torch.no_grad():
                ref = torch_model(torch.as_tensor(np.asarray(images, np.float32)), t).numpy()
        finally:
            undo()
        if got.shape != ref.shape:
            raise MoevitError(f"ONNX output of shape {got.shape} differs from PyTorch's {ref.shape}")
        row = {
            "task": torch_model.config.task_names[t],
            "output": "prediction",
            "shape": list(got.shape),
            "max_abs_diff": float(np.abs(got - ref).max()),
            "max_abs_ref": float(np.abs(ref).max()),
        }
        if "routing" in result:
            row["experts_touched"] = " ".join(f"{len(np.unique(r))}/{experts}" for r in result["routing"])
            row["routing_differences"] = _routing_differences(result["routing"], recorded)
            row["routing_equal"] = not row["routing_differences"]
        rows.append(row)
    return rows


# The verdict ------------------------------------------------------------------------
def judge_float(rows, *, atol=FLOAT_ATOL, rtol=FLOAT_RTOL) -> list:
    """Judge :func:`compare_with_torch`'s rows: set each row's ``tolerance`` and
    ``verdict`` (``"PASS"`` / ``"FAIL"``); return the failures, one line each."""
    failures = []
    for row in rows:
        tolerance = atol + rtol * row["max_abs_ref"]
        reasons = []
        if not row["max_abs_diff"] <= tolerance:  # NaN fails too
            reasons.append(f"max |difference| {row['max_abs_diff']:.3g} > tolerance {tolerance:.3g}")
        if row.get("routing_differences"):
            layer, token, got, ref = row["routing_differences"][0]
            reasons.append(
                f"{len(row['routing_differences'])} tokens select other experts than in PyTorch "
                f"(first: MoE layer {layer}, token {token}: {got}, PyTorch {ref})"
            )
        row["tolerance"], row["verdict"] = tolerance, "FAIL" if reasons else "PASS"
        failures += [f"{row['task']} {row['output']}: {reason}" for reason in reasons]
    return failures


def judge_qdq(rows, *, max_steps=None) -> list:
    """Judge the prediction row of :func:`moevit.model.onnx.qdq.compare_with_golden`
    against :data:`~moevit.model.onnx.qdq.QDQ_BOUNDS` (``max_steps`` replaces its
    ``max_steps_alike``), as :func:`judge_float`; other rows are figures only."""
    from dataclasses import replace

    from moevit.model.onnx.qdq import QDQ_BOUNDS

    bounds = QDQ_BOUNDS if max_steps is None else replace(QDQ_BOUNDS, max_steps_alike=max_steps)
    failures = []
    for row in rows:
        if row["output"] != "prediction_int8":
            continue
        reasons = bounds.violations(row)
        row["tolerance"] = (f"alike: max <= {bounds.max_steps_alike:g}, mean <= {bounds.mean_steps_alike:g}; "
                            f"routed alike >= {bounds.min_routing_agreement:g}; mean <= {bounds.mean_steps:g}")
        row["verdict"] = "FAIL" if reasons else "PASS"
        failures += [f"{row['task']} {row['output']}: {reason}" for reason in reasons]
    return failures


# A float graph's initializers are the exported ExportView's: "model." + the parameter's name.
_PARAMETER_PREFIX = "model."


def graph_initializers(proto) -> dict:
    """Name -> array of every initializer of a graph and of its subgraphs (``If`` branches)."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for g in _all_graphs(proto.graph) for t in g.initializer}


def check_weights(graph: dict, reference: dict, source: str) -> dict:
    """Compare a graph's initializers with its reference's (name -> array), bit for bit.

    ``source`` names the reference in the failure line. Hashes (the first 16
    digits of :func:`~moevit.model.checkpoint.weights_sha256`) are computed
    from both sides over the names the graph holds.

    Returns
    -------
    dict
        ``initializers`` (count), ``graph_hash``, ``reference_hash``,
        ``differing`` (names: other values, dtypes or shapes, or absent from
        the reference), ``verdict`` and ``failure`` (None, or one line).
    """
    from moevit.model.checkpoint import weights_sha256

    differing = []
    for name in sorted(graph):
        ours, theirs = np.asarray(graph[name]), reference.get(name)
        theirs = None if theirs is None else np.asarray(theirs)
        if theirs is None or ours.dtype != theirs.dtype or ours.shape != theirs.shape or ours.tobytes() != theirs.tobytes():
            differing.append(name)
    # hashed from writable copies: onnx's arrays are read-only views, which torch warns about
    graph_hash = weights_sha256({name: np.array(value) for name, value in graph.items()})[:16]
    ref_hash = weights_sha256({name: np.array(reference[name]) for name in graph if name in reference})[:16]
    failure = None
    if differing:
        failure = (f"weights: the graph's initializers (hash {graph_hash}, recomputed) are not those of {source} "
                   f"(hash {ref_hash}): {len(differing)} of {len(graph)} differ, first {differing[0]!r}")
    return {"initializers": len(graph), "graph_hash": graph_hash, "reference_hash": ref_hash,
            "differing": differing, "verdict": "FAIL" if differing else "PASS", "failure": failure}


def _float_weights(proto, model, source) -> dict:
    """:func:`check_weights` of a float graph against ``model``'s state dict."""
    graph = {(name[len(_PARAMETER_PREFIX):] if name.startswith(_PARAMETER_PREFIX) else name): value
             for name, value in graph_initializers(proto).items()}
    state = {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}
    return check_weights(graph, state, source)


def _qdq_weights(proto, onnx_model, quantized) -> dict:
    """:func:`check_weights` of a QDQ graph against the graph rebuilt from its quantized model."""
    from onnx import numpy_helper

    from moevit.model.onnx.qdq import _Builder  # what export_qdq writes, built in memory
    from moevit.model.integer.quantize import load_quantized

    if quantized is None:  # compare_with_golden has checked that the graph names one
        quantized = onnx_model.metadata["moevit.weights"][len("quantized ") :]
    qmodel = load_quantized(quantized, onnx_model.config)
    rebuilt = _Builder(qmodel, onnx_model.task_ids()[0]).build()
    reference = {t.name: numpy_helper.to_array(t) for t in rebuilt.initializer}
    return check_weights(graph_initializers(proto), reference, f"quantized model {quantized}")


def _check_tolerance(name, value):
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise OnnxInputError(f"Tolerance {name} must be a finite number >= 0, not {value!r}")


def check_graph(path, *, config=None, checkpoint=None, quantized=None, seed=0, atol=None, rtol=None) -> dict:
    """Run an ONNX file in ONNX Runtime beside its reference on random images, and judge it.

    A float graph is compared with the PyTorch model (``checkpoint``, default
    the one its metadata names), a QDQ graph with the integer golden model
    (``quantized``, likewise); see "The verdict" in the module doc.

    Parameters
    ----------
    config : str, optional
        The config the file must hold.
    seed : int
        Seed of the standard-normal input images.
    atol, rtol : float, optional
        Float graphs: default :data:`FLOAT_ATOL`, :data:`FLOAT_RTOL`. QDQ
        graphs: ``atol`` is the largest number of int8 steps.

    Raises
    ------
    OnnxInputError
        A negative seed, a negative or non-finite tolerance, or an option
        the graph's kind has no use for (``rtol`` or ``checkpoint`` beside a
        QDQ graph, ``quantized`` beside a float graph).

    Returns
    -------
    dict
        ``kind``, ``reference`` (what the graph was compared with), ``rows``
        (judged), ``weights`` (:func:`check_weights`), ``failures`` (one line
        each), ``passed``.
    """
    from moevit.model.config import get_config

    _check_tolerance("atol", atol)
    _check_tolerance("rtol", rtol)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OnnxInputError(f"Seed must be a non-negative integer, not {seed!r}")
    onnx_model = OnnxModel(path, config=get_config(config) if config else None, routing=True)
    cfg = onnx_model.config
    if onnx_model.kind == "qdq" and rtol is not None:
        raise OnnxInputError(
            f"ONNX file {onnx_model.path} is a QDQ graph: its tolerance is in int8 steps (atol); "
            "rtol applies to float graphs"
        )
    if onnx_model.kind == "qdq" and checkpoint is not None:
        raise OnnxInputError(
            f"ONNX file {onnx_model.path} is a QDQ graph: its reference is a quantized model (quantized), "
            "not a checkpoint"
        )
    if onnx_model.kind == "float" and quantized is not None:
        raise OnnxInputError(
            f"ONNX file {onnx_model.path} is a float graph: its reference is a checkpoint, not a quantized model"
        )
    batch = onnx_model.session.get_inputs()[0].shape[0]
    images = np.random.default_rng(seed).standard_normal((batch, cfg.in_chans, *cfg.image_size)).astype(np.float32)
    proto, meta = read_graph(path)
    if onnx_model.kind == "qdq":
        from moevit.model.onnx.qdq import compare_with_golden

        rows = compare_with_golden(onnx_model, images, quantized=quantized)
        failures = judge_qdq(rows, max_steps=atol)
        weights = _qdq_weights(proto, onnx_model, quantized)
        reference = "the integer golden model"
    else:
        model = torch_model_for(meta, checkpoint)
        rows = compare_with_torch(onnx_model, model, images)
        failures = judge_float(rows, atol=FLOAT_ATOL if atol is None else atol,
                               rtol=FLOAT_RTOL if rtol is None else rtol)
        weights = _float_weights(proto, model, f"checkpoint {checkpoint}" if checkpoint else meta["moevit.weights"])
        reference = "PyTorch"
    failures += [weights["failure"]] if weights["failure"] else []
    return {"kind": onnx_model.kind, "reference": reference, "rows": rows, "weights": weights,
            "failures": failures, "passed": not failures}
