"""M³ViT checkpoints and Edge-MoE dumps: round trips and every bad input."""

import re

import numpy as np
import pytest
import torch

from moevit.errors import CheckpointError
from moevit.model.config import get_config
from moevit.model.importers import export_edge_moe, export_m3vit, import_edge_moe, import_m3vit
from moevit.model.moevit import MoEViT

TINY = get_config("tiny")  # dim 64, 4 blocks (MoE in 1 and 3), 8 experts, hidden 128, 2 tasks


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(config=TINY, seed=0):
    """A model whose every tensor is random (no ones, zeros or shared init left)."""
    torch.manual_seed(seed)
    model = MoEViT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def images(config=TINY, seed=1):
    return torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(seed))


def with_head_of(source, seed=5):
    """A different random model carrying ``source``'s final norm and heads."""
    base = random_model(source.config, seed)
    state = base.state_dict()
    state.update({k: v for k, v in source.state_dict().items() if k.startswith(("norm.", "heads."))})
    base.load_state_dict(state)
    return base


def assert_same_tensors(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if key not in skip:
            assert torch.equal(sa[key], sb[key]), key


def assert_same_outputs(a, b):
    x = images(a.config)
    with torch.no_grad():
        for task in a.config.task_names:
            assert torch.equal(a(x, task), b(x, task)), task


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture
def m3vit_file(model, tmp_path):
    return export_m3vit(model, tmp_path / "checkpoint.pth.tar")


def m3vit_state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def save_state(state, path):
    torch.save({"state_dict": state}, path)
    return path


# M³ViT ----------------------------------------------------------------------
def test_m3vit_export_uses_fastmoe_and_per_task_gate_names(model, m3vit_file):
    state = m3vit_state(m3vit_file)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["backbone.patch_embed.proj.weight"] == (64, 3, 8, 8)
    assert shapes["backbone.pos_embed"] == (1, 65, 64)
    assert shapes["backbone.blocks.0.mlp.fc1.weight"] == (256, 64)
    assert shapes["backbone.blocks.1.mlp.experts.htoh4.weight"] == (8, 128, 64)
    assert shapes["backbone.blocks.1.mlp.experts.htoh4.bias"] == (8, 128)
    assert shapes["backbone.blocks.3.mlp.experts.h4toh.weight"] == (8, 64, 128)
    assert shapes["backbone.blocks.3.mlp.experts.h4toh.bias"] == (8, 64)
    assert shapes["backbone.blocks.1.mlp.gate.1.w_gate"] == (64, 8)  # (dim, E), M³ViT's orientation
    gate = model.blocks[1].mlp.gates[1].weight
    assert torch.equal(state["backbone.blocks.1.mlp.gate.1.w_gate"], gate.t())
    assert not any(key.startswith(("backbone.norm", "backbone.head", "heads", "norm")) for key in state)
    # moevit's final norm and heads ride beside M³ViT's state dict, where M³ViT's loaders do not look.
    ours = torch.load(m3vit_file, weights_only=True)["moevit"]["state_dict"]
    assert sorted(ours) == sorted(k for k in model.state_dict() if k.startswith(("norm.", "heads.")))


def test_m3vit_round_trip_is_exact(model, m3vit_file):
    imported = import_m3vit(m3vit_file, "tiny")
    assert_same_tensors(imported, model)
    assert_same_outputs(imported, model)


def test_m3vit_finds_its_config(m3vit_file):
    assert import_m3vit(m3vit_file).config == TINY


def test_m3vit_of_m3vit_training_needs_a_base(model, m3vit_file, tmp_path):
    # A checkpoint of M³ViT's own training: no moevit heads, and no w_noise (noisy_vmoe gate).
    state = {k: v for k, v in m3vit_state(m3vit_file).items() if not k.endswith("w_noise")}
    path = save_state(state, tmp_path / "m3vit.pth")
    with pytest.raises(CheckpointError, match=(
        r"^M³ViT checkpoint .*m3vit\.pth lacks the final norm, the heads of "
        r"moevit's model: take them from a moevit checkpoint of config 'tiny' \(--base CKPT\)$"
    )):
        import_m3vit(path, "tiny")


def test_m3vit_ddp_prefix_vmoe_gate_and_decoders(model, m3vit_file, tmp_path):
    # As saved by M³ViT's training: DDP's module. prefix, the noisy_vmoe gate
    # (no w_noise) and its own convolutional decoders.
    state = {f"module.{k}": v for k, v in m3vit_state(m3vit_file).items()}
    assert not any(k.endswith("w_noise") for k in state)  # tiny's V-MoE gate is noisy_vmoe
    state["module.decoders.semseg.conv_0.weight"] = torch.zeros(256, 64, 3, 3)
    imported = import_m3vit(save_state(state, tmp_path / "ddp.pth"), "tiny", base=with_head_of(model))
    assert imported.config.gate == "vmoe"
    assert_same_tensors(imported, model)
    assert_same_outputs(imported, model)


def test_m3vit_noisy_gate_implies_the_renormalised_rule(tmp_path):
    # M³ViT's noisy gate (w_gate and w_noise): softmax over the top-k logits.
    renorm = random_model(TINY.replace(gate="renorm"))
    path = export_m3vit(renorm, tmp_path / "noisy.pth")
    assert m3vit_state(path)["backbone.blocks.1.mlp.gate.0.w_noise"].shape == (64, 8)
    found = import_m3vit(path)
    assert found.config.gate == "renorm" and found.config == renorm.config
    assert_same_tensors(found, renorm)
    assert_same_outputs(found, renorm)
    assert import_m3vit(path, "tiny").config.gate == "renorm"  # named as tiny (V-MoE), the file's rule wins


def test_m3vit_folder_saved_by_two_ranks(model, m3vit_file, tmp_path):
    state = m3vit_state(m3vit_file)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    experts = [k for k in state if ".mlp.experts." in k]
    rank0 = {k: (v[:5] if k in experts else v) for k, v in state.items()}
    rank1 = {k: state[k][5:] for k in experts}
    save_state(rank0, folder / "0.pth")
    save_state(rank1, folder / "1.pth")
    imported = import_m3vit(folder, "tiny", base=with_head_of(model))
    assert_same_tensors(imported, model)


# M³ViT bad input: one test per message ------------------------------------------
def test_m3vit_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"^M³ViT checkpoint .*none\.pth does not exist$"):
        import_m3vit(tmp_path / "none.pth", "tiny")


