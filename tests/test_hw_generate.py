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


def _module_ports(text, module):
    """{port: width} of ``module``'s header, from its input/output declarations."""
    body = text[text.index(f"module {module}("):]
    body = body[:body.index("endmodule")]
    return {name: int(msb or 0) + 1 for msb, name in
            re.findall(r"^\s*(?:input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", body, re.M)}


def test_generate_writes_the_top_ports_with_vitis_names_and_the_register_map(tmp_path, capsys):
    from moevit.hw.program.regmap import REGMAP, load
    from moevit.hw.top.control import AxiLiteSignature

    assert main(["hw", "generate", "--config", "tiny", "-o", str(tmp_path), "--unit", "control",
                 "--unit", "gmem"]) == 0
    names = ["moevit_control.v", "moevit_gmem.v", "moevit_control.json", "moevit_control.h"]
    assert capsys.readouterr().out.split() == [str(tmp_path / name) for name in names]

    control = _module_ports((tmp_path / "moevit_control.v").read_text(), "moevit_control")
    axi_lite = AxiLiteSignature(REGMAP.address_width).members
    assert {f"s_axi_control_{s}": m.shape for s, m in axi_lite.items()}.items() <= control.items()
    assert control["interrupt"] == 1

    gmem = _module_ports((tmp_path / "moevit_gmem.v").read_text(), "moevit_gmem")
    axi = {f"m_axi_gmem_{s}" for s in (
        "araddr arlen arsize arburst arvalid arready arid rdata rresp rlast rvalid rready rid "
        "awaddr awlen awsize awburst awvalid awready awid wdata wstrb wlast wvalid wready "
        "bresp bvalid bready bid").split()}
    assert axi <= gmem.keys()
    hw = DEFAULT_HW["tiny"]
    assert (gmem["m_axi_gmem_araddr"], gmem["m_axi_gmem_rdata"], gmem["m_axi_gmem_wstrb"]) \
        == (64, hw.bus_width, hw.bus_width // 8)
    for port in [*control, *gmem]:  # every member flattened with one underscore
        assert "__" not in port, port

    assert json.loads((tmp_path / "moevit_control.json").read_text()) == REGMAP.to_dict()
    assert load(tmp_path / "moevit_control.json").to_dict() == REGMAP.to_dict()  # the driver's reader
    header = (tmp_path / "moevit_control.h").read_text()
    assert header == REGMAP.c_header()


def test_memory_port_follows_the_bus_width(tmp_path):
    from moevit.hw.generate import generate

    hw = DEFAULT_HW["tiny"].replace(bus_width=512)
    generate(hw, tmp_path, ["gmem"])
    gmem = _module_ports((tmp_path / "moevit_gmem.v").read_text(), "moevit_gmem")
    assert (gmem["m_axi_gmem_rdata"], gmem["m_axi_gmem_wdata"]) == (512, 512)
    assert json.loads((tmp_path / "hw.json").read_text())["bus_width"] == 512


def test_constant_bits_hold_their_value_from_time_zero_on_icarus(tmp_path):
    """A signal driven partly by a process and partly by nothing (its init, a constant):
    Yosys writes the constant part as ``always @* x = C;``, a block that waits on nothing,
    which an event-driven simulator never runs (the part stays X on Icarus; the top with
    only the linear engine read its gather flag from one and sent X addresses).
    :func:`to_verilog`'s text gives the constant from time zero."""
    import subprocess

    from amaranth.back import verilog as amaranth_verilog
    from amaranth.hdl import Module
    from amaranth.lib import data, wiring
    from amaranth.lib.wiring import In, Out

    from moevit.hw.generate import to_verilog

    class Partial(wiring.Component):
        a: In(2)
        sel: In(1)
        o: Out(data.StructLayout({"low": 2, "high": 2}))

        def elaborate(self, platform):
            m = Module()
            with m.If(self.sel):
                m.d.comb += self.o.low.eq(self.a)
            return m

    bench = ("module bench; reg [1:0] a = 2'd3; reg sel = 1'b1; wire [3:0] o;\n"
             "  partial dut(.a(a), .sel(sel), .o(o));\n"
             "  initial begin #1 $display(\"%b\", o); #1 sel = 1'b0; #1 $display(\"%b\", o); end\n"
             "endmodule\n")

    def simulated(text):
        (tmp_path / "dut.v").write_text(text)
        (tmp_path / "bench.v").write_text(bench)
        subprocess.run(["iverilog", "-o", "sim", "dut.v", "bench.v"], cwd=tmp_path, check=True)
        return subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, capture_output=True,
                              text=True, check=True).stdout.split()

    raw = amaranth_verilog.convert(Partial(), name="partial", emit_src=False)
    assert re.search(r"always @\*\n    o\[3:2\] = 2'h0;", raw)     # the case this fixes
    assert simulated(raw) == ["xx11", "xx00"]
    assert simulated(to_verilog(Partial(), "partial")) == ["0011", "0000"]
