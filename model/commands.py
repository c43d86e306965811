"""Sub-commands of the model area: ``info``, ``train``, ``eval`` and ``demo``.

``moevit demo`` is a sequence of steps (:data:`DEMO_STEPS`), each a function
``step(state)`` that reads and extends one :class:`DemoState`: data → train →
evaluate → figure. Later stages append their own step to the list (for
example quantize + integer evaluation, after ``demo_figure``, reading
``state.model``, ``state.val`` and ``state.metrics`` and adding to
``state.report``); the demo runs the list in order and prints each step's
lines as it goes.
"""

import json
import sys
import time
from dataclasses import dataclass, field

from moevit.cli import non_negative_int, positive_float, positive_int
from moevit.errors import UsageError
from moevit.model.config import CONFIGS, DEFAULT_CONFIG

__all__ = [
    "register", "DEMO_STEPS", "DemoState", "format_info", "info_rows", "IMAGE_SUFFIXES",
    "open_data", "add_data_arguments", "check_data_options",
]

#: The prediction figure's accepted extensions (formats matplotlib's Agg canvas writes).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".tif", ".tiff", ".webp")


# info ----------------------------------------------------------------------
def info_rows(names, task=None) -> list:
    """One row of :func:`~moevit.model.stats.model_stats` per config and task."""
    from moevit.model.config import get_config
    from moevit.model.stats import model_stats

    rows = []
    for name in names:
        config = get_config(name)
        tasks = [task] if task is not None else list(config.task_names)
        for t in tasks:
            row = model_stats(config, t)
            row.pop("breakdown")
            rows.append(row)
    return rows


def format_info(rows) -> str:
    """A readable table of :func:`info_rows`."""
    header = (
        f"{'config':<9} {'task':<7} {'params':>11} {'MACs (top-k)':>14} {'MACs (all E)':>14} "
        f"{'saved':>6} {'MoE saved':>9} {'expert int8':>12} {'expert fp32':>12}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['config']:<9} {row['task']:<7} {row['params'] / 1e6:>10.2f}M "
            f"{row['macs'] / 1e9:>13.3f}G {row['macs_all_experts'] / 1e9:>13.3f}G "
            f"{100 * row['reduction']:>5.1f}% {100 * row['moe_reduction']:>8.1f}% "
            f"{row['expert_bytes_int8'] / 2**20:>10.2f}Mi {row['expert_bytes_fp32'] / 2**20:>10.2f}Mi"
        )
    lines.append(
        "MACs per image and task; 'saved' = 1 - MACs(top-k)/MACs(all experts active), "
        "'MoE saved' = the same over the MoE layers (M³ViT reports 88 %)."
    )
    return "\n".join(lines)


def _info(args):
    names = [args.config] if args.config else list(CONFIGS)
    rows = info_rows(names, args.task)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_info(rows))


# data ----------------------------------------------------------------------
def open_data(args, config, split, size=None):
    """The dataset the command line names; synthetic when no --data is given."""
    name = getattr(args, "data", "synthetic")
    if name == "synthetic":
        from moevit.model.data import SyntheticDataset

        return SyntheticDataset(config, split=split, size=size, seed=args.data_seed or 0)
    from moevit.model.datasets import open_dataset

    return open_dataset(name, args.data_root, config, split)


# As moevit.model.datasets.DATASETS, without importing torch for --help.
DATASETS = ("synthetic", "nyud", "pascal-context", "cityscapes")


def add_data_arguments(parser, size_option=None):
    """``--data``, ``--data-root``, ``--data-seed`` and the synthetic set's size option."""
    parser.add_argument("--data", default="synthetic", choices=DATASETS, help="dataset (default: synthetic)")
    parser.add_argument("--data-root", default=None, help="root folder of a real dataset")
    parser.add_argument("--data-seed", type=non_negative_int, default=None, help="seed of the synthetic set (default 0)")
    if size_option:
        parser.add_argument(size_option, type=positive_int, default=None, help="synthetic samples")


