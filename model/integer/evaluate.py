"""The integer model at work: its metrics beside the float model's, its speed,
and the command-line pieces (``moevit quantize``, ``moevit eval --integer``,
``moevit bench golden``, the demo's quantize step).

Importing this module appends :func:`demo_quantize` to the demo's steps.
"""

import json
import os
import subprocess
import sys
import time


__all__ = [
    "evaluate_integer",
    "compare_rows",
    "format_comparison",
    "calibration_images",
    "signal_model",
    "bench_golden",
    "demo_quantize",
    "add_quantize_command",
    "integer_model",
    "eval_integer",
    "register_bench",
    "DEFAULT_CALIBRATION",
]

#: Calibration images taken from the training split by default.
DEFAULT_CALIBRATION = 64


def calibration_images(dataset, count=DEFAULT_CALIBRATION):
    """The first ``count`` images of ``dataset`` (a tensor (count, C, H, W))."""
    import torch

    from moevit.model.integer.intops import QuantizationError

    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise QuantizationError(f"Calibration image count must be a non-negative integer, not {count!r}")
    count = min(count, len(dataset))
    if hasattr(dataset, "images"):
        return dataset.images[:count]
    return torch.stack([dataset[i]["image"] for i in range(count)]) if count else torch.zeros(0)


def evaluate_integer(qmodel, dataset, *, tasks=None, progress=False) -> dict:
    """Metrics of the golden model on ``dataset``, as :func:`moevit.model.evaluate.evaluate`."""
    import torch
    from tqdm import tqdm

    from moevit.model.evaluate import check_metrics_defined
    from moevit.model.integer.golden import run
    from moevit.model.metrics import TaskMetrics

    config = qmodel.config
    names = list(tasks or config.task_names)
    for name in names:
        config.task_index(name)
    metrics = TaskMetrics(config)
    for index in tqdm(range(len(dataset)), desc="integer eval", disable=not progress):
        sample = dataset[index]
        image = sample["image"].numpy()
        for name in names:
            prediction = torch.from_numpy(run(qmodel, image, name, record=False).prediction[None])
            metrics.update(name, prediction, sample[name][None])
    results = metrics.results()
    results = {name: results[name] for name in names}
    check_metrics_defined(results, config, dataset)
    return results


def compare_rows(config, float_metrics, integer_metrics) -> list:
    """One row per task and metric: float, integer, difference (absolute; relative for RMSE)."""
    rows = []
    for task in config.tasks:
        keys = ("miou", "pixel_acc") if task.kind == "semseg" else ("rmse",)
        for key in keys:
            f, q = float(float_metrics[task.name][key]), float(integer_metrics[task.name][key])
            row = {"task": task.name, "metric": key, "float": f, "integer": q, "difference": q - f}
            if key == "rmse":
                row["relative"] = (q - f) / f if f else float("nan")
            rows.append(row)
    return rows


def format_comparison(rows) -> list:
    lines = [f"{'task':<8} {'metric':<10} {'float':>8} {'integer':>8} {'difference':>11}"]
    for row in rows:
        if row["metric"] == "rmse":
            diff = f"{row['difference']:+.4f} ({100 * row['relative']:+.2f} %)"
        else:
            diff = f"{100 * row['difference']:+.3f} points"
        lines.append(f"{row['task']:<8} {row['metric']:<10} {row['float']:>8.4f} {row['integer']:>8.4f} {diff:>11}")
    return lines


# command line ----------------------------------------------------------------
def _calibrate(args, model):
    """``model`` quantized on the first ``--calibration`` images of the training
    split of the data the command line names (``--data``; synthetic by default),
    and the number of images used."""
    from moevit.model.commands import open_data
    from moevit.model.integer.quantize import quantize

    count = args.calibration or DEFAULT_CALIBRATION
    size = count if args.data == "synthetic" else None  # render only what calibration reads
    images = calibration_images(open_data(args, model.config, "train", size), count)
    return quantize(model, images, progress=not getattr(args, "quiet", False)), len(images)


