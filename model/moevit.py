"""The reference MoE-ViT in PyTorch (M³ViT's structure, timm naming).

A ViT backbone whose odd blocks hold a Mixture-of-Experts feed-forward layer
with one gate per task (task-conditioned gating, M³ViT, Liang et al., NeurIPS
2022), and one dense prediction head per task. Every later stage (the integer
golden model, ONNX export, the importers, the hardware compiler) reads the
parameter names defined here:

==============================  =====================================
name                            shape
==============================  =====================================
``patch_embed.proj.weight``     (dim, in_chans, patch, patch)
``patch_embed.proj.bias``       (dim,)
``cls_token``                   (1, 1, dim)
``pos_embed``                   (1, tokens, dim); token 0 is the class token
``blocks.{i}.norm1.*``          LayerNorm(dim)
``blocks.{i}.attn.qkv.*``       Linear(dim, 3*dim); output split [q|k|v]
``blocks.{i}.attn.proj.*``      Linear(dim, dim)
``blocks.{i}.norm2.*``          LayerNorm(dim)
``blocks.{i}.mlp.fc1/fc2.*``    dense blocks: Linear(dim, mlp_hidden), Linear(mlp_hidden, dim)
``blocks.{i}.mlp.gates.{t}``    MoE blocks: Linear(dim, experts, bias=False), task t
``blocks.{i}.mlp.noise.{t}``    MoE blocks of the ``"renorm"`` gate only: Linear(dim, experts,
                                bias=False), learned noise std of task t's gate (training only)
``blocks.{i}.mlp.experts.fc1``  weight (E, expert_hidden, dim), bias (E, expert_hidden)
``blocks.{i}.mlp.experts.fc2``  weight (E, dim, expert_hidden), bias (E, dim)
``norm.*``                      final LayerNorm(dim)
``heads.{t}.*``                 Linear(dim, classes*patch*patch)
==============================  =====================================

Gating for task ``t`` (:class:`MoE`): ``logits = x @ gates[t].weight.T`` (no
bias). Each token takes the ``top_k`` largest logits (on ties the lowest expert
index wins); its gate weights follow the config's rule (:attr:`ModelConfig.gate
<moevit.model.config.ModelConfig>`, in :func:`gate_weights`):

``"vmoe"`` (``tiny``, ``edge-moe``, ``m3vit-s``: the anchors' rule)
    the softmax over all ``E`` logits, of which the ``k`` selected keep their
    probabilities (V-MoE; M³ViT's ``noisy_vmoe`` gate, Edge-MoE). While
    training, the logits get Gaussian noise of fixed standard deviation
    ``gate_noise / E`` before the softmax and the selection.
``"renorm"``
    the softmax over the ``k`` selected logits (Shazeer et al., 2017, "noisy
    top-k gating", M³ViT's ``noisy`` gate). While training, noise of learned
    standard deviation ``softplus(x @ noise[t].weight.T) + 0.01``.

The output is ``Σ weight · expert(x)``. Only the task's gate runs and only the
selected experts compute.

Two dispatches compute the same function (:attr:`MoE.dispatch`):

``"sorted"`` (the reference, used for training and evaluation)
    M³ViT's computation reordering: the (token, expert) pairs are sorted by
    expert, each expert gathers its tokens and runs once on them, and the
    results are scattered back weighted. Experts that no token selected do not
    run. Shapes depend on the routing, so this path is not ``torch.export``-able.
``"gather"`` (static shapes, for ``torch.export`` / ONNX)
    Each (token, slot) pair gathers its selected expert's weights and computes
    with them (batched matrix products). It computes exactly the selected
    experts' multiply-accumulates, with shapes fixed by the config, at the cost
    of memory for the gathered weights (tokens × k × one expert's weights).

The load-balancing loss of one MoE layer is ``cv²(importance) + cv²(load)``
(Shazeer et al.): importance is the sum over tokens of the gate weights (zero
for unselected experts), load is the number of tokens routed to each expert,
or while training with noise its smooth estimate (the probability that the
expert stays in the top-k under a fresh draw of its noise, Shazeer's
estimator, with thresholds in logits; M³ViT's ``noisy_vmoe`` gate passes it
softmax probabilities as thresholds, a slip of units not copied here). ``cv²(v) =
var(v) / (mean(v)² + 1e-10)`` over the experts, with the unbiased variance as in
M³ViT's gate. It is computed per image and averaged over the batch, so that it
does not depend on how a batch is split across processes (data-parallel
training gives the same result as one process). ``forward(...,
return_aux=True)`` returns it, summed over the MoE layers.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from moevit.errors import ConfigError, MoevitError
from moevit.model.config import GATES, ModelConfig

__all__ = [
    "InputShapeError",
    "MoEViT",
    "MoE",
    "Experts",
    "ExpertLinear",
    "Mlp",
    "Attention",
    "Block",
    "PatchEmbed",
    "top_k_gating",
    "gate_weights",
    "cv_squared",
    "NOISE_EPSILON",
    "DISPATCHES",
]

NOISE_EPSILON = 1e-2  # floor of the learned noise std (Shazeer et al.; M³ViT's noisy gate)
DISPATCHES = ("sorted", "gather")


class InputShapeError(MoevitError, ValueError):
    """An input tensor does not have the shape the model's config fixes."""


