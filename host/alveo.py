"""The ``alveo`` backend: the accelerator on an Alveo U280, through XRT.

PYNQ dropped Alveo in 3.1, so the U280 runs through XRT's own Python binding
``pyxrt`` (XRT 2.16 is the runtime of Vitis 2023.2, the last tools with the
U280). What is used, with the signatures of XRT's
``src/python/pybind11/src/pyxrt.cpp`` (tag ``202320.2.16.204``):

- ``pyxrt.device(index)``; ``device.load_xclbin(xclbin) -> uuid`` (the
  overload taking an ``xrt::xclbin``); ``device.get_info(xrt_info_device.
  max_clock_frequency_mhz) -> str``;
- ``pyxrt.xclbin(path)``: ``get_kernels()`` (each ``get_name()``),
  ``get_xsa_name()`` (the platform it was linked for);
- ``pyxrt.kernel(device, uuid, name)``: ``group_id(argno)``, the memory bank
  group the ``v++ --link`` configuration gave that argument (our ``m_axi_gmem``:
  the HBM banks of ``host/bitstream.py``'s link file);
- ``pyxrt.bo(device, nbytes, bo.flags.normal, group)``: ``write(buffer, seek)``,
  ``read(size, skip) -> int8 array``, ``sync(xclBOSyncDirection, size, offset)``
  with ``XCL_BO_SYNC_BO_TO_DEVICE`` / ``XCL_BO_SYNC_BO_FROM_DEVICE`` (the DMA
  over PCIe), ``address()`` (the device address the kernel's master reads).

**Register access is not in pyxrt.** Its ``kernel.read_register`` /
``write_register`` bindings were removed in August 2021 (XRT commit 9bb8100a,
before 2.12), ``xrt::kernel::read_register`` is deprecated in favour of the
user-managed ``xrt::ip``, which pyxrt does not bind either (up to 2.16; XRT
issue #7863 asks for it). Our status, error and cycle registers need reads,
so the control port goes through XRT's C API in ``libxrt_coreutil.so``
(``xrt/xrt_kernel.h`` and ``xrt/xrt_device.h``, 2.16): ``xrtDeviceOpen(index)``,
``xrtPLKernelOpenExclusive(device, xuid, name)`` (register access needs the
compute unit opened exclusively), ``xrtKernelReadRegister(kernel, offset,
uint32_t*)``, ``xrtKernelWriteRegister(kernel, offset, data)`` (0 on success),
``xrtKernelClose``, ``xrtDeviceClose``. The pyxrt kernel that gives the bank
group is released before the exclusive open.

:meth:`reset` is the contract's no-op: neither pyxrt nor the C API resets one
compute unit (``xbutil reset`` resets the whole card and unloads the
xclbin), and the kernel stops itself on an error and takes the next start.

Neither XRT nor a card is here: the tests run against stand-ins with these
signatures (``host/stubs/pyxrt.py``).
"""

import ctypes
import time
import uuid as uuidlib
from pathlib import Path

import numpy as np

from moevit.errors import ConfigError, DeviceError, ToolNotFoundError
from moevit.host.backend import Backend, Buffer

__all__ = ["AlveoBackend", "AlveoBuffer", "PLATFORM"]

#: The U280 platform the link targets (boards/u280.json), the one an xclbin must be for.
PLATFORM = "xilinx_u280_gen3x16_xdma_1_202211_1"


def _pyxrt():
    try:
        import pyxrt
    except ImportError as error:
        raise ToolNotFoundError(
            f"pyxrt not found ({error}): the alveo backend needs XRT 2.16 (Vitis 2023.2) "
            "installed and its setup.sh sourced (source /opt/xilinx/xrt/setup.sh)") from None
    return pyxrt


def _libxrt():
    """XRT's C library (the register access pyxrt lacks), argument types declared."""
    try:
        lib = ctypes.CDLL("libxrt_coreutil.so")
    except OSError as error:
        raise ToolNotFoundError(f"libxrt_coreutil.so not found ({error}): source "
                                "/opt/xilinx/xrt/setup.sh") from None
    lib.xrtDeviceOpen.restype = ctypes.c_void_p
    lib.xrtDeviceOpen.argtypes = [ctypes.c_uint]
    lib.xrtPLKernelOpenExclusive.restype = ctypes.c_void_p
    lib.xrtPLKernelOpenExclusive.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.xrtKernelReadRegister.argtypes = [ctypes.c_void_p, ctypes.c_uint32,
                                          ctypes.POINTER(ctypes.c_uint32)]
    lib.xrtKernelWriteRegister.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.xrtKernelClose.argtypes = [ctypes.c_void_p]
    lib.xrtDeviceClose.argtypes = [ctypes.c_void_p]
    return lib