def _quantize_command(args):
    from moevit.model.checkpoint import load_checkpoint
    from moevit.model.commands import check_data_options
    from moevit.model.integer.quantize import save_quantized
    from moevit.paths import build_dir, output_file

    check_data_options(args)
    model, meta = load_checkpoint(args.checkpoint)
    path = output_file(args.output or build_dir("quantized") / f"{meta['config'].name}.npz", "quantized model")
    qmodel, count = _calibrate(args, model)
    save_quantized(path, qmodel)
    print(f"quantized {qmodel.config.name} on {count} {args.data} calibration images: {path}")
    print(f"checksum {qmodel.checksum()}")
    print(f"source: the weights of {args.checkpoint} (sha256 {qmodel.source_sha256})")


def add_quantize_command(subparsers):
    """``moevit quantize --checkpoint C [-o FILE] [--data NAME --data-root DIR]``."""
    from moevit.cli import positive_int
    from moevit.model.commands import add_data_arguments

    parser = subparsers.add_parser("quantize", help="int8 post-training quantization: the quantized-model file")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("-o", "--output", default=None, help="default build/quantized/CONFIG.npz")
    parser.add_argument("--calibration", type=positive_int, default=DEFAULT_CALIBRATION,
                        help=f"calibration images: the first of the training split (default {DEFAULT_CALIBRATION})")
    add_data_arguments(parser)
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=_quantize_command)


def add_integer_arguments(parser):
    """``--integer``, ``--quantized`` and ``--calibration`` of ``moevit eval``."""
    from moevit.cli import positive_int

    parser.add_argument("--integer", action="store_true", help="also evaluate the integer golden model, side by side")
    parser.add_argument("--quantized", default=None, help="quantized-model file (default: quantize the checkpoint)")
    parser.add_argument("--calibration", type=positive_int, default=None,
                        help=f"calibration images of the training split (default {DEFAULT_CALIBRATION}; not with --quantized)")


def integer_model(args, model):
    """The golden model of ``moevit eval --integer``: the ``--quantized``
    file, which must have been quantized from the weights of ``model`` (read
    from ``--checkpoint``), or ``model`` quantized now on the named data.
    Called before any evaluation, so a mismatch stops the command at once."""
    from moevit.errors import UsageError
    from moevit.model.integer.quantize import check_source, load_quantized

    if not args.quantized:
        return _calibrate(args, model)[0]
    if args.calibration is not None:
        raise UsageError("--calibration does nothing with --quantized (the file is already calibrated)")
    qmodel = load_quantized(args.quantized, model.config)
    check_source(qmodel, model.state_dict(), quantized=args.quantized, checkpoint=args.checkpoint)
    return qmodel


def eval_integer(args, qmodel, val, float_metrics) -> dict:
    """The ``--integer`` part of ``moevit eval``: the golden model's metrics
    and the comparison rows (:func:`compare_rows`)."""
    integer = evaluate_integer(qmodel, val, progress=not args.quiet)
    return {"integer": integer, "comparison": compare_rows(qmodel.config, float_metrics, integer)}


# demo -----------------------------------------------------------------------
def demo_quantize(state):
    """Quantize to int8 and evaluate the integer golden model beside the float one."""
    from moevit.model.integer.quantize import quantize, save_quantized

    images = calibration_images(state.train, DEFAULT_CALIBRATION)
    start = time.perf_counter()
    qmodel = quantize(state.model, images)
    path = save_quantized(state.out / "model.q.npz", qmodel)
    integer = evaluate_integer(qmodel, state.val, progress=not state.args.quiet)
    seconds = time.perf_counter() - start
    rows = compare_rows(state.config, state.metrics, integer)
    state.report["integer"] = {"file": str(path), "metrics": integer, "comparison": rows, "seconds": seconds}
    return [
        f"quantized on {len(images)} training images: {path}",
        f"integer golden model on {len(state.val)} validation images ({seconds:.0f} s):",
        *format_comparison(rows),
    ]


