"""The ``alveo`` backend (``host/alveo.py``) against a STAND-IN of pyxrt and XRT's C library.

Neither XRT nor a U280 is here: ``host/stubs/pyxrt.py`` has the signatures of
XRT 2.16's ``pyxrt.cpp`` and ``xrt_kernel.h`` for what the backend uses, and a
simulated card whose HBM the host sees only through ``bo.sync``, so a buffer
written without a sync to the device, or read without a sync from it, gives
stale bytes and fails the run below. The driver's sequence is a small fake
(write the arguments, start, poll ``ap_done``, read the error).
"""

import re
import sys

import numpy as np
import pytest

from moevit.errors import ConfigError, DeviceError, ToolNotFoundError
from moevit.host import alveo
from moevit.host.backend import open_backend
from moevit.host.stubs import pyxrt as stub
from moevit.hw.program.regmap import REGMAP

PLATFORM = "xilinx_u280_gen3x16_xdma_1_202211_1"


@pytest.fixture
def card(tmp_path, monkeypatch):
    """A fresh simulated card with one moevit xclbin at tmp_path/moevit.xclbin."""
    monkeypatch.setattr(stub, "CARD", stub.Card())
    monkeypatch.setitem(sys.modules, "pyxrt", stub)
    monkeypatch.setattr(alveo, "_libxrt", stub.CoreUtil)
    path = tmp_path / "moevit.xclbin"
    path.write_bytes(b"xclbin2\0")
    stub.CARD.xclbins[str(path)] = (PLATFORM, ["moevit_top"])
    stub.CARD.path = path
    return stub.CARD


def word(name, k=0):
    return REGMAP[name].offset + 4 * k


def fake_kernel(card):
    """On a start: output byte k = input byte k + task, read from and written to HBM; done."""
    def run():
        regs = card.registers
        arg = lambda name: regs.get(word(name), 0) | regs.get(word(name, 1), 0) << 32
        source = card.read(arg("input"), 128)
        card.read(arg("output"), 128)[:] = source + regs.get(word("task"), 0)
        regs[0] = REGMAP["ap_ctrl"].field("ap_done").mask | REGMAP["ap_ctrl"].field("ap_idle").mask
    card.on_start = run


def test_a_run_through_the_backend(card):
    fake_kernel(card)
    image = np.arange(128, dtype=np.uint8)
    with open_backend("alveo", xclbin=str(card.path)) as backend:
        assert backend.clock_hz == 250e6
        inp, out = backend.allocate("input", 128), backend.allocate("output", 128)
        inp.write(image)
        for name, buffer in (("input", inp), ("output", out)):
            backend.write32(word(name), buffer.address & 0xFFFF_FFFF)
            backend.write32(word(name, 1), buffer.address >> 32)
        backend.write32(word("task"), 5)
        backend.write32(word("ap_ctrl"), 1)
        done = REGMAP["ap_ctrl"].field("ap_done").mask
        for _ in range(10):
            if backend.read32(word("ap_ctrl")) & done:
                break
        else:
            raise AssertionError("never done")
        assert backend.read32(word("error")) == 0
        np.testing.assert_array_equal(out.read(), image + 5)
    log = card.log
    # the shared kernel gives the bank group, and is released before the exclusive open
    assert log[:3] == [("load_xclbin", str(card.path)), ("kernel", "moevit_top"),
                       ("kernel released", "moevit_top")]
    assert ("bo", 128, "normal", 3) in log
    sync_in = log.index(("sync", "XCL_BO_SYNC_BO_TO_DEVICE", inp.address, 0, 128))
    start = log.index(("write", 0, 1))
    sync_out = log.index(("sync", "XCL_BO_SYNC_BO_FROM_DEVICE", out.address, 0, 128))
    assert sync_in < start < sync_out
    assert ("write", word("input"), inp.address & 0xFFFF_FFFF) in log
    assert ("write", word("input", 1), inp.address >> 32) in log and inp.address >> 32 == 0x40
    assert log[-2:] == [("close kernel",), ("close device",)] and not card.exclusive


def test_without_sync_the_bytes_are_stale(card):
    """The stand-in's HBM is apart from the host copy: the run above can fail."""
    with alveo.AlveoBackend(str(card.path)) as backend:
        buffer = backend.allocate("input", 16)
        buffer.bo.write(np.full(16, 7, np.uint8), 0)      # no sync
        assert (card.read(buffer.address, 16) == 0x55).all()
        card.read(buffer.address, 16)[:] = 9              # the kernel writes HBM
        assert (buffer.bo.read(16, 0) == 7).all()
        assert (buffer.read() == 9).all()                 # read() syncs from the device


def test_pyxrt_has_no_register_access():
    """What the backend's C-API path rests on: pyxrt's kernel binds no register access."""
    assert not hasattr(stub.kernel, "read_register") and not hasattr(stub.kernel, "write_register")


def test_missing_xrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    path = tmp_path / "moevit.xclbin"
    path.write_bytes(b"")
    with pytest.raises(ToolNotFoundError, match=r"^pyxrt not found .*XRT 2\.16 .*setup\.sh"):
        alveo.AlveoBackend(str(path))


@pytest.mark.parametrize("spoil, error, message", [
    (lambda card: card.path.unlink(), ConfigError, r"^No xclbin .*moevit\.xclbin$"),
    (lambda card: card.xclbins.update({str(card.path): ("xilinx_u250_gen3x16_xdma_4_1_202210_1",
                                                         ["moevit_top"])}),
     ConfigError, r"^The xclbin moevit\.xclbin is linked for 'xilinx_u250_gen3x16_xdma_4_1_202210_1', "
                  r"not the U280's xilinx_u280_gen3x16_xdma_1_202211_1$"),
    (lambda card: card.xclbins.update({str(card.path): (PLATFORM, ["vadd", "krnl_dma"])}),
     DeviceError, r"^The xclbin moevit\.xclbin has no moevit_top kernel; it has: vadd, krnl_dma$"),
    (lambda card: setattr(card, "cards", 0), DeviceError,
     r"^No Alveo card at XRT index 0: No such device: 0$"),
])
def test_bad_input(card, spoil, error, message):
    spoil(card)
    with pytest.raises(error, match=message):
        alveo.AlveoBackend(str(card.path))
    assert ("load_xclbin", str(card.path)) not in card.log


def test_not_an_xclbin(card):
    with pytest.raises(ConfigError, match=r"^The alveo backend takes an \.xclbin, not 'moevit\.bit'$"):
        alveo.AlveoBackend(str(card.path.with_suffix(".bit")))


def test_kernel_busy_elsewhere(card):
    card.exclusive = True          # another process holds the compute unit
    with pytest.raises(DeviceError, match=r"^XRT refused moevit\.xclbin on card 0: CU opened "
                                          r"exclusively by another context$"):
        alveo.AlveoBackend(str(card.path))
    card.exclusive, card.shared = False, 1     # ... or shares it: no exclusive register access
    with pytest.raises(DeviceError, match=r"^XRT did not open moevit_top on card 0 for exclusive "
                                          r"register access \(is another process using it\?\)$"):
        alveo.AlveoBackend(str(card.path))
    assert ("close device",) in card.log


def test_bounds(card):
    with alveo.AlveoBackend(str(card.path)) as backend:
        with pytest.raises(DeviceError, match=r"^Register offset 0x1002 is not a word"):
            backend.read32(0x1002)
        with pytest.raises(DeviceError, match=re.escape("Bytes [8, 24) lie outside the buffer "
                                                        "weights of 16 bytes")):
            backend.allocate("weights", 16).write(np.zeros(16, np.uint8), offset=8)
