"""The driver against a small fake device: register semantics from the register map's JSON,
the program run by the instruction-level interpreter on memory assembled from the device's
buffers (so the driver's packing and unpacking meet the golden model, bit for bit), done,
error codes, a device that never finishes, the reset path, the bytes a task switch sends,
and bad images — each before anything runs."""

import subprocess
import sys

import numpy as np
import pytest

from moevit.errors import ConfigError, DeviceError, NonFiniteError
from moevit.host.backend import Backend, Buffer
from moevit.host.driver import Accelerator
from moevit.hw.program import regmap as regmaps
from moevit.hw.program.program import HEADER_FIELDS, HEADER_WORDS


class FakeBuffer(Buffer):
    def __init__(self, device, name, address, nbytes):
        self.device, self.name, self.address, self.nbytes = device, name, address, nbytes
        self.data = np.zeros(nbytes, np.uint8)

    def write(self, data, offset=0):
        data = np.frombuffer(bytes(memoryview(data).cast("B")), np.uint8)
        assert offset + len(data) <= self.nbytes, f"{self.name}: write past the end"
        self.data[offset:offset + len(data)] = data
        self.device.bytes_written += len(data)

    def read(self, nbytes=None, offset=0):
        nbytes = self.nbytes - offset if nbytes is None else nbytes
        return self.data[offset:offset + nbytes].copy()


