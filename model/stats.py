"""Parameter counts, multiply-accumulates and expert weight bytes of a config.

Counted from the config alone (no model is built), per image and per task:

- MACs are the multiply-accumulates of the matrix products: patch embedding,
  QKV, ``q·kᵀ`` and ``attn·v`` (``tokens² · dim`` each), the output
  projection, dense MLPs, the task's gate, the experts and the task's head.
  Softmax, GELU, LayerNorm, residual adds and gate weighting are not MACs.
- ``macs`` counts the experts that the gate selects: every token runs
  ``top_k`` experts. ``macs_all_experts`` counts all ``experts`` per token,
  i.e. the same model with every expert activated, as a dense multi-expert
  layer would compute. The FLOPs reduction is ``1 - macs / macs_all_experts``;
  ``moe_reduction`` is the same ratio over the MoE layers only
  (``1 - top_k / experts`` of the expert MACs, gates included).
  M³ViT (Liang et al., NeurIPS 2022) reports an 88 % reduction of inference
  FLOPs for its 16-expert top-2 ViT; ``1 - 2/16 = 87.5 %`` of the experts' work.
- ``breakdown`` gives the MACs per layer, named as the model's modules
  (``blocks.1.mlp.experts`` with only the selected experts), for comparison
  with an exported graph.
- Expert weight bytes: the experts' weights and biases of all MoE layers, as
  float32 and as stored by the numeric contract (int8 weights, int32 biases).
"""

from moevit.model.config import ModelConfig

__all__ = ["model_stats", "parameter_counts"]


def parameter_counts(config: ModelConfig) -> dict:
    """Parameters by part: ``backbone`` (all but experts, gates and heads),
    ``experts``, ``gates`` (all tasks' gates), ``gate_noise`` (their learned
    noise weights, ``"renorm"`` gate only; training only), ``heads``, ``total``."""
    dim, patch = config.dim, config.patch
    moe = len(config.moe_blocks)
    dense = config.depth - moe
    tasks = len(config.tasks)
    norm = 2 * dim
    attention = dim * 3 * dim + (3 * dim if config.qkv_bias else 0) + dim * dim + dim
    mlp = dim * config.mlp_hidden + config.mlp_hidden + config.mlp_hidden * dim + dim
    backbone = (
        config.patch_dim * dim + dim  # patch_embed.proj
        + dim + config.tokens * dim  # cls_token, pos_embed
        + config.depth * (2 * norm + attention)
        + dense * mlp
        + norm  # final norm
    )
    expert = 2 * dim * config.expert_hidden + config.expert_hidden + dim
    experts = moe * config.experts * expert
    gates = moe * tasks * dim * config.experts
    gate_noise = gates if config.gate == "renorm" else 0  # noise[t]: one per gate
    heads = sum(dim * t.classes * patch * patch + t.classes * patch * patch for t in config.tasks)
    total = backbone + experts + gates + gate_noise + heads
    return {"backbone": backbone, "experts": experts, "gates": gates, "gate_noise": gate_noise,
            "heads": heads, "total": total}


def model_stats(config: ModelConfig, task=0) -> dict:
    """Figures of ``config`` for one image of ``task`` (name or index).

    Returns
    -------
    dict
        ``config``, ``task``, ``params`` (total), ``params_by_part``,
        ``active_params`` (what inference of one task may touch: backbone,
        all experts, its gates without the training noise weights, its head), ``macs``,
        ``macs_all_experts``, ``reduction`` (fraction), ``moe_macs``,
        ``moe_macs_all_experts``, ``moe_reduction``, ``expert_params``,
        ``expert_bytes_fp32``, ``expert_bytes_int8``, ``breakdown`` (layer
        name -> MACs with the selected experts).
    """
    t = config.task_index(task)
    spec = config.tasks[t]
    dim, tokens, patches = config.dim, config.tokens, config.patches
    breakdown = {"patch_embed.proj": patches * config.patch_dim * dim}
    moe_selected = moe_all = 0
    expert_macs = 2 * dim * config.expert_hidden  # one token through one expert
    for i in range(config.depth):
        prefix = f"blocks.{i}"
        breakdown[f"{prefix}.attn.qkv"] = tokens * dim * 3 * dim
        breakdown[f"{prefix}.attn.scores"] = tokens * tokens * dim  # q·kᵀ, all heads
        breakdown[f"{prefix}.attn.context"] = tokens * tokens * dim  # attn·v
        breakdown[f"{prefix}.attn.proj"] = tokens * dim * dim
        if config.is_moe(i):
            gate = tokens * dim * config.experts
            selected = tokens * config.top_k * expert_macs
            breakdown[f"{prefix}.mlp.gates.{t}"] = gate
            breakdown[f"{prefix}.mlp.experts"] = selected
            moe_selected += gate + selected
            moe_all += gate + tokens * config.experts * expert_macs
        else:
            breakdown[f"{prefix}.mlp.fc1"] = tokens * dim * config.mlp_hidden
            breakdown[f"{prefix}.mlp.fc2"] = tokens * config.mlp_hidden * dim
    breakdown[f"heads.{t}"] = patches * dim * spec.classes * config.patch**2
    macs = sum(breakdown.values())
    macs_all = macs - moe_selected + moe_all
    params = parameter_counts(config)
    moe = len(config.moe_blocks)
    expert_weights = moe * config.experts * 2 * dim * config.expert_hidden
    expert_biases = moe * config.experts * (config.expert_hidden + dim)
    head = dim * spec.classes * config.patch**2 + spec.classes * config.patch**2
    active = params["backbone"] + params["experts"] + moe * dim * config.experts + head
    return {
        "config": config.name,
        "task": spec.name,
        "params": params["total"],
        "params_by_part": params,
        "active_params": active,
        "macs": macs,
        "macs_all_experts": macs_all,
        "reduction": 1 - macs / macs_all,
        "moe_macs": moe_selected,
        "moe_macs_all_experts": moe_all,
        "moe_reduction": 1 - moe_selected / moe_all if moe_all else 0.0,
        "expert_params": expert_weights + expert_biases,
        "expert_bytes_fp32": 4 * (expert_weights + expert_biases),
        "expert_bytes_int8": expert_weights + 4 * expert_biases,
        "breakdown": breakdown,
    }
