"""Named, validated model configurations.

A :class:`ModelConfig` fixes every shape of an MoE-ViT: the ViT backbone,
which blocks hold a Mixture-of-Experts feed-forward layer, the experts and
their top-k gating, and the dense prediction tasks. Three named configs anchor
every comparison in the project (see ``CONFIGS``); each cites its source.
"""

import math
import operator
from dataclasses import dataclass, field, replace

from moevit.errors import ConfigError

__all__ = [
    "TaskSpec",
    "ModelConfig",
    "CONFIGS",
    "get_config",
    "DEFAULT_CONFIG",
    "check_positive",
    "GATES",
    "LEGACY_GATE",
]

TASK_KINDS = ("semseg", "depth")
#: The gate rules of :attr:`ModelConfig.gate`.
GATES = ("vmoe", "renorm")
#: The rule of every file written before the gate was a config field.
LEGACY_GATE = "renorm"


@dataclass(frozen=True)
class TaskSpec:
    """One dense prediction task.

    Parameters
    ----------
    name : str
        Name used on the command line (``--task NAME``).
    kind : str
        ``"semseg"`` (per-pixel classes, metric mIoU) or ``"depth"`` (one
        channel, metric RMSE).
    classes : int
        Output channels: the number of classes for ``semseg``, 1 for ``depth``.
    """

    name: str
    kind: str
    classes: int = 1

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"Task kind must be one of {TASK_KINDS}, not {self.kind!r}")
        check_positive("Task classes", self.classes)
        if self.kind == "depth" and self.classes != 1:
            raise ConfigError(f"A depth task has 1 output channel, not {self.classes}")


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of an M³ViT-style multi-task MoE-ViT.

    Parameters
    ----------
    name : str
        The config's name.
    source : str
        Where the numbers come from.
    image_size : (int, int)
        Input height and width in pixels; both divisible by ``patch``.
    patch : int
        Patch side in pixels.
    dim : int
        Token width (embedding dimension).
    depth : int
        Number of transformer blocks.
    heads : int
        Attention heads; must divide ``dim``.
    mlp_hidden : int
        Hidden width of the dense feed-forward layer (blocks without MoE).
    experts : int
        Experts per MoE layer.
    top_k : int
        Experts selected per token, ``1 <= top_k <= experts``.
    expert_hidden : int
        Hidden width of one expert.
    moe_blocks : tuple of int
        Indices of the blocks whose feed-forward layer is an MoE layer
        (M³ViT: the odd blocks).
    tasks : tuple of TaskSpec
        The tasks; each has its own gate in every MoE layer and its own head.
    in_chans : int
        Input channels.
    qkv_bias : bool
        Whether the QKV projection has a bias.
    layer_norm_eps : float
        Epsilon of every LayerNorm.
    gate : str
        How a token's ``top_k`` selected experts are weighted, and the noise
        its gate gets in training (selection is the same: the ``top_k``
        largest logits, ties to the lowest index):

        ``"vmoe"``
            V-MoE's rule (Riquelme et al., NeurIPS 2021), as M³ViT's
            ``noisy_vmoe`` gate (``models/gate_funs/noisy_gate_vmoe.py``) and
            Edge-MoE's accelerator (``src/moe.cpp``, ``compute_gating``): the
            softmax over **all** ``experts`` logits, of which the selected
            keep their probabilities, not renormalised (they sum to less than
            1). In training the logits get Gaussian noise of fixed standard
            deviation ``gate_noise / experts``, before the softmax.
        ``"renorm"``
            The renormalised top-k (Shazeer et al., 2017; M³ViT's ``noisy``
            gate, FastMoE's and GShard's top-k gates): the softmax over the
            ``top_k`` selected logits only. In training the noise has the
            learned standard deviation ``softplus(x @ noise[t]) + 0.01``
            (the ``noise`` weights exist only under this rule).

        ``tiny`` takes ``"vmoe"``, the anchors' rule: the default config then
        trains and tests exactly the gate arithmetic that ``edge-moe`` and
        ``m3vit-s`` need and that the accelerator's MoE unit implements
        (one softmax over the E logits, as Edge-MoE's), so nothing verified
        on ``tiny`` has to be verified again for another rule.
    gate_noise : float
        The ``"vmoe"`` gate's ``noise_std`` (M³ViT's ``--vmoe_noisy_std``,
        default 1): training noise of standard deviation
        ``gate_noise / experts``; 0 trains without noise. Unused by
        ``"renorm"``.
    """

    name: str
    source: str
    image_size: tuple
    patch: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    experts: int
    top_k: int
    expert_hidden: int
    moe_blocks: tuple
    tasks: tuple
    in_chans: int = 3
    qkv_bias: bool = True
    layer_norm_eps: float = field(default=1e-6, compare=False)
    gate: str = "vmoe"
    gate_noise: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Model config name must be a non-empty string, not {self.name!r}")
        if self.gate not in GATES:
            raise ConfigError(f"Gate must be one of {GATES}, not {self.gate!r}")
        if (
            isinstance(self.gate_noise, bool)
            or not isinstance(self.gate_noise, (int, float))
            or not math.isfinite(self.gate_noise)
            or self.gate_noise < 0
        ):
            raise ConfigError(f"Gate noise must be a finite number >= 0, not {self.gate_noise!r}")
        if not isinstance(self.image_size, tuple) or len(self.image_size) != 2:
            raise ConfigError(f"Image size must be a (height, width) pair, not {self.image_size!r}")
        for what, value in (
            ("Image height", self.image_size[0]),
            ("Image width", self.image_size[1]),
            ("Patch size", self.patch),
            ("Dim", self.dim),
            ("Depth", self.depth),
            ("Heads", self.heads),
            ("MLP hidden width", self.mlp_hidden),
            ("Experts", self.experts),
            ("Top-k", self.top_k),
            ("Expert hidden width", self.expert_hidden),
            ("Input channels", self.in_chans),
        ):
            check_positive(what, value)
        eps = self.layer_norm_eps  # NaN fails the comparison too
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
            raise ConfigError(f"LayerNorm epsilon must be a positive finite number, not {eps!r}")
        height, width = self.image_size
        if height % self.patch or width % self.patch:
            raise ConfigError(
                f"Image size {height}x{width} is not divisible by the patch size {self.patch}"
            )
        if self.dim % self.heads:
            raise ConfigError(f"Dim {self.dim} is not divisible by {self.heads} heads")
        if self.top_k > self.experts:
            raise ConfigError(f"Top-k {self.top_k} exceeds the number of experts {self.experts}")
        bad = [b for b in self.moe_blocks if not (isinstance(b, int) and 0 <= b < self.depth)]
        if bad:
            raise ConfigError(f"MoE block indices {bad} are outside 0..{self.depth - 1}")
        if not self.tasks:
            raise ConfigError("A model needs at least one task")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"Task names must be unique, not {names}")

    # Derived shapes -------------------------------------------------------
    @property
    def grid(self) -> tuple:
        """Patches per column and per row."""
        return self.image_size[0] // self.patch, self.image_size[1] // self.patch

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens(self) -> int:
        """Sequence length: the patches plus the class token."""
        return self.patches + 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def patch_dim(self) -> int:
        """Input width of the patch embedding (pixels of one patch, all channels)."""
        return self.in_chans * self.patch * self.patch

    @property
    def task_names(self) -> tuple:
        return tuple(task.name for task in self.tasks)

    def is_moe(self, block: int) -> bool:
        return block in self.moe_blocks

    def task_index(self, task) -> int:
        """Index of a task given by name or index; a clear error if there is none.

        An index may be any integer type: a Python or numpy integer, or a 0-d
        integer array or tensor (anything ``operator.index`` accepts; not a bool).
        """
        if isinstance(task, str):
            if task in self.task_names:
                return self.task_names.index(task)
            raise ConfigError(
                f"Model {self.name!r} has no task {task!r}; its tasks are {list(self.task_names)}"
            )
        try:
            scalar = getattr(task, "ndim", 0) == 0  # torch would take a one-element tensor too
            index = operator.index(task) if scalar and not _is_bool(task) else None
        except TypeError:
            index = None
        if index is not None and 0 <= index < len(self.tasks):
            return index
        raise ConfigError(
            f"Model {self.name!r} has no task {task!r}; task ids are 0..{len(self.tasks) - 1}"
        )

    def differences(self, found: "ModelConfig") -> list:
        """``found``'s fields that differ from this config's (``source`` aside), one string each."""
        return [
            f"{name} {getattr(found, name)!r} (expected {getattr(self, name)!r})"
            for name in self.__dataclass_fields__
            if name != "source" and getattr(self, name) != getattr(found, name)
        ]

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["image_size"] = list(self.image_size)
        data["moe_blocks"] = list(self.moe_blocks)
        data["tasks"] = [vars(task).copy() for task in self.tasks]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """The config of :meth:`to_dict`; one without ``gate`` (written before the
        gate was a field) is read with the rule it was computed with, :data:`LEGACY_GATE`."""
        if not isinstance(data, dict):
            raise ConfigError(f"Malformed model config: a {type(data).__name__}, not a mapping")
        try:
            fields = dict(data)
            fields.setdefault("gate", LEGACY_GATE)
            fields["image_size"] = tuple(fields["image_size"])
            fields["moe_blocks"] = tuple(fields["moe_blocks"])
            fields["tasks"] = tuple(TaskSpec(**task) for task in fields["tasks"])
            return cls(**fields)
        except (KeyError, TypeError) as error:
            raise ConfigError(f"Malformed model config: {error}") from None


def _is_bool(value) -> bool:
    """A bool, numpy bool, or boolean array or tensor (``operator.index`` takes some as 0 or 1)."""
    return "bool" in str(getattr(value, "dtype", type(value).__name__))


def check_positive(what, value):
    """A :class:`ConfigError` ("Batch must be a positive integer, not 0") unless ``value`` is an int > 0."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, not {value!r}")


