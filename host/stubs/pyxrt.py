"""A STAND-IN for XRT's ``pyxrt`` and its C library, for the tests: no XRT, no card.

It has the signatures of XRT's ``src/python/pybind11/src/pyxrt.cpp`` at tag
``202320.2.16.204`` (XRT 2.16, Vitis 2023.2) for what ``host/alveo.py`` uses,
and, in :class:`CoreUtil`, of the C functions of ``xrt/xrt_kernel.h`` and
``xrt/xrt_device.h`` it calls through ctypes. Behind them sits one simulated
card (:data:`CARD`): HBM whose bytes the host sees only through ``bo.sync``,
a kernel register file, and a log of what reached the card. What the kernel
does on a start is the test's (``CARD.on_start``). Like the real binding,
``kernel`` has no ``read_register`` / ``write_register``.
"""

import ctypes
import enum
import uuid as uuidlib

import numpy as np


class Card:
    """The simulated U280: see the module. ``xclbins``: path -> (platform, kernel names)."""

    def __init__(self):
        self.xclbins, self.loaded, self.cards = {}, None, 1
        self.log, self.registers, self.memory = [], {}, {}
        self.next_address, self.on_start, self.exclusive, self.shared = 0x40_0000_0000, None, False, 0

    def read(self, address, nbytes):
        for base, data in self.memory.items():
            if base <= address and address + nbytes <= base + len(data):
                return data[address - base:address - base + nbytes]
        raise AssertionError(f"no buffer at {address:#x}")


CARD = Card()
XCL_BO_FLAGS_NONE = 0


class xclBOSyncDirection(enum.Enum):
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class xrt_info_device(enum.Enum):
    bdf = 0
    name = 5
    max_clock_frequency_mhz = 3


class uuid:
    def __init__(self, text):
        self._text = text

    def to_string(self):
        return self._text


class xclbin:
    class xclbinkernel:
        def __init__(self, name):
            self._name = name

        def get_name(self):
            return self._name

    def __init__(self, filename):
        if filename not in CARD.xclbins:
            raise RuntimeError(f"xclbin {filename}: not an xclbin")
        self.filename = filename
        self._platform, self._kernels = CARD.xclbins[filename]

    def get_kernels(self):
        return [xclbin.xclbinkernel(name) for name in self._kernels]

    def get_xsa_name(self):
        return self._platform

    def get_uuid(self):
        return uuid(str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, self.filename)))


class device:
    def __init__(self, index=0):
        if index >= CARD.cards:
            raise RuntimeError(f"No such device: {index}")
        self.index = index

    def load_xclbin(self, binary):
        CARD.log.append(("load_xclbin", binary.filename))
        CARD.loaded = binary
        return binary.get_uuid()

    def get_info(self, key):
        return {xrt_info_device.max_clock_frequency_mhz: "250"}[key]


class kernel:
    class cu_access_mode(enum.Enum):
        exclusive = 0
        shared = 1
        none = 2

    def __init__(self, dev, xclbin_id, name, mode=None):
        self.name = None
        if CARD.exclusive:
            raise RuntimeError("CU opened exclusively by another context")
        if CARD.loaded is None or name not in CARD.loaded._kernels:
            raise RuntimeError(f"No kernel {name}")
        CARD.log.append(("kernel", name))
        CARD.shared += 1
        self.name = name

    def group_id(self, argno):
        return 3      # the bank group the link gave m_axi_gmem

    def __del__(self):
        if self.name is not None:   # the context is released with the object
            CARD.shared -= 1
            CARD.log.append(("kernel released", self.name))


class bo:
    class flags(enum.Enum):
        normal = 0
        cacheable = 1
        device_only = 2
        host_only = 3
        p2p = 4
        svm = 5

    def __init__(self, dev, size, flags, group):
        CARD.log.append(("bo", size, flags.name, group))
        self._size, self._address = size, CARD.next_address
        self._host = np.full(size, 0xAA, np.uint8)
        CARD.memory[self._address] = np.full(size, 0x55, np.uint8)
        CARD.next_address += 0x1000_0000

    def write(self, data, seek):
        data = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        self._host[seek:seek + len(data)] = data

    def read(self, size, skip):
        return self._host[skip:skip + size].view(np.int8).copy()

    def sync(self, direction, size, offset):
        CARD.log.append(("sync", direction.name, self._address, offset, size))
        device_bytes = CARD.memory[self._address]
        if direction is xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            device_bytes[offset:offset + size] = self._host[offset:offset + size]
        else:
            self._host[offset:offset + size] = device_bytes[offset:offset + size]

    def size(self):
        return self._size

    def address(self):
        return self._address


class CoreUtil:
    """The C functions of ``libxrt_coreutil.so`` that ``host/alveo.py`` calls (ctypes)."""

    def xrtDeviceOpen(self, index):
        return 0x1000 + index if index < CARD.cards else None

    def xrtPLKernelOpenExclusive(self, handle, xuid, name):
        assert len(xuid) == 16 and name == b"moevit_top"
        if CARD.exclusive or CARD.shared:     # "fails if any compute unit is already opened"
            return None
        CARD.exclusive = True
        return 0x2000

    def xrtKernelReadRegister(self, handle, offset, datap):
        assert handle == 0x2000
        datap._obj.value = CARD.registers.get(offset, 0)
        CARD.log.append(("read", offset, datap._obj.value))
        if offset == 0:
            CARD.registers[0] = CARD.registers.get(0, 0) & ~0b10   # ap_done: cleared on read
        return 0

    def xrtKernelWriteRegister(self, handle, offset, data):
        assert handle == 0x2000
        CARD.log.append(("write", offset, data))
        CARD.registers[offset] = data
        if offset == 0 and data & 1 and CARD.on_start:
            CARD.on_start()
        return 0

    def xrtKernelClose(self, handle):
        CARD.exclusive = False
        CARD.log.append(("close kernel",))
        return 0

    def xrtDeviceClose(self, handle):
        CARD.log.append(("close device",))
        return 0
