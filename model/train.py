"""Multi-task training, on one process or many (PyTorch DDP under ``torchrun``).

One step trains every task of the config on the same global batch: each task
runs the model with its own gates and head, and the loss is

    Σ_task weight_task · loss_task  +  aux_weight · Σ_task aux_task

with cross-entropy for ``semseg`` (label 255 ignored), L1 over the valid
pixels (target > 0) for ``depth`` (M³ViT's losses for NYUD) and the MoE
load-balancing loss ``aux`` (weight 0.01, M³ViT's ``--moe_noisy_gate_loss_weight``).
The optimizer is AdamW with a linear warm-up and a cosine decay. A fresh
model's depth heads start with their bias at the mean depth of the first
batch.

Everything random is a function of ``(seed, step)``, not of a stream that
advances: the order of the samples (a permutation per epoch) and the standard
normal draws of the noisy gates (one tensor per step for the whole global
batch, see :meth:`MoEViT.noise_shape`). Hence

- resuming from a checkpoint continues exactly as if training had not stopped;
- with ``W`` processes each takes a contiguous ``1/W`` of every global batch
  and the matching slice of the noise; the per-process losses are means over
  equal shares and DDP averages the gradients, so the result equals one
  process on the whole batch up to the order of float additions. (The
  load-balancing loss is computed per image for the same reason; with real
  data where the number of valid pixels differs between shares, the equality
  holds only approximately.)

Launch several processes with ``torchrun --nproc-per-node N -m moevit train
...``; the gloo backend is used on CPU, NCCL on CUDA. Rank 0 shows the progress
bar and writes the checkpoint.
"""

import atexit
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moevit.errors import CheckpointError, ConfigError, NonFiniteError, UsageError, check_finite
from moevit.model.checkpoint import load_checkpoint, save_checkpoint
from moevit.model.config import ModelConfig, check_positive
from moevit.model.data import batch_of
from moevit.model.metrics import IGNORE
from moevit.model.moevit import MoEViT

DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = ["TrainOptions", "TrainResult", "MultiTaskLoss", "train", "global_batch_indices", "gate_noise"]


