"""The register map of the accelerator's control port ``s_axi_control``, as data.

Written once here; the RTL (:class:`moevit.hw.top.control.Control`), the JSON
that the host driver and the tests read, and the C header are all generated
from :data:`REGMAP`, so nothing types an offset twice.

The layout is that of an XRT-managed Vitis RTL kernel with the ``ap_ctrl_hs``
execution model, so one top serves Vivado block designs (ZCU102, ZCU104) and
Vitis (U280). The rules, as AMD documents them:

- *Vitis Unified Software Platform Documentation* (UG1393 2020.2-2023.2 "Kernel
  Controls" / "Control Requirements for XRT-Managed Kernels"; UG1700 and
  UG1701 "RTL Kernel Interface Requirements"): one and only one AXI4-Lite slave
  named ``s_axi_control`` and an active-high output named ``interrupt``; the
  control register at 0x0, Global Interrupt Enable 0x4, IP Interrupt Enable
  0x8, IP Interrupt Status 0xC; "all user-defined registers must begin at
  location 0x10"; XRT limits the control address range to 64 KiB. In
  ``ap_ctrl_hs`` the host writes 1 to offset 0 and polls ``ap_done``.
- *Vitis HLS User Guide* (UG1399, "S_AXILITE Control Register Map", and the
  ``x<kernel>_hw.h`` headers it generates): bit 0 ``ap_start``
  (read/write, cleared on handshake), bit 1 ``ap_done`` (clear on read), bit 2
  ``ap_idle``, bit 3 ``ap_ready`` (clear on read in the 2023-2024 headers;
  read-only in 2019's, where it is a one-cycle pulse a host rarely sees), bit 7
  ``auto_restart`` (read/write; ``ap_start`` is then set again at each
  ``ap_ready``), bit 9 ``interrupt`` (read); GIE bit 0; IER bit 0 ``ap_done``,
  bit 1 ``ap_ready``; ISR the same bits, set by their event when enabled and
  toggled on write (TOW); ``interrupt = GIE & (ISR != 0)``; a 64-bit argument
  takes two 32-bit words, the low one first.

Here each argument is aligned to its own size (a 64-bit buffer address on a
multiple of 8), as a Vitis ``kernel.xml`` states each argument's offset and
size. What follows the arguments is ours: the status and error registers the
top drives, and cycle counters (the run's cycles, and per unit the cycles it
was busy) that the control block counts from each start to its ``done``.

Accesses (``Field.access``): ``rw`` read/write; ``ro`` read-only; ``coh``
set by a host write of 1, cleared on the run's handshake (``ap_start``);
``cor`` set by an event, cleared when the register is read; ``tow`` set by an
event, toggled by a host write of 1. ``Field.source`` says what drives a
read-only field: the ``top`` (an input of the control block) or the
``control`` block itself.

Bus behaviour the map implies (see :mod:`moevit.hw.top.control`): 32-bit words,
byte strobes honoured, the two low address bits ignored; an address outside
the map reads 0 and ignores writes, answered OKAY, as Vitis HLS's generated
control slaves answer every access.
"""

import json
import re
from dataclasses import dataclass, field

from moevit.errors import ConfigError

__all__ = ["ACCESSES", "SOURCES", "Field", "Register", "RegisterMap", "REGMAP", "ERROR_CODES",
           "COUNTED_UNITS", "ARGUMENTS_OFFSET", "WORD_BYTES", "load", "write"]

ACCESSES = ("rw", "ro", "coh", "cor", "tow")
SOURCES = ("host", "top", "control")
WORD_BYTES = 4
ARGUMENTS_OFFSET = 0x10
FORMAT_VERSION = 1
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# Why the top stopped a run (the error register's ``code``; 0: it did not).
ERROR_CODES = {
    "none": (0, "the run finished"),
    "opcode": (1, "an instruction with an unknown opcode"),
    "address": (2, "an address outside the memory or the on-chip buffers, or a write into "
                   "the weights or the input"),
    "memory": (3, "the memory answered SLVERR or DECERR"),
    "task": (4, "a task id the program does not have"),
    "descriptor": (5, "a unit refused an instruction's descriptor (shape, tiling)"),
    "program": (6, "the program's header is not this hardware's (format, version)"),
}

