"""Verilog emission of every hardware unit, from a registry.

``UNITS`` maps a unit name to ``"module:factory"``; the factory takes a
:class:`~moevit.hw.config.HwConfig` and returns an Amaranth
``wiring.Component``. A new unit adds one line to ``UNITS`` (and nothing
else here): ``moevit hw generate`` writes it, ``moevit hw estimate``
synthesizes it, :func:`verilog_file` hands it to the simulation runner.

The Verilog top module of unit ``linear`` for config ``tiny`` is named
``moevit_linear`` and lands in ``build/rtl/<config>/moevit_linear.v`` (or the
folder given).

The ports of the top (``TOP_PORTS``: the control port and the memory port)
take the names a Vitis RTL kernel needs (``s_axi_control_awaddr``,
``m_axi_gmem_araddr``, ...): their members are flattened with ``_``
(:func:`~moevit.hw.top.control.vitis_ports`). With the control port,
:func:`generate` writes the register map beside the Verilog
(``moevit_control.json`` and ``moevit_control.h``).
"""

import hashlib
import importlib
import itertools
import json
import re
from pathlib import Path

from moevit.errors import ConfigError
from moevit.model.integer import intops
from moevit.paths import build_dir

__all__ = ["UNITS", "TOP_PORTS", "build_unit", "module_name", "to_verilog", "verilog",
           "verilog_file", "generate"]

UNITS = {
    "linear": "moevit.hw.units.linear:LinearKernel.from_config",
    "attention": "moevit.hw.units.attention:Attention.from_config",
    "softmax": "moevit.hw.units.softmax:Softmax.from_config",
    "gelu": "moevit.hw.units.gelu:Gelu.from_config",
    "layernorm": "moevit.hw.units.layernorm:LayerNorm.from_config",
    "moe": "moevit.hw.units.moe:MoeUnit.from_config",
    "control": "moevit.hw.top.control:Control.from_config",
    "gmem": "moevit.hw.top.movers:MemoryPort.from_config",
}
#: Units whose ports face the outside of the Vitis RTL kernel.
TOP_PORTS = ("control", "gmem")


def _factory(unit):
    try:
        target = UNITS[unit]
    except KeyError:
        raise ConfigError(f"Unknown hardware unit {unit!r}; units are {sorted(UNITS)}") from None
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_unit(unit: str, hw):
    """The Amaranth component of ``unit`` for the hardware instance ``hw``."""
    return _factory(unit)(hw)


def module_name(unit: str) -> str:
    """Verilog top module name of ``unit``."""
    return "moevit_" + unit.replace("-", "_")


# A block of Yosys's Verilog that drives a signal with a constant: `always @*` with
# nothing to wait on.
_CONSTANT_BLOCK = re.compile(r"^  always @\*\n    ([^\n=;]+) = (\d+'[hdb][0-9a-fA-F_]+);\n", re.M)


def _constants_at_time_zero(text: str) -> str:
    """``text`` with each block that drives a constant (``always @* x = C;``) made to run
    at time zero. Such a block waits on nothing, so an event-driven simulator (Icarus,
    xsim) never runs it and ``x`` stays undefined, where Verilator and synthesis take
    the constant: each block waits on a register that changes at time zero instead, as
    Yosys already makes its other blocks do."""
    count = itertools.count()

    def evaluated(match):
        trigger = f"\\moevit$time_zero${next(count)} "
        return (f"  reg {trigger}= 0;\n  always @* begin\n    if ({trigger}) begin end\n"
                f"    {match[1]} = {match[2]};\n  end\n")

    return _CONSTANT_BLOCK.sub(evaluated, text)


def to_verilog(component, name: str, ports=None) -> str:
    """The Verilog of an Amaranth ``component``, top module ``name`` (``ports``: the top's
    ports, as ``amaranth.back.verilog.convert`` takes them), constants driven from time
    zero on every simulator (:func:`_constants_at_time_zero`)."""
    from amaranth.back import verilog as amaranth_verilog

    text = amaranth_verilog.convert(component, name=name, ports=ports, emit_src=False,
                                    strip_internal_attrs=True)
    return _constants_at_time_zero(text)


def verilog(unit: str, hw) -> str:
    """Verilog text of ``unit`` for ``hw`` (top module :func:`module_name`)."""
    from moevit.hw.top.control import vitis_ports

    component = build_unit(unit, hw)
    ports = vitis_ports(component) if unit in TOP_PORTS else None
    return to_verilog(component, module_name(unit), ports)


def verilog_file(unit: str, hw, folder=None) -> Path:
    """Write the Verilog of ``unit`` for ``hw`` once and return its path.

    Without ``folder`` the file is cached under ``build/rtl/_cache/<hash>/``
    (keyed by the HwConfig, the hw sources and ``model/integer/intops.py``), so the simulations reuse it.
    """
    if folder is None:
        # Keyed by the unit, the HwConfig and the source of every hw module and
        # of the integer units they build from, so an edit never reuses stale Verilog.
        digest = hashlib.sha256(json.dumps([unit, hw.rtl().to_dict()], sort_keys=True,
                                           default=str).encode())
        for source in [*sorted(Path(__file__).parent.rglob("*.py")), Path(intops.__file__)]:
            digest.update(source.read_bytes())
        key = digest.hexdigest()[:16]
        folder = build_dir("rtl", "_cache", key)
        path = Path(folder) / f"{module_name(unit)}.v"
        if path.exists():
            return path
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module_name(unit)}.v"
    text = verilog(unit, hw)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def generate(hw, folder, units=None) -> list:
    """Write the Verilog of ``units`` (default: all) for ``hw`` into ``folder``.

    Also writes ``hw.json`` (the HwConfig) beside them and, with the control
    port, the register map (``moevit_control.json``, ``moevit_control.h``).
    Returns the paths.
    """
    from moevit.hw.program import regmap

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    units = units or list(UNITS)
    paths = [verilog_file(unit, hw, folder) for unit in units]
    if "control" in units:
        # The map Control.from_config builds its registers from.
        paths += regmap.write(folder, regmap.REGMAP, module_name("control"))
    (folder / "hw.json").write_text(json.dumps(hw.to_dict(), indent=2) + "\n")
    return paths
