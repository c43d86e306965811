"""Export the MoE-ViT to ONNX: one graph per task, or one that takes the task id.

The reference model (:class:`moevit.model.moevit.MoEViT`) routes tokens with
data-dependent shapes (its ``"sorted"`` dispatch) or gathers one copy of the
selected experts' weights per token (``"gather"``, static shapes but tokens × k
copies of an expert: 2.8 GB per layer for ``m3vit-s``). :class:`ExportView`
wraps the model, shares its parameters and submodules, and computes the same
function in a form that ``torch.onnx.export(..., dynamo=True)`` turns into
standard ONNX operators (opset :data:`OPSET`, default domain only):

- gating: ``MatMul`` with the task's gate, ``TopK`` (the ONNX specification
  breaks ties towards the lower index, as the reference does), then the
  config's gate rule: ``"vmoe"``, ``Softmax`` over all ``E`` logits and
  ``GatherElements`` of the selected; ``"renorm"``, ``Softmax`` over the ``k``
  selected logits;
- per expert ``e`` of a layer, one subgraph: ``NonZero(indices == e)`` lists
  the (token, slot) pairs routed to ``e``; ``Gather`` fetches those tokens;
  the expert's two ``Gemm`` and its GELU run on them only; the result, scaled
  by the gate weights (``GatherND``), is added back with ``ScatterND``. So
  only the selected experts compute, in M³ViT's expert-by-expert order, and
  each expert's subgraph has a routing-dependent row count (``NonZero``'s
  output length); the counts of one layer sum to ``tokens × k``.

Graph inputs and outputs
------------------------
``images``
    float32 (batch, in_chans, height, width); batch is fixed at export time.
``task`` (task-any graph only)
    int64, shape (1,), the task's index in ``config.tasks``. The raw graph
    maps an id outside ``0..len(tasks)-1`` (negative ones included) to an out
    of bounds ``Gather``, so ONNX Runtime fails with its own INVALID_ARGUMENT
    error ("indices element out of data bounds") instead of computing garbage;
    :class:`moevit.model.onnx.check.OnnxModel` checks the id before running
    and raises a :class:`~moevit.errors.ConfigError` naming the valid ids.
``prediction``
    float32 (batch, classes, height, width). In the task-any graph the heads
    are the branches of ``If`` nodes, so the channel count is symbolic.

Metadata (``metadata_props``, read back by :func:`moevit.model.onnx.check.read_graph`): the
config as JSON and its hash, the task (a name or ``"any"``), the kind
(``"float"`` or ``"qdq"``) and where the weights come from with their hash,
so that a graph is never compared with another model by mistake.

The graphs are exported without the exporter's constant folding
(``optimize=False``): the initializers are then exactly the model's
parameters, under their PyTorch names, which :mod:`moevit.model.onnx.check`
counts; ONNX Runtime folds constants itself when it loads a graph.
"""

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moevit.model.config import check_positive
from moevit.model.moevit import gate_weights
from moevit.model.onnx.check import ANY_TASK, FORMAT, config_hash

__all__ = [
    "OPSET",
    "ExportView",
    "expert_dispatch",
    "weights_hash",
    "export_onnx",
    "finish_graph",
    "graph_metadata",
]

OPSET = 18


def weights_hash(state: dict) -> str:
    """Short SHA-256 of a state dict's tensors: :func:`~moevit.model.checkpoint.weights_sha256`'s first 16 digits."""
    from moevit.model.checkpoint import weights_sha256

    return weights_sha256(state)[:16]


# The expert dispatch is one opaque operator while torch.export traces the
# model (static shapes: tracing 96 routing-dependent subgraphs symbolically
# takes minutes), and is unrolled into standard ONNX operators, one subgraph
# per expert, when the exporter translates it (_onnx_expert_dispatch).
@torch.library.custom_op("moevit::expert_dispatch", mutates_args=())
def expert_dispatch(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
) -> torch.Tensor:
    """``Σ_slots weights · expert(x)`` with erf-GELU experts, expert by expert.

    Parameters
    ----------
    x : Tensor (N, dim)
    indices : LongTensor (N, k)
        Selected experts per row (distinct within a row).
    weights : Tensor (N, k)
        Gate weights of the selected experts.
    fc1_weight, fc1_bias, fc2_weight, fc2_bias : Tensor
        The layer's experts, (E, hidden, dim), (E, hidden), (E, dim, hidden), (E, dim).
    """
    out = torch.zeros_like(x)
    for expert in range(fc1_weight.shape[0]):
        rows, slots = torch.nonzero(indices == expert, as_tuple=True)
        hidden = F.gelu(F.linear(x[rows], fc1_weight[expert], fc1_bias[expert]))
        y = F.linear(hidden, fc2_weight[expert], fc2_bias[expert])
        out.index_add_(0, rows, y * weights[rows, slots].unsqueeze(-1))
    return out