def check_data_options(args):
    """Reject the data options that the chosen set would ignore."""
    if args.data == "synthetic":
        if args.data_root is not None:
            raise UsageError("--data-root does nothing without --data NAME (the synthetic set is rendered, not read)")
        return
    if args.data_root is None:
        raise UsageError(f"--data {args.data} needs --data-root DIR, the root folder of the dataset")
    for option in ("data_seed", "train_size", "val_size"):
        if getattr(args, option, None) is not None:
            name = "--" + option.replace("_", "-")
            raise UsageError(f"{name} applies to the synthetic set only, not to --data {args.data}")


def _threads(args):
    """Apply --threads: small models train fastest on one thread when the cores are shared."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _rank():
    import os

    return int(os.environ.get("RANK", "0"))


# train ---------------------------------------------------------------------
def _train(args):
    import os

    from moevit.model.config import get_config
    from moevit.model.train import TrainOptions, train
    from moevit.paths import build_dir, output_file

    config = get_config(args.config)
    check_data_options(args)
    checkpoint = str(output_file(args.checkpoint or build_dir("checkpoints") / f"{config.name}.pt", "checkpoint"))
    options = TrainOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=min(args.warmup, args.steps),
        seed=args.seed,
        checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every,
        dtype=args.dtype,
    )
    if args.resume:  # a clear error before the data is rendered or read
        from moevit.model.checkpoint import load_checkpoint

        load_checkpoint(args.resume, config)
    local_world = os.environ.get("LOCAL_WORLD_SIZE")  # set by torchrun, and by launch_workers
    if local_world and args.nproc_per_node not in (1, int(local_world)):
        raise UsageError(
            f"--nproc-per-node {args.nproc_per_node} does nothing under a launcher that started "
            f"{local_world} processes per node (torchrun's own --nproc-per-node decides)"
        )
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        from moevit.model.launch import launch_workers

        return launch_workers(args.nproc_per_node, ["-m", "moevit", *args.argv])
    _threads(args)
    dataset = open_data(args, config, "train", args.train_size)
    start = time.perf_counter()
    result = train(config, options, dataset, resume=args.resume, progress=not args.quiet)
    if _rank() == 0:
        last = result.history[-1] if result.history else None
        losses = ", ".join(f"{k} {v:.4f}" for k, v in last[2].items()) if last else "nothing to do"
        print(f"trained {config.name} to step {result.step} in {time.perf_counter() - start:.1f} s ({losses})")
        print(f"checkpoint: {checkpoint}")


# eval ----------------------------------------------------------------------
def _format_metrics(metrics, chance=None) -> list:
    lines = []
    for task, values in metrics.items():
        if "miou" in values:
            line = f"  {task:<8} mIoU {values['miou']:.3f}  pixel acc {values['pixel_acc']:.3f}"
            if chance:
                line += f"   (chance: mIoU {chance[task]['miou']:.3f}, pixel acc {chance[task]['pixel_acc']:.3f})"
        else:
            line = f"  {task:<8} RMSE {values['rmse']:.3f}"
            if chance:
                line += f"   (predicting the mean: RMSE {chance[task]['rmse']:.3f})"
        lines.append(line)
    return lines


def _eval(args):
    from moevit.model.checkpoint import load_checkpoint
    from moevit.model.evaluate import evaluate, save_prediction_png
    from moevit.paths import build_dir, output_file

    check_data_options(args)
    if not args.integer:
        for option in ("quantized", "calibration"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option} does nothing without --integer")
    model, meta = load_checkpoint(args.checkpoint)
    config = meta["config"]
    png = args.png or build_dir("eval") / f"{config.name}-predictions.png"
    png = str(output_file(png, "prediction image", IMAGE_SUFFIXES))
    qmodel = None
    if args.integer:  # the integer golden model beside the float one (model/integer/evaluate.py), checked first
        from moevit.model.integer.evaluate import integer_model

        qmodel = integer_model(args, model)
    val = open_data(args, config, "val", args.val_size)
    metrics = evaluate(model, val, batch_size=args.batch_size, progress=not args.quiet)
    save_prediction_png(model, val, png)
    integer = None
    if qmodel is not None:
        from moevit.model.integer.evaluate import eval_integer

        integer = eval_integer(args, qmodel, val, metrics)
    if args.json:
        print(json.dumps({"config": config.name, "metrics": metrics, "png": png, **(integer or {})}))
        return
    print(f"{config.name} on {len(val)} {args.data} validation samples:")
    print("\n".join(_format_metrics(metrics)))
    print(f"predictions: {png}")
    if integer:
        from moevit.model.integer.evaluate import format_comparison

        print("float and integer (golden) models side by side:")
        print("\n".join("  " + line for line in format_comparison(integer["comparison"])))


# demo ----------------------------------------------------------------------
@dataclass
class DemoState:
    """What the demo's steps share; each step reads it and adds to it."""

    args: object
    config: object = None
    train: object = None
    val: object = None
    model: object = None
    metrics: dict = None
    chance: dict = None
    report: dict = field(default_factory=dict)  # step name -> figures, for --json / later steps
    out: object = None  # build/demo/<config>/