# The units whose busy cycles are counted (a register ``busy_<unit>`` each).
COUNTED_UNITS = ("linear", "attention", "layernorm", "moe", "read", "write")


@dataclass(frozen=True)
class Field:
    """Bits of a register with one meaning.

    Parameters
    ----------
    name : str
    bit : int
        Position of the least significant bit in the register.
    width : int
    access : str
        One of :data:`ACCESSES`.
    source : str
        What drives it: ``host`` (``rw``), else ``top`` or ``control``.
    doc : str
    """

    name: str
    bit: int
    width: int
    access: str
    source: str
    doc: str = ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.bit

    def to_dict(self) -> dict:
        return {"name": self.name, "bit": self.bit, "width": self.width, "access": self.access,
                "source": self.source, "doc": self.doc}


@dataclass(frozen=True)
class Register:
    """One register of 32 or 64 bits (two words, the low one first).

    ``offset`` is a byte address, a multiple of the register's size.
    """

    name: str
    offset: int
    bits: int
    fields: tuple
    doc: str = ""

    @property
    def words(self) -> int:
        return self.bits // 32

    @property
    def argument(self) -> bool:
        """A kernel argument: written by the host, read by the top."""
        return self.offset >= ARGUMENTS_OFFSET and all(f.access == "rw" for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"Register {self.name} has no field {name!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "bits": self.bits, "doc": self.doc,
                "fields": [f.to_dict() for f in self.fields]}


