"""The bitstream build: the accelerator top as a Vivado IP, a Zynq block design or a U280 xclbin,
and its dry run without AMD tools.

``moevit bitstream --board B [--config C] [--dry-run]`` (``make bitstream
BOARD=B [DRY_RUN=1]``) writes, under ``build/bitstream/<config>/<board>/``:

* ``moevit_top.v``: the top (:class:`~moevit.hw.top.accelerator.Accelerator`
  with the Vitis port names of :func:`~moevit.hw.top.control.vitis_ports`,
  as the co-simulation builds it), and beside it the register map
  (``moevit_control.json`` / ``.h``, :func:`moevit.hw.program.regmap.write`);
* ``package_ip.tcl`` (``vivado -mode batch -source``): ``ipx::package_project``
  of that Verilog as the IP :data:`VLNV`, the AXI interfaces
  (``s_axi_control``, ``m_axi_gmem``) inferred and associated with ``ap_clk``
  and ``ap_rst_n``, the control port's memory map (the register map's address
  range);
* Zynq (ZCU102, ZCU104): ``block_design.tcl``: a project on the board's part
  and board part, the Zynq UltraScale+ PS with the board preset, PL clock 0
  at the HwConfig's clock (capped at the board's), the accelerator, an AXI
  interconnect from ``M_AXI_HPM0_FPD`` to ``s_axi_control``, a SmartConnect from
  each memory port to its HP port, converting the kernel's bus (``hw.bus_width``, 128
  to 512 bits: the IP's port as its Verilog declares it) to the HP port's 128 bits
  (``m_axi_gmem`` to ``S_AXI_HP0_FPD``,
  ``m_axi_gmem<k>`` to ``S_AXI_HP<k>_FPD``: :data:`HP_PORTS`; a HwConfig with
  more ``memory_ports`` than the board has is an error), a ``proc_sys_reset``, the interrupt on
  ``pl_ps_irq0``, the addresses assigned, then synthesis, implementation to
  ``write_bitstream`` and the reports; the ``.bit`` and the ``.hwh`` are then
  copied side by side as ``build/deploy/<board>/moevit.bit`` / ``.hwh``;
* U280: ``kernel.xml`` (every ``m_axi`` port of the top; from the register
  map one ``arg`` per argument register, its offset and size; the 64-bit
  buffer addresses on ``m_axi_gmem``), ``package_xo.tcl`` (the IP, then
  ``package_xo``), ``link.cfg`` (``[connectivity]``: every ``m_axi_gmem``
  argument in the HBM banks :data:`HBM_BANKS`, and every other memory port,
  by its interface name, on the same banks, each port through its own
  pseudo-channel's AXI port: :func:`hbm_entry`) and ``v++_link.sh`` (``v++ --link -t hw --platform
  <board's> --kernel_frequency``); the ``.xclbin`` goes to
  ``build/deploy/u280/moevit.xclbin``.

The tools are pinned to Vivado/Vitis :data:`~moevit.hls.scripts.VITIS_VERSION`
(2023.2, the last release with the U280): the real build reads the tool's
version banner first and stops on another. Without the tools it stops with
one line after writing its inputs.

The dry run needs no AMD tool: the Tcl runs in a real ``tclsh`` with the
Vivado commands stubbed (the harness of :func:`moevit.hls.scripts.record_calls`),
and the recorded calls are checked: the part and board part, the IP's VLNV
and interfaces, every connection of the block design and every port of the
top's Verilog on one of them, the PS settings, the flow's order; kernel.xml
and the link file against the register map.

Several memory ports (``hw.memory_ports``, :mod:`moevit.hw.top.memory_ports`):
every port reads and writes any of the host's buffers (the movers are spread
over the ports by stream, not by buffer), so a buffer cannot belong to one
port. The driver is unchanged: the same arguments, each on ``m_axi_gmem`` in
``kernel.xml`` (an ``arg`` names one port; XRT places the buffer in that
port's banks), and each other port is mapped by ``sp=<cu>.m_axi_gmem<k>`` to
the same HBM banks, which it reaches through the HBM switch: every buffer on
every port, one copy of each (no replicated weights). Each port enters the
switch through its own pseudo-channel's AXI port (:func:`hbm_entry`: port
``k`` through PC ``k``), so the ports do not share one 14.375 GB/s AXI port;
the cost model gives each port one PC's rate
(:func:`moevit.hw.cost.cycles.board_bandwidth`). Not modelled: two ports whose
streams fall in the same pseudo-channel (a buffer below 256 MB lies in one)
share that PC's rate, and a crossing of the switch's lateral links loses
some throughput (PG276, "Lateral AXI Switch Access Throughput Loss"). On Zynq
every HP port reaches the whole PS DDR.

Facts used (AMD documentation in the ``search`` index): ``kernel.xml``'s
elements and attributes as UG1393 / UG1702 "RTL Kernel XML File" shows them
(``language="ip_c"``, ports ``s_axi_control`` slave / ``m_axi_*`` master,
``arg`` with ``addressQualifier`` 1 for a global memory pointer, 0 for a
scalar); ``package_xo -xo_path -kernel_name -ip_directory -kernel_xml``
(UG1393, "Packaging RTL Kernels"); ``sp=<cu>.<arg>:HBM[a:b]`` and
``nk=<kernel>:<n>:<cu>`` in a ``[connectivity]`` section (UG1393, "Mapping
Kernel Ports to Memory"); the PS's ``M_AXI_HPM0_FPD`` / ``S_AXI_HP0_FPD`` /
``pl_clk0`` / ``pl_ps_irq0`` and ``PSU__USE__M_AXI_GP0`` (HPM0_FPD),
``PSU__USE__S_AXI_GP2`` (HP0_FPD), ``PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ``
(PG201, and FINN's ``custom_zynq_shell_template``); the board part
``xilinx.com:<board>:part0:<revision>`` of AMD's board store (FINN's
templates name ``xilinx.com:zcu104:part0:1.1`` and ``zcu102:part0:3.3``; the
script takes the newest revision installed).
"""

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["VLNV", "VENDOR", "LIBRARY", "KERNEL", "VERSION", "HBM_BANKS", "hbm_entry", "Build", "Check",
           "write_inputs", "dry_run", "run_build", "kernel_arguments", "kernel_xml",
           "parse_utilization", "parse_timing", "report_row", "register"]

