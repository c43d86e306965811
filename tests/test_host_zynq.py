"""The ``zynq`` backend (``host/zynq.py``) against a ``pynq.Device`` stand-in, in its own venv.

pynq 4.0 pins ``numpy<2`` and grpcio, so it lives in ``build/venv-pynq``
(``make pynq-venv``: about 1 minute from pip's cache, 6 on a cold one here).
In the main venv this file holds one test, which makes that venv when it is
missing and runs this same file there; in the pynq venv the cases below run,
the way PYNQ's own ``tests/mock_devices.py`` tests drivers with no board: a
``pynq.Device`` subclass passed as ``device=``.

The stand-in (:class:`Board`) is a ZCU10x as the backend sees it: PYNQ's own
HWH parser (``_HWHUltrascale``) reads a hardware handoff written here by hand
in the format Vivado writes (a sample, not a Vivado output); the kernel's
registers follow the register map (``ap_done`` cleared on read, the argument
words); the DDR is modelled apart from the CPU's cache, so a buffer not
flushed before the start, or not invalidated after ``done``, gives the fake
kernel or the host stale bytes, and the test fails. The driver's sequence is
a small fake here (write the arguments, start, poll ``ap_done``, read the
error): ``host/driver.py`` is tested on its own.
"""

import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moevit.errors import ConfigError, DeviceError, ToolNotFoundError
from moevit.host.bitstream import VLNV

BASE = 0xA000_0000     # where the hand-written handoff places s_axi_control
PART = ("xczu9eg", "ffvb1156", "-2")

def write_bit(path, design="moevit_bd_wrapper", part="xczu9eg-ffvb1156-2-e"):
    """A .bit with Vivado's header (keys a-d, then e and a few bytes of data)."""
    def field(key, text):
        data = text.encode() + b"\0"
        return key + struct.pack(">H", len(data)) + data

    head = struct.pack(">H", 9) + bytes.fromhex("0ff00ff00ff00ff000") + struct.pack(">H", 1)
    body = (field(b"a", f"{design};UserID=0XFFFFFFFF;Version=2023.2") + field(b"b", part)
            + field(b"c", "2026/12/01") + field(b"d", "23:00:00"))
    Path(path).write_bytes(head + body + b"e" + struct.pack(">I", 8) + b"\xff" * 8)

