"""The whole flow on one object: a model, its integer model, its program, and the devices that run it.

::

    import moevit

    flow = moevit.Flow.from_checkpoint("build/demo/tiny/model.pt")   # or Flow.tiny()
    flow.quantize(calibration_images)          # int8, the golden model's
    flow.compile(hw="tiny")                    # or board="zcu102"
    flow.build("zcu102", dry_run=True)         # the bitstream's inputs, checked
    golden = flow.predict(images, "depth")                 # the integer golden model
    rtl = flow.predict(images, "depth", backend="sim")     # the simulated accelerator
    assert (golden == rtl).all()                           # bit for bit
    print(flow.summary())                      # the figures of each step
    flow.close()

Each step calls the module that owns it (quantization, the compiler, the
golden model, the host driver); the flow only keeps what they made and the
figures they gave. ``predict`` returns the golden model's int8 prediction maps
``heads.{t}.map`` (N, classes, H, W) on every backend.
"""

import time

import numpy as np

from moevit.errors import ConfigError, ToolNotFoundError, check_finite

__all__ = ["Flow", "BACKENDS"]

#: Where ``predict`` runs: the golden model, or a device through the host driver.
BACKENDS = ("golden", "sim", "zynq", "alveo")


class Flow:
    """A model through the flow: quantize, compile, predict on a backend, build a bitstream.

    Parameters
    ----------
    model : MoEViT, optional
        The float model (needed by :meth:`quantize`).
    qmodel : QuantizedModel, optional
        An integer model already made.
    program : Program, optional
        A program already compiled (for ``qmodel``).

    Attributes
    ----------
    figures : dict
        Step name -> its figures (seconds, sizes, cycles), as :meth:`summary` prints.
    """

    def __init__(self, model=None, *, qmodel=None, program=None):
        if model is None and qmodel is None:
            raise ConfigError("A flow starts from a float model or a quantized model")
        self.model, self.qmodel, self.program = model, qmodel, program
        self.config = (qmodel or model).config
        self.figures = {}
        self._accelerators = {}

    @classmethod
    def from_checkpoint(cls, path) -> "Flow":
        """The float model of a checkpoint (``moevit train``, the demo's ``model.pt``)."""
        from moevit.model.checkpoint import load_checkpoint

        model, _ = load_checkpoint(path)
        return cls(model)

    @classmethod
    def from_quantized(cls, path) -> "Flow":
        """A quantized-model file (``moevit quantize``)."""
        from moevit.model.integer.quantize import load_quantized

        return cls(qmodel=load_quantized(path))

    @classmethod
    def tiny(cls) -> "Flow":
        """The built-in ``tiny``, trained briefly and quantized (cached under ``build/``; the
        first call trains for a minute or so)."""
        from moevit.sim.units import tiny_quantized

        return cls(qmodel=tiny_quantized(trained=True)[0])

    # Steps ----------------------------------------------------------------------------
    def quantize(self, images):
        """Calibrate the float model on ``images`` (N, C, H, W) and quantize it."""
        from moevit.model.integer.quantize import quantize

        if self.model is None:
            raise ConfigError("This flow holds no float model to quantize (it started from a "
                              "quantized one)")
        start = time.perf_counter()
        self.qmodel = quantize(self.model, _tensor(images))
        self.program = None
        self._close_devices()
        self.figures["quantize"] = {"calibration_images": len(images),
                                    "seconds": time.perf_counter() - start}
        return self.qmodel

    def compile(self, hw=None, *, board=None):
        """The program for ``hw`` (a HwConfig or its name; default the model's), or for
        ``board``: the model's default HwConfig, the one the bitstream build of that board
        synthesises (its kernel clock capped at the board's)."""
        from moevit.hw.config import HwConfig, get_hw_config
        from moevit.hw.program.compiler import compile_program

        self._need_qmodel()
        if hw is not None and board is not None:
            raise ConfigError("Compile for a HwConfig or for a board, not both")
        figures = {}
        if board is not None:
            from moevit.hw.boards import get_board

            board = get_board(board) if isinstance(board, str) else board
            hw = HwConfig.for_model(self.config)
            figures = {"board": board.name, "clock_mhz": min(hw.clock_mhz, board.clock_mhz)}
        elif isinstance(hw, str):
            hw = get_hw_config(hw)
        start = time.perf_counter()
        self.program = compile_program(self.qmodel, hw)
        self._close_devices()
        self.figures["compile"] = {
            "hw": self.program.hw.name, **figures, "instructions": len(self.program.instructions),
            "program_bytes": len(self.program.encode()), "weights_bytes": len(self.program.weights),
            "memory_bytes": self.program.layout.size, "seconds": time.perf_counter() - start}
        return self.program

    def quantize_images(self, images) -> np.ndarray:
        """Float images (normalised as the float model's input) as the int8 input; int8
        images as they are."""
        from moevit.model.integer import golden

        self._need_qmodel()
        images = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        if images.dtype == np.int8:
            return images
        if not np.issubdtype(images.dtype, np.floating):
            raise ConfigError(f"Images must be float (normalised) or int8, not {images.dtype}")
        check_finite("Images", images)
        return golden.quantize_image(images, self.qmodel.scale("input"))

    def predict(self, images, task, backend: str = "golden", **options) -> np.ndarray:
        """The int8 prediction maps (N, classes, H, W) of ``images`` for ``task`` on
        ``backend`` (see :data:`BACKENDS`); ``options`` open the device the first time
        (e.g. ``simulator=`` for ``sim``, ``bitstream=`` for ``zynq``). The same maps,
        bit for bit, on every backend."""
        from moevit.model.integer import golden

        if backend not in BACKENDS:
            raise ConfigError(f"Unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
        self._need_qmodel()
        task = self.config.task_index(task)
        images = self.quantize_images(images)
        if images.ndim == 3:
            images = images[None]
        start = time.perf_counter()
        if backend == "golden":
            maps = np.stack([golden.run(self.qmodel, image, task, record=False).output
                             for image in images])
            figures = {}
        else:
            acc = self.accelerator(backend, **options)
            maps = acc.predict(images, task)
            per_image = acc.cycles / len(images)
            figures = {"cycles": acc.cycles, "cycles_per_image": per_image,
                       "latency_s": per_image / acc.backend.clock_hz}
        self.figures[f"predict {backend}"] = {
            "task": self.config.tasks[task].name, "images": len(images),
            "seconds": time.perf_counter() - start, **figures}
        return maps

    def accelerator(self, backend: str = "sim", **options):
        """The driver (:class:`~moevit.host.driver.Accelerator`) on ``backend``, loaded with the
        program; opened the first time, then reused (the weights stay on the device)."""
        from moevit.host.backend import open_backend
        from moevit.host.driver import Accelerator

        if backend not in self._accelerators:
            if self.program is None:
                self.compile()
            if backend == "sim":
                options.setdefault("program", self.program)
            device = open_backend(backend, **options)
            try:
                self._accelerators[backend] = Accelerator(device, self.program).load()
            except Exception:
                device.close()
                raise
        return self._accelerators[backend]

    def build(self, board, *, dry_run: bool = False, folder=None):
        """The bitstream build for ``board`` through :mod:`moevit.host.bitstream`: its inputs
        (the top's Verilog, the IP packaging and block design or v++ link scripts), then
        with ``dry_run`` their checks in tclsh (a list of checks), else the AMD tools (the
        report row). The build synthesises the model's default HwConfig, so a program
        compiled for another cannot run on its bitstream: a ConfigError."""
        from moevit.hw.config import HwConfig
        from moevit.hw.program.program import hw_hash

        from moevit.host import bitstream

        built = HwConfig.for_model(self.config)
        if self.program is not None and hw_hash(self.program.hw) != hw_hash(built):
            raise ConfigError(f"The bitstream build synthesises the default HwConfig of "
                              f"{self.config.name!r}; this flow's program is for "
                              f"{self.program.hw.name!r}: compile(board=...) first")
        start = time.perf_counter()
        inputs = bitstream.write_inputs(board, self.config.name, folder)
        result = bitstream.dry_run(inputs) if dry_run else bitstream.run_build(inputs)
        figures = {"board": inputs.board.name, "folder": str(inputs.folder),
                   "files": len(inputs.files)}
        if dry_run:
            figures["checks_passed"] = f"{sum(c.ok for c in result)} of {len(result)}"
        self.figures["build"] = {**figures, "seconds": time.perf_counter() - start}
        return result

    # Figures and the end ------------------------------------------------------------
    def summary(self) -> str:
        """The figures of each step so far, one line a step."""
        def show(value):
            if isinstance(value, float):
                return f"{value:.3g}"
            return str(value)

        return "\n".join(f"{step}: " + ", ".join(f"{k} {show(v)}" for k, v in figures.items())
                         for step, figures in self.figures.items())

    def _need_qmodel(self):
        if self.qmodel is None:
            raise ConfigError("Quantize the model first (flow.quantize(images))")

    def _close_devices(self):
        for acc in self._accelerators.values():
            acc.backend.close()
        self._accelerators = {}

    def close(self):
        """Close every device the flow opened (the simulator ends)."""
        self._close_devices()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tensor(images):
    import torch

    return images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
