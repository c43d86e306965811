"""The host driver: one piece of code for every device that holds the accelerator.

:class:`Accelerator` runs a compiled program (:mod:`moevit.hw.program.program`)
on a :class:`~moevit.host.backend.Backend` (a board through PYNQ or XRT, or the
co-simulated RTL). It needs numpy alone. Every register offset, bit field and
error code comes from the register map (the JSON ``moevit hw generate`` writes
beside the Verilog, or the built-in :data:`~moevit.hw.program.regmap.REGMAP` it
is written from); none is typed here.

A session::

    with open_backend("sim", program=program) as device:
        acc = Accelerator(device, "build/program")
        acc.load()                     # program and weights, once
        acc.task = "depth"             # one register write; nothing re-sent
        maps = acc.predict(images)     # int8 (N, classes, H, W), the golden model's maps
        acc.cycles, acc.busy           # the counters of the last start

A program compiled for a batch of B images (``moevit hw compile --batch B``) runs
B images through each run of its body: the ``images`` register counts those runs
(batches), and a start computes ``images * B`` images. The driver splits any
number of images into batches and pads the last one with zero images, whose
results it drops (they cost the device their time: the cycles per image it
reports count only the images asked for).

Every wait has a timeout, counted in the device's time (the seconds the driver
asked the backend to sleep): a run that never ends, or that the device drops
(idle with no ``ap_done``: a reset in its middle), raises a
:class:`~moevit.errors.DeviceError` with the status registers, then resets the
device and writes its registers again, so the next run works. A run that
stops with an error code raises the same error, naming the code's meaning; so
does a run during which ``ap_start`` was written again (another host drives the
device).
"""

import time
from pathlib import Path

import numpy as np

from moevit.errors import ConfigError, DeviceError, check_finite
from moevit.hw.program.interpreter import head_map, image_output
from moevit.hw.program.program import Program, hw_hash, read_program
from moevit.hw.program.regmap import REGMAP, RegisterMap, load

__all__ = ["Accelerator", "BUFFER_KINDS", "task_index"]

#: The buffers the driver allocates, each the argument register of the same name.
BUFFER_KINDS = ("program", "weights", "scratch", "input", "output")

# The registers and fields the driver uses; a map without one of them is not this top's.
_NEEDS = {"ap_ctrl": ("ap_start", "ap_done", "ap_idle"), "gie": ("enable",), "ier": ("done",),
          "isr": ("done",), "task": (), "images": (), "status": ("instruction", "image"),
          "error": ("code", "start_while_busy"), "cycles": (),
          **{kind: () for kind in BUFFER_KINDS}}