def write_hwh(path, vlnv=VLNV, part=PART, name="moevit_bd", mhz=200):
    """A hardware handoff in Vivado's format (hand-written sample): the PS, and one IP
    of ``vlnv`` at BASE with its ap_clk and its interrupt on pl_ps_irq0."""
    device, package, speed = part
    clocks = "".join(
        f'<PARAMETER NAME="PSU__CRL_APB__PL{i}_REF_CTRL__DIVISOR{j}" VALUE="{5 if j == 0 else 1}"/>'
        for i in range(4) for j in range(2))
    clocks += "".join(f'<PARAMETER NAME="PSU__FPGA_PL{i}_ENABLE" VALUE="{int(i == 0)}"/>'
                      for i in range(4))
    Path(path).write_text(f"""<?xml version="1.0" encoding="UTF-8" standalone="no" ?>
<EDKSYSTEM EDWVERSION="1.2" TIMESTAMP="Tue Dec  1 22:00:00 2026" VIVADOVERSION="2023.2">
  <SYSTEMINFO ARCH="zynquplus" BOARD="xilinx.com:zcu102:part0:3.4" DEVICE="{device}" NAME="{name}" PACKAGE="{package}" SPEEDGRADE="{speed}"/>
  <EXTERNALPORTS/>
  <MODULES>
<MODULE FULLNAME="/zynq_ultra_ps_e_0" INSTANCE="zynq_ultra_ps_e_0" MODTYPE="zynq_ultra_ps_e" VLNV="xilinx.com:ip:zynq_ultra_ps_e:3.5">
  <PARAMETERS>{clocks}</PARAMETERS>
  <PORTS>
    <PORT DIR="O" NAME="pl_clk0" SIGNAME="zynq_ultra_ps_e_0_pl_clk0"/>
    <PORT DIR="I" NAME="pl_ps_irq0" SIGNAME="accel_interrupt"/>
  </PORTS>
  <MEMORYMAP>
    <MEMRANGE ADDRESSBLOCK="Reg" BASENAME="C_S_AXI_CONTROL_BASEADDR" BASEVALUE="0x{BASE:08X}" HIGHNAME="C_S_AXI_CONTROL_HIGHADDR" HIGHVALUE="0x{BASE + 0xFFF:08X}" INSTANCE="accel" IS_DATA="TRUE" IS_INSTRUCTION="TRUE" MASTERBUSINTERFACE="M_AXI_HPM0_FPD" MEMTYPE="REGISTER" SLAVEBUSINTERFACE="s_axi_control"/>
  </MEMORYMAP>
</MODULE>
<MODULE FULLNAME="/accel" INSTANCE="accel" MODTYPE="{vlnv.split(':')[2]}" VLNV="{vlnv}">
  <PARAMETERS/>
  <PORTS>
    <PORT CLKFREQUENCY="{mhz * 1000000}" DIR="I" NAME="ap_clk" SIGIS="clk" SIGNAME="zynq_ultra_ps_e_0_pl_clk0"/>
    <PORT DIR="O" NAME="interrupt" SIGIS="INTERRUPT" SIGNAME="accel_interrupt"/>
  </PORTS>
</MODULE>
  </MODULES>
</EDKSYSTEM>
""")


ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "venv-pynq"
IN_PYNQ_VENV = importlib.util.find_spec("pynq") is not None