#: The accelerator's IP identity, as the IP packaging writes it (vendor:library:name:version).
VENDOR, LIBRARY, KERNEL, VERSION = "moevit.org", "hls", "moevit_top", "1.0"
VLNV = f"{VENDOR}:{LIBRARY}:{KERNEL}:{VERSION}"
#: The U280's HBM pseudo-channels every memory port reaches (32 x 256 MB, UG1393 "HBM
#: Configuration and Use"): one range for every port, since every port reads any buffer.
HBM_BANKS = "HBM[0:31]"


def hbm_entry(k: int) -> str:
    """The link's memory of memory port ``k``: the whole HBM, entered through pseudo-channel
    ``k``'s own AXI port (``HBM[0:31].k``, the index after the range naming the HBM
    subsystem's slave port, as in Vitis_Accel_Examples' ``hbm_large_buffers``), so that
    each of the top's ports has its own 14.375 GB/s port into the HBM switch."""
    return f"{HBM_BANKS}.{k}"
#: The instance names of the block design and the U280 link.
BD, PS, ACCEL, CONTROL_IC, MEMORY_SC, RESET = ("moevit_bd", "zynq_ultra_ps_e_0", "moevit_top_0",
                                              "control_interconnect", "memory_smartconnect",
                                              "rst_pl_clk0")
CU = f"{KERNEL}_1"
#: The Zynq UltraScale+ PS's HP port k (``S_AXI_HP<k>_FPD``): its enable and data width
#: (the PS's slave AXI GP<k+2>, PG201) and its clock pin.
HP_PORTS = [(f"S_AXI_HP{k}_FPD", f"PSU__USE__S_AXI_GP{k + 2}", f"PSU__SAXIGP{k + 2}__DATA_WIDTH",
             f"saxihp{k}_fpd_aclk") for k in range(4)]
IP_VLNVS = {PS: "xilinx.com:ip:zynq_ultra_ps_e:3.5", CONTROL_IC: "xilinx.com:ip:axi_interconnect:2.1",
            MEMORY_SC: "xilinx.com:ip:smartconnect:1.0", RESET: "xilinx.com:ip:proc_sys_reset:5.0",
            ACCEL: VLNV}
PACKAGE_TCL, BD_TCL, XO_TCL = "package_ip.tcl", "block_design.tcl", "package_xo.tcl"
KERNEL_XML, LINK_CFG, VPP_LINK = "kernel.xml", "link.cfg", "v++_link.sh"
VERILOG = f"{KERNEL}.v"
# The Vivado commands the scripts may call: the dry run's tclsh stubs exactly these.
VIVADO_COMMANDS = (
    "create_project", "set_property", "current_project", "current_fileset", "add_files", "update_compile_order",
    "ipx::package_project", "ipx::current_core", "ipx::infer_bus_interfaces",
    "ipx::associate_bus_interfaces", "ipx::add_memory_map", "ipx::get_memory_maps",
    "ipx::add_address_block", "ipx::get_address_blocks", "ipx::get_bus_interfaces",
    "ipx::create_xgui_files", "ipx::update_checksums", "ipx::check_integrity", "ipx::save_core",
    "update_ip_catalog", "get_board_parts", "create_bd_design", "create_bd_cell",
    "apply_bd_automation", "get_bd_cells", "get_bd_pins", "get_bd_intf_pins", "connect_bd_net",
    "connect_bd_intf_net", "assign_bd_address", "validate_bd_design", "save_bd_design",
    "make_wrapper", "get_files", "get_runs", "launch_runs", "wait_on_run", "open_run",
    "report_utilization", "report_timing_summary", "package_xo", "close_project", "exit")


@dataclass
class Check:
    """One check of :func:`dry_run`: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str


@dataclass
class Build:
    """What :func:`write_inputs` wrote, and where the build puts its results.

    Attributes
    ----------
    folder : Path
    board : moevit.hw.boards.Board
    hw : moevit.hw.config.HwConfig
    clock_mhz : float
        The kernel clock: the HwConfig's, capped at the board's.
    files : list of Path
    deploy : Path
        ``build/deploy/<board>/``.
    """

    folder: Path
    board: object
    hw: object
    clock_mhz: float
    files: list = field(default_factory=list)
    deploy: Path = None

    @property
    def alveo(self) -> bool:
        return self.board.vitis_platform is not None

    @property
    def board_part(self) -> str:
        """AMD's board store names its boards ``xilinx.com:<board>:part0:<revision>``."""
        return f"xilinx.com:{self.board.name}:part0"

    @property
    def project(self) -> Path:
        return self.folder / "project"


def _word(text) -> str:
    from moevit.hls.scripts import _tcl_word

    return _tcl_word(text)


# --- generated inputs ---------------------------------------------------------------------

