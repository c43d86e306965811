import re

import pytest
import torch
import torch.nn.functional as F

from moevit.errors import ConfigError
from moevit.model.config import get_config
from moevit.model.moevit import (
    Experts,
    InputShapeError,
    MoEViT,
    NOISE_EPSILON,
    top_k_gating,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MoEViT(get_config("tiny")).eval()


def images(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_chans, *config.image_size, generator=generator)


def test_output_shapes_per_task(tiny):
    x = images(tiny.config)
    assert tiny(x, "semseg").shape == (2, 4, 64, 64)
    assert tiny(x, "depth").shape == (2, 1, 64, 64)
    assert tiny(x, 1).shape == (2, 1, 64, 64)


def test_parameter_names_and_shapes_follow_the_contract():
    config = get_config("edge-moe")
    with torch.device("meta"):
        model = MoEViT(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["patch_embed.proj.weight"] == (192, 3, 16, 16)
    assert shapes["cls_token"] == (1, 1, 192) and shapes["pos_embed"] == (1, 129, 192)
    assert shapes["blocks.0.attn.qkv.weight"] == (576, 192)
    assert shapes["blocks.0.mlp.fc1.weight"] == (768, 192)
    assert shapes["blocks.1.mlp.gates.1.weight"] == (16, 192)
    assert not any(".noise." in name for name in shapes)  # the V-MoE gate's noise std is fixed
    with torch.device("meta"):
        renorm = MoEViT(config.replace(gate="renorm"))
    assert renorm.state_dict()["blocks.1.mlp.noise.0.weight"].shape == (16, 192)
    assert shapes["blocks.11.mlp.experts.fc1.weight"] == (16, 384, 192)
    assert shapes["blocks.11.mlp.experts.fc1.bias"] == (16, 384)
    assert shapes["blocks.11.mlp.experts.fc2.weight"] == (16, 192, 384)
    assert shapes["blocks.11.mlp.experts.fc2.bias"] == (16, 192)
    assert shapes["heads.0.weight"] == (7 * 256, 192) and shapes["heads.1.weight"] == (256, 192)
    assert not any(name.startswith("blocks.2.mlp.gates") for name in shapes)
    assert "blocks.2.mlp.experts.fc1.weight" not in shapes


def test_top_k_ties_go_to_the_lowest_index_and_weights_follow_the_rule():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 2.0, 5.0]])
    indices, renorm = top_k_gating(logits, 2, "renorm")
    assert indices.tolist() == [[1, 2], [0, 1], [3, 0]]
    selected = torch.tensor([[3.0, 3.0], [0.0, 0.0], [5.0, 2.0]])
    assert torch.allclose(renorm, torch.softmax(selected, dim=-1))
    same, vmoe = top_k_gating(logits, 2, "vmoe")
    assert torch.equal(same, indices)
    # V-MoE: each selected expert keeps its probability among all four
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    by_hand = torch.exp(selected - logits.max(-1, keepdim=True).values) / e.sum(-1, keepdim=True)
    assert torch.allclose(vmoe, by_hand)
    assert torch.allclose(vmoe[1], torch.tensor([0.25, 0.25]))  # not renormalised to 1/2 each


def naive_moe(layer, x, task):
    """Every token through every expert, then the top-k picked by hand."""
    out = torch.zeros_like(x)
    logits = x @ layer.gates[task].weight.T
    for n in range(x.shape[0]):
        order = sorted(range(logits.shape[1]), key=lambda e: (-logits[n, e].item(), e))
        chosen = order[: layer.top_k]
        if layer.gate == "vmoe":
            weights = torch.softmax(logits[n], dim=0)[chosen]
        else:
            weights = torch.softmax(logits[n, chosen], dim=0)
        for w, e in zip(weights, chosen):
            fc1, fc2 = layer.experts.fc1, layer.experts.fc2
            hidden = F.gelu(fc1.weight[e] @ x[n] + fc1.bias[e])
            out[n] += w * (fc2.weight[e] @ hidden + fc2.bias[e])
    return out