class AlveoBuffer(Buffer):
    """An XRT buffer object in the kernel's HBM banks; writes synced to the device,
    reads synced from it first."""

    def __init__(self, name, bo, nbytes, pyxrt):
        self.name, self.bo, self.nbytes = name, bo, int(nbytes)
        self.address = int(bo.address())
        self._sync = pyxrt.xclBOSyncDirection

    def _check(self, nbytes, offset):
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise DeviceError(f"Bytes [{offset}, {offset + nbytes}) lie outside the buffer "
                              f"{self.name} of {self.nbytes} bytes")

    def write(self, data, offset: int = 0) -> None:
        data = np.frombuffer(memoryview(np.ascontiguousarray(data)).cast("B"), np.uint8)
        self._check(len(data), offset)
        self.bo.write(data, offset)
        self.bo.sync(self._sync.XCL_BO_SYNC_BO_TO_DEVICE, len(data), offset)

    def read(self, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        nbytes = self.nbytes - offset if nbytes is None else nbytes
        self._check(nbytes, offset)
        self.bo.sync(self._sync.XCL_BO_SYNC_BO_FROM_DEVICE, nbytes, offset)
        return np.array(self.bo.read(nbytes, offset), copy=True).view(np.uint8)


class AlveoBackend(Backend):
    """The accelerator of a moevit ``.xclbin`` on an Alveo U280.

    Parameters
    ----------
    xclbin : path
        The ``.xclbin`` ``v++ --link`` wrote (``build/deploy/u280/``).
    device_index : int
        XRT's index of the card (``xbutil examine`` lists them).

    Raises
    ------
    ToolNotFoundError
        XRT (pyxrt, libxrt_coreutil) is not installed.
    ConfigError
        The xclbin is missing or was linked for another platform.
    DeviceError
        No card at ``device_index``, no moevit kernel in the xclbin (the message
        lists what it has), or XRT refused a step.
    """

    name = "alveo"

    def __init__(self, xclbin, device_index: int = 0):
        from moevit.host.bitstream import KERNEL
        from moevit.hw.program.regmap import REGMAP

        path = Path(xclbin)
        if path.suffix != ".xclbin":
            raise ConfigError(f"The alveo backend takes an .xclbin, not {path.name!r}")
        if not path.is_file():
            raise ConfigError(f"No xclbin {path}")
        pyxrt = self._pyxrt = _pyxrt()
        lib = self._lib = _libxrt()
        self._kernel = self._handle = None
        self._buffers = []
        binary = pyxrt.xclbin(str(path))
        if binary.get_xsa_name() != PLATFORM:
            raise ConfigError(f"The xclbin {path.name} is linked for {binary.get_xsa_name()!r}, "
                              f"not the U280's {PLATFORM}")
        kernels = [k.get_name() for k in binary.get_kernels()]
        if KERNEL not in kernels:
            raise DeviceError(f"The xclbin {path.name} has no {KERNEL} kernel; it has: "
                              f"{', '.join(kernels) or 'none'}")
        try:
            self.device = pyxrt.device(int(device_index))
        except RuntimeError as error:
            raise DeviceError(f"No Alveo card at XRT index {device_index}: {error}") from None
        try:
            xuid = self.device.load_xclbin(binary)
            # every argument of the one m_axi_gmem port lies in the same banks: the first's
            shared = pyxrt.kernel(self.device, xuid, KERNEL)
            self._group = shared.group_id(0)
        except RuntimeError as error:
            raise DeviceError(f"XRT refused {path.name} on card {device_index}: {error}") from None
        del shared      # released: register access needs the compute unit exclusively
        self.clock_hz = 1e6 * float(self.device.get_info(
            pyxrt.xrt_info_device.max_clock_frequency_mhz))
        self._handle = lib.xrtDeviceOpen(int(device_index))
        self._kernel = lib.xrtPLKernelOpenExclusive(
            self._handle, uuidlib.UUID(xuid.to_string()).bytes, KERNEL.encode())
        if not self._handle or not self._kernel:
            self.close()
            raise DeviceError(f"XRT did not open {KERNEL} on card {device_index} for exclusive "
                              "register access (is another process using it?)")
        self._span = 1 << REGMAP.address_width

    def _offset(self, offset):
        if not 0 <= offset < self._span or offset % 4:
            raise DeviceError(f"Register offset {offset:#x} is not a word of s_axi_control")
        return offset

    def read32(self, offset: int) -> int:
        value = ctypes.c_uint32()
        if self._lib.xrtKernelReadRegister(self._kernel, self._offset(offset), ctypes.byref(value)):
            raise DeviceError(f"XRT could not read register {offset:#x} of the kernel")
        return value.value

    def write32(self, offset: int, value: int) -> None:
        if self._lib.xrtKernelWriteRegister(self._kernel, self._offset(offset),
                                            int(value) & 0xFFFF_FFFF):
            raise DeviceError(f"XRT could not write register {offset:#x} of the kernel")

    def allocate(self, name: str, nbytes: int) -> AlveoBuffer:
        bo = self._pyxrt.bo(self.device, int(nbytes), self._pyxrt.bo.flags.normal, self._group)
        buffer = AlveoBuffer(name, bo, nbytes, self._pyxrt)
        self._buffers.append(buffer)
        return buffer

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self._buffers = []
        if self._kernel:
            self._lib.xrtKernelClose(self._kernel)
        if self._handle:
            self._lib.xrtDeviceClose(self._handle)
        self._kernel = self._handle = None