@dataclass
class TrainOptions:
    """How to train.

    Parameters
    ----------
    steps : int
        Optimizer steps in total (a resumed run stops at the same step).
    batch_size : int
        Global batch: divisible by the number of processes.
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
    warmup : int
        Steps of linear warm-up.
    min_lr_ratio : float
        The cosine decays to ``lr * min_lr_ratio``.
    aux_weight : float
        Weight of the load-balancing loss.
    task_weights : dict
        Task name -> loss weight (1 where absent).
    seed : int
        Seeds the initial weights, the sample order and the gate noise.
    checkpoint : str, optional
        Where to write the checkpoint (at the end, and every ``checkpoint_every`` steps).
    checkpoint_every : int
        0: only at the end.
    dtype : str
        ``"float32"`` or ``"float64"`` (the latter for exact comparisons, e.g.
        of a data-parallel run with a single-process one).
    """

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 30
    min_lr_ratio: float = 0.05
    aux_weight: float = 0.01
    task_weights: dict = field(default_factory=dict)
    seed: int = 0
    checkpoint: Optional[str] = None
    checkpoint_every: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        check_positive("Steps", self.steps)
        check_positive("Batch size", self.batch_size)
        if self.dtype not in DTYPES:
            raise ConfigError(f"Training dtype must be one of {list(DTYPES)}, not {self.dtype!r}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"Learning rate must be a positive finite number, not {self.lr!r}")
        for what, value in (("Warm-up", self.warmup), ("Checkpoint interval", self.checkpoint_every),
                            ("Seed", self.seed)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{what} must be a non-negative integer, not {value!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    model: MoEViT
    step: int
    history: list  # [step, total loss, {task: loss}] every step of this run
    checkpoint: Optional[str] = None


class MultiTaskLoss(nn.Module):
    """The model and its training loss in one module, so DDP sees one forward per step.

    ``forward(images, targets, noise)`` returns ``(total, per_task)``:
    the loss to minimise and a detached tensor of the task losses.
    """

    def __init__(self, model: MoEViT, aux_weight: float, task_weights=None):
        super().__init__()
        self.model = model
        self.aux_weight = aux_weight
        self.task_weights = [
            float((task_weights or {}).get(task.name, 1.0)) for task in model.config.tasks
        ]

    def forward(self, images, targets, noise=None):
        total = images.new_zeros(())
        losses = []
        for t, task in enumerate(self.model.config.tasks):
            prediction, aux = self.model(
                images, t, noise=None if noise is None else noise[t], return_aux=True
            )
            target = targets[task.name]
            # Means over the valid pixels; a batch without one teaches nothing (0, not nan).
            if task.kind == "semseg":
                valid = target != IGNORE
                loss = F.cross_entropy(prediction, target, ignore_index=IGNORE, reduction="sum")
            else:
                valid = target > 0
                loss = (prediction - target).abs()[valid].sum()
            loss = loss / valid.sum().clamp(min=1)
            losses.append(loss.detach())
            total = total + self.task_weights[t] * loss + self.aux_weight * aux
        return total, torch.stack(losses)


def _seeded(seed: int, stream: int, index: int) -> torch.Generator:
    """An independent generator for (seed, stream, index)."""
    return torch.Generator().manual_seed(((seed * 1009 + stream) * 1_000_003 + index) % 2**63)


def global_batch_indices(step: int, batch_size: int, size: int, seed: int) -> torch.Tensor:
    """Sample indices of the global batch of ``step``: a fresh permutation per epoch,
    the last incomplete batch of an epoch dropped."""
    per_epoch = size // batch_size
    if per_epoch == 0:
        raise ConfigError(f"Batch size {batch_size} exceeds the dataset's {size} samples")
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(size, generator=_seeded(seed, 1, epoch))
    return order[position * batch_size : (position + 1) * batch_size]


def gate_noise(model: MoEViT, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Standard normal draws of every task's noisy gates for the global batch of ``step``:
    (tasks, moe layers, batch, tokens, experts)."""
    shape = (len(model.config.tasks), *model.noise_shape(batch_size))
    return torch.randn(shape, generator=_seeded(seed, 2, step))


def _distributed():
    """(rank, world size), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Torn down before the interpreter's own teardown: left to it, a rank once died at
        # exit ("terminate called without an active exception") after a finished run.
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist.get_rank(), dist.get_world_size()


def _schedule(options: TrainOptions):
    def factor(step):
        if step < options.warmup:
            return (step + 1) / options.warmup
        progress = (step - options.warmup) / max(1, options.steps - options.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return options.min_lr_ratio + (1 - options.min_lr_ratio) * cosine

    return factor


def _init_depth_heads(model, dataset, options):
    """Start each depth head at the mean depth of the first global batch (the same
    batch on every rank), so training spends no steps learning the offset."""
    indices = global_batch_indices(0, options.batch_size, len(dataset), options.seed)
    batch = batch_of(dataset, indices)
    with torch.no_grad():
        for t, task in enumerate(model.config.tasks):
            target = batch[task.name]
            if task.kind == "depth" and (target > 0).any():
                model.heads[t].bias.fill_(float(target[target > 0].mean()))


def train(config: ModelConfig, options: TrainOptions, dataset, *, resume=None, progress=True):
    """Train a model of ``config`` on ``dataset``; see the module doc.

    Parameters
    ----------
    config : ModelConfig
    options : TrainOptions
    dataset
        A dataset of samples ``{"image": ..., task name: target}``
        (e.g. :class:`~moevit.model.data.SyntheticDataset`).
    resume : str or Path, optional
        A checkpoint written by this function: its weights, optimizer state and
        step are restored, and training continues to ``options.steps``.
    progress : bool
        Show a tqdm progress bar (rank 0 only).

    Returns
    -------
    TrainResult
    """
    from tqdm import tqdm

    rank, world = _distributed()
    if options.batch_size % world:
        raise ConfigError(
            f"Batch size {options.batch_size} is not divisible by {world} processes"
        )
    local = options.batch_size // world
    torch.manual_seed(options.seed)
    dtype = DTYPES[options.dtype]
    model = MoEViT(config).to(dtype)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(options))
    start = 0
    if resume is not None:
        restored, meta = load_checkpoint(resume, config)
        extra = meta["extra"]
        if "optimizer" not in extra or "step" not in extra:
            raise CheckpointError(f"Checkpoint {resume} has no training state to resume from")
        model.load_state_dict(restored.state_dict())
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        start = int(extra["step"])
        if start >= options.steps:
            raise UsageError(
                f"Checkpoint {resume} is already at step {start}; --steps {options.steps} leaves "
                f"nothing to train (give more than {start} steps)"
            )
    else:
        _init_depth_heads(model, dataset, options)
    net = MultiTaskLoss(model, options.aux_weight, options.task_weights)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Experts that no token of a rank's share chose get no gradient there.
        net = DistributedDataParallel(net, find_unused_parameters=True)
    model.train()
    history = []
    bar = tqdm(
        range(start, options.steps),
        initial=start,
        total=options.steps,
        desc=f"train {config.name}",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )

    def save(step):
        # Never save a diverged model (every rank checks, so all stop together).
        for name, value in model.state_dict().items():
            check_finite(f"Training diverged by step {step} (--lr {options.lr:g}): weight {name}", value)
        if options.checkpoint and rank == 0:
            save_checkpoint(
                options.checkpoint,
                model,
                extra={
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "options": asdict(options),
                    "world_size": world,
                    "loss": history[-1][1] if history else None,
                },
            )

    for step in bar:
        indices = global_batch_indices(step, options.batch_size, len(dataset), options.seed)
        mine = slice(rank * local, (rank + 1) * local)
        batch = batch_of(dataset, indices[mine])
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        check_finite(f"Training images of step {step + 1}", batch["image"])
        noise = gate_noise(model, step, options.batch_size, options.seed)[:, :, mine].to(dtype)
        total, losses = net(batch["image"], batch, noise)
        optimizer.zero_grad(set_to_none=False)
        total.backward()
        optimizer.step()
        scheduler.step()
        shown = torch.cat([total.detach()[None], losses])
        if world > 1:  # report the global batch's losses, as one process would
            import torch.distributed as dist

            dist.all_reduce(shown)
            shown /= world
        if not bool(torch.isfinite(shown).all()):
            named = [*zip(config.task_names, shown[1:].tolist()), ("total", float(shown[0]))]
            what, value = next((what, value) for what, value in named if not math.isfinite(value))
            raise NonFiniteError(
                f"Training diverged at step {step + 1} (--lr {options.lr:g}): the {what} loss is {value}; "
                "nothing of this run after the last checkpoint is saved"
            )
        task_losses = dict(zip(config.task_names, shown[1:].tolist()))
        history.append([step + 1, float(shown[0]), task_losses])
        bar.set_postfix(loss=f"{history[-1][1]:.3f}", **{k: f"{v:.3f}" for k, v in task_losses.items()})
        if options.checkpoint_every and (step + 1) % options.checkpoint_every == 0:
            save(step + 1)
    bar.close()
    save(options.steps)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    model.eval()
    return TrainResult(model, options.steps, history, options.checkpoint)