@pytest.mark.parametrize("gate", ["vmoe", "renorm"])
@pytest.mark.parametrize("dispatch", ["sorted", "gather"])
def test_moe_layer_equals_a_naive_loop(tiny, dispatch, gate):
    torch.manual_seed(0)
    model = tiny if gate == tiny.config.gate else MoEViT(tiny.config.replace(gate=gate)).eval()
    layer = model.blocks[1].mlp
    x = torch.randn(1, 20, tiny.config.dim, generator=torch.Generator().manual_seed(1))
    layer.dispatch = dispatch
    try:
        with torch.no_grad():
            got = layer(x, 1)[0]
            expected = naive_moe(layer, x[0], 1)
    finally:
        layer.dispatch = "sorted"
    assert torch.allclose(got, expected, atol=1e-6)


def test_gather_dispatch_equals_the_reference(tiny):
    x = images(tiny.config)
    with torch.no_grad():
        reference = tiny(x, "semseg")
        gathered = tiny.set_dispatch("gather")(x, "semseg")
    tiny.set_dispatch("sorted")
    assert torch.allclose(reference, gathered, atol=1e-5)


def test_only_the_task_gate_and_selected_experts_compute(tiny, monkeypatch):
    calls = []
    original = Experts.forward

    def spy(self, x, expert):
        calls.append((id(self), expert, x.shape[0]))
        return original(self, x, expert)

    monkeypatch.setattr(Experts, "forward", spy)
    gate_calls = []
    hooks = [
        layer.gates[t].register_forward_hook(lambda m, i, o, t=t: gate_calls.append(t))
        for layer in tiny.moe_layers
        for t in range(2)
    ]
    selections = []
    hooks += [
        layer.gates[0].register_forward_hook(
            lambda m, i, o: selections.append(top_k_gating(o, tiny.config.top_k, "vmoe")[0])
        )
        for layer in tiny.moe_layers
    ]
    try:
        with torch.no_grad():
            tiny(images(tiny.config, batch=1), "semseg")
    finally:
        for hook in hooks:
            hook.remove()
    assert gate_calls == [0, 0]
    for layer, chosen in zip(tiny.moe_layers, selections):
        ran = {expert: rows for owner, expert, rows in calls if owner == id(layer.experts)}
        counts = torch.bincount(chosen.flatten(), minlength=tiny.config.experts).tolist()
        assert ran == {e: c for e, c in enumerate(counts) if c}
        assert sum(ran.values()) == tiny.config.tokens * tiny.config.top_k


def test_aux_loss_is_cv_squared_of_importance_and_load(tiny):
    x = images(tiny.config, batch=2)
    layer = tiny.moe_layers[0]
    captured = {}
    hook = layer.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    try:
        with torch.no_grad():
            _, aux = tiny(x, "depth", return_aux=True)
    finally:
        hook.remove()
    # Recompute the first layer's loss by hand; the total must exceed it.
    tokens = captured["x"]
    logits = tokens @ layer.gates[1].weight.T  # (B, T, E)
    per_image = []
    for b in range(2):
        importance = torch.zeros(8)
        load = torch.zeros(8)
        for n in range(tokens.shape[1]):
            idx, w = top_k_gating(logits[b, n : n + 1], 2, "vmoe")
            for e, g in zip(idx[0].tolist(), w[0]):
                importance[e] += g
                load[e] += 1
        cv2 = lambda v: v.var(unbiased=True) / v.mean() ** 2
        per_image.append(cv2(importance) + cv2(load))
    first = sum(per_image) / 2
    with torch.no_grad():
        _, first_only = layer(tokens, 1, return_aux=True)
    assert torch.allclose(first_only, first, rtol=1e-5)
    assert aux > first_only