def demo_data(state):
    """Render the synthetic train and validation sets."""
    from moevit.model.config import get_config
    from moevit.model.metrics import chance_metrics
    from moevit.paths import build_dir

    args = state.args
    _threads(args)
    state.config = get_config(args.config)
    state.out = build_dir("demo", state.config.name)
    state.train = open_data(args, state.config, "train", args.train_size)  # the demo has no --data: synthetic
    state.val = open_data(args, state.config, "val", args.val_size)
    state.chance = chance_metrics(state.config, state.train.targets, state.val.targets)
    return [f"synthetic set: {len(state.train)} train / {len(state.val)} val scenes of "
            f"{state.config.image_size[0]}x{state.config.image_size[1]}, tasks {list(state.config.task_names)}"]


def demo_train(state):
    """Train the model on the synthetic set (checkpoint under build/demo/)."""
    from moevit.model.train import TrainOptions, train

    args = state.args
    options = TrainOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=min(30, args.steps),
        seed=args.seed,
        checkpoint=str(state.out / "model.pt"),
    )
    start = time.perf_counter()
    result = train(state.config, options, state.train, progress=not args.quiet)
    seconds = time.perf_counter() - start
    state.model = result.model
    state.report["train"] = {"steps": options.steps, "seconds": seconds, "checkpoint": options.checkpoint}
    return [f"trained {options.steps} steps of {options.batch_size} in {seconds:.0f} s: {options.checkpoint}"]


def demo_evaluate(state):
    """Float metrics per task on the validation set, beside the chance levels."""
    from moevit.model.evaluate import evaluate

    state.metrics = evaluate(state.model, state.val)
    state.report["float"] = {"metrics": state.metrics, "chance": state.chance}
    return ["float model on the validation set:", *_format_metrics(state.metrics, state.chance)]


def demo_figure(state):
    """The PNG of predictions beside the ground truth."""
    from moevit.model.evaluate import save_prediction_png

    path = save_prediction_png(state.model, state.val, state.out / "predictions.png")
    state.report["figure"] = str(path)
    return [f"predictions beside the ground truth: {path}"]


# Later stages append here, e.g. DEMO_STEPS.append(demo_quantize) in their module
# (imported by _demo below when it exists), so `make demo` runs them in order.
DEMO_STEPS = [demo_data, demo_train, demo_evaluate, demo_figure]
DEMO_EXTENSIONS = ("moevit.model.integer.evaluate", "moevit.host.commands")  # modules that may add steps on import
# Sized to finish in a few minutes on 2 CPU cores with `tiny`.
DEMO_DEFAULTS = {"threads": 1, "steps": 400, "batch_size": 32, "lr": 2e-3, "train_size": 2048, "val_size": 256}


