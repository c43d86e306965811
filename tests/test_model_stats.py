import pytest
import torch
from torch import nn

from moevit.model.config import CONFIGS, get_config
from moevit.model.moevit import Attention, ExpertLinear, MoEViT
from moevit.model.stats import model_stats


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_equals_the_model(name):
    config = get_config(name)
    with torch.device("meta"):
        model = MoEViT(config)
    stats = model_stats(config)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert stats["expert_params"] == stats["params_by_part"]["experts"] == experts
    assert stats["expert_bytes_fp32"] == 4 * experts


def count_macs(model, images, task):
    """MACs of one forward pass, counted from the modules that actually ran."""
    total = [0]

    def linear(module, inputs, output):
        total[0] += inputs[0].numel() // inputs[0].shape[-1] * module.in_features * module.out_features

    def conv(module, inputs, output):
        total[0] += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    def expert(module, inputs, output):
        rows, features = inputs[0].shape
        total[0] += rows * features * output.shape[-1]

    def attention(module, inputs, output):
        batch, tokens, dim = inputs[0].shape
        total[0] += 2 * batch * tokens * tokens * dim

    hooks = []
    for module in model.modules():
        kind = {nn.Linear: linear, nn.Conv2d: conv, ExpertLinear: expert, Attention: attention}.get(type(module))
        if kind:
            hooks.append(module.register_forward_hook(kind))
    try:
        with torch.no_grad():
            model(images, task)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_macs_equal_what_the_model_computes(task):
    config = get_config("tiny")
    model = MoEViT(config).eval()
    images = torch.randn(2, 3, 64, 64)
    assert count_macs(model, images, task) == 2 * model_stats(config, task)["macs"]


def test_edge_moe_reduction_by_hand():
    stats = model_stats(get_config("edge-moe"), "depth")
    # One token: an expert costs 2*192*384 = 147456 MACs, the gate 192*16 = 3072.
    assert stats["moe_reduction"] == pytest.approx(1 - (2 * 147456 + 3072) / (16 * 147456 + 3072))
    assert stats["moe_macs"] == 6 * 129 * (2 * 147456 + 3072)
    assert stats["expert_bytes_int8"] == 6 * 16 * (2 * 192 * 384 + 4 * (384 + 192))
    assert stats["macs_all_experts"] - stats["macs"] == 6 * 129 * 14 * 147456
    assert sum(stats["breakdown"].values()) == stats["macs"]