def test_renorm_training_noise_is_learned_and_reproducible():
    torch.manual_seed(0)
    model = MoEViT(get_config("tiny").replace(gate="renorm")).train()
    x = images(model.config)
    noise = torch.randn(model.noise_shape(2), generator=torch.Generator().manual_seed(3))
    a, aux_a = model(x, "semseg", noise=noise, return_aux=True)
    b, aux_b = model(x, "semseg", noise=noise, return_aux=True)
    assert torch.equal(a, b) and torch.equal(aux_a, aux_b)
    (a.square().mean() + aux_a).backward()
    noise_grad = model.moe_layers[0].noise[0].weight.grad
    assert noise_grad is not None and noise_grad.abs().sum() > 0
    assert model.moe_layers[0].noise[1].weight.grad is None  # the other task's gate did not run
    # The learned std starts at softplus(0) + epsilon for every expert.
    layer = model.moe_layers[0]
    std = F.softplus(layer.noise[0](torch.randn(3, 64))) + NOISE_EPSILON
    assert torch.allclose(std, torch.full_like(std, 0.6931472 + NOISE_EPSILON))
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x, "semseg", noise=noise), model(x, "semseg"))


def test_vmoe_training_noise_has_std_gate_noise_over_experts():
    """M³ViT's noisy_vmoe: clean logits + N(0, 1) * noise_std / E, then the softmax over all E."""
    torch.manual_seed(0)
    config = get_config("tiny")
    layer = MoEViT(config).moe_layers[0].train()
    x = torch.randn(30, config.dim, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(30, config.experts, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        indices, weights, load = layer.route(x, 1, noise)
        noisy = layer.gates[1](x) + noise * config.gate_noise / config.experts
    assert layer.noise_std == 1 / 8
    expected_indices, expected = top_k_gating(noisy, config.top_k, "vmoe")
    assert torch.equal(indices, expected_indices) and torch.allclose(weights, expected)
    assert torch.all(weights.sum(-1) < 1)
    assert ((load > 0.01) & (load < 0.99)).float().mean() > 0.3  # the smooth estimate, not 0/1
    assert torch.equal(layer.eval().route(x, 1, noise)[0], top_k_gating(layer.gates[1](x), 2, "vmoe")[0])
    # gate_noise 0 (M³ViT's README: --vmoe_noisy_std 0): training routes on the clean logits
    quiet = MoEViT(config.replace(gate_noise=0.0)).moe_layers[0].train()
    with torch.no_grad():
        indices, _, load = quiet.route(x, 1, noise)
    assert torch.equal(indices, top_k_gating(quiet.gates[1](x), 2, "vmoe")[0])
    assert torch.equal(load.sum(-1), torch.full((30,), 2.0))  # the selection indicator


def test_wrong_image_size_is_a_clear_error(tiny):
    with pytest.raises(
        InputShapeError,
        match=r"^Images of shape \(1, 3, 32, 64\) do not fit model 'tiny'; "
        r"expected \(batch, 3, 64, 64\)$",
    ):
        tiny(torch.zeros(1, 3, 32, 64), "semseg")


def test_unknown_task_is_a_clear_error(tiny):
    with pytest.raises(ConfigError, match=re.escape("Model 'tiny' has no task 'normals'")):
        tiny(images(tiny.config), "normals")


def test_gather_dispatch_is_torch_exportable(tiny):
    """The static-shape dispatch traces with torch.export (no data-dependent shapes)."""

    class Task(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, "depth")

    x = images(tiny.config, batch=1)
    tiny.set_dispatch("gather")
    try:
        program = torch.export.export(Task(tiny), (x,))
        with torch.no_grad():
            expected = tiny(x, "depth")
    finally:
        tiny.set_dispatch("sorted")
    assert torch.allclose(program.module()(x), expected, atol=1e-6)


def test_gate_weights_of_an_unknown_rule_is_a_clear_error():
    from moevit.model.moevit import gate_weights

    with pytest.raises(ConfigError, match=r"^Gate must be one of \('vmoe', 'renorm'\), not 'topk'$"):
        gate_weights(torch.zeros(1, 4), torch.zeros(1, 2, dtype=torch.long), "topk")
