"""The bitstream build of a top with several memory ports: every port in the block design on
its own HP port, in kernel.xml and in link.cfg; the dry run passes, and a HwConfig with more
ports than the board has is a clear error. The top is the copy engine's (as test_bitstream)."""

import re

import pytest

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.host import bitstream as B

#: Four ports on every board (one top converted for all): the Zynq boards have four HP ports.
PORTS = {"zcu102": 4, "zcu104": 4, "u280": 4}


def _top(hw):
    from moevit.hw.generate import to_verilog

    from moevit.hw.top.accelerator import Accelerator
    from moevit.hw.top.control import vitis_ports

    accel = Accelerator(hw, engines=("copy",))
    return to_verilog(accel, B.KERNEL, vitis_ports(accel))


_TOPS = {}   # (ports, bus) -> the copy engine's top, converted once per session


@pytest.fixture
def ported(tmp_path, monkeypatch):
    """``write_inputs`` of tiny with ``ports`` memory ports (a named config, as --save writes)."""
    import moevit.hw.config as config

    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    tops = _TOPS

    def build(board, ports, top=True, bus=128):
        hw = config.DEFAULT_HW["tiny"].replace(name=f"tiny-{ports}ports", memory_ports=ports,
                                               bus_width=bus)
        monkeypatch.setattr(config, "get_hw_config", lambda name: hw)
        if top and (ports, bus) not in tops:
            tops[ports, bus] = _top(hw)
        return B.write_inputs(board, hw.name, tmp_path / board,
                              verilog=tops[ports, bus] if top else "(checked before the top)")

    return build


@pytest.mark.parametrize("board", sorted(PORTS))
def test_dry_run_passes_with_the_boards_ports(board, ported):
    build = ported(board, PORTS[board])
    found = {c.name: c for c in B.dry_run(build)}
    failed = [f"{c.name}: {c.detail}" for c in found.values() if not c.ok]
    assert not failed
    names = [f"m_axi_{'gmem' if k == 0 else f'gmem{k}'}" for k in range(PORTS[board])]
    if board == "u280":
        xml = (build.folder / B.KERNEL_XML).read_text()
        assert re.findall(r'<port name="(m_axi_\w+)"', xml) == names
        assert set(re.findall(r'port="(m_axi_\w+)"', xml)) == {"m_axi_gmem"}   # the buffers
        cfg = (build.folder / B.LINK_CFG).read_text()
        for k, name in enumerate(names[1:], 1):       # every port its own PC's entry
            assert f"sp={B.CU}.{name}:HBM[0:31].{k}" in cfg
    else:
        tcl = (build.folder / B.BD_TCL).read_text()
        for k, name in enumerate(names):
            sc = "memory_smartconnect" + (str(k) if k else "")
            assert f"moevit_top_0/{name}] [get_bd_intf_pins {sc}/S00_AXI]" in tcl
            assert f"{sc}/M00_AXI] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP{k}_FPD]" in tcl
            assert f"CONFIG.PSU__USE__S_AXI_GP{k + 2} {{1}}" in tcl


@pytest.mark.slow
def test_a_kernel_bus_wider_than_the_hp_ports(ported):
    """A 512-bit kernel bus on the ZCU102's four 128-bit HP ports: the top's masters are 512
    bits wide, the HP ports stay 128 (their SmartConnects convert), and the dry run says so;
    a top whose Verilog is narrower than its HwConfig's bus fails it. (Slow: Amaranth takes
    about 30 s to convert the 512-bit top; the fast part spoils the 128-bit one.)"""
    build = ported("zcu102", 4, bus=512)
    found = {c.name: c for c in B.dry_run(build)}
    assert not [c.name for c in found.values() if not c.ok]
    assert found["memory ports as wide as the HwConfig's bus"].detail == (
        "4 port(s) of 512 bits in the Verilog; each SmartConnect converts them to its HP "
        "port's 128 bits")
    tcl = (build.folder / B.BD_TCL).read_text()
    assert all(f"CONFIG.PSU__SAXIGP{k + 2}__DATA_WIDTH {{128}}" in tcl for k in range(4))
    path = build.folder / B.VERILOG
    path.write_text(path.read_text().replace("[511:0] m_axi_gmem2_rdata;",
                                             "[127:0] m_axi_gmem2_rdata;"))
    check = {c.name: c for c in B.dry_run(build)}["memory ports as wide as the HwConfig's bus"]
    assert not check.ok and check.detail == ("wrong: {'m_axi_gmem2_rdata': 128} (expected 512 "
                                             "bits)")


def test_a_port_left_unconnected_fails_the_dry_run(ported):
    build = ported("zcu102", 4)
    path = build.folder / B.BD_TCL
    text = path.read_text()
    old = ("connect_bd_intf_net [get_bd_intf_pins moevit_top_0/m_axi_gmem1] "
           "[get_bd_intf_pins memory_smartconnect1/S00_AXI]\n")
    assert old in text
    path.write_text(text.replace(old, ""))
    found = {c.name: c for c in B.dry_run(build)}
    assert not found["AXI connections"].ok
    assert "m_axi_gmem1" in found["every port of the top is connected"].detail


@pytest.mark.parametrize("board, ports, have", [("zcu102", 5, 4), ("zcu104", 8, 4)])
def test_more_ports_than_the_board_has(board, ports, have, ported, capsys):
    with pytest.raises(ConfigError, match=rf"^HwConfig 'tiny-{ports}ports' has {ports} memory "
                                          rf"ports; board {board} has {have} \(S_AXI_HP0_FPD"):
        ported(board, ports, top=False)
    assert main(["bitstream", "--board", board, "--config", f"tiny-{ports}ports",
                 "--dry-run"]) == 2
    assert re.fullmatch(rf"moevit: error: HwConfig 'tiny-{ports}ports' has {ports} memory ports; "
                        rf"board {board} has {have} .*\n", capsys.readouterr().err)
