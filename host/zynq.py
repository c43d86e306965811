"""The ``zynq`` backend: the accelerator in the programmable logic of a ZCU102 / ZCU104, through PYNQ.

PYNQ 3.x (``pynq`` 4.0 on PyPI) runs on the board's Arm cores. What is used,
as its sources (``pynq/overlay.py``, ``buffer.py``, ``mmio.py``,
``pl_server/device.py``) define it:

- ``pynq.Overlay(bitfile, download=False, device=...)`` reads the hardware
  handoff (``.hwh``) that must lie beside the ``.bit`` under the same name,
  and lists the block design's IP in ``ip_dict`` (``type`` is the VLNV);
  ``Overlay.download()`` programs the PL (and sets the PL clocks the
  ``.hwh`` records);
- a ``pynq.DefaultIP`` subclass whose ``bindto`` holds the kernel's VLNV
  (:data:`moevit.host.bitstream.VLNV`, the one the IP packaging writes) is
  the driver the overlay hands out for the accelerator; its ``read`` /
  ``write`` are 32-bit MMIO accesses of ``s_axi_control``;
- ``pynq.allocate(shape, dtype, target=device)`` gives a ``PynqBuffer`` in
  contiguous DDR: ``device_address`` (alias ``physical_address``) is what the
  accelerator's AXI master reads; the buffer is cacheable, so a slice's
  ``flush()`` writes the CPU's cache back before the device reads that slice,
  and ``invalidate()`` drops it before the CPU reads what the device wrote.

Before anything is downloaded the backend checks the pair: the ``.bit``
exists, its ``.hwh`` lies beside it, both name the same part and block
design (the ``.bit`` header against the ``.hwh``'s ``SYSTEMINFO``), and the
overlay holds the accelerator; each failure is one line naming the problem.

:meth:`ZynqBackend.reset` downloads the bitstream again: reprogramming the PL
is the one reset of the whole kernel a PYNQ overlay offers (the kernel has no
abort register, and ``ap_ctrl_hs`` cannot stop a run that waits on memory).
The buffers live in the PS's DDR, so they and their addresses survive; the
argument registers do not, and the driver writes them again. A run that
stops on an error needs no reset: the kernel stops itself and takes the next
start (``hw/top/accelerator.py``).

``pynq`` is imported only here, and only when a backend is opened.
"""

import struct
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from moevit.errors import ConfigError, DeviceError, ToolNotFoundError
from moevit.host.backend import Backend, Buffer

__all__ = ["ZynqBackend", "ZynqBuffer", "read_bit_header", "read_handoff"]


def _pynq():
    try:
        import pynq
    except ImportError as error:
        raise ToolNotFoundError(
            f"pynq not found ({error}): the zynq backend runs on a ZCU102 / ZCU104 with "
            "PYNQ 3.x (pip install pynq==4.0 'numpy<2')") from None
    return pynq


_DRIVER = None


def kernel_driver():
    """The ``pynq.DefaultIP`` subclass bound to the accelerator's VLNV (made once)."""
    global _DRIVER
    if _DRIVER is None:
        from moevit.host.bitstream import VLNV

        class MoevitKernel(_pynq().DefaultIP):
            """PYNQ's driver of the moevit accelerator: 32-bit words of ``s_axi_control``."""

            bindto = [VLNV]

        _DRIVER = MoevitKernel
    return _DRIVER


