"""``moevit run``: a compiled program on a device (the simulated top or a board), from the shell.

Images are ``.npy`` files of int8 input (one (C, H, W) image or a batch) or
pictures (``.png``, ``.jpg``) that become the model's input as its data
pipeline makes it: RGB in [0, 1], normalised by the synthetic set's ImageNet
statistics (``moevit.model.data.MEAN``/``STD``), then quantized at the
integer model's input scale (so pictures need ``--quantized``). Every file is
read and checked before the device opens. The command writes the prediction
PNG (``moevit.model.evaluate.prediction_figure``), each image's int8 map as
``.npy`` and ``timings.json``.
"""

import json
import sys
import time
from pathlib import Path

from moevit.cli import positive_float, positive_int
from moevit.errors import ConfigError, OutputPathError, UsageError

__all__ = ["register", "read_images"]

PICTURES = (".png", ".jpg", ".jpeg")


def read_images(paths, shape, scale=None):
    """The int8 input of ``paths`` (see the module doc), stacked; ``scale``: the integer
    model's input scale (pictures need it). A clear error for a file that is none."""
    import numpy as np

    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"Image {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as error:
                raise ConfigError(f"Image {path} is not a numpy file: {error}") from None
            if array.dtype != np.int8:
                raise ConfigError(f"Image {path} holds {array.dtype}; .npy inputs are int8 "
                                  f"(the quantized input)")
            batch = array if array.ndim == len(shape) + 1 else array[None]
        elif suffix in PICTURES:
            batch = _picture(path, shape, scale)[None]
        else:
            raise ConfigError(f"Image {path}: expected .npy (int8) or a picture "
                              f"({', '.join(PICTURES)}), not {suffix or 'no suffix'!r}")
        if batch.shape[1:] != tuple(shape):
            raise ConfigError(f"Image {path} has shape {array.shape if suffix == '.npy' else batch.shape[1:]}; "
                              f"the program's input is {tuple(shape)}")
        images.append(batch)
    return np.concatenate(images)


def _picture(path, shape, scale):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from moevit.model.data import MEAN, STD
    from moevit.model.integer.golden import quantize_image

    if scale is None:
        raise ConfigError(f"Image {path} is a picture: its int8 input needs the integer model's "
                          f"input scale (--quantized Q)")
    try:
        with Image.open(path) as picture:
            rgb = np.asarray(picture.convert("RGB"), np.float32) / 255
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"Image {path} cannot be read: {error}") from None
    if rgb.shape[:2] != tuple(shape[1:]):
        raise ConfigError(f"Image {path} is {rgb.shape[1]}x{rgb.shape[0]} pixels; the model takes "
                          f"{shape[2]}x{shape[1]}")
    image = (rgb.transpose(2, 0, 1) - np.array(MEAN, np.float32)[:, None, None]) \
        / np.array(STD, np.float32)[:, None, None]
    return quantize_image(image, scale)


def _run(args):
    import numpy as np

    from moevit.host.backend import BACKENDS, open_backend
    from moevit.host.driver import Accelerator, task_index
    from moevit.hw.program.program import read_program
    from moevit.paths import build_dir, output_folder, write_atomically

    if args.backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {args.backend!r}; backends are {', '.join(BACKENDS)}")
    if args.simulator is not None and args.backend != "sim":
        raise UsageError(f"--simulator does not apply to the {args.backend} backend: it "
                         f"chooses the sim backend's simulator")
    program = read_program(args.program)
    qmodel = None
    if args.quantized:
        from moevit.model.integer.quantize import load_quantized

        qmodel = load_quantized(args.quantized)
        if qmodel.config.to_dict() != program.model:
            raise ConfigError(f"{args.quantized} is a quantized {qmodel.config.name!r}; the program "
                              f"was compiled from another model")
    shape = tuple(program.image_shape)
    scale = qmodel.scale("input") if qmodel else None
    images = read_images(args.images, shape, scale)
    task = task_index(program, args.task)
    out = output_folder(args.output or build_dir("run"), "run output folder")
    options = ({"program": program, "simulator": args.simulator or "verilator"}
               if args.backend == "sim" else {})
    for option in args.option or ():
        key, sep, value = option.partition("=")
        if not sep:
            raise ConfigError(f"Backend option {option!r} is not KEY=VALUE")
        options[key] = value
    with open_backend(args.backend, **options) as device:
        acc = Accelerator(device, program, batch=args.batch, timeout=args.timeout).load()
        start = time.perf_counter()
        maps = acc.predict(images, task)
        wall = time.perf_counter() - start
    task_name = program.tasks[task]["name"]
    per_image = acc.cycles / len(images)
    timings = {"backend": args.backend, "task": task_name, "images": len(images),
               "batch": acc.batch, "cycles": acc.cycles, "cycles_per_image": per_image,
               "clock_hz": device.clock_hz, "latency_s": per_image / device.clock_hz,
               "images_per_s": device.clock_hz / per_image, "busy": acc.busy, "wall_s": wall}
    for k, image_map in enumerate(maps):     # each file whole or not at all
        write_atomically(out / f"{task_name}-{k}.npy",
                         lambda p, m=image_map: _save_npy(p, m), "prediction map")
    png = _figure(program, qmodel, images, maps, task_name, out / f"{task_name}-predictions.png")
    write_atomically(out / "timings.json",
                     lambda p: p.write_text(json.dumps(timings, indent=1) + "\n"), "timings")
    print(f"{len(images)} image(s), task {task_name} on {args.backend}: {per_image:.0f} cycles "
          f"an image, {1e6 * timings['latency_s']:.1f} us at {device.clock_hz / 1e6:g} MHz "
          f"({wall:.1f} s wall)")
    print(f"predictions: {png}")
    print(f"timings: {out / 'timings.json'}")


