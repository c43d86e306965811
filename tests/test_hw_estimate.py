"""Resource estimates with Yosys synth_xilinx (slow: several minutes per synthesis)."""

import pytest

from moevit.hw.config import HwConfig
from moevit.hw.estimate import estimate_verilog
from moevit.hw.generate import verilog_file


def _linear(tmp_path, **changes):
    hw = HwConfig(**{**dict(rows=2, cols=4, post_lanes=2, max_tokens=4, max_in=32,
                            out_depth=4), **changes})
    return estimate_verilog("linear", verilog_file("linear", hw), "moevit_linear", tmp_path)


@pytest.mark.slow
def test_each_mac_unit_is_one_dsp48e2(tmp_path):
    small = _linear(tmp_path / "a")
    tall = _linear(tmp_path / "b", rows=4, max_tokens=8)
    # Two more token rows of 4 columns: 8 more MAC units, 8 more DSP48E2, nothing else.
    assert tall.dsp - small.dsp == 8
    # Per post-processing lane: requantize s32 x u15 (2 DSPs: 32 bits exceed the 27-bit
    # port), GELU t*t and q*f (1 each), GELU requantize (2), residual Ma*a and Mb*b (1 each).
    assert small.dsp == 2 * 4 + 2 * 8
    assert small.lut > 0 and small.ff > 0
