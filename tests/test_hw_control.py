"""The control port's interface: its signature from the register map, the Vitis port names."""

import re

import pytest
from amaranth.back import verilog
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.program.regmap import REGMAP, Field, Register, RegisterMap
from moevit.hw.top.control import AxiLiteBridge, AxiLiteSignature, Control, vitis_ports

AXI_LITE = ["awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
            "bresp", "bvalid", "bready", "araddr", "arvalid", "arready",
            "rdata", "rresp", "rvalid", "rready"]


def test_signature_follows_the_map():
    control = Control()
    control._MustUse__silence = True  # never elaborated
    assert control.signature == wiring.Signature({
        "s_axi_control": In(AxiLiteSignature(12)),
        "interrupt": Out(1), "start": Out(1), "done": In(1), "running": Out(1),
        "args": Out(data.StructLayout({"program": 64, "weights": 64, "input": 64, "output": 64,
                                       "scratch": 64, "task": 32, "images": 32})),
        "report": In(data.StructLayout({
            "status": data.StructLayout({"instruction": 16, "image": 16}),
            "error": data.StructLayout({"code": 8})})),
        "unit_busy": In(data.StructLayout({u: 1 for u in REGMAP.units})),
    })


def test_another_map_gives_another_port():
    regs = list(REGMAP.registers)
    extra = Register("gain", 0x80, 32, (Field("gain", 0, 32, "rw", "host"),))
    control = Control(RegisterMap(regs + [extra]))
    control._MustUse__silence = True  # never elaborated
    assert control.signature.members["args"].shape["gain"].shape == 32


def test_verilog_has_the_names_vitis_expects():
    control = Control()
    text = verilog.convert(control, name="moevit_control", ports=vitis_ports(control),
                           emit_src=False)
    module = text[:text.index("endmodule")]
    ports = set(re.findall(r"\b(?:input|output)\s+(?:\[\d+:0\]\s+)?(\w+)", module))
    assert {f"s_axi_control_{name}" for name in AXI_LITE} <= ports
    assert "interrupt" in ports and "s_axi_control__awaddr" not in ports


def test_axi_lite_signature_members():
    sig = AxiLiteSignature(12)
    assert list(sig.members.keys()) == AXI_LITE
    assert sig.members["awaddr"].shape == 12 and sig.members["awready"].flow == In
    bridge = AxiLiteBridge(12)
    bridge._MustUse__silence = True  # never elaborated
    assert bridge.signature.members["bus"].signature.flip().members["rdata"].flow == In


def test_bad_parameters():
    with pytest.raises(TypeError, match=r"^Register map must be a RegisterMap, not 'x'$"):
        Control("x")
    with pytest.raises(TypeError, match=r"^Address width must be an integer of at least 3, not 2$"):
        AxiLiteSignature(2)
