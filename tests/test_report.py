"""`moevit report`: the page, its charts, every anchor figure labelled, the sections hook."""

import re

import pytest

from moevit.cli import main
from moevit.hw.cost.page import ANCHORS, write_report

LABELS = ("published", "derived", "predicted", "simulated")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    page = write_report(folder, quick=True, progress=False,
                        sections=[("Reliability", "3 faults injected, 3 caught.")])
    return folder, page.read_text()


def test_page_and_charts(report):
    folder, text = report
    for board in ("zcu102", "zcu104", "u280"):
        assert (folder / f"roofline-{board}.png").stat().st_size > 1000
        assert f"roofline-{board}.png" in text
    for chart in ("latency-units.png", "floors.png"):
        assert (folder / chart).stat().st_size > 1000 and f"({chart})" in text
    assert text.startswith("# moevit: edge-moe on ZCU102, ZCU104 and U280")


def test_every_anchor_figure_has_a_label_and_a_source(report):
    _, text = report
    for design, board, what, value, label, source in ANCHORS:
        assert label in LABELS or value == "not found"
        assert source.strip()
        assert f"| {design} | {board} | {what} | {value} |" in text
    for design in ("Edge-MoE", "UbiMoE", "CoQMoE", "M³ViT"):
        assert design in text
    assert "*derived*" in text and "*predicted*" in text and "*published*" in text


def test_targets_and_the_hook(report):
    _, text = report
    assert re.search(r"zcu102: mac_units >= 4000: predicted [\d,.]+: ", text)
    assert re.search(r"u280: best_fps >= 1500: predicted [\d,.]+: ", text)
    assert text.rstrip().endswith("## Reliability\n\n3 faults injected, 3 caught.")


def test_command_bad_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", "--quick", "--quiet", "-o", str(blocker)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moevit: error: ")


def test_command_shows_the_reliability_counts(tmp_path, monkeypatch):
    """The command appends `moevit bench reliability`'s table (its rows stood in for here)."""
    from moevit.sim import reliability

    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    row = {"suite": "faults-top", "what": "faults survived", "passed": 9, "total": 9,
           "status": "passed", "when": "2026-12-01T00:00:00+00:00", "seconds": 1.0,
           "detail": "guard intact"}
    monkeypatch.setattr(reliability, "reliability_rows", lambda: [row])
    assert main(["report", "--quick", "--quiet", "-o", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.md").read_text()
    assert "## Reliability" in page
    assert "| faults-top | faults survived | 9 | 9 | passed |" in page
    # What the slow runs kept under build/ (here, in a fresh build folder: nothing yet).
    assert "## Simulated: the whole model on the co-simulated top" in page
    assert "Not run here yet: `moevit hw cost --check`." in page