def kernel_arguments(regmap=None) -> list:
    """``(name, id, offset, bytes, pointer)`` of each kernel argument of the register map:
    a 64-bit argument is a buffer address in global memory (``m_axi_gmem``), the others
    scalars."""
    from moevit.hw.program.regmap import REGMAP

    regmap = regmap or REGMAP
    return [(reg.name, k, reg.offset, reg.bits // 8, reg.bits == 64)
            for k, reg in enumerate(regmap.arguments)]


def memory_ports(hw) -> list:
    """The names of the top's AXI4 memory ports: ``m_axi_gmem``, ``m_axi_gmem1`` ..."""
    from moevit.hw.top.memory_ports import port_name

    return [f"m_axi_{port_name(k)}" for k in range(hw.memory_ports)]


def _memory_sc(k) -> str:
    """The SmartConnect of memory port ``k`` in the block design."""
    return MEMORY_SC if k == 0 else f"{MEMORY_SC}{k}"


def _bd_cells(hw) -> dict:
    """The block design's cells and their IP: one SmartConnect per memory port."""
    cells = dict(IP_VLNVS)
    cells.update({_memory_sc(k): IP_VLNVS[MEMORY_SC] for k in range(1, hw.memory_ports)})
    return cells


def kernel_xml(hw, regmap=None) -> str:
    """The ``kernel.xml`` of the RTL kernel (UG1393 "RTL Kernel XML File"): every memory
    port of the top, the buffer arguments on ``m_axi_gmem`` (see the module's description)."""
    from moevit.hw.program.regmap import REGMAP

    regmap = regmap or REGMAP
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             "<!-- Written by moevit.host.bitstream from the register map; do not edit. -->",
             '<root versionMajor="1" versionMinor="6">',
             f'  <kernel name="{KERNEL}" language="ip_c" vlnv="{VLNV}" attributes="" '
             'preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="true" '
             'hwControlProtocol="ap_ctrl_hs">',
             "    <ports>",
             f'      <port name="s_axi_control" mode="slave" range="0x{1 << regmap.address_width:x}" '
             'dataWidth="32" portType="addressable" base="0x0"/>',
             *(f'      <port name="{name}" mode="master" range="0xFFFFFFFFFFFFFFFF" '
               f'dataWidth="{hw.bus_width}" portType="addressable" base="0x0"/>'
               for name in memory_ports(hw)),
             "    </ports>", "    <args>"]
    for name, k, offset, size, pointer in kernel_arguments(regmap):
        port, kind = ("m_axi_gmem", "void*") if pointer else ("s_axi_control", "uint")
        lines.append(f'      <arg name="{name}" addressQualifier="{int(pointer)}" id="{k}" '
                     f'port="{port}" size="0x{size:x}" offset="0x{offset:x}" type="{kind}" '
                     f'hostOffset="0x0" hostSize="0x{size:x}"/>')
    lines += ["    </args>", "  </kernel>", "</root>", ""]
    return "\n".join(lines)


def _package_tcl(build, ip_dir) -> str:
    from moevit.hls.scripts import VITIS_VERSION
    from moevit.hw.program.regmap import REGMAP

    return "\n".join([
        f"# Vivado {VITIS_VERSION}: package {VERILOG} as the IP {VLNV} (moevit.host.bitstream).",
        f"create_project -force {KERNEL}_ip {_word(build.folder / 'ip_project')} "
        f"-part {_word(build.board.part)}",
        f"add_files -norecurse {_word(build.folder / VERILOG)}",
        f"set_property top {KERNEL} [current_fileset]",
        "update_compile_order -fileset sources_1",
        f"ipx::package_project -root_dir {_word(ip_dir)} -vendor {VENDOR} -library {LIBRARY} "
        "-taxonomy /UserIP -import_files -set_current true",
        "set core [ipx::current_core]",
        f"set_property name {KERNEL} $core",
        f"set_property version {VERSION} $core",
        "ipx::infer_bus_interfaces xilinx.com:interface:aximm_rtl:1.0 $core",
        f"foreach busif {{s_axi_control {' '.join(memory_ports(build.hw))}}} {{",
        "    ipx::associate_bus_interfaces -busif $busif -clock ap_clk $core",
        "}",
        "ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core",
        "set map [ipx::add_memory_map s_axi_control $core]",
        "set_property slave_memory_map_ref s_axi_control [ipx::get_bus_interfaces s_axi_control "
        "-of_objects $core]",
        "set block [ipx::add_address_block reg0 $map]",
        f"set_property range {1 << REGMAP.address_width} $block",
        "ipx::create_xgui_files $core",
        "ipx::update_checksums $core",
        "ipx::check_integrity $core",
        "ipx::save_core $core",
        "close_project",
        ""])