def _check_dispatch(dispatch):
    if dispatch not in DISPATCHES:
        raise ValueError(f"Dispatch must be one of {DISPATCHES}, not {dispatch!r}")


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation over the last axis.

    ``var / (mean² + 1e-10)`` with the unbiased variance; 0 for a single value.
    Computed in the input's dtype.
    """
    if values.shape[-1] <= 1:
        return values.new_zeros(values.shape[:-1])
    return values.var(dim=-1) / (values.mean(dim=-1) ** 2 + 1e-10)


def gate_weights(logits: torch.Tensor, indices: torch.Tensor, gate: str) -> torch.Tensor:
    """Weights of the selected experts ``indices`` (..., k) under the gate rule ``gate``.

    ``"vmoe"``: the softmax over all the logits (..., E), taken at ``indices``;
    ``"renorm"``: the softmax over the selected logits.
    """
    if gate == "vmoe":
        return torch.softmax(logits, dim=-1).gather(-1, indices)
    if gate == "renorm":
        return torch.softmax(logits.gather(-1, indices), dim=-1)
    raise ConfigError(f"Gate must be one of {GATES}, not {gate!r}")


def top_k_gating(logits: torch.Tensor, k: int, gate: str):
    """Top-k selection with the lowest expert index winning ties.

    Parameters
    ----------
    logits : Tensor (..., E)
    k : int
    gate : str
        The rule of the weights, ``"vmoe"`` or ``"renorm"`` (:func:`gate_weights`).

    Returns
    -------
    indices : LongTensor (..., k)
        Selected experts, largest logit first (equal logits: lower index first).
    weights : Tensor (..., k)
        Their gate weights.
    """
    # k rounds of argmax (first maximum = lowest index, in torch as in ONNX
    # ArgMax), masking each winner: torch.topk promises no order on ties, and
    # the ONNX exporter has no stable sort. k is small (2 or 4).
    chosen = []
    masked = logits
    for _ in range(k):
        index = masked.argmax(dim=-1, keepdim=True)
        chosen.append(index)
        masked = masked.scatter(-1, index, float("-inf"))
    indices = torch.cat(chosen, dim=-1)
    return indices, gate_weights(logits, indices, gate)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: ``proj`` is a strided convolution.

    The integer model treats it as a linear layer on each patch flattened in
    (channel, row, col) order: ``proj.weight.reshape(dim, in_chans*patch*patch)``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_chans, config.dim, config.patch, stride=config.patch)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, patches, dim), row-major


class Attention(nn.Module):
    """Multi-head self-attention: ``softmax(q·kᵀ·head_dim^-0.5)·v`` per head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.dim, config.dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Mlp(nn.Module):
    """Dense feed-forward layer: ``fc2(GELU(fc1(x)))`` (erf GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ExpertLinear(nn.Module):
    """``E`` linear layers side by side: weight (E, out, in), bias (E, out).

    FastMoE's ``htoh4``/``h4toh`` layout, one ``nn.Linear``-shaped slice per expert.
    """

    def __init__(self, experts: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(experts, out_features))

    def forward(self, x, expert: int):
        """Expert ``expert`` on rows ``x`` (n, in)."""
        return F.linear(x, self.weight[expert], self.bias[expert])


class Experts(nn.Module):
    """The experts of one MoE layer: ``fc2(GELU(fc1(x)))`` each."""

    def __init__(self, experts: int, dim: int, hidden: int):
        super().__init__()
        self.fc1 = ExpertLinear(experts, dim, hidden)
        self.act = nn.GELU()
        self.fc2 = ExpertLinear(experts, hidden, dim)

    def forward(self, x, expert: int):
        return self.fc2(self.act(self.fc1(x, expert)), expert)


class MoE(nn.Module):
    """Task-conditioned Mixture-of-Experts feed-forward layer (see the module doc).

    Parameters
    ----------
    config : ModelConfig

    Attributes
    ----------
    gates : ModuleList of Linear(dim, experts, bias=False)
        One gate per task.
    noise : ModuleList of Linear(dim, experts, bias=False), or None
        ``"renorm"`` gate: per task, the learned noise std of the gate (used
        while training only; zero-initialised, so the std starts at
        ``softplus(0) + 0.01``). None for ``"vmoe"``, whose noise std is fixed.
    experts : Experts
    gate : str
        The gate rule, ``config.gate``.
    noise_std : float
        ``"vmoe"`` gate: the fixed training noise std ``config.gate_noise / experts``.
    dispatch : str
        ``"sorted"`` (reference) or ``"gather"`` (static shapes, exportable).
    noisy : bool
        Whether training adds noise to the gate logits (default True).
    """

    def __init__(self, config: ModelConfig, dispatch: str = "sorted"):
        super().__init__()
        self.num_experts = config.experts
        self.top_k = config.top_k
        self.gate = config.gate
        self.noise_std = config.gate_noise / config.experts
        ntasks = len(config.tasks)
        self.gates = nn.ModuleList(
            nn.Linear(config.dim, config.experts, bias=False) for _ in range(ntasks)
        )
        self.noise = None
        if config.gate == "renorm":
            self.noise = nn.ModuleList(
                nn.Linear(config.dim, config.experts, bias=False) for _ in range(ntasks)
            )
        self.experts = Experts(config.experts, config.dim, config.expert_hidden)
        self.dispatch = dispatch
        self.noisy = True

    def route(self, x, task: int, noise=None):
        """Gate ``x`` (N, dim) for ``task``.

        Parameters
        ----------
        x : Tensor (N, dim)
        task : int
        noise : Tensor (N, E) or None
            Standard normal draws used while training; drawn here if None.

        Returns
        -------
        indices : LongTensor (N, k)
        weights : Tensor (N, k)
        load : Tensor (N, E)
            Per token, its contribution to each expert's load: the selection
            indicator, or while training with noise the smooth estimate.
        """
        clean = self.gates[task](x)
        noiseless = self.gate == "vmoe" and self.noise_std == 0
        if not (self.training and self.noisy) or noiseless:
            indices, weights = top_k_gating(clean, self.top_k, self.gate)
            load = torch.zeros_like(clean).scatter(-1, indices, 1.0)
            return indices, weights, load
        if self.gate == "vmoe":
            std = clean.new_tensor(self.noise_std)
        else:
            std = F.softplus(self.noise[task](x)) + NOISE_EPSILON
        if noise is None:
            noise = torch.randn_like(clean)
        noisy = clean + noise * std
        indices, weights = top_k_gating(noisy, self.top_k, self.gate)
        if self.top_k == self.num_experts:
            return indices, weights, torch.ones_like(clean)
        # Shazeer's load estimator: expert e stays selected if its noisy logit
        # beats the k-th largest of the *other* experts' noisy logits: the
        # (k+1)-th overall if e is selected, the k-th overall if it is not.
        ranked = torch.topk(noisy, self.top_k + 1, dim=-1).values  # values only: ties do not matter
        kth, kplus1th = ranked[:, self.top_k - 1 : self.top_k], ranked[:, self.top_k : self.top_k + 1]
        selected = torch.zeros_like(clean, dtype=torch.bool).scatter(-1, indices, True)
        threshold = torch.where(selected, kplus1th, kth)
        load = torch.special.ndtr((clean - threshold) / std)
        return indices, weights, load

    def forward(self, x, task: int, *, noise=None, return_aux: bool = False):
        """Apply the layer to ``x`` (B, T, dim) for ``task``.

        Returns ``y`` (B, T, dim), or ``(y, aux)`` with ``return_aux`` where
        ``aux`` is this layer's load-balancing loss (a scalar).
        """
        batch, tokens, dim = x.shape
        flat = x.reshape(batch * tokens, dim)
        flat_noise = None if noise is None else noise.reshape(batch * tokens, -1)
        indices, weights, load = self.route(flat, task, flat_noise)
        if self.dispatch == "sorted":
            y = self._sorted(flat, indices, weights)
        elif self.dispatch == "gather":
            y = self._gather(flat, indices, weights)
        else:
            raise ValueError(f"Dispatch must be one of {DISPATCHES}, not {self.dispatch!r}")
        y = y.reshape(batch, tokens, dim)
        if not return_aux:
            return y
        gates = torch.zeros_like(load).scatter(-1, indices, weights)  # (N, E)
        importance = gates.reshape(batch, tokens, -1).sum(1)
        load = load.reshape(batch, tokens, -1).sum(1)
        aux = (cv_squared(importance) + cv_squared(load)).mean()
        return y, aux

    def _sorted(self, x, indices, weights):
        """Reference dispatch: group the (token, slot) pairs by expert."""
        k = indices.shape[1]
        flat_experts = indices.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)  # by expert, then token, then slot
        token_of = order // k
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        gathered = x[token_of]
        outputs = []
        start = 0
        for expert, count in enumerate(counts):
            if count:  # an expert no token chose does not run
                outputs.append(self.experts(gathered[start : start + count], expert))
            start += count
        y = torch.cat(outputs) * weights.reshape(-1)[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add(0, token_of, y)

    def _gather(self, x, indices, weights):
        """Static-shape dispatch: each (token, slot) gathers its expert's weights."""
        fc1, fc2 = self.experts.fc1, self.experts.fc2
        hidden = torch.einsum("nd,nkhd->nkh", x, fc1.weight[indices]) + fc1.bias[indices]
        hidden = self.experts.act(hidden)
        y = torch.einsum("nkh,nkdh->nkd", hidden, fc2.weight[indices]) + fc2.bias[indices]
        return (y * weights.unsqueeze(-1).to(x.dtype)).sum(1)