@expert_dispatch.register_fake
def _(x, indices, weights, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    return torch.empty_like(x)


def _onnx_expert_dispatch(x, indices, weights, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    """ONNX translation of :func:`expert_dispatch`: one subgraph per expert."""
    from onnxscript import opset18 as op

    experts = fc1_weight.shape[0]
    axis1 = op.Constant(value_ints=[1])
    half = op.Constant(value_float=0.5)
    one = op.Constant(value_float=1.0)
    rsqrt2 = op.Constant(value_float=2.0**-0.5)
    out = op.Mul(x, op.Constant(value_float=0.0))  # zeros of x's shape
    for expert in range(experts):
        index = op.Constant(value_int=expert)
        pairs = op.NonZero(op.Equal(indices, index))  # (2, n_e): rows and slots routed here
        rows = op.Gather(pairs, op.Constant(value_int=0), axis=0)
        gate = op.GatherND(weights, op.Transpose(pairs, perm=[1, 0]))
        hidden = op.Gemm(
            op.Gather(x, rows, axis=0),
            op.Gather(fc1_weight, index, axis=0),
            op.Gather(fc1_bias, index, axis=0),
            transB=1,
        )
        hidden = op.Mul(op.Mul(hidden, half), op.Add(op.Erf(op.Mul(hidden, rsqrt2)), one))
        y = op.Gemm(
            hidden, op.Gather(fc2_weight, index, axis=0), op.Gather(fc2_bias, index, axis=0), transB=1
        )
        y = op.Mul(y, op.Unsqueeze(gate, axis1))
        out = op.ScatterND(out, op.Unsqueeze(rows, axis1), y, reduction="add")
    return out


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints and its logs about optional packages."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_experts(model):
    for layer in model.moe_layers:
        act = layer.experts.act
        if not (isinstance(act, nn.GELU) and act.approximate == "none"):
            raise NotImplementedError(f"The ONNX export expects erf-GELU experts, not {act!r}")


class ExportView(nn.Module):
    """An export-friendly view of a :class:`~moevit.model.moevit.MoEViT`.

    It holds the model (no copy: the same parameters) and computes its
    inference function with per-expert subgraphs (see the module doc).

    Parameters
    ----------
    model : MoEViT
    task : int or None
        The task of a per-task graph; None for the task-any graph, whose
        ``forward`` takes the task id as an int64 tensor of shape (1,).
    """

    def __init__(self, model, task=None):
        super().__init__()
        self.model = model
        self.config = model.config
        self.task = None if task is None else self.config.task_index(task)

    def forward(self, images, task=None):
        model = self.model
        task = self.task if self.task is not None else self._checked_task(task)
        x = model.patch_embed(images)
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
        for block in model.blocks:
            x = x + block.attn(block.norm1(x))
            if block.is_moe:
                x = x + self._moe(block.mlp, block.norm2(x), task)
            else:
                x = x + block.mlp(block.norm2(x))
        x = model.norm(x)[:, 1:]  # patch tokens only
        if self.task is not None:
            return self._head(self.task, x)
        # Branches return (batch, classes*H*W): torch.cond wants equal strides,
        # which a 1-channel and a many-channel map do not have.
        flat = self._head_switch(task, x, 0)
        return flat.reshape(x.shape[0], -1, *self.config.image_size)

    def _checked_task(self, task):
        """The task id, or an out-of-range Gather index for any invalid id.

        ``Gather`` accepts negative indices (from the end); mapping them to
        ``len(tasks)`` makes every id outside ``0..len(tasks)-1`` fail.
        """
        count = len(self.config.tasks)
        ids = torch.arange(count, dtype=torch.int64, device=task.device)
        guarded = torch.where(task < 0, torch.full_like(task, count), task)
        return ids.index_select(0, guarded.reshape(1))

    def _gate_weight(self, layer, task):
        if self.task is not None:
            return layer.gates[task].weight
        stacked = torch.stack([gate.weight for gate in layer.gates])  # (tasks, E, dim)
        return stacked.index_select(0, task).squeeze(0)

    def _moe(self, layer, x, task):
        """The MoE layer: gate, TopK, then one routing-dependent subgraph per expert."""
        batch, tokens, dim = x.shape
        flat = x.reshape(batch * tokens, dim)
        logits = F.linear(flat, self._gate_weight(layer, task))
        _, indices = torch.topk(logits, layer.top_k, dim=-1)  # ONNX TopK: ties → lower index
        weights = gate_weights(logits, indices, layer.gate)
        experts = layer.experts
        out = expert_dispatch(
            flat, indices, weights,
            experts.fc1.weight, experts.fc1.bias, experts.fc2.weight, experts.fc2.bias,
        )
        return out.reshape(batch, tokens, dim)

    def _head(self, task, x):
        """Head ``task`` on the patch tokens, rearranged as the reference does."""
        config = self.config
        out = self.model.heads[task](x)
        grid_h, grid_w = config.grid
        out = out.transpose(1, 2).reshape(x.shape[0], -1, grid_h, grid_w)
        return F.pixel_shuffle(out, config.patch)

    def _head_switch(self, task, x, first):
        """Heads ``first..`` as nested ``If`` nodes (their channel counts differ)."""
        last = len(self.config.tasks) - 1
        if first == last:
            return self._head(last, x).flatten(1)
        return torch.cond(
            task.reshape(()) == first,
            lambda task, x: self._head(first, x).flatten(1),
            lambda task, x: self._head_switch(task, x, first + 1),
            (task, x),
        )


def graph_metadata(config, task_name, kind, weights, weights_digest) -> dict:
    """The ``moevit.*`` metadata entries of a graph (see the module doc)."""
    return {
        "moevit.format": FORMAT,
        "moevit.config": json.dumps(config.to_dict(), sort_keys=True),
        "moevit.config_name": config.name,
        "moevit.config_hash": config_hash(config),
        "moevit.task": task_name,
        "moevit.kind": kind,
        "moevit.weights": weights,
        "moevit.weights_hash": weights_digest,
    }


def finish_graph(model, path, metadata: dict, doc: str):
    """Stamp metadata on a graph, write it as one file and check it fully.

    ``model`` is an ``onnx.ModelProto`` or an ``onnx_ir`` model (what the
    exporter returns; written without a copy to a proto). The written file
    must pass ``onnx.checker.check_model(full_check=True)`` (which includes
    strict shape inference); if it does not, it is removed and the checker's
    error raised. Returns the path.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, onnx.ModelProto):
        del model.metadata_props[:]
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.producer_name, model.doc_string = "moevit", doc
        onnx.save_model(model, str(path), save_as_external_data=False)
    else:
        import onnx_ir as ir

        model.metadata_props.clear()
        model.metadata_props.update(metadata)
        model.producer_name, model.doc_string = "moevit", doc
        ir.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception:
        path.unlink()
        raise
    return path


def export_onnx(model, task, path, *, batch: int = 1, weights: str = "unknown"):
    """Export ``model`` for one task, or for every task (``task="any"``).

    Parameters
    ----------
    model : MoEViT
        Put in eval mode for the export (gates without noise).
    task : str or int
        A task name or index, or ``"any"`` for the graph with a ``task`` input.
    path : path-like
        The ``.onnx`` file to write (one file, weights included).
    batch : int
        The fixed batch size of the ``images`` input.
    weights : str
        Where the weights come from (``"checkpoint <path>"``, ``"random seed
        0"``), stored in the metadata with their hash.

    Returns
    -------
    Path
    """
    config = model.config
    any_task = task == ANY_TASK
    task_index = None if any_task else config.task_index(task)
    check_positive("Batch", batch)
    model.eval()
    _check_experts(model)
    view = ExportView(model, task_index).eval()
    images = torch.zeros(batch, config.in_chans, *config.image_size)
    if any_task:
        args, names = (images, torch.zeros(1, dtype=torch.int64)), ["images", "task"]
    else:
        args, names = (images,), ["images"]
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        # Captured here (non-strict, static shapes): the exporter's own first
        # strategy fails on the task-any graph's torch.cond and retries with
        # dynamo, which doubles the export time.
        exported = torch.export.export(view, args, strict=False)
        program = torch.onnx.export(
            exported,
            args,
            input_names=names,
            output_names=["prediction"],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=False,
            verbose=False,
            custom_translation_table={
                torch.ops.moevit.expert_dispatch.default: _onnx_expert_dispatch
            },
        )
    task_name = ANY_TASK if any_task else config.task_names[task_index]
    metadata = graph_metadata(config, task_name, "float", weights, weights_hash(model.state_dict()))
    doc = (
        f"moevit {config.name!r} MoE-ViT, task {task_name!r}: images float32 "
        f"(batch {batch}, {config.in_chans}, {config.image_size[0]}, {config.image_size[1]})"
        + (", task int64 (1,) in 0..%d" % (len(config.tasks) - 1) if any_task else "")
        + " -> prediction float32 (batch, classes, height, width)"
    )
    return finish_graph(program.model, path, metadata, doc)