def _bd_tcl(build, ip_dir) -> str:
    from moevit.hls.scripts import VITIS_VERSION

    board, bits = build.board, build.board.port_bits
    ps, ic, rst, acc = PS, CONTROL_IC, RESET, ACCEL
    ports = memory_ports(build.hw)
    scs = [_memory_sc(k) for k in range(len(ports))]
    vlnvs = _bd_cells(build.hw)
    cells = "\n".join(f"create_bd_cell -type ip -vlnv {vlnvs[name]} {name}"
                      for name in (PS, acc, ic, *scs, rst))
    clocked = [f"{acc}/ap_clk", f"{ic}/ACLK", f"{ic}/S00_ACLK", f"{ic}/M00_ACLK",
               *(f"{sc}/aclk" for sc in scs), f"{ps}/maxihpm0_fpd_aclk",
               *(f"{ps}/{HP_PORTS[k][3]}" for k in range(len(ports))), f"{rst}/slowest_sync_clk"]
    reset = [f"{acc}/ap_rst_n", f"{ic}/S00_ARESETN", f"{ic}/M00_ARESETN",
             *(f"{sc}/aresetn" for sc in scs)]
    hp = " ".join(f"CONFIG.{HP_PORTS[k][1]} {{1}} CONFIG.{HP_PORTS[k][2]} {{{bits}}}"
                  for k in range(len(ports)))
    memory = [line for k, (port, sc) in enumerate(zip(ports, scs)) for line in (
        f"connect_bd_intf_net [get_bd_intf_pins {acc}/{port}] [get_bd_intf_pins {sc}/S00_AXI]",
        f"connect_bd_intf_net [get_bd_intf_pins {sc}/M00_AXI] "
        f"[get_bd_intf_pins {ps}/{HP_PORTS[k][0]}]")]
    pins = lambda names: " ".join(f"[get_bd_pins {n}]" for n in names)
    return "\n".join([
        f"# Vivado {VITIS_VERSION}: the {board.name} block design around {VLNV} "
        "(moevit.host.bitstream).",
        f"create_project -force moevit_{board.name} {_word(build.project)} -part {_word(board.part)}",
        f"set_property board_part [lindex [lsort -dictionary [get_board_parts "
        f"{build.board_part}:*]] end] [current_project]",
        f"set_property ip_repo_paths {_word(ip_dir)} [current_project]",
        "update_ip_catalog",
        f"create_bd_design {BD}",
        cells,
        f"apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e "
        f'-config {{apply_board_preset "1"}} [get_bd_cells {ps}]',
        "set_property -dict [list CONFIG.PSU__USE__M_AXI_GP0 {1} CONFIG.PSU__USE__M_AXI_GP1 {0} "
        f"CONFIG.PSU__USE__M_AXI_GP2 {{0}} {hp} CONFIG.PSU__FPGA_PL0_ENABLE {{1}} "
        f"CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {{{build.clock_mhz:g}}} "
        f"CONFIG.PSU__USE__IRQ0 {{1}}] [get_bd_cells {ps}]",
        f"set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] [get_bd_cells {ic}]",
        *(f"set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] [get_bd_cells {sc}]"
          for sc in scs),
        "# control: the PS's HPM0 -> interconnect -> s_axi_control",
        f"connect_bd_intf_net [get_bd_intf_pins {ps}/M_AXI_HPM0_FPD] [get_bd_intf_pins {ic}/S00_AXI]",
        f"connect_bd_intf_net [get_bd_intf_pins {ic}/M00_AXI] [get_bd_intf_pins {acc}/s_axi_control]",
        "# memory: m_axi_gmem<k> -> SmartConnect -> the PS's HP<k> (DDR)",
        *memory,
        "# one clock (pl_clk0), its reset, the interrupt",
        f"connect_bd_net [get_bd_pins {ps}/pl_clk0] {pins(clocked)}",
        f"connect_bd_net [get_bd_pins {ps}/pl_resetn0] [get_bd_pins {rst}/ext_reset_in]",
        f"connect_bd_net [get_bd_pins {rst}/interconnect_aresetn] [get_bd_pins {ic}/ARESETN]",
        f"connect_bd_net [get_bd_pins {rst}/peripheral_aresetn] {pins(reset)}",
        f"connect_bd_net [get_bd_pins {acc}/interrupt] [get_bd_pins {ps}/pl_ps_irq0]",
        "assign_bd_address",
        "validate_bd_design",
        "save_bd_design",
        f"make_wrapper -files [get_files {BD}.bd] -top -import",
        f"set_property top {BD}_wrapper [current_fileset]",
        "launch_runs impl_1 -to_step write_bitstream -jobs 4",
        "wait_on_run [get_runs impl_1]",
        "open_run impl_1",
        f"report_utilization -file {_word(build.folder / 'utilization.rpt')}",
        f"report_timing_summary -file {_word(build.folder / 'timing.rpt')}",
        "close_project",
        ""])


def _xo_tcl(build, ip_dir) -> str:
    return "\n".join([
        f"# Vivado: the IP {VLNV} as a Vitis kernel (moevit.host.bitstream); run after "
        f"{PACKAGE_TCL}.",
        f"package_xo -force -xo_path {_word(build.folder / (KERNEL + '.xo'))} "
        f"-kernel_name {KERNEL} -ip_directory {_word(ip_dir)} "
        f"-kernel_xml {_word(build.folder / KERNEL_XML)}",
        ""])


def _link_cfg(build) -> str:
    lines = [f"# v++ --link configuration of {KERNEL} for {build.board.name} "
             "(moevit.host.bitstream).", "[connectivity]", f"nk={KERNEL}:1:{CU}"]
    lines += [f"sp={CU}.{name}:{hbm_entry(0)}" for name, _, _, _, pointer in kernel_arguments()
              if pointer]
    # The other memory ports by interface name, onto the same banks through their own
    # pseudo-channel's port (the module's description).
    lines += [f"sp={CU}.{name}:{hbm_entry(k)}" for k, name in enumerate(memory_ports(build.hw))
              if k]
    return "\n".join(lines + [""])


def _vpp_link(build) -> str:
    return "\n".join([
        "#!/bin/sh",
        f"# Link {KERNEL}.xo for {build.board.name}; run in this folder.",
        "set -e",
        f"v++ --link -t hw --platform {build.board.vitis_platform} --config {LINK_CFG} "
        f"--kernel_frequency {build.clock_mhz:g} -o moevit.xclbin {KERNEL}.xo",
        ""])


def _top_verilog(hw) -> str:
    from moevit.hw.generate import to_verilog

    from moevit.hw.top.accelerator import Accelerator
    from moevit.hw.top.control import vitis_ports

    top = Accelerator(hw)
    return to_verilog(top, KERNEL, vitis_ports(top))


def _check_device_holds(hw, board) -> None:
    """A HwConfig the device cannot hold, refused before hours of place and route: its
    DSP48E2, BRAM36 and URAM (:func:`moevit.hw.cost.resources.resources`, counted from
    the structure or fitted within a few per cent) against the whole device. LUT and FF
    are left to the tools: Yosys's counts are upper bounds (Vivado packs the accumulators
    into the DSP48E2s)."""
    from moevit.errors import ConfigError
    from moevit.hw.cost.resources import resources

    need = resources(hw)
    over = [f"{label} {getattr(need, name):,.0f} of {getattr(board, name):,}"
            for name, label in (("dsp", "DSP48E2"), ("bram36", "BRAM36"), ("uram", "URAM"))
            if getattr(need, name) > getattr(board, name)]
    if over:
        raise ConfigError(f"HwConfig {hw.name!r} does not fit board {board.name} "
                          f"({board.part}): it needs {', '.join(over)} (predicted; "
                          f"moevit dse --board {board.name} finds a point that fits)")