def _save_npy(path, array):
    import numpy as np

    with open(path, "wb") as handle:   # a path, np.save would add ".npy" to the partial name
        np.save(handle, array)


def _figure(program, qmodel, images, maps, task, path):
    """The prediction PNG: the input (dequantized) beside each image's prediction map."""
    from moevit.model.config import ModelConfig
    from moevit.model.evaluate import prediction_figure

    config = ModelConfig.from_dict(program.model)
    scale_in = qmodel.scale("input") if qmodel else 1 / 32   # any scale shows the picture
    scale_out = qmodel.scale(f"heads.{config.task_index(task)}.out") if qmodel else 1.0
    return prediction_figure(config, images * scale_in, {task: maps * scale_out}, path)


def register(subparsers):
    run = subparsers.add_parser(
        "run", help="run a compiled program on a device (sim, zynq, alveo): prediction PNGs, "
                    "int8 maps and timings")
    run.add_argument("images", nargs="+", metavar="IMAGE",
                     help=".npy int8 input, or a picture (.png, .jpg; needs --quantized)")
    run.add_argument("--backend", default="sim", help="sim (the simulated top), zynq or alveo")
    run.add_argument("--program", required=True, help="the folder moevit hw compile wrote")
    run.add_argument("--task", required=True, help="a task name or index")
    run.add_argument("--quantized", default=None,
                     help="the quantized model (its input scale turns pictures into int8)")
    run.add_argument("-o", "--output", default=None, help="output folder (default build/run)")
    run.add_argument("--batch", type=positive_int, default=None,
                     help="images per start: a multiple of the program's batch (default: the "
                          "program's batch)")
    run.add_argument("--timeout", type=positive_float, default=1.0,
                     help="seconds of device time a start may take (default 1)")
    run.add_argument("--simulator", default=None, choices=("verilator", "icarus"),
                     help="sim backend: the simulator (default verilator)")
    run.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="a board backend's option (e.g. bitstream=build/deploy/zcu102/moevit.bit)")
    run.set_defaults(handler=_run)
    demo = subparsers.choices.get("demo")    # moevit demo's last step is this area's
    if demo is not None:
        demo.add_argument("--no-accelerator", action="store_true",
                          help="stop before the simulated accelerator (its first build takes "
                               "minutes)")


# demo ----------------------------------------------------------------------
DEMO_IMAGES = 1   # validation images per task on the simulated accelerator (a minute each)


def demo_accelerator(state):
    """Every task on the simulated accelerator, through the driver: bit-exact vs golden?

    Compiles the quantized model for the config's HwConfig, runs validation images on
    the ``sim`` backend, and writes the prediction PNG from the accelerator's output."""
    import numpy as np

    from moevit.flow import Flow
    from moevit.model.data import batch_of
    from moevit.model.evaluate import prediction_figure
    from moevit.model.integer.quantize import load_quantized

    if getattr(state.args, "no_accelerator", False):
        return ["skipped (--no-accelerator)"]
    count = min(DEMO_IMAGES, len(state.val))
    batch = batch_of(state.val, list(range(count)))
    lines, rows, maps = [], [], {}
    with Flow(qmodel=load_quantized(state.report["integer"]["file"])) as flow:
        program = flow.compile()
        lines.append(f"program: {len(program.instructions)} instructions, "
                     f"{len(program.weights)} bytes of weights, hardware {program.hw.name!r} at "
                     f"{program.hw.clock_mhz:g} MHz")
        options = {"progress": not state.args.quiet}
        for task in state.config.tasks:
            maps[task.name] = flow.predict(batch["image"], task.name, backend="sim", **options)
            figures = flow.figures["predict sim"]
            golden = flow.predict(batch["image"], task.name)
            exact = bool(np.array_equal(maps[task.name], golden))
            rows.append({"task": task.name, "images": count, "bit_exact": exact,
                         "cycles_per_image": figures["cycles_per_image"],
                         "latency_s": figures["latency_s"], "sim_seconds": figures["seconds"]})
            lines.append(f"{task.name:<8} {count} image{'s' * (count > 1)}: "
                         f"{'bit-exact' if exact else 'DIFFERENT'} "
                         f"vs the golden model, {figures['cycles_per_image']:.0f} cycles an image "
                         f"= {1e6 * figures['latency_s']:.1f} us at {program.hw.clock_mhz:g} MHz "
                         f"({figures['seconds']:.0f} s of simulation)")
        scales = {t.name: flow.qmodel.scale(f"heads.{k}.out")
                  for k, t in enumerate(state.config.tasks)}
    png = prediction_figure(state.config, batch["image"],
                            {name: m * scales[name] for name, m in maps.items()},
                            state.out / "accelerator-predictions.png",
                            truths={t.name: batch[t.name] for t in state.config.tasks})
    state.report["accelerator"] = {"rows": rows, "figure": str(png)}
    if not all(row["bit_exact"] for row in rows):
        from moevit.errors import DeviceError

        raise DeviceError("The simulated accelerator's outputs differ from the golden model's")
    return lines + [f"the accelerator's predictions beside the ground truth: {png}"]


def _append_demo_step():
    from moevit.model import commands

    if demo_accelerator not in commands.DEMO_STEPS:
        commands.DEMO_STEPS.append(demo_accelerator)


_append_demo_step()
