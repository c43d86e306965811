import re

import pytest
import torch

from moevit.errors import CheckpointError
from moevit.model.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from moevit.model.config import get_config
from moevit.model.moevit import MoEViT


TINY = get_config("tiny")


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    model = MoEViT(TINY)
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, extra={"step": 7, "note": "x"})
    return model, path


def test_round_trip_keeps_weights_config_and_extra(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path, TINY)
    assert meta["config"] == TINY and meta["version"] == VERSION
    assert meta["extra"] == {"step": 7, "note": "x"}
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.eval()(x, "depth"), loaded(x, "depth"))
    assert not list(path.parent.glob("*.partial"))


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "none.pt"
    with pytest.raises(CheckpointError, match=rf"^Checkpoint {re.escape(str(path))} does not exist$"):
        load_checkpoint(path)


def test_corrupt_checkpoint(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"^Checkpoint {re.escape(str(path))} is corrupt or not a checkpoint: "):
        load_checkpoint(path)


def test_not_a_moevit_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=rf"^File {re.escape(str(path))} is not a moevit checkpoint$"):
        load_checkpoint(path)


def test_wrong_format_version(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "version": 99, "config": TINY.to_dict(), "state_dict": {}}, path)
    with pytest.raises(
        CheckpointError,
        match=rf"^Checkpoint {re.escape(str(path))} has format version 99; this moevit reads version 1$",
    ):
        load_checkpoint(path)


def test_mismatched_config(saved):
    _, path = saved
    other = TINY.replace(experts=4)
    with pytest.raises(
        CheckpointError,
        match=rf"^Checkpoint {re.escape(str(path))} holds model 'tiny', which does not match 'tiny': "
        r"experts 8 \(expected 4\)$",
    ):
        load_checkpoint(path, other)


def test_weights_that_do_not_fit_the_config(tmp_path):
    model = MoEViT(TINY)
    state = model.state_dict()
    path = tmp_path / "bad.pt"
    state["pos_embed"] = torch.zeros(1, 10, 64)
    torch.save({"format": FORMAT, "version": 1, "config": TINY.to_dict(), "state_dict": state}, path)
    with pytest.raises(
        CheckpointError,
        match=r"has pos_embed of shape \(1, 10, 64\); model 'tiny' needs \(1, 65, 64\)$",
    ):
        load_checkpoint(path)
    del state["pos_embed"]
    torch.save({"format": FORMAT, "version": 1, "config": TINY.to_dict(), "state_dict": state}, path)
    with pytest.raises(
        CheckpointError, match=r"does not fit its config 'tiny': it lacks 'pos_embed' \(1 missing, 0 unexpected\)$"
    ):
        load_checkpoint(path)


@pytest.mark.parametrize("field, value, message", [
    ("mlp_hidden", 2**40, r"has blocks\.0\.mlp\.fc1\.weight of shape \(256, 64\); model 'tiny' "
                          r"needs \(1099511627776, 64\)$"),
    ("depth", 10**6, r"does not fit its config 'tiny': it holds 4 blocks, the config 1000000$"),
])
def test_a_config_edited_past_its_weights_builds_nothing(tmp_path, field, value, message):
    """A checkpoint whose config says more than its weights hold (the readers' fuzzer: a
    width or depth edited into the file, then 24 GiB taken building the model it says, or
    a traceback) is refused before any model is built: its blocks counted, its shapes
    checked on the meta device."""
    path = tmp_path / "edited.pt"
    config = dict(TINY.to_dict(), **{field: value})
    torch.save({"format": FORMAT, "version": 1, "config": config,
                "state_dict": MoEViT(TINY).state_dict()}, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_invalid_config_inside(tmp_path):
    path = tmp_path / "badconfig.pt"
    config = TINY.to_dict()
    config["heads"] = 5
    torch.save({"format": FORMAT, "version": 1, "config": config, "state_dict": {}}, path)
    with pytest.raises(
        CheckpointError, match=r"holds an invalid model config: Dim 64 is not divisible by 5 heads$"
    ):
        load_checkpoint(path)