def write_inputs(board="zcu102", config="tiny", folder=None, verilog=None) -> Build:
    """Write every input of the build of ``config``'s default HwConfig for ``board``.

    ``verilog``: the text of the top to use (default: generated, about a minute of
    Amaranth for ``tiny``; the tests pass a smaller top with the same ports).

    Raises
    ------
    ConfigError
        An unknown board or config, a board file without a part, a Zynq board
        not of AMD's board store, a board supported only by older tools, or a
        HwConfig with more memory ports than the board has (or than the block
        design connects: :data:`HP_PORTS`), or one whose predicted DSP48E2, BRAM36 or
        URAM exceed the board's device (:func:`_check_device_holds`).
    OutputPathError
        ``folder`` cannot be written.
    """
    from moevit.errors import ConfigError
    from moevit.hls.scripts import VITIS_VERSION
    from moevit.hw.boards import get_board
    from moevit.hw.config import get_hw_config
    from moevit.hw.program import regmap
    from moevit.paths import build_dir, output_folder, write_atomically

    board = get_board(board)
    hw = get_hw_config(config)
    if board.vitis_max is not None and board.vitis_max < VITIS_VERSION:
        raise ConfigError(f"Board {board.name} is supported up to Vitis {board.vitis_max}; "
                          f"this build is for {VITIS_VERSION}")
    if board.vitis_platform is None and board.host != "pynq":
        raise ConfigError(f"Board {board.name} has neither a Vitis platform nor PYNQ: no "
                          "build for it")
    ports = board.ports if board.vitis_platform is not None else min(board.ports, len(HP_PORTS))
    if hw.memory_ports > ports:
        raise ConfigError(f"HwConfig {hw.name!r} has {hw.memory_ports} memory ports; board "
                          f"{board.name} has {ports} ({board.port_name})")
    _check_device_holds(hw, board)
    if folder is None:
        folder = build_dir("bitstream", hw.name, board.name).resolve()
    else:
        folder = output_folder(folder, "bitstream folder").resolve()
    build = Build(folder, board, hw, min(hw.clock_mhz, board.clock_mhz))
    build.deploy = build_dir("deploy", board.name).resolve()
    ip_dir = folder / "ip"
    texts = {VERILOG: verilog if verilog is not None else _top_verilog(hw),
             PACKAGE_TCL: _package_tcl(build, ip_dir)}
    if build.alveo:
        texts.update({KERNEL_XML: kernel_xml(hw), XO_TCL: _xo_tcl(build, ip_dir),
                      LINK_CFG: _link_cfg(build), VPP_LINK: _vpp_link(build)})
    else:
        texts[BD_TCL] = _bd_tcl(build, ip_dir)
    folder.mkdir(parents=True, exist_ok=True)
    build.files += regmap.write(folder, regmap.REGMAP, "moevit_control")
    for name, text in texts.items():
        build.files.append(write_atomically(folder / name, lambda p, t=text: p.write_text(t),
                                            "bitstream build input"))
    if build.alveo:
        (folder / VPP_LINK).chmod(0o755)
    return build


# --- the dry run --------------------------------------------------------------------------

def _option(call, name, default=None):
    return call[call.index(name) + 1] if name in call[:-1] else default


def top_ports(verilog_text) -> list:
    """The port names of the top module ``moevit_top`` in the Verilog."""
    match = re.search(rf"\bmodule\s+{KERNEL}\s*\((.*?)\);", verilog_text, re.S)
    if not match:
        return []
    return [p.strip().lstrip("\\") for p in match.group(1).split(",") if p.strip()]


def port_width(verilog_text, name):
    """Bits of port ``name`` of the top's Verilog (its ``input``/``output`` declaration), or
    None where it is not declared."""
    match = re.search(rf"^\s*(?:input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?"
                      rf"\\?{re.escape(name)}\s*;", verilog_text, re.M)
    if not match:
        return None
    return int(match.group(1)) + 1 if match.group(1) else 1


def _check_bus_widths(build) -> Check:
    """The top's memory ports carry ``hw.bus_width`` bits (R and W data in its Verilog): the
    width the packaged IP gives its AXI masters. On Zynq each port's SmartConnect converts it
    to the HP port's 128 bits; on the U280 kernel.xml declares it."""
    text = (build.folder / VERILOG).read_text()
    found = {f"{port}_{data}": port_width(text, f"{port}_{data}")
             for port in memory_ports(build.hw) for data in ("rdata", "wdata")}
    wrong = {name: bits for name, bits in found.items() if bits != build.hw.bus_width}
    side = ("" if build.alveo else
            f"; each SmartConnect converts them to its HP port's {build.board.port_bits} bits")
    return Check("memory ports as wide as the HwConfig's bus", not wrong,
                 f"wrong: {wrong} (expected {build.hw.bus_width} bits)" if wrong else
                 f"{len(found) // 2} port(s) of {build.hw.bus_width} bits in the Verilog{side}")


def _checks_package(build, calls) -> list:
    from moevit.hw.program.regmap import REGMAP

    checks = []
    projects = [c for c in calls if c[0] == "create_project"]
    parts = [_option(c, "-part") for c in projects]
    checks.append(Check("part is the board's", parts and set(parts) == {build.board.part},
                        f"{parts} (board {build.board.name}: {build.board.part})"))
    added = [Path(c[-1]) for c in calls if c[0] == "add_files"]
    missing = [p for p in added if not p.is_file()]
    checks.append(Check("the top's Verilog is added and exists",
                        build.folder / VERILOG in added and not missing,
                        f"added {[p.name for p in added]}" + (f"; missing {missing}" if missing
                                                             else "")))
    package = [c for c in calls if c[0] == "ipx::package_project"]
    names = {c[1]: c[2] for c in calls if c[0] == "set_property" and c[1] in ("name", "version")}
    vlnv = (f"{_option(package[0], '-vendor')}:{_option(package[0], '-library')}:"
            f"{names.get('name')}:{names.get('version')}") if len(package) == 1 else None
    checks.append(Check("the IP's VLNV", vlnv == VLNV, f"{vlnv} (expected {VLNV})"))
    clocked = {_option(c, "-busif") for c in calls if c[0] == "ipx::associate_bus_interfaces"
               and _option(c, "-clock") == "ap_clk"}
    reset = any(_option(c, "-reset") == "ap_rst_n" for c in calls
                if c[0] == "ipx::associate_bus_interfaces")
    checks.append(Check("AXI interfaces on ap_clk, reset ap_rst_n",
                        {"s_axi_control", *memory_ports(build.hw)} <= clocked and reset,
                        f"clocked: {sorted(x for x in clocked if x)}, reset: {reset}"))
    ranges = [c[2] for c in calls if c[0] == "set_property" and c[1] == "range"]
    span = str(1 << REGMAP.address_width)
    checks.append(Check("control memory map spans the register map", ranges == [span],
                        f"range {ranges} (expected {span} bytes)"))
    return checks


