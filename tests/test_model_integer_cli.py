"""``moevit quantize``, ``moevit eval --integer``, ``moevit bench golden`` and their bad inputs."""

import json
import re

import pytest

from moevit.cli import main
from moevit.model.integer import golden
from moevit.model.checkpoint import read_checkpoint, save_checkpoint, weights_sha256
from moevit.model.config import get_config
from moevit.model.data import SyntheticDataset
from moevit.model.integer.evaluate import calibration_images, compare_rows, format_comparison, signal_model
from moevit.model.integer.intops import QuantizationError
from moevit.model.integer.quantize import QuantizedModel, load_quantized, save_quantized


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", signal_model(get_config("tiny")))


def test_quantize_writes_a_file_the_golden_model_runs(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.npz"
    assert main(["quantize", "--checkpoint", str(checkpoint), "-o", str(out), "--calibration", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"quantized tiny on 4 synthetic calibration images: {out}" in printed
    qmodel = load_quantized(out, get_config("tiny"))
    assert re.search(rf"checksum {qmodel.checksum()}", printed)
    source = weights_sha256(read_checkpoint(checkpoint)["state_dict"])
    assert qmodel.source_sha256 == source and f"source: the weights of {checkpoint} (sha256 {source})" in printed
    image = SyntheticDataset(get_config("tiny"), "val", size=1).images[0].numpy()
    assert golden.run(qmodel, image, "depth").output.shape == (1, 64, 64)


def test_eval_integer_text_report(checkpoint, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(checkpoint), "--integer", "--val-size", "2", "--calibration", "2"]
    assert main(args + ["--png", str(tmp_path / "p.png"), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("float and integer (golden) models side by side:")
    assert [line.split()[:2] for line in lines[start + 2 :]] == [["semseg", "miou"], ["semseg", "pixel_acc"], ["depth", "rmse"]]


def test_eval_integer_prints_both_models_side_by_side(checkpoint, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(checkpoint), "--integer", "--val-size", "3", "--calibration", "4"]
    args += ["--png", str(tmp_path / "p.png"), "--quiet", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(row["task"], row["metric"]): row for row in report["comparison"]}
    assert set(rows) == {("semseg", "miou"), ("semseg", "pixel_acc"), ("depth", "rmse")}
    depth = rows[("depth", "rmse")]
    assert depth["float"] == report["metrics"]["depth"]["rmse"] and depth["integer"] == report["integer"]["depth"]["rmse"]
    assert depth["difference"] == pytest.approx(depth["integer"] - depth["float"])
    assert depth["relative"] == pytest.approx(depth["difference"] / depth["float"])


def test_comparison_table_states_the_differences():
    config = get_config("tiny")
    rows = compare_rows(config, {"semseg": {"miou": 0.5, "pixel_acc": 0.9}, "depth": {"rmse": 2.0}},
                        {"semseg": {"miou": 0.49, "pixel_acc": 0.9}, "depth": {"rmse": 2.1}})
    lines = format_comparison(rows)
    assert lines[1].split() == ["semseg", "miou", "0.5000", "0.4900", "-1.000", "points"]
    assert lines[3].split() == ["depth", "rmse", "2.0000", "2.1000", "+0.1000", "(+5.00", "%)"]


def test_bench_golden_json_rows(capsys):
    assert main(["bench", "golden", "--config", "tiny", "--repeat", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["config"], row["task"]) for row in rows] == [("tiny", "semseg"), ("tiny", "depth")]
    assert all(row["ms_per_image"] >= row["ms_best"] > 0 and row["threads"] == 1 for row in rows)


def test_quantize_rejects_an_empty_calibration_set(checkpoint, tmp_path, capsys):
    args = ["quantize", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "q.npz"), "--calibration", "0", "--quiet"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "moevit: error: argument --calibration: must be a positive integer, not '0' (see: moevit quantize --help)\n"
    )


def test_quantize_rejects_a_negative_calibration_count():
    with pytest.raises(QuantizationError, match=r"^Calibration image count must be a non-negative integer, not -3$"):
        calibration_images(SyntheticDataset(get_config("tiny"), "val", size=1), -3)


def test_quantize_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main(["quantize", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err == f"moevit: error: Checkpoint {tmp_path / 'none.pt'} does not exist\n"


def test_eval_integer_rejects_a_corrupt_quantized_file(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    args = ["eval", "--checkpoint", str(checkpoint), "--integer", "--quantized", str(bad), "--val-size", "1"]
    args += ["--png", str(tmp_path / "p.png"), "--quiet"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"moevit: error: Quantized model {bad} is corrupt or truncated: ")


# --quantized beside --checkpoint: the file must come from that checkpoint ------------------
@pytest.fixture(scope="module")
def quantized(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny.npz"
    assert main(["quantize", "--checkpoint", str(checkpoint), "-o", str(out), "--calibration", "2", "--quiet"]) == 0
    return out


def eval_args(checkpoint, quantized, png):
    return ["eval", "--checkpoint", str(checkpoint), "--integer", "--quantized", str(quantized), "--val-size", "1",
            "--png", str(png), "--quiet"]


def test_eval_integer_with_the_checkpoints_quantized_file(checkpoint, quantized, tmp_path, capsys):
    assert main(eval_args(checkpoint, quantized, tmp_path / "p.png") + ["--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["integer"]) == {"semseg", "depth"}


def test_eval_integer_refuses_a_file_from_another_checkpoint(quantized, tmp_path, capsys):
    """Same config, other weights: one line, exit 2, before any evaluation (no PNG written)."""
    other = save_checkpoint(tmp_path / "other.pt", signal_model(get_config("tiny"), seed=1))
    png = tmp_path / "p.png"
    assert main(eval_args(other, quantized, png)) == 2
    source = load_quantized(quantized).source_sha256
    digest = weights_sha256(read_checkpoint(other)["state_dict"])
    assert capsys.readouterr().err == (
        f"moevit: error: Quantized model {quantized} was quantized from other weights (sha256 {source[:16]}) than "
        f"checkpoint {other} (sha256 {digest[:16]}); give the checkpoint it came from, or quantize this one: "
        f"moevit quantize --checkpoint {other}\n"
    )
    assert not png.exists()


def test_eval_integer_refuses_a_file_that_records_no_source(checkpoint, quantized, tmp_path, capsys):
    """A file written before moevit recorded the source: quantize again."""
    qmodel = load_quantized(quantized)
    old = save_quantized(tmp_path / "old.npz", QuantizedModel(qmodel.config, qmodel.arrays))
    png = tmp_path / "p.png"
    assert main(eval_args(checkpoint, old, png)) == 2
    assert capsys.readouterr().err == (
        f"moevit: error: Quantized model {old} does not record the checkpoint it was quantized from (written before "
        f"moevit recorded it); quantize again: moevit quantize --checkpoint {checkpoint}\n"
    )
    assert not png.exists()
