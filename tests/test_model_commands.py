import json
import re

import pytest

from moevit.cli import main
from moevit.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def build(tmp_path, monkeypatch):
    """Every file the commands write goes under a temporary build folder."""
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    return tmp_path / "build"


def test_info_prints_every_config(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "edge-moe", "m3vit-s"):
        assert re.search(rf"^{re.escape(name)}\s+semseg\s", out, re.M)
    assert "M³ViT reports 88 %" in out


def test_info_json_for_one_config(capsys):
    assert main(["info", "--config", "edge-moe", "--task", "depth", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["config"], r["task"]) for r in rows] == [("edge-moe", "depth")]
    assert rows[0]["moe_reduction"] == pytest.approx(1 - (2 * 147456 + 3072) / (16 * 147456 + 3072))


def test_train_then_eval(build, capsys):
    assert main(["train", "--steps", "3", "--batch-size", "8", "--train-size", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    checkpoint = build / "checkpoints" / "tiny.pt"
    assert "trained tiny to step 3" in out and checkpoint.is_file()
    assert load_checkpoint(checkpoint)[1]["extra"]["step"] == 3
    assert main(["train", "--steps", "5", "--batch-size", "8", "--train-size", "16", "--quiet",
                 "--resume", str(checkpoint)]) == 0
    assert "to step 5" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(checkpoint), "--val-size", "8", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics"]) == {"semseg", "depth"}
    assert 0 <= report["metrics"]["semseg"]["miou"] <= 1 and report["metrics"]["depth"]["rmse"] > 0
    png = build / "eval" / "tiny-predictions.png"
    assert report["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_its_steps_in_order(build, capsys):
    argv = ["demo", "--steps", "4", "--batch-size", "8", "--train-size", "16", "--val-size", "8", "--quiet",
            "--no-accelerator"]  # the accelerator step: tests/test_host_sim.py
    assert main(argv) == 0
    out = capsys.readouterr().out
    titles = re.findall(r"^\[(\d+)/(\d+)\] (.*)$", out, re.M)
    assert [t[2] for t in titles[:4]] == [
        "Render the synthetic train and validation sets.",
        "Train the model on the synthetic set (checkpoint under build/demo/).",
        "Float metrics per task on the validation set, beside the chance levels.",
        "The PNG of predictions beside the ground truth.",
    ]
    assert re.search(r"semseg\s+mIoU \d\.\d{3}.*\(chance: mIoU \d\.\d{3}", out)
    assert re.search(r"depth\s+RMSE \d+\.\d{3}\s+\(predicting the mean: RMSE \d+\.\d{3}\)", out)
    assert (build / "demo" / "tiny" / "predictions.png").is_file()
    assert (build / "demo" / "tiny" / "model.pt").is_file()