def _checks_block_design(build, calls) -> list:
    checks = []
    boards = [c[2] for c in calls if c[:2] == ["set_property", "board_part"]]
    checks.append(Check("board part is the board's",
                        boards == [f"{build.board_part}:*"], f"{boards}"))
    cells = {c[-1]: _option(c, "-vlnv") for c in calls if c[0] == "create_bd_cell"}
    expected = _bd_cells(build.hw)
    wrong = {n: v for n, v in expected.items() if cells.get(n) != v}
    checks.append(Check("block design cells and their IP", not wrong and set(cells) == set(expected),
                        "; ".join(f"{n}: {cells.get(n)} (expected {v})" for n, v in wrong.items())
                        or ", ".join(f"{n} ({v})" for n, v in cells.items())))
    preset = [c for c in calls if c[0] == "apply_bd_automation" and c[-1] == PS]
    checks.append(Check("PS board preset", len(preset) == 1 and 'apply_board_preset "1"'
                        in _option(preset[0], "-config", ""), f"{len(preset)} automation(s)"))
    config = {}
    for c in calls:
        if c[:2] == ["set_property", "-dict"] and c[-1] == PS:
            words = c[2].split()
            config.update(zip(words[::2], (w.strip("{}") for w in words[1::2])))
    ports = memory_ports(build.hw)
    want = {"CONFIG.PSU__USE__M_AXI_GP0": "1",
            "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ": f"{build.clock_mhz:g}",
            "CONFIG.PSU__USE__IRQ0": "1"}
    for k, (_, enable, width, _) in enumerate(HP_PORTS):   # the ports' HPs on, the others off
        want[f"CONFIG.{enable}"] = "1" if k < len(ports) else None
        want[f"CONFIG.{width}"] = str(build.board.port_bits) if k < len(ports) else None
    wrong = {k: config.get(k) for k, v in want.items() if config.get(k) != v}
    hps = "HP0" if len(ports) == 1 else f"HP0..HP{len(ports) - 1}"
    checks.append(Check(f"PS: HPM0 on, {hps} on, PL clock 0, IRQ0", not wrong,
                        f"wrong: {wrong}" if wrong else f"PL clock {build.clock_mhz:g} MHz, "
                        f"{len(ports)} HP port(s) of {build.board.port_bits} bits"))
    interfaces = {frozenset(c[1:3]) for c in calls if c[0] == "connect_bd_intf_net"}
    needed = [(f"{PS}/M_AXI_HPM0_FPD", f"{CONTROL_IC}/S00_AXI"),
              (f"{CONTROL_IC}/M00_AXI", f"{ACCEL}/s_axi_control")]
    for k, port in enumerate(ports):
        needed += [(f"{ACCEL}/{port}", f"{_memory_sc(k)}/S00_AXI"),
                   (f"{_memory_sc(k)}/M00_AXI", f"{PS}/{HP_PORTS[k][0]}")]
    absent = [f"{a} -> {b}" for a, b in needed if frozenset((a, b)) not in interfaces]
    checks.append(Check("AXI connections", not absent, "missing: " + ", ".join(absent) if absent
                        else "HPM0 -> interconnect -> s_axi_control; " + "; ".join(
                            f"{port} -> SmartConnect -> HP{k}" for k, port in enumerate(ports))))
    nets = [set(c[1:]) for c in calls if c[0] == "connect_bd_net"]
    net_of = lambda pin: next((n for n in nets if pin in n), set())
    wanted = {f"{ACCEL}/ap_clk": f"{PS}/pl_clk0", f"{ACCEL}/ap_rst_n": f"{RESET}/peripheral_aresetn",
              f"{ACCEL}/interrupt": f"{PS}/pl_ps_irq0", f"{PS}/maxihpm0_fpd_aclk": f"{PS}/pl_clk0",
              f"{RESET}/ext_reset_in": f"{PS}/pl_resetn0"}
    for k in range(len(ports)):
        wanted.update({f"{_memory_sc(k)}/aclk": f"{PS}/pl_clk0",
                       f"{PS}/{HP_PORTS[k][3]}": f"{PS}/pl_clk0",
                       f"{_memory_sc(k)}/aresetn": f"{RESET}/peripheral_aresetn"})
    absent = [f"{a} -> {b}" for a, b in wanted.items() if b not in net_of(a)]
    checks.append(Check("clock, reset and interrupt nets", not absent,
                        "missing: " + ", ".join(absent) if absent else
                        "ap_clk on pl_clk0, ap_rst_n from the reset block, interrupt on pl_ps_irq0"))
    ports = top_ports((build.folder / VERILOG).read_text())
    connected = {p.split("/")[1] for n in nets for p in n if p.startswith(ACCEL + "/")}
    connected |= {p.split("/")[1] for i in interfaces for p in i if p.startswith(ACCEL + "/")}
    loose = [p for p in ports if not any(p == c or p.startswith(c + "_") for c in connected)]
    checks.append(Check("every port of the top is connected", bool(ports) and not loose,
                        f"{len(ports)} ports" if ports and not loose else
                        f"unconnected: {', '.join(loose) or 'no ports found'}"))
    flow = ["create_bd_design", "assign_bd_address", "validate_bd_design", "make_wrapper",
            "launch_runs", "wait_on_run", "report_utilization", "report_timing_summary"]
    order = [c[0] for c in calls if c[0] in flow]
    runs = [c for c in calls if c[0] == "launch_runs"]
    ok = order == flow and len(runs) == 1 and _option(runs[0], "-to_step") == "write_bitstream"
    checks.append(Check("flow order to write_bitstream", ok, " -> ".join(order)))
    return checks


