import re

import pytest

from moevit.errors import ConfigError
from moevit.model.config import CONFIGS, get_config


def test_named_configs_have_exact_shapes():
    edge = get_config("edge-moe")
    assert (edge.dim, edge.depth, edge.heads, edge.patch) == (192, 12, 3, 16)
    assert edge.image_size == (128, 256) and edge.tokens == 129
    assert (edge.experts, edge.top_k, edge.expert_hidden, edge.mlp_hidden) == (16, 2, 384, 768)
    assert edge.moe_blocks == (1, 3, 5, 7, 9, 11)
    tiny = get_config("tiny")
    assert tiny.tokens == 65 and tiny.head_dim == 16
    assert all(config.source for config in CONFIGS.values())


def test_config_round_trips_through_dict():
    for config in CONFIGS.values():
        assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"heads": 5}, r"^Dim 64 is not divisible by 5 heads$"),
        ({"top_k": 9}, r"^Top-k 9 exceeds the number of experts 8$"),
        ({"patch": 7}, r"^Image size 64x64 is not divisible by the patch size 7$"),
        ({"dim": 0}, r"^Dim must be a positive integer, not 0$"),
        ({"moe_blocks": (1, 4)}, r"^MoE block indices \[4\] are outside 0\.\.3$"),
        ({"tasks": ()}, r"^A model needs at least one task$"),
        ({"gate": "softmax"}, r"^Gate must be one of \('vmoe', 'renorm'\), not 'softmax'$"),
        ({"gate_noise": -1.0}, r"^Gate noise must be a finite number >= 0, not -1\.0$"),
        ({"gate_noise": float("nan")}, r"^Gate noise must be a finite number >= 0, not nan$"),
    ],
)
def test_bad_config_is_a_clear_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        get_config("tiny").replace(**changes)


def test_unknown_config_and_task():
    with pytest.raises(ConfigError, match=r"^Unknown config 'huge'; known configs are \["):
        get_config("huge")
    tiny = get_config("tiny")
    assert tiny.task_index("depth") == 1 and tiny.task_index(0) == 0
    with pytest.raises(ConfigError, match=re.escape("has no task 'normals'")):
        tiny.task_index("normals")
    with pytest.raises(ConfigError, match=r"task ids are 0\.\.1$"):
        tiny.task_index(2)


def test_m3vit_s_follows_the_m3vit_repository():
    # VITA-Group/M3ViT: configs/nyud/vit_moe/pup_moe_vit_small_multi_task_baseline.yml and
    # README.md's flags --moe_experts 16 --moe_top_k 4 --moe_mlp_ratio 1 (hidden = 1 x 384).
    m3vit = get_config("m3vit-s")
    assert m3vit.image_size == (480, 640) and m3vit.patch == 16 and m3vit.tokens == 1201
    assert (m3vit.dim, m3vit.depth, m3vit.heads, m3vit.mlp_hidden) == (384, 12, 12, 1536)
    assert (m3vit.experts, m3vit.top_k, m3vit.expert_hidden) == (16, 4, 384)
    assert m3vit.moe_blocks == (1, 3, 5, 7, 9, 11) and m3vit.qkv_bias
    assert [(t.kind, t.classes) for t in m3vit.tasks] == [("semseg", 40), ("depth", 1)]


def test_the_anchors_gate_rule():
    # M³ViT README.md: --moe_gate_type "noisy_vmoe" --vmoe_noisy_std 0; Edge-MoE src/moe.cpp:
    # the softmax over all experts' scores, the top-k keep theirs. tiny follows them.
    for name in ("tiny", "edge-moe", "m3vit-s"):
        assert get_config(name).gate == "vmoe"
    assert get_config("m3vit-s").gate_noise == get_config("edge-moe").gate_noise == 0.0
    assert get_config("tiny").gate_noise == 1.0  # M³ViT's default --vmoe_noisy_std


def test_a_config_written_before_the_gate_field_keeps_its_old_rule():
    old = get_config("tiny").to_dict()
    del old["gate"], old["gate_noise"]
    found = type(get_config("tiny")).from_dict(old)
    assert found.gate == "renorm"
    assert get_config("tiny").differences(found) == ["gate 'renorm' (expected 'vmoe')"]


@pytest.mark.parametrize("data", [[""], "tiny", [("depth", 1, 2)]])
def test_a_config_that_is_not_a_mapping_is_a_clear_error(data):
    """The readers' fuzzer set a quantized file's config to ``[""]``: a ConfigError, not
    dict()'s ValueError."""
    with pytest.raises(ConfigError, match=r"^Malformed model config: "):
        type(get_config("tiny")).from_dict(data)
