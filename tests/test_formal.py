"""The formal checks (moevit.hw.formal): the fast ones here, the rest marked slow
(all of them: ``make formal``); each mutant must give a counterexample."""

import json
import re

import pytest

from moevit.errors import ToolNotFoundError
from moevit.hw.formal import run, sby
from moevit.hw.formal.checks import CHECKS, MUTANTS, run_check
from moevit.hw.formal.run import main


def _case(check):
    marks = () if check.fast else (pytest.mark.slow,)
    return pytest.param(check, id=check.name, marks=marks)


@pytest.mark.parametrize("check", [_case(c) for c in CHECKS])
def test_check_passes(check, tmp_path):
    outcome = run_check(check, tmp_path)
    assert outcome.status == "PASS", f"{check.name}: {outcome.status}, see {outcome.log}"


@pytest.mark.parametrize("check", [_case(c) for c in MUTANTS])
def test_mutant_gives_a_counterexample(check, tmp_path):
    outcome = run_check(check, tmp_path)
    assert outcome.status == "FAIL", f"{check.name}: {outcome.status}, see {outcome.log}"
    assert outcome.trace is not None and outcome.trace.exists()
    assert any(check.rule in line for line in outcome.failed_rules()), outcome.failed_rules()


def test_check_names_are_unique_and_kinds_known():
    names = [c.name for c in CHECKS + MUTANTS]
    assert len(names) == len(set(names))
    assert {c.kind for c in CHECKS + MUTANTS} <= set(sby.KINDS)


def test_run_writes_the_summary_and_the_table(tmp_path, monkeypatch, capsys):
    # The verdicts come from a stand-in (the checks themselves run above).
    verdicts = {"control.axil": "PASS", "gelu.beats": "UNKNOWN",
                "mutant.gelu_withdraws_valid": "FAIL"}
    monkeypatch.setattr(run, "run_check", lambda check, workdir: sby.Outcome(
        verdicts[check.name], 1.25, workdir / "sby.log", None))
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path))
    assert main(["--only", *verdicts, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^control\.axil\s+Control.*prove\s+\d+\s+PASS\s+1\.2$", out, re.M)
    assert re.search(r"^gelu\.beats\s+.*bmc\s+\d+\s+UNKNOWN!\s+1\.2$", out, re.M)
    assert "1 proven by k-induction, 0 bounded (no counterexample within the depth), 1 failed; " \
           "1 of 1 mutants caught" in out
    rows = json.loads((tmp_path / "formal" / "summary.json").read_text())
    assert [(r["name"], r["result"], r["ok"]) for r in rows] == [
        ("gelu.beats", "UNKNOWN", False), ("control.axil", "PASS", True),
        ("mutant.gelu_withdraws_valid", "FAIL", True)]
    assert set(rows[0]) == {"name", "unit", "what", "kind", "depth", "result", "expect", "ok",
                            "seconds", "trace", "failed"}
    # A run of one check updates its row and keeps the others'.
    verdicts["gelu.beats"] = "PASS"
    assert main(["--only", "gelu.beats", "--quiet"]) == 0
    rows = json.loads((tmp_path / "formal" / "summary.json").read_text())
    assert [(r["name"], r["result"]) for r in rows] == [
        ("gelu.beats", "PASS"), ("control.axil", "PASS"), ("mutant.gelu_withdraws_valid", "FAIL")]
    # A run stopped part way keeps the verdicts it reached.
    def stopped(check, workdir):
        if check.name == "control.axil":
            raise KeyboardInterrupt
        return sby.Outcome("FAIL", 2.5, workdir / "sby.log", None)
    monkeypatch.setattr(run, "run_check", stopped)
    with pytest.raises(KeyboardInterrupt):
        main(["--only", "gelu.beats", "control.axil", "--quiet"])
    rows = json.loads((tmp_path / "formal" / "summary.json").read_text())
    assert [(r["name"], r["result"]) for r in rows][:2] == [("gelu.beats", "FAIL"),
                                                            ("control.axil", "PASS")]


def test_run_names_an_unknown_check(capsys):
    assert main(["--only", "no.such", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"moevit: error: no formal check named no\.such; the checks are .*\n", err)


def test_missing_tool_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sby.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFoundError, match=r"^yowasp-sby is not installed"):
        sby.run_sby("", tmp_path, kind="bmc", depth=1)


@pytest.mark.parametrize("kind, depth, skip, message", [
    ("induction", 4, 0, r"^Kind must be one of \('prove', 'bmc'\), not 'induction'$"),
    ("bmc", 0, 0, r"^Depth must be a positive integer, not 0$"),
    ("bmc", 4, 4, r"^Skip must be below the depth 4 of a bmc check, not 4$"),
    ("prove", 4, 2, r"^Skip must be below the depth 4 of a bmc check, not 2$"),
])
def test_bad_kind_depth_or_skip(kind, depth, skip, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        sby.run_sby("", tmp_path, kind=kind, depth=depth, skip=skip)


def test_harness_names_an_input_it_cannot_hold():
    from moevit.hw.formal.harness import Harness
    from moevit.hw.units.gelu import Gelu

    gelu = Gelu(lanes=1)
    gelu._MustUse__silence = True
    with pytest.raises(ValueError, match=r"^Gelu has no input 'o_valid' to hold$"):
        Harness(gelu, hold=["o_valid"])