def test_m3vit_unreadable_file(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^Cannot read M³ViT checkpoint .*bad\.pth: "):
        import_m3vit(tmp_path / "bad.pth", "tiny")


def test_m3vit_file_without_tensors(tmp_path):
    torch.save({"state_dict": {"epoch": 3}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"^M³ViT checkpoint .*odd\.pth holds no state dict of tensors$"):
        import_m3vit(tmp_path / "odd.pth", "tiny")


def test_m3vit_missing_key(m3vit_file, tmp_path):
    state = m3vit_state(m3vit_file)
    del state["backbone.blocks.3.mlp.experts.h4toh.bias"]
    with pytest.raises(
        CheckpointError,
        match=r"^M³ViT checkpoint .* has no backbone\.blocks\.3\.mlp\.experts\.h4toh\.bias "
        r"\(config 'tiny' expects shape \(8, 64\)\)$",
    ):
        import_m3vit(save_state(state, tmp_path / "m.pth"), "tiny")


def test_m3vit_wrong_shape(m3vit_file, tmp_path):
    state = m3vit_state(m3vit_file)
    state["backbone.blocks.1.mlp.gate.0.w_gate"] = torch.zeros(8, 64)  # ours, not transposed
    with pytest.raises(
        CheckpointError,
        match=r"^M³ViT checkpoint .*: backbone\.blocks\.1\.mlp\.gate\.0\.w_gate has shape \(8, 64\); "
        r"config 'tiny' expects \(64, 8\)$",
    ):
        import_m3vit(save_state(state, tmp_path / "m.pth"), "tiny")


def test_m3vit_unknown_key(m3vit_file, tmp_path):
    state = m3vit_state(m3vit_file)
    state["backbone.blocks.1.mlp.gate.2.w_gate"] = torch.zeros(64, 8)  # a third task
    with pytest.raises(
        CheckpointError,
        match=r"^M³ViT checkpoint .* has keys config 'tiny' does not know: backbone\.blocks\.1\.mlp\.gate\.2\.w_gate$",
    ):
        import_m3vit(save_state(state, tmp_path / "m.pth"), "tiny")


def test_m3vit_shared_gate(m3vit_file, tmp_path):
    state = {k: v for k, v in m3vit_state(m3vit_file).items() if ".mlp.gate." not in k}
    state["backbone.blocks.1.mlp.gate.w_gate"] = torch.zeros(66, 8)
    with pytest.raises(
        CheckpointError,
        match=r"^M³ViT checkpoint .* has one gate shared by all tasks \(backbone\.blocks\.1\.mlp\.gate\.w_gate\); "
        r"moevit needs one gate per task \(M³ViT's --multi_gate True\)$",
    ):
        import_m3vit(save_state(state, tmp_path / "m.pth"), "tiny")


def test_m3vit_of_another_config(m3vit_file):
    with pytest.raises(
        CheckpointError,
        match=r"^M³ViT checkpoint .*: backbone\.patch_embed\.proj\.weight has shape \(64, 3, 8, 8\); "
        r"config 'edge-moe' expects \(192, 3, 16, 16\)$",
    ):
        import_m3vit(m3vit_file, "edge-moe")


def test_m3vit_fitting_no_config(m3vit_file, tmp_path):
    state = m3vit_state(m3vit_file)
    state["backbone.pos_embed"] = torch.zeros(1, 50, 64)
    with pytest.raises(
        CheckpointError,
        match=r"^M³ViT checkpoint .* fits none of the configs \['edge-moe', 'm3vit-s', 'tiny'\] "
        r"\(its backbone\.pos_embed has shape \(1, 50, 64\)\); name one with --config to see the first mismatch$",
    ):
        import_m3vit(save_state(state, tmp_path / "m.pth"))


def test_m3vit_folder_without_rank_0(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match=r"^M³ViT checkpoint folder .*ckpt has no 0\.pth$"):
        import_m3vit(tmp_path / "ckpt", "tiny")


def test_base_model_of_another_config(m3vit_file):
    other = TINY.replace(name="tiny-3x", experts=3, top_k=1)
    with pytest.raises(CheckpointError, match=r"^The base model has config 'tiny-3x'; the weights are for 'tiny'$"):
        import_m3vit(m3vit_file, "tiny", base=MoEViT(other))


# Edge-MoE -------------------------------------------------------------------
def bin_size(folder, stem):
    return (folder / f"{stem}.float32.bin").stat().st_size


def test_edge_moe_files_have_edge_moe_names_and_shapes(tmp_path):
    # The shapes Edge-MoE's weights/scripts/prepare_for_onboard.py reshapes each file to.
    config = get_config("edge-moe")
    torch.manual_seed(0)
    model = MoEViT(config)
    folder = export_edge_moe(model, tmp_path / "weights")
    expected = {
        "patch_embed_weight": (192, 3, 16, 16),
        "patch_embed_bias": (192,),
        "pos_embed": (129, 192),
        "l0_qkv_weight": (576, 192),
        "l0_qkv_bias": (576,),
        "l0_attn_proj_weight": (192, 192),
        "l11_norm2_bias": (192,),
        "l10_fc1_weight": (768, 192),
        "l10_fc2_weight": (192, 768),
        "l1_htoh4_weight": (16, 384, 192),
        "l1_htoh4_bias": (16, 384),
        "l11_h4toh_weight": (16, 192, 384),
        "l11_h4toh_bias": (16, 192),
        "l1_w_gate_T_task0": (16, 192),
        "l11_w_gate_T_task1": (16, 192),
    }
    for stem, shape in expected.items():
        assert bin_size(folder, stem) == 4 * int(np.prod(shape)), stem
    assert not (folder / "l1_fc1_weight.float32.bin").exists()
    assert not (folder / "l2_htoh4_weight.float32.bin").exists()
    # Contents in Edge-MoE's layout: q, k, v stacked; experts (E, hidden, dim).
    qkv = np.fromfile(folder / "l0_qkv_weight.float32.bin", "<f4").reshape(3, 192, 192)
    assert np.array_equal(qkv[1], model.blocks[0].attn.qkv.weight.detach().numpy()[192:384])
    htoh4 = np.fromfile(folder / "l5_htoh4_weight.float32.bin", "<f4").reshape(16, 384, 192)
    assert np.array_equal(htoh4[7], model.blocks[5].mlp.experts.fc1.weight.detach().numpy()[7])
    gate = np.fromfile(folder / "l9_w_gate_T_task1.float32.bin", "<f4").reshape(16, 192)
    assert np.array_equal(gate, model.blocks[9].mlp.gates[1].weight.detach().numpy())


def test_edge_moe_round_trip(model, tmp_path):
    folder = export_edge_moe(model, tmp_path / "weights")
    pos = np.fromfile(folder / "pos_embed.float32.bin", "<f4").reshape(65, 64)
    token0 = (model.cls_token[0, 0] + model.pos_embed[0, 0]).detach().numpy()
    assert np.array_equal(pos[0], token0)  # Edge-MoE's token 0: the class token folded in
    imported = import_edge_moe(folder, "tiny")
    assert_same_tensors(imported, model, skip=["cls_token", "pos_embed"])
    assert torch.equal(imported.cls_token, torch.zeros(1, 1, 64))
    assert torch.equal(imported.pos_embed[0, 1:], model.pos_embed[0, 1:])
    assert_same_outputs(imported, model)


def test_edge_moe_dumps_are_v_moe(model, tmp_path):
    folder = export_edge_moe(model, tmp_path / "weights")
    renorm = TINY.replace(gate="renorm")
    assert import_edge_moe(folder, renorm).config.gate == "vmoe"  # src/moe.cpp's gate, whatever was named
    with pytest.raises(CheckpointError, match=r"^Edge-MoE's accelerator computes the 'vmoe' gate; this model "
                       r"has gate 'renorm', whose outputs it would not reproduce$"):
        export_edge_moe(random_model(renorm), tmp_path / "renorm")
    assert not (tmp_path / "renorm").exists()


def test_edge_moe_without_moevit_additions(model, tmp_path):
    folder = export_edge_moe(model, tmp_path / "weights", additions=False)
    assert not list(folder.glob("head_*")) and not list(folder.glob("norm_*"))
    # Edge-MoE's own test vectors sit beside the weights and are ignored.
    np.zeros(3 * 64 * 64, "<f4").tofile(folder / "image.float32.bin")
    np.zeros(65 * 64, "<f4").tofile(folder / "l3_x_post_moe.float32.bin")
    with pytest.raises(CheckpointError, match=(
        r"^Edge-MoE dump folder .*weights lacks the final norm, the heads of "
        r"moevit's model: take them from a moevit checkpoint of config 'tiny' \(--base CKPT\)$"
    )):
        import_edge_moe(folder, "tiny")
    imported = import_edge_moe(folder, "tiny", base=with_head_of(model))
    assert_same_outputs(imported, model)


# Edge-MoE bad input ---------------------------------------------------------
@pytest.fixture
def edge_folder(model, tmp_path):
    return export_edge_moe(model, tmp_path / "weights")


def test_edge_moe_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"^Edge-MoE dump folder .*nothing does not exist$"):
        import_edge_moe(tmp_path / "nothing", "tiny")


def test_edge_moe_missing_file(edge_folder):
    (edge_folder / "l3_htoh4_bias.float32.bin").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"^Edge-MoE dump folder .* has no l3_htoh4_bias\.float32\.bin "
        r"\(config 'tiny': blocks\.3\.mlp\.experts\.fc1\.bias \(8, 128\)\)$",
    ):
        import_edge_moe(edge_folder, "tiny")