class FakeDevice(Backend):
    """The top's control port as the register map describes it; a start runs the program
    (the interpreter) on memory made of the buffers, ``run_seconds`` of device time later.

    ``hang``: a start never ends; ``error``: a start ends with this error code."""

    name, clock_hz = "fake", 250e6

    def __init__(self, regmap, hw=None, *, run_seconds=2e-5, cycles_per_image=1000):
        self.map, self.hw = regmap, hw
        self.run_seconds, self.cycles_per_image = run_seconds, cycles_per_image
        self.hang, self.error = False, 0
        self.buffers, self.next_address = {}, 0x1000_0000
        self.writes, self.bytes_written, self.resets, self.starts = [], 0, 0, 0
        self.reset()
        self.resets = 0

    def _reg(self, offset):
        for reg in self.map:
            if reg.offset <= offset < reg.offset + reg.bits // 8:
                return reg, (offset - reg.offset) // 4
        return None, 0

    def value(self, name):
        reg = self.map[name]
        return sum(self.words.get(reg.offset + 4 * k, 0) << (32 * k) for k in range(reg.words))

    def set(self, name, value):
        reg = self.map[name]
        for k in range(reg.words):
            self.words[reg.offset + 4 * k] = (value >> (32 * k)) & 0xFFFFFFFF

    def field(self, register, name):
        return self.map[register].field(name).mask

    def read32(self, offset):
        reg, _ = self._reg(offset)
        word = self.words.get(offset, 0)
        if reg is not None and reg.name == "ap_ctrl":   # cor fields clear when read
            self.words[offset] = word & ~(self.field("ap_ctrl", "ap_done")
                                          | self.field("ap_ctrl", "ap_ready"))
        return word

    def write32(self, offset, value):
        self.writes.append((offset, value))
        reg, _ = self._reg(offset)
        if reg is None:
            return
        if reg.name == "ap_ctrl":
            if value & self.field("ap_ctrl", "ap_start") and self.remaining is None:
                self.starts += 1
                self.remaining = float("inf") if self.hang else self.run_seconds
                self.words[offset] = self.field("ap_ctrl", "ap_start")
        elif reg.name == "isr":
            self.words[offset] = self.words.get(offset, 0) ^ value
        elif all(f.access == "rw" for f in reg.fields):
            self.words[offset] = value

    def allocate(self, name, nbytes):
        buffer = FakeBuffer(self, name, self.next_address, nbytes)
        self.next_address += -(-nbytes // 4096) * 4096
        self.buffers[name] = buffer
        return buffer

    def sleep(self, seconds):
        if self.remaining is not None:
            self.remaining -= seconds
            if self.remaining <= 0:
                self._finish()

    def reset(self):
        self.resets += 1
        self.words, self.remaining = {}, None
        self.set("ap_ctrl", self.field("ap_ctrl", "ap_idle"))

    def _buffer(self, kind):
        address = self.value(kind)
        for buffer in self.buffers.values():
            if buffer.address == address:
                return buffer
        raise AssertionError(f"{kind} register 0x{address:x} is no buffer's address")

    def _finish(self):
        """Run the program for each image, as the top does, then done and the interrupt."""
        from moevit.hw.program.interpreter import execute

        self.remaining = None
        task, count = self.value("task"), self.value("images")
        program = self._buffer("program").data
        header = dict(zip(HEADER_FIELDS, np.frombuffer(program[:4 * HEADER_WORDS], "<u4")))
        code = self.error
        if not code and task >= header["tasks"]:
            code = self.map.error_codes["task"][0]
        if not code:
            memory = np.zeros(header["memory_bytes"], np.uint8)
            weights = self._buffer("weights").data
            memory[:len(weights)] = weights
            memory[header["output_end"]:header["output_end"] + len(program)] = program
            pitch_in = header["output_at"] - header["input_at"]
            pitch_out = header["output_end"] - header["output_at"]
            for n in range(count):
                memory[header["input_at"]:header["output_at"]] = \
                    self._buffer("input").data[n * pitch_in:(n + 1) * pitch_in]
                execute(memory, self.hw, int(task), int(header["output_end"]))
                self._buffer("output").data[n * pitch_out:(n + 1) * pitch_out] = \
                    memory[header["output_at"]:header["output_end"]]
        self.set("error", code)
        self.set("status", 3 if code else 0)
        self.set("cycles", self.cycles_per_image * count)
        for k, unit in enumerate(self.map.units):
            self.set(f"busy_{unit}", (k + 1) * count)
        self.set("ap_ctrl", self.field("ap_ctrl", "ap_done") | self.field("ap_ctrl", "ap_idle"))
        if self.value("ier") & self.field("ier", "done"):
            self.set("isr", self.value("isr") | self.field("isr", "done"))


@pytest.fixture(scope="module")
def tiny():
    from moevit.sim.units import tiny_compiled

    return tiny_compiled(3, seed=5)


@pytest.fixture(scope="module")
def regmap_json(tmp_path_factory):
    """The register map as the generator writes it; the fake and the driver read this file."""
    json_path, _ = regmaps.write(tmp_path_factory.mktemp("regmap"))
    return json_path


def device_and_driver(tiny, regmap_json, **options):
    _, program, _ = tiny
    device = FakeDevice(regmaps.load(regmap_json), program.hw)
    return device, Accelerator(device, program, regmap_json, **options).load()


def test_predict_equals_the_golden_model(tiny, regmap_json):
    """Three images two per start, each task: the maps are the golden model's, bit for bit."""
    from moevit.model.integer import golden

    qmodel, program, images = tiny
    device, acc = device_and_driver(tiny, regmap_json, batch=2)
    for task in ("semseg", "depth"):
        maps = acc.predict(images, task)
        assert maps.dtype == np.int8 and len(maps) == 3
        for image, got in zip(images, maps):
            want = golden.run(qmodel, image, task, record=False).output
            assert got.shape == want.shape and np.array_equal(got, want)
        assert acc.cycles == 3 * device.cycles_per_image
        assert acc.busy == {u: 3 * (k + 1) for k, u in enumerate(device.map.units)}
    assert device.starts == 4   # two starts per task: 2 + 1 images


def test_a_task_switch_sends_one_register_write_and_no_byte(tiny, regmap_json):
    _, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json)
    acc.predict(images[:1])
    bytes_before, writes_before = device.bytes_written, len(device.writes)
    acc.task = "depth"
    assert device.bytes_written == bytes_before, "a task switch sent buffer bytes"
    assert device.writes[writes_before:] == [(device.map["task"].offset, 1)]
    assert acc.task == 1 and acc.bytes_written == device.bytes_written
    # The next run sends its image only.
    acc.predict(images[:1])
    assert device.bytes_written - bytes_before == acc._input_pitch


def test_load_writes_program_and_weights_once_and_every_address(tiny, regmap_json):
    _, program, _ = tiny
    device, acc = device_and_driver(tiny, regmap_json)
    assert np.array_equal(device.buffers["weights"].data,
                          np.frombuffer(program.weights, np.uint8))
    assert device.bytes_written == len(program.encode()) + len(program.weights)
    for kind, buffer in device.buffers.items():
        assert device.value(kind) == buffer.address
    assert device.value("gie") and device.value("ier")