class RegisterMap:
    """The registers of the control port, checked when made.

    Parameters
    ----------
    registers : sequence of Register
    address_width : int
        Bits of the AXI4-Lite address (at most 16: XRT's 64 KiB limit).
    units : sequence of str
        The units with a busy counter.
    error_codes : dict
        Name -> (code, meaning).

    Raises
    ------
    ConfigError
        A register or field breaks a rule (name, size, alignment, overlap, an
        access or source that cannot be, the map beyond the address range).
    """

    def __init__(self, registers, *, address_width: int = 12, units=COUNTED_UNITS,
                 error_codes=ERROR_CODES):
        self.registers = tuple(registers)
        self.address_width = address_width
        self.units = tuple(units)
        self.error_codes = dict(error_codes)
        self._check()

    def _check(self):
        if not isinstance(self.address_width, int) or not 4 <= self.address_width <= 16:
            raise ConfigError(f"Control address width must be 4..16 bits (XRT's 64 KiB), "
                              f"not {self.address_width!r}")
        names, words = set(), {}
        for reg in self.registers:
            if not _NAME.match(reg.name) or reg.name in names:
                raise ConfigError(f"Register name {reg.name!r} is not a new lower-case identifier")
            names.add(reg.name)
            if reg.bits not in (32, 64):
                raise ConfigError(f"Register {reg.name} must have 32 or 64 bits, not {reg.bits}")
            if reg.offset < 0 or reg.offset % (reg.bits // 8):
                raise ConfigError(f"Register {reg.name} at 0x{reg.offset:x} is not aligned to its "
                                  f"{reg.bits // 8} bytes")
            if reg.offset + reg.bits // 8 > 1 << self.address_width:
                raise ConfigError(f"Register {reg.name} at 0x{reg.offset:x} lies beyond the "
                                  f"{self.address_width}-bit address range")
            for k in range(reg.words):
                word = reg.offset // WORD_BYTES + k
                if word in words:
                    raise ConfigError(f"Register {reg.name} at 0x{reg.offset:x} overlaps "
                                      f"register {words[word]}")
                words[word] = reg.name
            self._check_fields(reg)

    @staticmethod
    def _check_fields(reg):
        if not reg.fields:
            raise ConfigError(f"Register {reg.name} has no field")
        used, names = 0, set()
        for f in reg.fields:
            where = f"Field {reg.name}.{f.name}"
            if not _NAME.match(f.name) or f.name in names:
                raise ConfigError(f"{where}: the name is not a new lower-case identifier")
            names.add(f.name)
            if f.access not in ACCESSES:
                raise ConfigError(f"{where}: access must be one of {ACCESSES}, not {f.access!r}")
            if f.source not in SOURCES:
                raise ConfigError(f"{where}: source must be one of {SOURCES}, not {f.source!r}")
            if (f.access == "rw") != (f.source == "host"):
                raise ConfigError(f"{where}: only rw fields are driven by the host, not {f.access} "
                                  f"from {f.source}")
            if f.access in ("coh", "cor", "tow") and (f.width != 1 or f.source != "control"):
                raise ConfigError(f"{where}: a {f.access} field is one bit driven by the control "
                                  f"block")
            if f.bit < 0 or f.width < 1 or f.bit + f.width > reg.bits:
                raise ConfigError(f"{where}: bits {f.bit}..{f.bit + f.width - 1} do not fit in "
                                  f"{reg.bits} bits")
            if used & f.mask:
                raise ConfigError(f"{where} overlaps another field of {reg.name}")
            used |= f.mask

    # Queries ------------------------------------------------------------------
    def __iter__(self):
        return iter(self.registers)

    def __getitem__(self, name) -> Register:
        for reg in self.registers:
            if reg.name == name:
                return reg
        raise KeyError(f"No register {name!r}; registers are {[r.name for r in self.registers]}")

    @property
    def arguments(self) -> tuple:
        return tuple(r for r in self.registers if r.argument)

    def to_dict(self) -> dict:
        return {"format": "moevit-regmap", "version": FORMAT_VERSION, "interface": "s_axi_control",
                "protocol": "ap_ctrl_hs", "data_width": 32, "address_width": self.address_width,
                "units": list(self.units),
                "error_codes": {name: {"code": code, "doc": doc}
                                for name, (code, doc) in self.error_codes.items()},
                "registers": [r.to_dict() for r in self.registers]}

    @classmethod
    def from_dict(cls, data) -> "RegisterMap":
        """Rebuild a map from :meth:`to_dict` (a :class:`ConfigError` when it is not one)."""
        try:
            if data.get("format") != "moevit-regmap" or data.get("version") != FORMAT_VERSION:
                raise ConfigError(
                    f"Not a moevit register map of version {FORMAT_VERSION} "
                    f"(format {data.get('format')!r}, version {data.get('version')!r})")
            registers = [Register(r["name"], r["offset"], r["bits"],
                                  tuple(Field(**f) for f in r["fields"]), r.get("doc", ""))
                         for r in data["registers"]]
            codes = {name: (c["code"], c["doc"]) for name, c in data["error_codes"].items()}
            return cls(registers, address_width=data["address_width"], units=data["units"],
                       error_codes=codes)
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"Register map is missing or mistyping {error}") from None

    def c_header(self, prefix: str = "MOEVIT_CONTROL") -> str:
        """The map as C ``#define``s: offsets, sizes, field shifts and masks, error codes."""
        lines = ["/* The register map of the moevit accelerator's s_axi_control port (ap_ctrl_hs).",
                 " * Generated by moevit.hw.program.regmap; do not edit. 64-bit registers take",
                 " * two 32-bit words, the low one first. */",
                 f"#ifndef {prefix}_H", f"#define {prefix}_H", "",
                 f"#define {prefix}_ADDRESS_WIDTH {self.address_width}",
                 f"#define {prefix}_VERSION {FORMAT_VERSION}", ""]
        for reg in self.registers:
            name = f"{prefix}_{reg.name.upper()}"
            lines.append(f"/* 0x{reg.offset:02x} {reg.name}: {reg.doc} */")
            lines.append(f"#define {name} 0x{reg.offset:02x}")
            lines.append(f"#define {name}_BITS {reg.bits}")
            if len(reg.fields) > 1 or reg.fields[0].width != reg.bits:
                for f in reg.fields:
                    lines.append(f"#define {name}_{f.name.upper()}_SHIFT {f.bit}  "
                                 f"/* {f.access}: {f.doc} */")
                    lines.append(f"#define {name}_{f.name.upper()}_MASK 0x{f.mask:x}u")
            lines.append("")
        for err, (code, doc) in self.error_codes.items():
            lines.append(f"#define {prefix}_ERROR_{err.upper()} {code}  /* {doc} */")
        lines += ["", f"#endif /* {prefix}_H */", ""]
        return "\n".join(lines)