def read_bit_header(path) -> dict:
    """The text fields of a Vivado ``.bit`` header: ``design``, ``part``, ``date``, ``time``.

    The header (a fact of the format, documented by the community, e.g. the
    key-length-value layout in U-Boot's ``fpga_loadbitstream``): a 2-byte length
    and that many bytes, a 2-byte field, then keys ``a`` (design name, with
    ``;UserID=...;Version=...``), ``b`` (part), ``c`` (date), ``d`` (time), each a
    2-byte big-endian length and a NUL-terminated string, then ``e`` and the data.
    """
    data = Path(path).read_bytes()[:1024]
    names = {b"a": "design", b"b": "part", b"c": "date", b"d": "time"}
    fields = {}
    try:
        at = 2 + struct.unpack(">H", data[:2])[0] + 2
        while data[at:at + 1] in names:
            key = data[at:at + 1]
            length = struct.unpack(">H", data[at + 1:at + 3])[0]
            fields[names[key]] = data[at + 3:at + 3 + length].rstrip(b"\0").decode("ascii")
            at += 3 + length
    except (struct.error, UnicodeDecodeError):
        pass
    if data[at:at + 1] != b"e" or not {"design", "part"} <= set(fields):
        raise ConfigError(f"The bitstream {path} has no Vivado .bit header "
                          "(design, part); give the .bit that write_bitstream wrote")
    fields["design"], _, fields["build"] = fields["design"].partition(";")
    return fields


def read_handoff(path) -> dict:
    """What the backend needs of a ``.hwh``: its design ``name``, ``part`` (device,
    package, speed grade), and per module ``instance -> (vlnv, ap_clk Hz or None)``."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise ConfigError(f"Cannot read the hardware handoff {path}: {error}") from None
    info = root.find("SYSTEMINFO")
    if info is None:
        raise ConfigError(f"The hardware handoff {path} has no SYSTEMINFO: not a Vivado .hwh")
    modules = {}
    for module in root.iter("MODULE"):
        clock = module.find("./PORTS/PORT[@NAME='ap_clk']")
        hz = clock.get("CLKFREQUENCY") if clock is not None else None
        modules[module.get("INSTANCE")] = (module.get("VLNV"), int(hz) if hz else None)
    device = info.get("DEVICE", "") + info.get("PACKAGE", "")
    return {"name": info.get("NAME", ""), "device": device,
            "part": device + info.get("SPEEDGRADE", ""), "modules": modules}


def _same_part(bit_part: str, hwh_device: str) -> bool:
    """``xczu7ev-ffvc1156-2-e`` (a .bit header) against the ``.hwh``'s ``xczu7ev`` +
    ``ffvc1156``: device and package, not the speed grade (7-series headers omit it)."""
    def norm(text):
        text = text.lower().replace("-", "")
        return text[2:] if text.startswith("xc") else text

    return bool(hwh_device) and norm(bit_part).startswith(norm(hwh_device))


def check_pair(bitstream) -> tuple:
    """The ``.bit`` and its ``.hwh`` (paths), checked to be one build's (see the module)."""
    bit = Path(bitstream)
    if bit.suffix != ".bit":
        raise ConfigError(f"The zynq backend takes a .bit bitstream, not {bit.name!r}")
    if not bit.is_file():
        raise ConfigError(f"No bitstream {bit}")
    hwh = bit.with_suffix(".hwh")
    if not hwh.is_file():
        raise ConfigError(f"No hardware handoff {hwh.name} beside the bitstream {bit}: PYNQ "
                          "needs the .bit and the .hwh side by side under one name")
    header, handoff = read_bit_header(bit), read_handoff(hwh)
    if not _same_part(header["part"], handoff["device"]):
        raise ConfigError(f"The bitstream {bit.name} is for part {header['part']} but its "
                          f"hardware handoff {hwh.name} for {handoff['part'] or 'no part'}: "
                          "they come from different builds")
    if not header["design"].startswith(handoff["name"]):
        raise ConfigError(f"The bitstream {bit.name} is of design {header['design']!r} but its "
                          f"hardware handoff {hwh.name} of {handoff['name']!r}: "
                          "they come from different builds")
    return bit, hwh, handoff