def test_an_error_code_is_a_device_error_naming_it_and_the_next_run_works(tiny, regmap_json):
    qmodel, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json)
    device.error = regmaps.ERROR_CODES["opcode"][0]
    with pytest.raises(DeviceError, match=r"^The accelerator stopped with error 1 \(opcode: an "
                                          r"instruction with an unknown opcode\) at instruction 3 "
                                          r"of image 0 \[.*error=0x1.*\]$") as caught:
        acc.predict(images[:1])
    assert caught.value.registers["error"] == 1 and "cycles" in caught.value.registers
    device.error = 0
    from moevit.model.integer import golden

    assert np.array_equal(acc.predict(images[:1])[0],
                          golden.run(qmodel, images[0], 0, record=False).output)


def test_a_device_that_never_finishes_times_out_is_reset_and_works_again(tiny, regmap_json):
    from moevit.model.integer import golden

    qmodel, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json, timeout=1e-3)
    device.hang = True
    with pytest.raises(DeviceError, match=r"^The accelerator did not finish within 0\.001 s of "
                                          r"device time; it was reset \[ap_ctrl=0x1, .*\]$"):
        acc.predict(images[:1])
    assert device.resets == 1
    # The reset cleared the registers; the driver wrote them again.
    assert all(device.value(kind) == buffer.address for kind, buffer in device.buffers.items())
    device.hang = False
    assert np.array_equal(acc.predict(images[:1])[0],
                          golden.run(qmodel, images[0], 0, record=False).output)
    assert device.starts == 2 and device.remaining is None


def test_a_run_lost_to_a_reset_is_named_at_once_and_the_next_run_works(tiny, regmap_json):
    """A reset from outside in the middle of a run (idle, neither ap_start nor ap_done): the
    driver says so at its next poll, not at the timeout, and writes its registers again."""
    from moevit.model.integer import golden

    qmodel, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json, timeout=1.0)
    device.hang = True
    sleep = device.sleep
    device.sleep = lambda seconds: device.reset()    # a reset while the driver waits
    with pytest.raises(DeviceError, match=r"^The accelerator went idle without finishing the run "
                                          r"\(reset in the middle of it\); it was reset "
                                          r"\[ap_ctrl=0x4, .*\]$"):
        acc.predict(images[:1])
    assert device.resets == 2     # the one from outside and the driver's
    assert all(device.value(kind) == buffer.address for kind, buffer in device.buffers.items())
    device.hang, device.sleep = False, sleep
    assert np.array_equal(acc.predict(images[:1])[0],
                          golden.run(qmodel, images[0], 0, record=False).output)


def test_a_start_while_busy_is_a_device_error_and_the_next_run_works(tiny, regmap_json):
    """Another host wrote ap_start during the run: the run's result is not returned."""
    from moevit.model.integer import golden

    qmodel, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json)
    finish = device._finish

    def finish_flagged():          # the control block's flag, as the RTL sets it
        finish()
        device.set("error", device.field("error", "start_while_busy"))

    device._finish = finish_flagged
    with pytest.raises(DeviceError, match=r"^ap_start was written again while the run was busy "
                                          r"\(start_while_busy\): another host drives this "
                                          r"accelerator; the run's result is not returned "
                                          r"\[.*error=0x100.*\]$"):
        acc.predict(images[:1])
    device._finish = finish
    assert np.array_equal(acc.predict(images[:1])[0],
                          golden.run(qmodel, images[0], 0, record=False).output)


@pytest.mark.parametrize("bad, message, error", [
    (lambda x: x[:, :, :5], r"^Images of shape \(1, 3, 5, 64\) do not fit the program's input: "
                            r"expected \(N, 3, 64, 64\)$", ConfigError),
    (lambda x: x.astype(np.int16), r"^Images must be int8 \(the quantized input\), not int16", ConfigError),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x.astype(np.float32)),
     r"^Images: found nan at index \(0, 0, 0, 7\)$", NonFiniteError),
    (lambda x: x[:0], r"^No image to run$", ConfigError),
])
def test_a_bad_image_is_refused_before_anything_runs(tiny, regmap_json, bad, message, error):
    _, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json)
    writes, sent = len(device.writes), device.bytes_written
    with pytest.raises(error, match=message):
        acc.predict(bad(images[:1]))
    assert len(device.writes) == writes and device.bytes_written == sent