def _odd_blocks(depth):
    return tuple(range(1, depth, 2))


CONFIGS = {
    config.name: config
    for config in (
        ModelConfig(
            name="tiny",
            source="moevit's CPU-fast default: M³ViT's structure (MoE in odd blocks, "
            "per-task gates, top-2) at a size that trains in minutes on 2 cores",
            image_size=(64, 64),
            patch=8,
            dim=64,
            depth=4,
            heads=4,
            mlp_hidden=256,
            experts=8,
            top_k=2,
            expert_hidden=128,
            moe_blocks=_odd_blocks(4),
            tasks=(TaskSpec("semseg", "semseg", 4), TaskSpec("depth", "depth")),
            gate="vmoe",  # the anchors' rule (see ModelConfig's gate)
            gate_noise=1.0,  # M³ViT's default --vmoe_noisy_std: noise std 1/8 in training
        ),
        ModelConfig(
            name="edge-moe",
            source="Edge-MoE (Sarkar et al., ICCAD 2023) and UbiMoE (2025) include/model.hpp: "
            "the M³ViT model they implement on ZCU102/U280; tasks as M³ViT's Cityscapes set "
            "(VITA-Group/M3ViT data/cityscapes.py, utils/config.py: MTAN's 128x256 "
            "preprocessed images, 7-class semseg + depth)",
            image_size=(128, 256),
            patch=16,
            dim=192,
            depth=12,
            heads=3,
            mlp_hidden=768,
            experts=16,
            top_k=2,
            expert_hidden=384,
            moe_blocks=_odd_blocks(12),
            tasks=(TaskSpec("semseg", "semseg", 7), TaskSpec("depth", "depth")),
            gate="vmoe",  # src/moe.cpp: exp(score - max) / sum over all 16 experts, no renormalisation
            gate_noise=0.0,  # an M³ViT model, trained with README.md's --vmoe_noisy_std 0
        ),
        ModelConfig(
            name="m3vit-s",
            source="M³ViT (Liang et al., NeurIPS 2022), github.com/VITA-Group/M3ViT @d448b6f: "
            "configs/nyud/vit_moe/pup_moe_vit_small_multi_task_baseline.yml (img_size [480,640], "
            "patch_size 16, embed_dim 384, depth 12, num_heads 12, mlp_ratio 4, qkv_bias, "
            "num_classes 40, gate_dim 386 = 384 + 2 tasks) with README.md's training flags "
            "(--moe_experts 16 --moe_top_k 4 --moe_mlp_ratio 1 --multi_gate True); "
            "models/vision_transformer_moe.py puts MoE in blocks with i % 2 == 1",
            image_size=(480, 640),
            patch=16,
            dim=384,
            depth=12,
            heads=12,
            mlp_hidden=1536,
            experts=16,
            top_k=4,
            expert_hidden=384,
            moe_blocks=_odd_blocks(12),
            tasks=(TaskSpec("semseg", "semseg", 40), TaskSpec("depth", "depth")),
            gate="vmoe",  # README.md: --moe_gate_type "noisy_vmoe"
            gate_noise=0.0,  # README.md: --vmoe_noisy_std 0
        ),
    )
}

DEFAULT_CONFIG = "tiny"


def get_config(name: str) -> ModelConfig:
    """The named config; a clear error naming the known ones otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"Unknown config {name!r}; known configs are {sorted(CONFIGS)}") from None