class _Builder:
    """Places registers one after the other, each aligned to its size."""

    def __init__(self):
        self.registers, self.offset = [], 0

    def add(self, name, doc, *fields, bits=32):
        size = bits // 8
        self.offset = -(-self.offset // size) * size
        if not fields:
            fields = (_whole(name, bits, doc),)
        self.registers.append(Register(name, self.offset, bits, tuple(fields), doc))
        self.offset += size


def _whole(name, bits, doc, access="rw", source="host"):
    return Field(name, 0, bits, access, source, doc)


def _default_map() -> RegisterMap:
    b = _Builder()
    b.add("ap_ctrl", "ap_ctrl_hs control and status",
          Field("ap_start", 0, 1, "coh", "control", "start a run (write 1); held until its end"),
          Field("ap_done", 1, 1, "cor", "control", "the run ended (cleared when read)"),
          Field("ap_idle", 2, 1, "ro", "control", "no run in progress"),
          Field("ap_ready", 3, 1, "cor", "control",
                "the kernel takes a new start (cleared when read)"),
          Field("auto_restart", 7, 1, "rw", "host", "start again at the end of each run"),
          Field("interrupt", 9, 1, "ro", "control", "the interrupt output"))
    b.add("gie", "global interrupt enable",
          Field("enable", 0, 1, "rw", "host", "interrupt = enable & (isr != 0)"))
    b.add("ier", "IP interrupt enable",
          Field("done", 0, 1, "rw", "host", "ap_done sets isr.done"),
          Field("ready", 1, 1, "rw", "host", "ap_ready sets isr.ready"))
    b.add("isr", "IP interrupt status (toggle on write)",
          Field("done", 0, 1, "tow", "control", "a run ended while ier.done"),
          Field("ready", 1, 1, "tow", "control", "the kernel became ready while ier.ready"))
    assert b.offset == ARGUMENTS_OFFSET
    for name, doc in (("program", "byte address of the program"),
                      ("weights", "byte address of the packed weights"),
                      ("input", "byte address of the input images"),
                      ("output", "byte address of the outputs"),
                      ("scratch", "byte address of the activation scratch")):
        b.add(name, doc, bits=64)
    b.add("task", "the task the gates and heads run (switching task: this one write)")
    b.add("images", "runs of the program's body from one start: batches of the program "
                    "header's batch images each")
    b.add("status", "where the run is (driven by the top)",
          Field("instruction", 0, 16, "ro", "top", "index of the instruction running or stopped"),
          Field("image", 16, 16, "ro", "top",
                "index of the run (batch of images) running or stopped"))
    b.add("error", "why the last run stopped",
          Field("code", 0, 8, "ro", "top", "an error code (0: none)"),
          Field("start_while_busy", 8, 1, "ro", "control",
                "ap_start was written during this run and ignored"))
    b.add("cycles", "cycles of the last run, from its start to its done",
          _whole("cycles", 64, "cycles", "ro", "control"), bits=64)
    for unit in COUNTED_UNITS:
        b.add(f"busy_{unit}", f"cycles of the last run in which the {unit} unit was busy",
              _whole("cycles", 64, "busy cycles", "ro", "control"), bits=64)
    return RegisterMap(b.registers)


REGMAP = _default_map()


def write(folder, regmap: RegisterMap = REGMAP, name: str = "moevit_control"):
    """Write ``<name>.json`` and ``<name>.h`` into ``folder``; returns both paths."""
    from pathlib import Path

    from moevit.paths import write_atomically

    folder = Path(folder)
    text = json.dumps(regmap.to_dict(), indent=1) + "\n"
    paths = folder / f"{name}.json", folder / f"{name}.h"
    write_atomically(paths[0], lambda p: p.write_text(text), "register map")
    write_atomically(paths[1], lambda p: p.write_text(regmap.c_header()), "register map header")
    return paths


def load(path) -> RegisterMap:
    """The register map of a JSON file written by :func:`write`."""
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the register map {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The register map {path} is not a JSON object")
    return RegisterMap.from_dict(data)
