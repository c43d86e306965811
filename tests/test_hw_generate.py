"""Verilog emission and the hw command line."""

import json
import re

import pytest

from moevit.cli import main
from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.generate import UNITS, build_unit, module_name, verilog_file


def test_generate_writes_every_unit(tmp_path, capsys):
    assert main(["hw", "generate", "--config", "tiny", "-o", str(tmp_path), "--unit", "linear"]) == 0
    text = (tmp_path / "moevit_linear.v").read_text()
    assert re.search(r"^module moevit_linear\(", text, re.M)
    for port in ("desc__valid", "x__payload", "w__ready", "chan__payload", "res__valid",
                 "y__payload"):
        assert port in text
    assert json.loads((tmp_path / "hw.json").read_text()) == DEFAULT_HW["tiny"].to_dict()
    assert str(tmp_path / "moevit_linear.v") in capsys.readouterr().out


def test_linear_signature_follows_the_config():
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    from moevit.hw.program.descriptor import LinearDescriptor
    from moevit.hw.program.descriptor import FAULT_WIDTH
    from moevit.hw.units.linear import (chan_layout, lanes_layout, output_layout,
                                  stalls_layout)

    hw = HwConfig(rows=2, cols=8, max_tokens=8, max_in=16)
    kernel = build_unit("linear", hw)
    kernel._MustUse__silence = True  # only its signature is looked at
    assert kernel.signature == wiring.Signature({
        "desc": In(stream.Signature(LinearDescriptor.layout())),
        "x": In(stream.Signature(lanes_layout(2))),
        "w": In(stream.Signature(lanes_layout(8))),
        "chan": In(stream.Signature(chan_layout())),
        "res": In(stream.Signature(lanes_layout(8))),
        "y": Out(stream.Signature(output_layout(8))),
        "error": Out(FAULT_WIDTH),
        "stalls": Out(stalls_layout()),
        "busy": Out(1),
    })


def test_unknown_unit_and_config_are_clear_errors(capsys):
    from moevit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^Unknown hardware unit 'fft'; units are \["):
        verilog_file("fft", DEFAULT_HW["tiny"])
    assert main(["hw", "generate", "--config", "vit-h"]) == 2
    assert re.fullmatch(r"moevit: error: Unknown config 'vit-h'; known configs are .*\n",
                        capsys.readouterr().err)


def test_kernel_needs_a_hw_config():
    from moevit.hw.units.linear import LinearKernel

    with pytest.raises(TypeError, match=r"^Hardware config must be a HwConfig, not 4$"):
        LinearKernel(4)


def test_registry_names_verilog_modules():
    assert "linear" in UNITS and module_name("linear") == "moevit_linear"