def _checks_kernel(build, calls) -> list:
    from moevit.hw.program.regmap import REGMAP

    checks = []
    try:
        root = ElementTree.parse(build.folder / KERNEL_XML).getroot()
        kernel = root.find("kernel")
        args = {a.get("name"): a.attrib for a in kernel.iter("arg")}
        ports = {p.get("name"): p.attrib for p in kernel.iter("port")}
    except (OSError, ElementTree.ParseError, AttributeError) as error:
        return [Check("kernel.xml against the register map", False, f"unreadable: {error}")]
    wrong = []
    if (kernel.get("name"), kernel.get("vlnv"), kernel.get("hwControlProtocol")) != \
            (KERNEL, VLNV, "ap_ctrl_hs"):
        wrong.append(f"kernel {kernel.attrib}")
    if ports.get("s_axi_control", {}).get("range") != f"0x{1 << REGMAP.address_width:x}":
        wrong.append("s_axi_control range")
    for port in memory_ports(build.hw):
        if ports.get(port, {}).get("dataWidth") != str(build.hw.bus_width):
            wrong.append(f"{port} width")
    if {name for name in ports if name.startswith("m_axi_")} != set(memory_ports(build.hw)):
        wrong.append(f"memory ports {sorted(ports)}")
    expected = kernel_arguments()
    if set(args) != {name for name, *_ in expected}:
        wrong.append(f"arguments {sorted(args)}")
    for name, k, offset, size, pointer in expected:
        got = args.get(name, {})
        want = {"id": str(k), "offset": f"0x{offset:x}", "size": f"0x{size:x}",
                "addressQualifier": str(int(pointer)),
                "port": "m_axi_gmem" if pointer else "s_axi_control"}
        bad = {key: got.get(key) for key, value in want.items() if got.get(key) != value}
        if bad:
            wrong.append(f"{name}: {bad} (expected {want})")
    checks.append(Check("kernel.xml against the register map", not wrong,
                        "; ".join(wrong) or f"{len(expected)} arguments, offsets and sizes "
                                             "from the register map"))
    xo = [c for c in calls if c[0] == "package_xo"]
    ok = (len(xo) == 1 and _option(xo[0], "-kernel_name") == KERNEL
          and Path(_option(xo[0], "-kernel_xml", "")) == build.folder / KERNEL_XML)
    checks.append(Check("package_xo with the kernel.xml", ok, f"{xo}"))
    cfg = (build.folder / LINK_CFG).read_text().splitlines()
    pointers = [name for name, _, _, _, pointer in kernel_arguments() if pointer]
    maps = {m.group(1): m.group(2) for m in (re.fullmatch(rf"sp={CU}\.(\w+):(\S+)", l.strip())
                                             for l in cfg) if m}
    others = memory_ports(build.hw)[1:]
    want = {**{name: hbm_entry(0) for name in pointers},
            **{name: hbm_entry(k + 1) for k, name in enumerate(others)}}
    ok = "[connectivity]" in cfg and f"nk={KERNEL}:1:{CU}" in cfg and maps == want
    checks.append(Check("link.cfg maps every m_axi_gmem argument to HBM", ok,
                        f"{maps} (expected {want})"))
    vpp = [l for l in (build.folder / VPP_LINK).read_text().splitlines() if l.startswith("v++")]
    words = vpp[0].split() if len(vpp) == 1 else []
    want = {"-t": "hw", "--platform": build.board.vitis_platform, "--config": LINK_CFG,
            "--kernel_frequency": f"{build.clock_mhz:g}", "-o": "moevit.xclbin"}
    wrong = {k: _option(words, k) for k, v in want.items() if _option(words, k) != v}
    checks.append(Check("v++ --link on the board's platform", bool(words) and "--link" in words
                        and not wrong, f"wrong: {wrong}" if wrong else
                        f"--platform {build.board.vitis_platform}, {build.clock_mhz:g} MHz"))
    return checks


def dry_run(build: Build) -> list:
    """Every check of the inputs :func:`write_inputs` wrote (a list of :class:`Check`);
    the caller fails when one is not ``ok``. Raises :class:`MoevitError` when a script does
    not run in tclsh."""
    from moevit.hls.scripts import record_calls

    calls = record_calls(build.folder / PACKAGE_TCL, VIVADO_COMMANDS)
    checks = [Check(f"{PACKAGE_TCL} runs in tclsh", True, f"{len(calls)} Vivado commands")]
    checks += _checks_package(build, calls)
    checks.append(_check_bus_widths(build))
    if build.alveo:
        xo = record_calls(build.folder / XO_TCL, VIVADO_COMMANDS)
        checks.append(Check(f"{XO_TCL} runs in tclsh", True, f"{len(xo)} Vivado commands"))
        checks += _checks_kernel(build, xo)
    else:
        bd = record_calls(build.folder / BD_TCL, VIVADO_COMMANDS)
        checks.append(Check(f"{BD_TCL} runs in tclsh", True, f"{len(bd)} Vivado commands"))
        part = _checks_package(build, bd)[0]
        checks.append(Check("block design " + part.name, part.ok, part.detail))
        checks += _checks_block_design(build, bd)
    return checks


# --- the real build and its reports -------------------------------------------------------

def _table_value(text, label):
    """The ``Used`` column of the row ``| <label> | used | ...`` of a Vivado table."""
    match = re.search(rf"^\|\s*{re.escape(label)}\s*\|\s*([0-9.]+)\s*\|", text, re.M)
    return float(match.group(1)) if match else None


def parse_utilization(text) -> dict:
    """``report_utilization`` (UltraScale+): DSP, LUT, FF, BRAM (36 Kb tiles), URAM."""
    from moevit.errors import MoevitError

    figures = {"dsp": "DSPs", "lut": "CLB LUTs", "ff": "CLB Registers", "bram": "Block RAM Tile",
               "uram": "URAM"}
    found = {key: _table_value(text, label) for key, label in figures.items()}
    missing = [figures[k] for k, v in found.items() if v is None]
    if missing:
        raise MoevitError(f"The utilization report has no row {', '.join(missing)}: not a "
                          "Vivado report_utilization of an UltraScale+ part")
    return {k: (v if k == "bram" else int(v)) for k, v in found.items()}