class Accelerator:
    """The accelerator on ``backend`` running ``program``.

    Parameters
    ----------
    backend : Backend
        An open device (:func:`moevit.host.backend.open_backend`).
    program : Program or path
        A compiled program, or the folder ``moevit hw compile`` wrote.
    regmap : RegisterMap or path, optional
        The register map, or its JSON file; default the built-in map.
    batch : int, optional
        Images per start (the input and output buffers hold this many): a multiple of
        the program's batch (default: the program's batch).
    timeout : float
        Seconds of device time a start may take before it counts as hung.

    Attributes
    ----------
    cycles : int
        Cycles of the last :meth:`predict` (its starts summed).
    busy : dict
        Per counted unit, the cycles it was busy in the last :meth:`predict`.
    bytes_written : int
        Bytes the driver has written into device buffers so far.

    Raises
    ------
    ConfigError
        A register map that lacks a register or field the driver needs, a
        program compiled for another hardware than the device's.
    """

    def __init__(self, backend, program, regmap=None, *, batch: int = None,
                 timeout: float = 1.0):
        self.backend = backend
        self.program = program if isinstance(program, Program) else read_program(program)
        self.regmap = _regmap(regmap)
        batch = self.program.batch if batch is None else batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"Batch must be a positive number of images, not {batch!r}")
        if batch % self.program.batch:
            raise ConfigError(f"Batch of {batch} images per start is not a multiple of the "
                              f"program's batch of {self.program.batch} (moevit hw compile "
                              f"--batch): each run of its body computes that many")
        if not timeout > 0:
            raise ConfigError(f"Timeout must be a positive number of seconds, not {timeout!r}")
        self.batch, self.timeout = batch, float(timeout)
        self._check_hardware()
        bounds = self.program.layout.boundaries()
        self._input_pitch = bounds["output_at"] - bounds["input_at"]
        self._output_pitch = bounds["output_end"] - bounds["output_at"]
        self._scratch_bytes = bounds["input_at"] - bounds["scratch_at"]
        self.buffers = {}
        self._task = 0
        self.cycles, self.busy, self.bytes_written = 0, {}, 0

    # Checks ---------------------------------------------------------------------------
    def _check_hardware(self):
        for name, fields in _NEEDS.items():
            try:
                register = self.regmap[name]
                for field in fields:
                    register.field(field)
            except KeyError as error:
                raise ConfigError(f"The register map is not this accelerator's: "
                                  f"{error.args[0]}") from None
        device_hw = getattr(self.backend, "hw", None)
        if device_hw is not None and hw_hash(device_hw) != hw_hash(self.program.hw):
            raise ConfigError(
                f"The program was compiled for hardware {self.program.hw.name!r} "
                f"(HwConfig hash {hw_hash(self.program.hw):016x}); the device holds "
                f"{device_hw.name!r} ({hw_hash(device_hw):016x}): compile it for this device")

    def task_index(self, task) -> int:
        """The index of ``task`` (a name or an index) among the program's tasks."""
        return task_index(self.program, task)

    def _images(self, images) -> np.ndarray:
        """``images`` as an int8 (N, C, H, W) array, every rule checked."""
        shape = tuple(self.program.image_shape)
        if hasattr(images, "detach"):     # a torch tensor; torch is not imported here
            images = images.detach().cpu().numpy()
        images = np.asarray(images) if not isinstance(images, (list, tuple)) else \
            np.stack([np.asarray(i) for i in images]) if len(images) else np.zeros((0, *shape))
        if images.shape == shape:
            images = images[None]
        if images.ndim != len(shape) + 1 or images.shape[1:] != shape:
            raise ConfigError(f"Images of shape {images.shape} do not fit the program's input: "
                              f"expected (N, {', '.join(map(str, shape))})")
        if not len(images):
            raise ConfigError("No image to run")
        if np.issubdtype(images.dtype, np.floating):
            check_finite("Images", images)
        if images.dtype != np.int8:
            raise ConfigError(f"Images must be int8 (the quantized input), not {images.dtype}; "
                              f"quantize float images first (moevit.Flow does)")
        return images

    # Registers --------------------------------------------------------------------------
    def _write(self, name, value):
        register = self.regmap[name]
        for k in range(register.words):
            self.backend.write32(register.offset + 4 * k, (int(value) >> (32 * k)) & 0xFFFFFFFF)

    def _read(self, name) -> int:
        register = self.regmap[name]
        return sum(self.backend.read32(register.offset + 4 * k) << (32 * k)
                   for k in range(register.words))

    def _field(self, register, name, value) -> int:
        field = self.regmap[register].field(name)
        return (value & field.mask) >> field.bit

    def registers(self) -> dict:
        """Every register that reading leaves unchanged (none with a clear-on-read field),
        by name: the dump a :class:`DeviceError` carries."""
        return {r.name: self._read(r.name) for r in self.regmap
                if not any(f.access == "cor" for f in r.fields)}

    # Loading ----------------------------------------------------------------------------
    def load(self):
        """Allocate the buffers, write the program and the weights (once), and the registers.

        Returns ``self``, so ``Accelerator(...).load()`` reads as one step.
        """
        runs = self.batch // self.program.batch
        sizes = {"program": len(self.program.encode()), "weights": len(self.program.weights),
                 "scratch": self._scratch_bytes, "input": runs * self._input_pitch,
                 "output": runs * self._output_pitch}
        self.buffers = {kind: self.backend.allocate(kind, max(sizes[kind], 1))
                        for kind in BUFFER_KINDS}
        self._send("program", self.program.encode())
        self._send("weights", self.program.weights)
        self._configure()
        return self

    def _send(self, kind, data):
        self.buffers[kind].write(data)
        self.bytes_written += memoryview(data).nbytes

    def _configure(self):
        """The registers a reset clears: buffer addresses, task, the done interrupt."""
        for kind in BUFFER_KINDS:
            self._write(kind, self.buffers[kind].address)
        self._write("task", self._task)
        self._write("ier", self.regmap["ier"].field("done").mask)
        self._write("gie", self.regmap["gie"].field("enable").mask)

    def _loaded(self):
        if not self.buffers:
            raise ConfigError("The accelerator is not loaded: call load() first")

    @property
    def task(self) -> int:
        """The task the next run computes (an index; set it with a name or an index)."""
        return self._task

    @task.setter
    def task(self, task):
        self._task = self.task_index(task)
        if self.buffers:       # else load() writes it
            self._write("task", self._task)

    # Running ----------------------------------------------------------------------------
    def predict(self, images, task=None) -> np.ndarray:
        """The prediction maps of ``images`` for ``task`` (default: the current one).

        ``images``: int8, (N, C, H, W) or one (C, H, W) image, as
        :func:`moevit.model.integer.golden.quantize_image` makes them. Returns
        int8 (N, classes, H, W): the golden model's ``heads.{t}.map`` of each image.
        Runs ``batch`` images per start, the last batch of the program padded with zero
        images (their results dropped).

        Raises
        ------
        ConfigError, NonFiniteError
            Images of another shape or dtype, a NaN, an unknown task (before
            anything runs).
        DeviceError
            A run stopped with an error code or did not end within the timeout.
        """
        self._loaded()
        images = self._images(images)
        if task is not None and self.task_index(task) != self._task:
            self.task = task
        per_run = self.program.batch
        self.cycles, self.busy = 0, {unit: 0 for unit in self.regmap.units}
        maps = []
        for first in range(0, len(images), self.batch):
            chunk = images[first:first + self.batch]
            runs = -(-len(chunk) // per_run)
            padded = np.zeros((runs * per_run, *chunk.shape[1:]), np.int8)
            padded[:len(chunk)] = chunk
            data = np.zeros((runs, self._input_pitch), np.uint8)
            data[:, :padded[0].nbytes * per_run] = padded.reshape(runs, -1).view(np.uint8)
            self._send("input", data)
            self._run(runs)
            out = self.buffers["output"].read(runs * self._output_pitch)
            out = out.reshape(runs, self._output_pitch)
            for k in range(len(chunk)):
                head = image_output(self.program, out[k // per_run], self._task, k % per_run)
                maps.append(head_map(self.program, head, self._task))
        return np.stack(maps)

    def _run(self, count):
        """One start for ``count`` runs of the body (batches of the program's images); its
        counters added to ``cycles`` and ``busy``."""
        self._write("images", count)
        self._write("ap_ctrl", self.regmap["ap_ctrl"].field("ap_start").mask)
        ctrl = self._wait()
        error = self._read("error")
        code = self._field("error", "code", error)
        if code:
            names = {c: (name, doc) for name, (c, doc) in self.regmap.error_codes.items()}
            name, doc = names.get(code, ("unknown", "a code the register map does not name"))
            status = self._read("status")
            raise DeviceError(
                f"The accelerator stopped with error {code} ({name}: {doc}) at instruction "
                f"{self._field('status', 'instruction', status)} of image "
                f"{self._field('status', 'image', status)}", {"ap_ctrl": ctrl, **self.registers()})
        if self._field("error", "start_while_busy", error):
            # Someone else drives this device: its registers (task, buffers) may have
            # changed under the run, so its result is not one to return.
            raise DeviceError("ap_start was written again while the run was busy "
                              "(start_while_busy): another host drives this accelerator; the "
                              "run's result is not returned", {"ap_ctrl": ctrl, **self.registers()})
        self.cycles += self._read("cycles")
        for unit in self.busy:
            self.busy[unit] += self._read(f"busy_{unit}")

    def _wait(self) -> int:
        """Poll ``ap_done`` until it rises, sleeping ever longer in between, up to ``timeout``;
        the control register as it read then."""
        field = self.regmap["ap_ctrl"].field
        done, start, idle = (field(name).mask for name in ("ap_done", "ap_start", "ap_idle"))
        offset = self.regmap["ap_ctrl"].offset
        waited, pause = 0.0, 1e-6
        while not (ctrl := self.backend.read32(offset)) & done:
            # ap_start holds until the run's done: idle without either, the run was lost.
            lost = ctrl & idle and not ctrl & start
            if lost or waited >= self.timeout:
                registers = {"ap_ctrl": ctrl, **self.registers()}
                self.backend.reset()
                self._configure()
                why = ("went idle without finishing the run (reset in the middle of it)" if lost
                       else f"did not finish within {self.timeout:g} s of device time")
                raise DeviceError(f"The accelerator {why}; it was reset", registers)
            self.backend.sleep(pause)
            waited += pause
            pause = min(2 * pause, 1e-3)
        self._write("isr", self._read("isr"))   # toggle on write: clears it
        return ctrl

    def throughput_test(self, count: int = 8, images=None, seed: int = 0) -> dict:
        """Run ``count`` images (``images`` repeated, or random int8 ones from ``seed``) and
        time them: device figures from the cycle counter at the backend's clock, and
        the host's wall time.

        Returns a dict: ``images``, ``batch``, ``cycles``, ``cycles_per_image``,
        ``clock_hz``, ``latency_s`` (one image), ``images_per_s`` (the device's),
        ``bytes_in``, ``bytes_out`` (host <-> device), ``wall_s``, ``wall_images_per_s``.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"Image count must be a positive integer, not {count!r}")
        if images is None:
            rng = np.random.default_rng(seed)
            images = rng.integers(-128, 128, (count, *self.program.image_shape), dtype=np.int8)
        else:
            images = self._images(images)
            images = images[np.arange(count) % len(images)]
        start = time.perf_counter()
        self.predict(images)
        wall = time.perf_counter() - start
        per_image = self.cycles / count
        clock = float(self.backend.clock_hz)
        out_bytes = int(np.prod(self.program.tasks[self._task]["output_shape"]))
        return {"images": count, "batch": self.batch, "task": self.program.tasks[self._task]["name"],
                "cycles": self.cycles, "cycles_per_image": per_image, "clock_hz": clock,
                "latency_s": per_image / clock, "images_per_s": clock / per_image,
                "bytes_in": count * images[0].nbytes, "bytes_out": count * out_bytes,
                "wall_s": wall, "wall_images_per_s": count / wall}


def task_index(program, task) -> int:
    """The index of ``task`` (a name, an index, or an index as text) among ``program``'s
    tasks; a :class:`ConfigError` naming them for any other."""
    names = [t["name"] for t in program.tasks]
    if isinstance(task, str) and task in names:
        return names.index(task)
    if isinstance(task, str) and task.isdigit():
        task = int(task)
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool) \
            and 0 <= task < len(names):
        return int(task)
    raise ConfigError(f"Unknown task {task!r}; the program's tasks are "
                      + ", ".join(f"{k} {name!r}" for k, name in enumerate(names)))


def _regmap(regmap) -> RegisterMap:
    if regmap is None:
        return REGMAP
    if isinstance(regmap, RegisterMap):
        return regmap
    if isinstance(regmap, (str, Path)):
        return load(regmap)
    raise ConfigError(f"Register map must be a RegisterMap or the path of its JSON, "
                      f"not {type(regmap).__name__}")
