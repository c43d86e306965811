"""The bitstream build (``host/bitstream.py``): its inputs, the dry run in tclsh, the reports.

The dry run must pass every check on all three boards, and each check is shown
to fail on an input spoiled in the way it guards against (a wrong part, an
unconnected port, a wrong offset...), so none passes by construction.

The top's Verilog here is the accelerator with only its copy engine
(``Accelerator(hw, engines=("copy",))``): the same ports as the whole top
(they are the Vitis kernel's, declared whatever the engines), generated once
for the module in seconds rather than the whole top's minute.
"""

import json
import re
import stat

import pytest

from moevit.cli import main
from moevit.errors import MoevitError
from moevit.host import bitstream as B
from moevit.hw.program.regmap import REGMAP

BOARDS = ("zcu102", "zcu104", "u280")


@pytest.fixture(scope="module")
def top():
    from moevit.hw.generate import to_verilog

    from moevit.hw.config import get_hw_config
    from moevit.hw.top.accelerator import Accelerator
    from moevit.hw.top.control import vitis_ports

    accel = Accelerator(get_hw_config("tiny"), engines=("copy",))
    return to_verilog(accel, B.KERNEL, vitis_ports(accel))


@pytest.fixture
def build_of(top, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    return lambda board: B.write_inputs(board, "tiny", tmp_path / board, verilog=top)


def checks(build):
    return {check.name: check for check in B.dry_run(build)}


def spoil(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("board", BOARDS)
def test_dry_run_passes(board, build_of):
    build = build_of(board)
    found = checks(build)
    failed = [f"{c.name}: {c.detail}" for c in found.values() if not c.ok]
    assert not failed
    assert len(found) == (12 if board == "u280" else 17)
    names = {p.name for p in build.files}
    assert {"moevit_top.v", "moevit_control.json", "moevit_control.h", B.PACKAGE_TCL} <= names
    assert ({B.KERNEL_XML, B.XO_TCL, B.LINK_CFG, B.VPP_LINK} <= names) == (board == "u280")
    assert (B.BD_TCL in names) == (board != "u280")
    assert build.deploy.name == board and build.deploy.parent.name == "deploy"


def test_kernel_xml_is_the_register_map(build_of):
    build = build_of("u280")
    args = B.kernel_arguments()
    # every argument register of the map, the 64-bit buffer addresses as pointers
    assert [a[0] for a in args] == ["program", "weights", "input", "output", "scratch", "task",
                                    "images"]
    for name, k, offset, size, pointer in args:
        reg = REGMAP[name]
        assert (offset, size, pointer) == (reg.offset, reg.bits // 8, reg.bits == 64)
    text = (build.folder / B.KERNEL_XML).read_text()
    assert '<arg name="task" addressQualifier="0" id="5" port="s_axi_control" size="0x4" ' \
           f'offset="0x{REGMAP["task"].offset:x}"' in text
    assert 'dataWidth="128"' in text and 'hwControlProtocol="ap_ctrl_hs"' in text


def test_clock_is_the_hw_target_capped_at_the_board(build_of):
    zynq, alveo = build_of("zcu102"), build_of("u280")     # boards 200 and 300 MHz, tiny 250
    assert (zynq.clock_mhz, alveo.clock_mhz) == (200, 250)
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {200}" in (zynq.folder / B.BD_TCL).read_text()
    assert "--kernel_frequency 250 " in (alveo.folder / B.VPP_LINK).read_text()


@pytest.mark.parametrize("board, file, old, new, check", [
    ("zcu102", B.PACKAGE_TCL, "-part {xczu9eg-ffvb1156-2-e}", "-part {xczu7ev-ffvc1156-2-e}",
     "part is the board's"),
    ("zcu104", B.BD_TCL, "-part {xczu7ev-ffvc1156-2-e}", "-part {xczu9eg-ffvb1156-2-e}",
     "block design part is the board's"),
    ("zcu102", B.BD_TCL, "xilinx.com:zcu102:part0:*", "xilinx.com:zcu104:part0:*",
     "board part is the board's"),
    ("zcu102", B.PACKAGE_TCL, "set_property version 1.0", "set_property version 1.1",
     "the IP's VLNV"),
    ("zcu102", B.BD_TCL, "-vlnv moevit.org:hls:moevit_top:1.0", "-vlnv moevit.org:hls:moevit:1.0",
     "block design cells and their IP"),
    ("zcu102", B.PACKAGE_TCL, "-busif $busif -clock ap_clk", "-busif $busif -clock clk",
     "AXI interfaces on ap_clk, reset ap_rst_n"),
    ("zcu102", B.PACKAGE_TCL, "range 4096", "range 1024", "control memory map spans the register map"),
    ("zcu102", B.PACKAGE_TCL, "moevit_top.v}", "moevit_topx.v}", "the top's Verilog is added and exists"),
    ("zcu104", B.BD_TCL, '{apply_board_preset "1"}', '{apply_board_preset "0"}', "PS board preset"),
    ("zcu102", B.BD_TCL, "FREQMHZ {200}", "FREQMHZ {100}", "PS: HPM0 on, HP0 on, PL clock 0, IRQ0"),
    ("zcu102", B.BD_TCL, "CONFIG.PSU__USE__S_AXI_GP2 {1}", "CONFIG.PSU__USE__S_AXI_GP2 {0}",
     "PS: HPM0 on, HP0 on, PL clock 0, IRQ0"),
    ("zcu102", B.BD_TCL, "memory_smartconnect/M00_AXI] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP0_FPD]",
     "memory_smartconnect/M00_AXI] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HPC0_FPD]",
     "AXI connections"),
    ("zcu104", B.BD_TCL, "[get_bd_pins moevit_top_0/interrupt] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]",
     "[get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]", "every port of the top is connected"),
    ("zcu104", B.BD_TCL, "[get_bd_pins moevit_top_0/interrupt] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]",
     "[get_bd_pins moevit_top_0/interrupt] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq1]",
     "clock, reset and interrupt nets"),
    ("zcu102", B.BD_TCL, "[get_bd_pins rst_pl_clk0/peripheral_aresetn] [get_bd_pins moevit_top_0/ap_rst_n]",
     "[get_bd_pins rst_pl_clk0/peripheral_aresetn]", "every port of the top is connected"),
    ("zcu102", "moevit_top.v", "module moevit_top(", "module moevit_top(debug_enable, ",
     "every port of the top is connected"),
    ("zcu102", "moevit_top.v", "input [127:0] m_axi_gmem_rdata;", "input [63:0] m_axi_gmem_rdata;",
     "memory ports as wide as the HwConfig's bus"),
    ("u280", "moevit_top.v", "output [127:0] m_axi_gmem_wdata;", "output [255:0] m_axi_gmem_wdata;",
     "memory ports as wide as the HwConfig's bus"),
    ("zcu102", B.BD_TCL, "assign_bd_address\nvalidate_bd_design", "validate_bd_design\nassign_bd_address",
     "flow order to write_bitstream"),
    ("zcu102", B.BD_TCL, "-to_step write_bitstream", "-to_step route_design",
     "flow order to write_bitstream"),
    ("u280", B.KERNEL_XML, 'name="task" addressQualifier="0" id="5" port="s_axi_control" size="0x4" '
     'offset="0x38"', 'name="task" addressQualifier="0" id="5" port="s_axi_control" size="0x4" '
     'offset="0x3c"', "kernel.xml against the register map"),
    ("u280", B.KERNEL_XML, 'name="weights" addressQualifier="1"', 'name="weights" addressQualifier="0"',
     "kernel.xml against the register map"),
    ("u280", B.KERNEL_XML, 'dataWidth="128"', 'dataWidth="512"', "kernel.xml against the register map"),
    ("u280", B.XO_TCL, "-kernel_name moevit_top", "-kernel_name moevit", "package_xo with the kernel.xml"),
    ("u280", B.LINK_CFG, "sp=moevit_top_1.scratch:HBM[0:31].0\n", "", "link.cfg maps every m_axi_gmem argument to HBM"),
    ("u280", B.LINK_CFG, "sp=moevit_top_1.input:HBM[0:31].0", "sp=moevit_top_1.input:DDR[0]",
     "link.cfg maps every m_axi_gmem argument to HBM"),
    ("u280", B.VPP_LINK, "xilinx_u280_gen3x16_xdma_1_202211_1", "xilinx_u250_gen3x16_xdma_4_1_202210_1",
     "v++ --link on the board's platform"),
    ("u280", B.VPP_LINK, "--kernel_frequency 250", "--kernel_frequency 300",
     "v++ --link on the board's platform"),
])
def test_each_check_fails_on_a_spoiled_input(board, file, old, new, check, build_of):
    build = build_of(board)
    assert checks(build)[check].ok
    spoil(build.folder / file, old, new)
    found = checks(build)[check]
    assert not found.ok, found.detail


def test_unconnected_port_is_named(build_of):
    build = build_of("zcu104")
    spoil(build.folder / B.BD_TCL, "[get_bd_pins moevit_top_0/interrupt] ", "")
    assert checks(build)["every port of the top is connected"].detail == "unconnected: interrupt"


@pytest.mark.parametrize("old, new, message", [
    ("assign_bd_address", "assign_bd_adress", r'invalid command name "assign_bd_adress"'),
    ("create_bd_design moevit_bd", "create_bd_design {moevit_bd", r"missing close-brace"),
])
def test_tcl_that_does_not_run_in_tclsh(old, new, message, build_of):
    build = build_of("zcu102")
    spoil(build.folder / B.BD_TCL, old, new)
    with pytest.raises(MoevitError, match=r"^The Tcl script .*block_design\.tcl does not run in "
                                          r"tclsh: .*" + message):
        B.dry_run(build)


# Hand-written samples in the layout Vivado 2023.2 prints (not the output of a real run).
UTILIZATION = """\
Copyright 1986-2023 Xilinx, Inc. All Rights Reserved.
| Tool Version : Vivado v.2023.2 (lin64) Build 4029153 Fri Oct 13 20:13:54 MDT 2023
| Command      : report_utilization -file utilization.rpt
| Device       : xczu9egffvb1156-2
1. CLB Logic
------------

+----------------------------+--------+-------+------------+-----------+-------+
|          Site Type         |  Used  | Fixed | Prohibited | Available | Util% |
+----------------------------+--------+-------+------------+-----------+-------+
| CLB LUTs                   |  61234 |     0 |          0 |    274080 | 22.34 |
|   LUT as Logic             |  58001 |     0 |          0 |    274080 | 21.16 |
| CLB Registers              |  80345 |     0 |          0 |    548160 | 14.66 |
+----------------------------+--------+-------+------------+-----------+-------+

3. BLOCK RAM
------------

+-------------------+-------+-------+------------+-----------+-------+
|     Site Type     |  Used | Fixed | Prohibited | Available | Util% |
+-------------------+-------+-------+------------+-----------+-------+
| Block RAM Tile    | 140.5 |     0 |          0 |       912 | 15.41 |
|   RAMB36/FIFO*    |   131 |     0 |          0 |       912 | 14.36 |
|   RAMB18          |    19 |     0 |          0 |      1824 |  1.04 |
| URAM              |     0 |     0 |          0 |         0 |  0.00 |
+-------------------+-------+-------+------------+-----------+-------+

4. ARITHMETIC
-------------

+----------------+------+-------+------------+-----------+-------+
|    Site Type   | Used | Fixed | Prohibited | Available | Util% |
+----------------+------+-------+------------+-----------+-------+
| DSPs           | 1024 |     0 |          0 |      2520 | 40.63 |
|   DSP48E2 only | 1024 |       |            |           |       |
+----------------+------+-------+------------+-----------+-------+
"""

TIMING = """\
------------------------------------------------------------------------------------------------
| Design Timing Summary
| ---------------------
------------------------------------------------------------------------------------------------

    WNS(ns)      TNS(ns)  TNS Failing Endpoints  TNS Total Endpoints      WHS(ns)      THS(ns)  THS Failing Endpoints  THS Total Endpoints     WPWS(ns)     TPWS(ns)  TPWS Failing Endpoints  TPWS Total Endpoints
    -------      -------  ---------------------  -------------------      -------      -------  ---------------------  -------------------     --------     --------  ----------------------  --------------------
     -0.250      -12.500                     80               190000        0.012        0.000                      0               190000        1.458        0.000                       0                 86000


All user specified timing constraints are met.
"""


def test_reports_to_an_estimate_row():
    util, timing = B.parse_utilization(UTILIZATION), B.parse_timing(TIMING)
    assert util == {"dsp": 1024, "lut": 61234, "ff": 80345, "bram": 140.5, "uram": 0}
    assert timing == {"wns_ns": -0.25, "tns_ns": -12.5, "whs_ns": 0.012}
    row = B.report_row("zcu102", util, timing, 200)
    # the keys of moevit hw estimate's rows, then the timing
    assert list(row)[:6] == ["unit", "dsp", "lut", "ff", "bram", "uram"]
    assert row["fmax_mhz"] == pytest.approx(1000 / 5.25, abs=0.05) and row["timing_met"] is False


@pytest.mark.parametrize("parse, text, message", [
    (B.parse_utilization, UTILIZATION.replace("| DSPs ", "| DSP "), r"no row DSPs"),
    (B.parse_timing, TIMING.replace("WNS(ns)", "WNS"), r"no Design Timing Summary"),
])
def test_reports_that_are_not_vivados(parse, text, message):
    with pytest.raises(MoevitError, match=message):
        parse(text)


# --- the command line ---------------------------------------------------------------------

@pytest.fixture
def cli(top, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(B, "_top_verilog", lambda hw: top)
    return tmp_path


def test_cli_dry_run(cli, capsys):
    assert main(["bitstream", "--board", "u280", "--dry-run", "-o", str(cli / "u")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^dry run of u280: 12 of 12 checks pass$", out, re.M)
    assert f"wrote {cli / 'u' / B.KERNEL_XML}" in out


def fake_vivado(folder, version="2023.2"):
    """A stand-in ``vivado`` on PATH: its version banner, and on the block design the files
    Vivado would leave (a .bit, the .hwh, the two reports: the samples above)."""
    folder.mkdir(exist_ok=True)
    (folder / "utilization.sample").write_text(UTILIZATION)
    (folder / "timing.sample").write_text(TIMING)
    script = folder / "vivado"
    script.write_text(f"""#!/bin/sh
if [ "$1" = "-version" ]; then echo "vivado v{version} (64-bit)"; exit 0; fi
case "$*" in *block_design.tcl*)
  board=$(basename "$PWD")
  mkdir -p project/moevit_$board.runs/impl_1 project/moevit_$board.gen/sources_1/bd/moevit_bd/hw_handoff
  echo bit > project/moevit_$board.runs/impl_1/moevit_bd_wrapper.bit
  echo hwh > project/moevit_$board.gen/sources_1/bd/moevit_bd/hw_handoff/moevit_bd.hwh
  cp {folder}/utilization.sample utilization.rpt; cp {folder}/timing.sample timing.rpt;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def test_build_with_tools_copies_and_reports(cli, capsys, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_vivado(cli / 'tools')}:/usr/bin:/bin")
    assert main(["bitstream", "--board", "zcu104", "-o", str(cli / "zcu104"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])[0]
    assert (row["unit"], row["board"], row["dsp"], row["clock_mhz"]) == ("moevit_top", "zcu104",
                                                                         1024, 200)
    deploy = cli / "build" / "deploy" / "zcu104"
    assert (deploy / "moevit.bit").read_text() == "bit\n"
    assert (deploy / "moevit.hwh").read_text() == "hwh\n"


@pytest.mark.parametrize("board, tool", [("zcu102", "vivado"), ("u280", "vivado")])
def test_build_without_the_tools(board, tool, cli, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(cli / "no-tools"))
    assert main(["bitstream", "--board", board, "-o", str(cli / "out")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"moevit: error: {tool} not found: the {board} bitstream needs AMD "
                        rf"Vivado/Vitis 2023\.2 .*the inputs are written in \S+out\n", err)
    assert (cli / "out" / B.PACKAGE_TCL).is_file()


def test_build_with_another_vivado(cli, capsys, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_vivado(cli / 'tools', '2024.1')}:/usr/bin:/bin")
    assert main(["bitstream", "--board", "zcu102", "-o", str(cli / "out")]) == 2
    assert re.fullmatch(r"moevit: error: vivado is not 2023\.2 \(vivado v2024\.1 \(64-bit\)\): .*\n",
                        capsys.readouterr().err)


def test_bad_input(cli, capsys):
    board = json.loads((B.Path(B.__file__).parent.parent / "boards" / "zcu102.json").read_text())
    del board["part"]
    (cli / "nopart.json").write_text(json.dumps(board))
    (cli / "file").write_text("")
    for argv, message in [
        (["--board", "zcu106"], r"Unknown board 'zcu106'; known boards: u280, zcu102, zcu104 "
                                r"\(or a path to a board \.json file\)"),
        (["--board", str(cli / "nopart.json")], r"The board file nopart\.json: part is missing"),
        (["--board", "zcu102", "--config", "huge"], r".*huge.*"),
        (["--board", "zcu102", "-o", str(cli / "file" / "sub")], r"Cannot write the bitstream "
                                                                  r"folder .*"),
        # A point searched for a larger board: refused before the top is generated.
        (["--board", "zcu104", "--config", "zcu102-edge-moe", "-o", str(cli / "big")],
         r"HwConfig 'zcu102-edge-moe' does not fit board zcu104 \(xczu7ev-ffvc1156-2-e\): "
         r"it needs DSP48E2 2,\d{3} of 1,728, BRAM36 \d{3} of 312 \(predicted; .*\)"),
    ]:
        assert main(["bitstream", *argv, "--dry-run"]) == 2, argv
        err = capsys.readouterr().err
        assert re.fullmatch(rf"moevit: error: {message}\n", err), err
    assert not (cli / "big").exists()