def test_edge_moe_missing_pos_embed(edge_folder):
    (edge_folder / "pos_embed.float32.bin").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"^Edge-MoE dump folder .* has no pos_embed\.float32\.bin \(config 'tiny': pos_embed \(65, 64\)\)$",
    ):
        import_edge_moe(edge_folder, "tiny")


def test_edge_moe_wrong_byte_count(edge_folder):
    np.zeros(100, "<f4").tofile(edge_folder / "l0_qkv_weight.float32.bin")
    with pytest.raises(
        CheckpointError,
        match=r"^l0_qkv_weight\.float32\.bin has 400 bytes; config 'tiny' expects shape \(192, 64\) "
        r"as float32 = 49152 bytes$",
    ):
        import_edge_moe(edge_folder, "tiny")


def test_edge_moe_dump_of_another_config(edge_folder):
    with pytest.raises(
        CheckpointError,
        match=r"^patch_embed_weight\.float32\.bin has 49152 bytes; config 'edge-moe' expects shape "
        r"\(192, 3, 16, 16\) as float32 = 589824 bytes$",
    ):
        import_edge_moe(edge_folder)  # Edge-MoE's own config by default


def test_edge_moe_unknown_file(edge_folder):
    np.zeros(4, "<f4").tofile(edge_folder / "l2_htoh4_weight.float32.bin")  # block 2 is dense
    with pytest.raises(
        CheckpointError,
        match=r"^Edge-MoE dump folder .* has files config 'tiny' does not know: l2_htoh4_weight\.float32\.bin$",
    ):
        import_edge_moe(edge_folder, "tiny")