class ZynqBuffer(Buffer):
    """A ``PynqBuffer`` of bytes; every write is flushed, every read invalidated first."""

    def __init__(self, name, array):
        self.name, self.array = name, array
        self.address = int(array.device_address)
        self.nbytes = int(array.nbytes)

    def _span(self, nbytes, offset):
        nbytes = self.nbytes - offset if nbytes is None else nbytes
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise DeviceError(f"Bytes [{offset}, {offset + nbytes}) lie outside the buffer "
                              f"{self.name} of {self.nbytes} bytes")
        return self.array[offset:offset + nbytes]

    def write(self, data, offset: int = 0) -> None:
        data = np.frombuffer(memoryview(np.ascontiguousarray(data)).cast("B"), np.uint8)
        span = self._span(len(data), offset)
        span[:] = data
        span.flush()          # the CPU's cache -> DDR, before the device reads it

    def read(self, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        span = self._span(nbytes, offset)
        span.invalidate()     # drop stale cache lines: the device wrote DDR
        return np.array(span, dtype=np.uint8, copy=True)


class ZynqBackend(Backend):
    """The accelerator of a moevit bitstream on a Zynq UltraScale+ board.

    Parameters
    ----------
    bitstream : path
        The ``.bit``; its ``.hwh`` must lie beside it (``build/deploy/BOARD/``).
    device : pynq.Device, optional
        PYNQ's device (default: ``pynq.Device.active_device``, the board); the
        tests pass a ``pynq.Device`` subclass, as PYNQ's own tests do.
    download : bool
        Program the PL (default). ``False`` uses what is loaded already.

    Raises
    ------
    ToolNotFoundError
        pynq is not installed.
    ConfigError
        The ``.bit`` or ``.hwh`` is missing, unreadable, or not of one build.
    DeviceError
        The overlay has no moevit accelerator (the message lists what it has).
    """

    name = "zynq"

    def __init__(self, bitstream, *, device=None, download=True):
        from moevit.host.bitstream import VLNV

        bit, _, handoff = check_pair(bitstream)     # before pynq: a bad pair fails anywhere
        pynq = _pynq()
        kernel_driver()
        self.bitstream = bit
        self._device = device
        self._buffers = []
        self.overlay = pynq.Overlay(str(bit.resolve()), download=False, device=device)
        kernels = [name for name, ip in self.overlay.ip_dict.items() if ip.get("type") == VLNV]
        if len(kernels) != 1:
            has = ", ".join(f"{name} ({ip.get('type')})" for name, ip in
                            self.overlay.ip_dict.items()) or "no IP"
            raise DeviceError(f"The overlay {bit.name} has {len(kernels) or 'no'} moevit "
                              f"accelerator{'s' if kernels else ''} ({VLNV}); it has: {has}")
        self.ip_name = kernels[0]
        hz = handoff["modules"].get(self.ip_name.rpartition("/")[2], (None, None))[1]
        if hz is None:
            raise ConfigError(f"The hardware handoff of {bit.name} gives no ap_clk frequency "
                              f"for {self.ip_name}")
        self.clock_hz = float(hz)
        if download:
            self.overlay.download()
        self.kernel = self.overlay
        for part in self.ip_name.split("/"):   # an IP inside a hierarchy: overlay.hier.ip
            self.kernel = getattr(self.kernel, part)

    def read32(self, offset: int) -> int:
        return int(self.kernel.read(offset))

    def write32(self, offset: int, value: int) -> None:
        self.kernel.write(offset, int(value) & 0xFFFF_FFFF)

    def allocate(self, name: str, nbytes: int) -> ZynqBuffer:
        pynq = _pynq()
        target = self._device if self._device is not None else pynq.Device.active_device
        buffer = ZynqBuffer(name, pynq.allocate(shape=(int(nbytes),), dtype=np.uint8,
                                                target=target))
        self._buffers.append(buffer)
        return buffer

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def reset(self) -> None:
        """Download the bitstream again (see the module): the kernel idle, its registers
        at their reset values, the buffers untouched."""
        self.overlay.download()

    def close(self) -> None:
        for buffer in self._buffers:
            buffer.array.freebuffer()
        self._buffers = []