def parse_timing(text) -> dict:
    """``report_timing_summary``'s Design Timing Summary: WNS, TNS, WHS (ns)."""
    from moevit.errors import MoevitError

    match = re.search(r"WNS\(ns\)\s+TNS\(ns\).*?\n\s*-+.*?\n\s*(-?[0-9.]+)\s+(-?[0-9.]+)\s+\d+\s+"
                      r"\d+\s+(-?[0-9.]+)", text)
    if not match:
        raise MoevitError("The timing report has no Design Timing Summary (WNS, TNS, WHS)")
    wns, tns, whs = map(float, match.groups())
    return {"wns_ns": wns, "tns_ns": tns, "whs_ns": whs}


def report_row(build_or_board, utilization, timing, clock_mhz) -> dict:
    """One row as ``moevit hw estimate`` prints them (unit, dsp, lut, ff, bram, uram), with
    the board, the clock, the slack and the clock the slack allows."""
    board = getattr(build_or_board, "name", build_or_board)
    period = 1000.0 / clock_mhz
    row = {"unit": KERNEL, **utilization, "board": board, "clock_mhz": clock_mhz, **timing}
    row["fmax_mhz"] = round(1000.0 / (period - timing["wns_ns"]), 1)
    row["timing_met"] = timing["wns_ns"] >= 0 and timing["whs_ns"] >= 0
    return row


def _tool(name, build):
    """The tool's path, its version banner checked against the pinned release."""
    from moevit.errors import ToolNotFoundError
    from moevit.hls.scripts import VITIS_VERSION

    path = shutil.which(name)
    if path is None:
        raise ToolNotFoundError(
            f"{name} not found: the {build.board.name} bitstream needs AMD Vivado/Vitis "
            f"{VITIS_VERSION} (source its settings64.sh); the inputs are written in {build.folder}")
    flag = "--version" if name == "v++" else "-version"     # v++ takes GNU-style options
    banner = subprocess.run([path, flag], capture_output=True, text=True).stdout
    if f"v{VITIS_VERSION}" not in banner:
        first = (banner.strip().splitlines() or ["no version banner"])[0]
        raise ToolNotFoundError(f"{name} is not {VITIS_VERSION} ({first}): the U280 platform and "
                                f"these scripts need {VITIS_VERSION}; the inputs are in {build.folder}")
    return path


def run_build(build: Build) -> dict:
    """Run the AMD tools on the inputs, copy the results into ``build.deploy``, and return
    the report row (Zynq; the U280's reports stay in v++'s folder)."""
    from moevit.errors import MoevitError

    vivado = _tool("vivado", build)
    vpp = _tool("v++", build) if build.alveo else None
    steps = [[vivado, "-mode", "batch", "-nojournal", "-source", PACKAGE_TCL]]
    steps.append([vivado, "-mode", "batch", "-nojournal", "-source",
                  XO_TCL if build.alveo else BD_TCL])
    if build.alveo:
        steps.append(["sh", VPP_LINK])
    for command in steps:
        done = subprocess.run(command, cwd=build.folder)
        if done.returncode:
            raise MoevitError(f"{' '.join(map(str, command))} failed (exit {done.returncode}) in "
                              f"{build.folder}")
    build.deploy.mkdir(parents=True, exist_ok=True)
    if build.alveo:
        shutil.copyfile(build.folder / "moevit.xclbin", build.deploy / "moevit.xclbin")
        return {"unit": KERNEL, "board": build.board.name, "xclbin": str(build.deploy /
                                                                         "moevit.xclbin"),
                "vpp": vpp}
    name = f"moevit_{build.board.name}"
    bit = build.project / f"{name}.runs" / "impl_1" / f"{BD}_wrapper.bit"
    hwh = build.project / f"{name}.gen" / "sources_1" / "bd" / BD / "hw_handoff" / f"{BD}.hwh"
    for source, target in ((bit, "moevit.bit"), (hwh, "moevit.hwh")):
        if not source.is_file():
            raise MoevitError(f"Vivado finished but wrote no {source}")
        shutil.copyfile(source, build.deploy / target)
    return report_row(build.board, parse_utilization((build.folder / "utilization.rpt").read_text()),
                      parse_timing((build.folder / "timing.rpt").read_text()), build.clock_mhz)


# --- the command line ---------------------------------------------------------------------

def register(subparsers):
    from moevit.hw.boards import BOARDS

    command = subparsers.add_parser(
        "bitstream", help="the bitstream build of a board: IP packaging, block design or v++ "
                          "link (--dry-run: checked in tclsh, no AMD tools)")
    command.add_argument("--board", required=True,
                         help=f"board: {', '.join(BOARDS)}, or a board .json file")
    command.add_argument("--config", default="tiny",
                         help="model config: its default HwConfig (default: tiny)")
    command.add_argument("-o", "--output", default=None, metavar="DIR",
                         help="folder of the inputs (default: build/bitstream/CONFIG/BOARD)")
    command.add_argument("--dry-run", action="store_true",
                         help="write the inputs and check them in tclsh; run no AMD tool")
    command.add_argument("--json", action="store_true", help="the report row as JSON")
    command.set_defaults(handler=_main)


def _main(args):
    from moevit.hw.boards import get_board
    from moevit.hw.config import get_hw_config

    get_board(args.board), get_hw_config(args.config)   # bad names fail before the long work
    print(f"generating the {args.config} top and the {args.board} build inputs ...", flush=True)
    build = write_inputs(args.board, args.config, args.output)
    for path in build.files:
        print(f"wrote {path}")
    if args.dry_run:
        checks = dry_run(build)
        for check in checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        failed = [check for check in checks if not check.ok]
        print(f"dry run of {build.board.name}: {len(checks) - len(failed)} of {len(checks)} "
              "checks pass")
        return 1 if failed else 0
    row = run_build(build)
    if args.json:
        print(json.dumps([row]))
    else:
        print(" ".join(f"{k}={v}" for k, v in row.items()))
    return 0
