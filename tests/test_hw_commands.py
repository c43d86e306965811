"""The ``hw`` commands' behaviour around the tools (the syntheses themselves: test_hw_estimate.py)."""

import re

import pytest

from moevit.cli import main


class FakeEstimate:
    def __init__(self, unit):
        self.unit = unit

    def row(self):
        return {"unit": self.unit, "dsp": 1, "lut": 2, "ff": 3, "bram": 0.5, "uram": 0}


def test_estimate_shows_progress_per_unit(tmp_path, monkeypatch, capsys):
    # Yosys takes minutes per unit: the command says which unit runs, one step per unit.
    import moevit.hw.estimate as estimate
    import moevit.hw.generate as generate

    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(generate, "verilog_file", lambda unit, hw, folder: folder / f"{unit}.v")
    monkeypatch.setattr(estimate, "estimate_verilog", lambda unit, path, top, folder: FakeEstimate(unit))
    with pytest.warns(UserWarning, match=r"^Yosys synth_xilinx -family xcup, not Vivado"):  # the estimate's caveat
        assert main(["hw", "estimate", "--unit", "gelu", "--unit", "softmax"]) == 0
    out, err = capsys.readouterr()
    progress = err.replace("\r", "\n")
    assert re.search(r"estimate: +0%.* 0/2 .*gelu: Yosys synth_xilinx", progress), progress  # the unit that runs
    assert re.search(r"estimate: 100%.* 2/2 .*softmax: Yosys synth_xilinx", progress), progress
    assert re.search(r"^gelu +1 +2 +3 ", out, re.M) and re.search(r"^softmax +1 +2 +3 ", out, re.M)
    assert main(["hw", "estimate", "--unit", "gelu", "--quiet", "--json"]) == 0
    assert "estimate:" not in capsys.readouterr().err