def test_an_unknown_task_is_refused_before_anything_runs(tiny, regmap_json):
    _, _, images = tiny
    device, acc = device_and_driver(tiny, regmap_json)
    writes = len(device.writes)
    for task in (2, "normals", -1, True):
        with pytest.raises(ConfigError, match=r"^Unknown task .*; the program's tasks are "
                                              r"0 'semseg', 1 'depth'$"):
            acc.predict(images[:1], task)
    assert len(device.writes) == writes


def test_a_program_for_other_hardware_is_refused_before_start(tiny, regmap_json):
    import dataclasses

    _, program, _ = tiny
    other = dataclasses.replace(program.hw, name="other", rows=2)
    device = FakeDevice(regmaps.load(regmap_json), other)
    with pytest.raises(ConfigError, match=r"^The program was compiled for hardware 'tiny' "
                                          r"\(HwConfig hash [0-9a-f]{16}\); the device holds "
                                          r"'other' \([0-9a-f]{16}\): compile it for this device$"):
        Accelerator(device, program, regmap_json)
    assert not device.writes and not device.buffers


def test_a_register_map_without_a_needed_register_is_refused(tiny, regmap_json):
    _, program, _ = tiny
    full = regmaps.load(regmap_json)
    partial = regmaps.RegisterMap([r for r in full if r.name != "scratch"])
    with pytest.raises(ConfigError, match=r"^The register map is not this accelerator's: "
                                          r"No register 'scratch'"):
        Accelerator(FakeDevice(full, program.hw), program, partial)


def test_throughput_figures(tiny, regmap_json):
    _, program, images = tiny
    device, acc = device_and_driver(tiny, regmap_json, batch=2)
    figures = acc.throughput_test(4, images)
    assert figures["cycles"] == 4 * device.cycles_per_image
    assert figures["cycles_per_image"] == device.cycles_per_image
    assert figures["latency_s"] == pytest.approx(1000 / 250e6)
    assert figures["images_per_s"] == pytest.approx(250e6 / 1000)
    assert figures["bytes_in"] == 4 * images[0].nbytes
    assert figures["bytes_out"] == 4 * int(np.prod(program.tasks[0]["output_shape"]))
    assert figures["wall_s"] > 0 and device.starts == 2


def test_the_driver_imports_numpy_alone():
    code = ("import sys, moevit.host.driver; "
            "print(sorted(m for m in ('torch', 'amaranth', 'cocotb', 'matplotlib', 'onnx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_batched_program_runs_batches_and_pads_the_last(tiny, regmap_json):
    """A program of batch 2: three images are two runs of its body (the last padded with a
    zero image, dropped), the images register counts the runs; each map the golden
    model's. Images per start must be a multiple of the program's batch."""
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden

    qmodel, program, images = tiny
    batched = compile_program(qmodel, program.hw.replace(max_tokens=256), batch=2)
    device = FakeDevice(regmaps.load(regmap_json), batched.hw)
    for per_start, starts in ((2, 2), (4, 1)):
        device.starts = 0
        acc = Accelerator(device, batched, regmap_json, batch=per_start).load()
        maps = acc.predict(images, "semseg")
        for image, got in zip(images, maps):
            assert np.array_equal(got, golden.run(qmodel, image, 0, record=False).output)
        assert len(maps) == 3 and device.starts == starts
        assert device.value("images") == (1 if per_start == 2 else 2)
        assert acc.cycles == 2 * device.cycles_per_image      # two runs, whatever the starts
    assert Accelerator(device, batched, regmap_json).batch == 2     # the program's, by default
    with pytest.raises(ConfigError, match=r"^Batch of 3 images per start is not a multiple of "
                                          r"the program's batch of 2 \(moevit hw compile "
                                          r"--batch\): each run of its body computes that many$"):
        Accelerator(device, batched, regmap_json, batch=3)