# Command line ---------------------------------------------------------------
def test_cli_import_and_export_round_trip(model, tmp_path, capsys):
    from moevit.cli import main
    from moevit.model.checkpoint import load_checkpoint, save_checkpoint

    folder = export_edge_moe(model, tmp_path / "weights")
    out = tmp_path / "imported.pt"
    assert main(["import", "edge-moe", str(folder), "-o", str(out), "--config", "tiny"]) == 0
    imported, meta = load_checkpoint(out)
    assert meta["extra"]["imported_from"] == {"format": "edge-moe", "source": str(folder), "base": None}
    assert_same_outputs(imported, model)
    # And back out: our checkpoint → an M³ViT checkpoint → imported again.
    save_checkpoint(tmp_path / "ours.pt", model)
    assert main(["export", "m3vit", str(tmp_path / "ours.pt"), "-o", str(tmp_path / "m3vit.pth")]) == 0
    assert main(["import", "m3vit", str(tmp_path / "m3vit.pth"), "-o", str(tmp_path / "again.pt")]) == 0
    assert_same_tensors(load_checkpoint(tmp_path / "again.pt")[0], model)
    assert re.search(r"^imported edge-moe .* as config 'tiny', gate 'vmoe': ", capsys.readouterr().out, re.M)


def test_cli_import_error_is_one_line(tmp_path, capsys):
    from moevit.cli import main

    assert main(["import", "edge-moe", str(tmp_path / "none"), "-o", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"moevit: error: Edge-MoE dump folder .*none does not exist\n", err)
    assert not (tmp_path / "x.pt").exists()


def test_unknown_weight_format(model, tmp_path):
    from moevit.model import importer_commands, importers
    from moevit.model.importers import export_weights, import_weights

    assert importer_commands.FORMATS == importers.FORMATS  # the CLI's copy, kept torch-free

    message = r"^Unknown weight format 'onnx'; known formats are \['m3vit', 'edge-moe'\]$"
    with pytest.raises(CheckpointError, match=message):
        import_weights("onnx", tmp_path)
    with pytest.raises(CheckpointError, match=message):
        export_weights("onnx", model, tmp_path)