def _append_demo_step():
    from moevit.model import commands

    steps = getattr(commands, "DEMO_STEPS", None)
    if steps is not None and demo_quantize not in steps:
        steps.append(demo_quantize)


# bench ----------------------------------------------------------------------
def signal_model(config, seed=0):
    """A float model of ``config`` whose activations carry signal (for timing
    and tests without training): weights ~ N(0, 1/fan_in), LayerNorm gains
    around 1, small biases. timm's 0.02 init gives near-constant outputs."""
    import torch

    from moevit.model.moevit import MoEViT

    generator = torch.Generator().manual_seed(seed)
    model = MoEViT(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif param.dim() >= 2 and ".noise." not in name:
                fan_in = param.shape[-1] if param.dim() == 3 else param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def _time_file(path, repeat):
    """Milliseconds per image and task of the golden model in this process."""
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.golden import run
    from moevit.model.integer.quantize import load_quantized

    qmodel = load_quantized(path)
    data = SyntheticDataset(qmodel.config, "val", size=2)
    rows = []
    for task in qmodel.config.task_names:
        image = data.images[1].numpy()
        run(qmodel, image, task, record=False)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run(qmodel, image, task, record=False)
            times.append(time.perf_counter() - start)
        rows.append({"task": task, "ms_per_image": 1e3 * sum(times) / repeat, "ms_best": 1e3 * min(times)})
    return rows


def bench_golden(configs=("tiny", "edge-moe"), repeat=10, progress=False) -> list:
    """Time the golden model per image and task on one core.

    Each config's model (:func:`signal_model`, calibrated on 2 synthetic
    images) is written under ``build/bench/`` and timed in a child process
    pinned to one CPU with one BLAS thread.
    """
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.quantize import quantize, save_quantized
    from moevit.paths import build_dir

    rows = []
    for name in configs:
        config = get_config(name)
        model = signal_model(config)
        images = SyntheticDataset(config, "train", size=2).images
        path = save_quantized(build_dir("bench") / f"golden-{name}.npz", quantize(model, images))
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, "-m", "moevit.model.integer.evaluate", str(path), str(repeat)],
            env=env, capture_output=True, text=True, check=False,
        )
        if done.returncode:
            raise RuntimeError(f"golden timing of {name} failed:\n{done.stderr}")
        for row in json.loads(done.stdout):
            rows.append({"config": name, "task": row["task"], "ms_per_image": round(row["ms_per_image"], 2),
                         "ms_best": round(row["ms_best"], 2),
                         "tokens": config.tokens, "dim": config.dim, "depth": config.depth,
                         "threads": 1, "repeat": repeat})
    return rows


def _bench_command(args):
    rows = bench_golden(args.config or ("tiny", "edge-moe"), args.repeat)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'config':<9} {'task':<7} {'tokens':>6} {'ms/image':>9} {'best':>7}")
    for row in rows:
        print(f"{row['config']:<9} {row['task']:<7} {row['tokens']:>6} {row['ms_per_image']:>9.1f} {row['ms_best']:>7.1f}")
    print(f"integer golden model (numpy), one CPU, one BLAS thread: mean and best of {args.repeat} runs")


def register_bench(benches):
    """``moevit bench golden [--json] [--config NAME ...] [--repeat N]``."""
    from moevit.cli import positive_int

    parser = benches.add_parser("golden", help="integer golden model: time per image and task (one core)")
    parser.add_argument("--config", nargs="+", default=None, help="configs (default: tiny edge-moe)")
    parser.add_argument("--repeat", type=positive_int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_bench_command)


_append_demo_step()

if __name__ == "__main__":  # the timing child of bench_golden
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps(_time_file(sys.argv[1], int(sys.argv[2]))))