def _demo(args):
    import importlib

    for name in DEMO_EXTENSIONS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
    state = DemoState(args)
    start = time.perf_counter()
    for number, step in enumerate(DEMO_STEPS, 1):
        title = (step.__doc__ or step.__name__).strip().splitlines()[0]
        print(f"[{number}/{len(DEMO_STEPS)}] {title}", flush=True)
        for line in step(state) or ():
            print(f"    {line}", flush=True)
    print(f"demo done in {time.perf_counter() - start:.0f} s")
    if args.json:
        json.dump(state.report, sys.stdout, default=str)
        print()


# registration --------------------------------------------------------------
def register(subparsers):
    info = subparsers.add_parser(
        "info", help="parameters, MACs per task (top-k vs all experts), expert weight bytes"
    )
    info.add_argument("--config", default=None, help="one config (default: all)")
    info.add_argument("--task", default=None, help="one task (default: each)")
    info.add_argument("--json", action="store_true", help="one JSON list of rows")
    info.set_defaults(handler=_info)

    train = subparsers.add_parser(
        "train", help="train a config (on N processes: --nproc-per-node N)"
    )
    train.add_argument("--config", default=DEFAULT_CONFIG)
    add_data_arguments(train, "--train-size")
    train.add_argument("--steps", type=positive_int, default=600)
    train.add_argument("--batch-size", type=positive_int, default=32, help="global batch")
    train.add_argument("--lr", type=positive_float, default=2e-3)
    train.add_argument("--warmup", type=non_negative_int, default=30)
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--checkpoint", default=None, help="default build/checkpoints/CONFIG.pt")
    train.add_argument("--checkpoint-every", type=non_negative_int, default=0, help="steps (default 0: at the end only)")
    train.add_argument("--resume", default=None, help="continue from this checkpoint")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--threads", type=positive_int, default=None, help="torch threads per process (default: torch's)")
    train.add_argument("--nproc-per-node", type=positive_int, default=1,
                       help="processes on this machine (DDP, as torchrun's option; a bad input ends as one line)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "eval", help="metrics per task and a PNG of predictions beside the ground truth"
    )
    evaluate.add_argument("--checkpoint", required=True)
    add_data_arguments(evaluate, "--val-size")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--png", default=None,
                          help=f"the prediction figure (default build/eval/CONFIG-predictions.png; {', '.join(IMAGE_SUFFIXES)})")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(handler=_eval)
    from moevit.model.integer import evaluate as integer_eval  # light: imports numpy only when run

    integer_eval.add_integer_arguments(evaluate)
    integer_eval.add_quantize_command(subparsers)

    demo = subparsers.add_parser(
        "demo", help="train on the synthetic set, evaluate, write the prediction PNG (then later stages)"
    )
    demo.add_argument("--config", default=DEFAULT_CONFIG)
    demo.add_argument("--steps", type=positive_int, default=DEMO_DEFAULTS["steps"])
    demo.add_argument("--batch-size", type=positive_int, default=DEMO_DEFAULTS["batch_size"])
    demo.add_argument("--lr", type=positive_float, default=DEMO_DEFAULTS["lr"])
    demo.add_argument("--train-size", type=positive_int, default=DEMO_DEFAULTS["train_size"])
    demo.add_argument("--val-size", type=positive_int, default=DEMO_DEFAULTS["val_size"])
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--data-seed", type=non_negative_int, default=0)
    demo.add_argument(
        "--threads", type=positive_int, default=DEMO_DEFAULTS["threads"],
        help="torch threads (default 1: tiny's small matrices gain little from more, and lose a lot on busy cores)",
    )
    demo.add_argument("--json", action="store_true", help="also print the report as JSON")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)

    from moevit.model.onnx.commands import register_onnx  # export-onnx, check-onnx, onnx-stats

    register_onnx(subparsers)
    from moevit.model.importer_commands import register_importers  # import, export

    register_importers(subparsers)


def register_bench(benches):
    from moevit.model.integer import evaluate as integer_eval

    integer_eval.register_bench(benches)