def test_zynq_backend_without_pynq(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynq", None)   # import pynq -> ImportError
    from moevit.host.backend import open_backend

    bit = tmp_path / "moevit.bit"
    write_bit(bit)
    write_hwh(bit.with_suffix(".hwh"))
    with pytest.raises(ToolNotFoundError, match=r"^pynq not found .*pip install pynq==4\.0"):
        open_backend("zynq", bitstream=str(bit))


def test_a_bad_pair_fails_before_pynq_is_needed(monkeypatch, tmp_path):
    """Anywhere (pynq or not), a missing .hwh is one line naming it."""
    monkeypatch.setitem(sys.modules, "pynq", None)
    from moevit.host.backend import open_backend

    bit = tmp_path / "moevit.bit"
    write_bit(bit)
    with pytest.raises(ConfigError, match=r"^No hardware handoff moevit\.hwh beside the bitstream "
                                          r"\S+moevit\.bit: PYNQ needs the \.bit and the \.hwh "
                                          r"side by side under one name$"):
        open_backend("zynq", bitstream=str(bit))


if not IN_PYNQ_VENV:
    def test_zynq_backend_in_the_pynq_venv():
        """Run this file's cases in build/venv-pynq (made first if missing)."""
        if not (VENV / ".installed").is_file():
            subprocess.run(["make", "-C", str(ROOT), "pynq-venv"], check=True)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run([str(VENV / "bin" / "python"), "-m", "pytest", "-q",
                               "-p", "no:cacheprovider", str(Path(__file__))],
                              cwd=ROOT, capture_output=True, text=True, env=env)
        print(done.stdout[-3000:])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        # every case ran in there, none skipped
        assert " passed" in done.stdout and "skipped" not in done.stdout


if IN_PYNQ_VENV:
    import pynq
    from pynq.pl_server.hwh_parser import _HWHUltrascale

    from moevit.host.zynq import ZynqBackend, read_bit_header
    from moevit.hw.program.regmap import REGMAP

    class Board(pynq.Device):
        """A ZCU10x with the accelerator, as PYNQ's device layer sees it (see the module).

        ``log``: what reached the board, in order: ``("write", register, value)``,
        ``("read", register, value)``, ``("flush", buffer, offset, nbytes)``,
        ``("invalidate", ...)``, ``("download",)``.
        """

        def __init__(self):
            super().__init__("moevit-mock-zcu")
            self.capabilities = {"REGISTER_RW": True}
            self.log, self.cache, self.ddr, self.names = [], {}, {}, {}
            self.words = {}
            self.next_address = 0x6000_0000
            pynq.Device.active_device = self

        # metadata: PYNQ's parser of the .hwh beside the bitstream
        def get_bitfile_metadata(self, bitfile_name):
            parser = _HWHUltrascale(hwh_name=str(Path(bitfile_name).with_suffix(".hwh")))
            parser.systemgraph = None
            parser.clock_dict = {}   # no PS clock registers on this stand-in
            return parser

        def download(self, bitstream, parser=None):
            self.log.append(("download",))
            self.words = {}          # the PL reprogrammed: every register at reset

        # s_axi_control
        def _register(self, address):
            offset = address - BASE
            for reg in REGMAP:
                if reg.offset <= offset < reg.offset + reg.bits // 8:
                    return reg, (offset - reg.offset) // 4
            raise AssertionError(f"access outside the register map: {address:#x}")

        def write_registers(self, address, data):
            (value,) = struct.unpack("<I", data)
            reg, word = self._register(address)
            self.log.append(("write", reg.name + (f"[{word}]" if reg.bits == 64 else ""), value))
            self.words[address - BASE] = value
            if reg.name == "ap_ctrl" and value & reg.field("ap_start").mask:
                self._run()

        def read_registers(self, address, length):
            reg, word = self._register(address)
            value = self.words.get(address - BASE, 0)
            if reg.name == "ap_ctrl":
                value |= reg.field("ap_idle").mask
                self.words[0] = 0    # ap_done is cleared when read
            self.log.append(("read", reg.name, value))
            return struct.pack("<I", value)

        def argument(self, name):
            reg = REGMAP[name]
            value = sum(self.words.get(reg.offset + 4 * k, 0) << (32 * k) for k in range(reg.words))
            return value

        def _run(self):
            """The fake kernel: output byte k = input byte k + task, read from and written to
            the DDR (not the CPU's cache); done, no error."""
            task, images = self.argument("task"), self.argument("images")
            assert images == 1
            source, dest = self._ddr_at(self.argument("input")), self._ddr_at(self.argument("output"))
            dest[:len(source)] = (source + task).astype(np.uint8)[:len(dest)]
            self.words[0] = REGMAP["ap_ctrl"].field("ap_done").mask

        def _ddr_at(self, address):
            for bo, (base, memory) in self.ddr.items():
                if base == address:
                    return memory
            raise AssertionError(f"no buffer at {address:#x}")

        # buffers: the host's view (cache) and the DDR apart
        def allocate(self, shape, dtype, **kwargs):
            bo = len(self.ddr) + 1
            buffer = pynq.buffer.PynqBuffer(shape, dtype, device=self, bo=bo, coherent=False,
                                            device_address=self.next_address)
            buffer[:] = 0xAA     # garbage in the cache
            self.ddr[bo] = (self.next_address, np.full(buffer.nbytes, 0x55, np.uint8))
            self.cache[bo] = buffer
            self.next_address += 0x10_0000
            return buffer

        def flush(self, bo, offset, vaddr, length):
            self.log.append(("flush", bo, offset, length))
            self.ddr[bo][1][offset:offset + length] = np.asarray(self.cache[bo]).view(np.uint8)[
                offset:offset + length]

        def invalidate(self, bo, offset, vaddr, length):
            self.log.append(("invalidate", bo, offset, length))
            np.asarray(self.cache[bo]).view(np.uint8)[offset:offset + length] = \
                self.ddr[bo][1][offset:offset + length]

    @pytest.fixture(autouse=True)
    def no_board():
        """PYNQ's globals (the PL, interrupts) ask ``Device.active_device``: none here
        but the stand-in each test makes (restored after)."""
        before = pynq.Device.__dict__.get("_active_device")
        yield
        if before is None:
            if "_active_device" in pynq.Device.__dict__:
                del pynq.Device._active_device
        else:
            pynq.Device.active_device = before

    @pytest.fixture
    def deploy(tmp_path):
        bit = tmp_path / "moevit.bit"
        write_bit(bit)
        write_hwh(bit.with_suffix(".hwh"))
        return bit

    def fake_driver(backend, image, task):
        """The driver's sequence in short: arguments, start, poll ap_done (with a limit),
        read the error; returns (error code, output bytes, buffers)."""
        inp, out = backend.allocate("input", 256), backend.allocate("output", 256)
        inp.write(image)
        for name, buffer in (("input", inp), ("output", out)):
            reg = REGMAP[name]
            backend.write32(reg.offset, buffer.address & 0xFFFF_FFFF)
            backend.write32(reg.offset + 4, buffer.address >> 32)
        backend.write32(REGMAP["task"].offset, task)
        backend.write32(REGMAP["images"].offset, 1)
        backend.write32(REGMAP["ap_ctrl"].offset, REGMAP["ap_ctrl"].field("ap_start").mask)
        done = REGMAP["ap_ctrl"].field("ap_done").mask
        for _ in range(100):
            if backend.read32(REGMAP["ap_ctrl"].offset) & done:
                break
            backend.sleep(0)
        else:
            raise AssertionError("never done")
        error = backend.read32(REGMAP["error"].offset)
        return error, out.read(len(image)), (inp, out)

    # PYNQ finds the kernel's interrupt on pl_ps_irq0 (IRQ 121) but has no UIO device here.
    pytestmark = pytest.mark.filterwarnings(
        "ignore:Interrupt interrupt not created. Could not find UIO device.*IRQ number 121")

    def test_a_run_through_the_backend(deploy):
        board = Board()
        image = np.arange(200, dtype=np.uint8)
        with ZynqBackend(str(deploy), device=board) as backend:
            assert backend.clock_hz == 200e6 and backend.ip_name == "accel"
            assert type(backend.kernel).bindto == [VLNV]
            # PYNQ's parser of the handoff sees the kernel's interrupt on pl_ps_irq0
            assert backend.overlay.ip_dict["accel"]["interrupts"]["interrupt"]["raw_irq"] == 121
            error, output, (inp, out) = fake_driver(backend, image, task=3)
        assert error == 0
        np.testing.assert_array_equal(output, image + 3)
        assert inp.address == 0x6000_0000 and out.address == 0x6010_0000
        log = board.log
        assert log[0] == ("download",)
        flush = log.index(("flush", 1, 0, 200))
        start = log.index(("write", "ap_ctrl", 1))
        assert flush < start, "the input is flushed before the start"
        assert log[1:start] == [("flush", 1, 0, 200),
                                ("write", "input[0]", 0x6000_0000), ("write", "input[1]", 0),
                                ("write", "output[0]", 0x6010_0000), ("write", "output[1]", 0),
                                ("write", "task", 3), ("write", "images", 1)]
        assert log[start + 1:] == [("read", "ap_ctrl", 0b0110), ("read", "error", 0),
                                   ("invalidate", 2, 0, 200)]

    def test_without_flush_or_invalidate_the_bytes_are_stale(deploy):
        """The stand-in's DDR is apart from the cache: the test above can fail."""
        board = Board()
        with ZynqBackend(str(deploy), device=board) as backend:
            buffer = backend.allocate("input", 16)
            buffer.array[:] = 7                        # written, not flushed
            assert (board.ddr[1][1] == 0x55).all()
            board.ddr[1][1][:] = 9                     # the device writes
            assert (np.asarray(buffer.array) == 7).all()
            assert (buffer.read() == 9).all()          # read() invalidates

    def test_reset_downloads_again(deploy):
        board = Board()
        with ZynqBackend(str(deploy), device=board) as backend:
            backend.write32(REGMAP["task"].offset, 2)
            backend.reset()
            assert backend.read32(REGMAP["task"].offset) == 0
        assert [e for e in board.log if e[0] == "download"] == [("download",), ("download",)]

    def test_no_download(deploy):
        board = Board()
        with ZynqBackend(str(deploy), device=board, download=False):
            pass
        assert ("download",) not in board.log

    def test_bit_header(deploy):
        header = read_bit_header(deploy)
        assert header == {"design": "moevit_bd_wrapper", "build": "UserID=0XFFFFFFFF;Version=2023.2",
                          "part": "xczu9eg-ffvb1156-2-e", "date": "2026/12/01", "time": "23:00:00"}

    @pytest.mark.parametrize("spoil, message", [
        (lambda bit: bit.with_suffix(".hwh").unlink(),
         r"^No hardware handoff moevit\.hwh beside the bitstream .*moevit\.bit: PYNQ needs the "
         r"\.bit and the \.hwh side by side under one name$"),
        (lambda bit: bit.unlink(), r"^No bitstream .*moevit\.bit$"),
        (lambda bit: write_hwh(bit.with_suffix(".hwh"), part=("xczu7ev", "ffvc1156", "-2")),
         r"^The bitstream moevit\.bit is for part xczu9eg-ffvb1156-2-e but its hardware handoff "
         r"moevit\.hwh for xczu7evffvc1156-2: they come from different builds$"),
        (lambda bit: write_hwh(bit.with_suffix(".hwh"), name="other_bd"),
         r"^The bitstream moevit\.bit is of design 'moevit_bd_wrapper' but its hardware handoff "
         r"moevit\.hwh of 'other_bd': they come from different builds$"),
        (lambda bit: bit.with_suffix(".hwh").write_text("<EDKSYSTEM"),
         r"^Cannot read the hardware handoff .*moevit\.hwh: "),
        (lambda bit: bit.write_bytes(b"\xff" * 64),
         r"^The bitstream .*moevit\.bit has no Vivado \.bit header"),
    ])
    def test_bad_pair(deploy, spoil, message):
        spoil(deploy)
        board = Board()
        with pytest.raises(ConfigError, match=message):
            ZynqBackend(str(deploy), device=board)
        assert board.log == []      # nothing downloaded

    def test_not_a_bit_file(tmp_path):
        with pytest.raises(ConfigError, match=r"^The zynq backend takes a \.bit bitstream, not "
                                              r"'moevit\.xclbin'$"):
            ZynqBackend(str(tmp_path / "moevit.xclbin"), device=Board())

    def test_overlay_without_the_accelerator(deploy):
        write_hwh(deploy.with_suffix(".hwh"), vlnv="xilinx.com:ip:axi_dma:7.1")
        board = Board()
        with pytest.raises(DeviceError, match=r"^The overlay moevit\.bit has no moevit accelerator "
                                              r"\(moevit\.org:hls:moevit_top:1\.0\); it has: "
                                              r"accel \(xilinx\.com:ip:axi_dma:7\.1\), "
                                              r"zynq_ultra_ps_e_0 \(xilinx\.com:ip:zynq_ultra_ps_e:3\.5\)$"):
            ZynqBackend(str(deploy), device=board)
        assert board.log == []

    def test_buffer_bounds(deploy):
        with ZynqBackend(str(deploy), device=Board()) as backend:
            buffer = backend.allocate("weights", 32)
            with pytest.raises(DeviceError, match=r"^Bytes \[16, 48\) lie outside the buffer weights "
                                                  r"of 32 bytes$"):
                buffer.write(np.zeros(32, np.uint8), offset=16)
            buffer.write(np.arange(4, dtype=np.int32), offset=4)   # raw bytes of any dtype
            assert buffer.read(16, 4).view(np.int32).tolist() == [0, 1, 2, 3]