class Block(nn.Module):
    """Pre-norm transformer block: ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, config: ModelConfig, moe: bool, dispatch: str = "sorted"):
        super().__init__()
        self.is_moe = moe
        self.norm1 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        if moe:
            self.mlp = MoE(config, dispatch)
        else:
            self.mlp = Mlp(config.dim, config.mlp_hidden)

    def forward(self, x, task: int, *, noise=None, return_aux: bool = False):
        """Returns ``(x, aux)``; ``aux`` is None for a dense block or without ``return_aux``."""
        x = x + self.attn(self.norm1(x))
        if not self.is_moe:
            return x + self.mlp(self.norm2(x)), None
        if return_aux:
            y, aux = self.mlp(self.norm2(x), task, noise=noise, return_aux=True)
            return x + y, aux
        return x + self.mlp(self.norm2(x), task, noise=noise), None


class MoEViT(nn.Module):
    """M³ViT-style multi-task MoE Vision Transformer.

    Parameters
    ----------
    config : ModelConfig
    dispatch : str
        How MoE layers compute: ``"sorted"`` (the reference) or ``"gather"``
        (static shapes, for ``torch.export``); see the module doc. Change later
        with :meth:`set_dispatch`.

    Examples
    --------
    >>> model = MoEViT(get_config("tiny")).eval()
    >>> model(torch.zeros(2, 3, 64, 64), "semseg").shape
    torch.Size([2, 4, 64, 64])
    """

    def __init__(self, config: ModelConfig, *, dispatch: str = "sorted"):
        super().__init__()
        _check_dispatch(dispatch)
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens, config.dim))
        self.blocks = nn.ModuleList(
            Block(config, config.is_moe(i), dispatch) for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.heads = nn.ModuleList(
            nn.Linear(config.dim, task.classes * config.patch * config.patch)
            for task in config.tasks
        )
        self.reset_parameters()

    @property
    def moe_layers(self) -> list:
        """The MoE layers, in block order."""
        return [block.mlp for block in self.blocks if block.is_moe]

    def set_dispatch(self, dispatch: str) -> "MoEViT":
        """Switch every MoE layer to ``"sorted"`` or ``"gather"``; returns self."""
        _check_dispatch(dispatch)
        for layer in self.moe_layers:
            layer.dispatch = dispatch
        return self

    def reset_parameters(self):
        """timm's ViT initialisation: truncated normal (std 0.02), zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, ExpertLinear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.moe_layers:
            for noise in layer.noise or ():
                nn.init.zeros_(noise.weight)  # Shazeer: the noise std starts equal for all
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def check_images(self, images):
        """A clear error unless ``images`` is (batch, in_chans, height, width) of the config."""
        config = self.config
        expected = (config.in_chans, *config.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise InputShapeError(
                f"Images of shape {tuple(images.shape)} do not fit model {config.name!r}; "
                f"expected (batch, {', '.join(map(str, expected))})"
            )

    def forward_features(self, images, task, *, noise=None, return_aux: bool = False):
        """Tokens after the final norm, (B, tokens, dim); with ``return_aux`` also the aux loss."""
        self.check_images(images)
        task = self.config.task_index(task)
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        aux = x.new_zeros(())
        moe_index = 0
        for block in self.blocks:
            layer_noise = None
            if block.is_moe and noise is not None:
                layer_noise = noise[moe_index]
            x, layer_aux = block(x, task, noise=layer_noise, return_aux=return_aux)
            if layer_aux is not None:
                aux = aux + layer_aux
            moe_index += block.is_moe
        x = self.norm(x)
        return (x, aux) if return_aux else x

    def forward(self, images, task, *, noise=None, return_aux: bool = False):
        """Dense prediction of ``task`` for ``images`` (B, in_chans, H, W).

        Parameters
        ----------
        images : Tensor (B, in_chans, H, W)
        task : str or int
            Task name or index; only this task's gates and head run.
        noise : Tensor (moe_layers, B, tokens, experts), optional
            Standard normal draws for the noisy gates while training (drawn
            from torch's generator if omitted; ignored in eval mode). Passing
            them makes training independent of how a batch is split.
        return_aux : bool
            Also return the load-balancing loss summed over the MoE layers.

        Returns
        -------
        Tensor (B, classes, H, W), or ``(prediction, aux)``.
        """
        task = self.config.task_index(task)
        if return_aux:
            x, aux = self.forward_features(images, task, noise=noise, return_aux=True)
        else:
            x = self.forward_features(images, task, noise=noise)
        out = self.heads[task](x[:, 1:])  # patch tokens only
        batch = out.shape[0]
        grid_h, grid_w = self.config.grid
        # Features are ordered (class, row-in-patch, col-in-patch), as pixel_shuffle expects.
        out = out.transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        out = F.pixel_shuffle(out, self.config.patch)
        return (out, aux) if return_aux else out

    def noise_shape(self, batch: int) -> tuple:
        """Shape of the ``noise`` argument for a batch of ``batch`` images."""
        return (len(self.moe_layers), batch, self.config.tokens, self.config.experts)
