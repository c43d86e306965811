"""Command line of the ONNX stage: ``export-onnx``, ``check-onnx``, ``onnx-stats``.

:func:`register_onnx` is called by :func:`moevit.model.commands.register`.
Handlers import torch, onnx and ONNX Runtime only when they run.
"""

import json
from pathlib import Path

__all__ = ["register_onnx", "stats_rows", "format_rows"]


def _model(config_name, checkpoint, seed):
    """The float model and a description of where its weights come from."""
    import torch

    from moevit.model.checkpoint import load_checkpoint
    from moevit.model.config import get_config
    from moevit.model.moevit import MoEViT

    config = get_config(config_name)
    if checkpoint:
        model, _ = load_checkpoint(checkpoint, config)
        return model, f"checkpoint {Path(checkpoint).resolve()}"
    torch.manual_seed(seed)
    return MoEViT(config).eval(), f"random seed {seed}"


def _task_arg(text):
    """A task name, ``any``, or an index given as digits."""
    return int(text) if text.lstrip("-").isdigit() else text


def _check_export_options(args):
    """Reject the options that the chosen graph would ignore."""
    from moevit.errors import UsageError

    if args.quantized:
        for option, why in (("checkpoint", "the weights"), ("seed", "the weights"), ("batch", "its batch (1)")):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option} does nothing with --quantized: the quantized file fixes {why}")
    elif args.checkpoint and args.seed is not None:
        raise UsageError("--seed does nothing with --checkpoint: it seeds random weights only")


def _export(args):
    from tqdm import tqdm

    from moevit.model.config import get_config
    from moevit.paths import output_file, write_atomically

    _check_export_options(args)
    config = get_config(args.config)
    task = _task_arg(args.task)
    if task != "any":
        config.task_index(task)  # a clear error now, not after loading
    output = output_file(args.output, "ONNX file")
    if args.quantized:
        from moevit.model.onnx.qdq import export_qdq
        from moevit.model.integer.quantize import load_quantized

        qmodel = load_quantized(args.quantized, config)
        source = str(Path(args.quantized).resolve())
        stage, export = "export of the QDQ graph", lambda file: export_qdq(qmodel, task, file, source=source)
    else:
        from moevit.model.onnx.export import export_onnx

        model, weights = _model(args.config, args.checkpoint, args.seed or 0)
        stage = "export (torch.export, torch.onnx)"
        export = lambda file: export_onnx(model, task, file, batch=args.batch or 1, weights=weights)  # noqa: E731
    from moevit.model.onnx.check import read_graph

    # The export takes most of the time (30 s for edge-moe), then the check: say which one runs.
    bar_format = "export-onnx, {desc}{n}/{total} stages done, {elapsed}"
    with tqdm(total=2, disable=args.quiet, bar_format=bar_format) as stages:
        stages.set_description(stage)
        path = write_atomically(output, export, "ONNX file")  # an interrupted export leaves no file
        stages.set_description("check (onnx.checker)", refresh=False)
        stages.update()
        proto, meta = read_graph(path)
        stages.update()
    ops = sorted({node.op_type for node in proto.graph.node})
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {meta['moevit.kind']} graph of "
        f"{meta['config'].name!r}, task {meta['moevit.task']!r}, opset "
        f"{max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))}, "
        f"{len(proto.graph.node)} nodes; onnx.checker full check passed"
    )
    print(f"operators: {' '.join(ops)}")


def stats_rows(path, *, graph=None) -> list:
    """Graph statistics of an ONNX file beside ``moevit info``'s figures.

    One row per quantity: ``task``, ``quantity``, ``graph``, ``info``, ``equal``.
    ``graph``: the file's ``(proto, metadata)`` if already read.
    """
    from moevit.model.onnx.check import graph_stats, read_graph
    from moevit.model.stats import model_stats

    proto, meta = graph if graph is not None else read_graph(path)
    config = meta["config"]
    stats = graph_stats(proto, meta)
    rows = []
    for task, figures in stats["tasks"].items():
        info = model_stats(config, task)
        if meta["moevit.task"] == "any":
            # every task's gates and heads, without the gates' training-only noise weights
            noise = info["params_by_part"]["gate_noise"]
            expected_params, what = info["params"] - noise, "params (all tasks, no noise)"
        elif meta["moevit.kind"] == "qdq":
            # the quantized model folds the class token and its position into one vector
            expected_params, what = info["active_params"] - config.dim, "params (active, cls+pos folded)"
        else:
            expected_params, what = info["active_params"], "params (active)"
        pairs = [
            (what, stats["params"], expected_params),
            ("MACs (top-k)", figures["macs"], info["macs"]),
            ("MACs (all experts)", figures["macs_all_experts"], info["macs_all_experts"]),
            ("expert MACs (top-k)", figures["moe_macs_experts"],
             sum(v for k, v in info["breakdown"].items() if k.endswith(".mlp.experts"))),
        ]
        for quantity, graph, expected in pairs:
            rows.append({"task": task, "quantity": quantity, "graph": graph, "info": expected,
                         "equal": graph == expected})
    for index, layer in enumerate(stats["moe_layers"]):
        touched = f"{layer['k']} of {layer['experts']} per token"
        rows.append({"task": "*", "quantity": f"MoE layer {index} experts", "graph": touched,
                     "info": f"{config.top_k} of {config.experts} per token",
                     "equal": (layer["k"], layer["experts"]) == (config.top_k, config.experts)})
    return rows


def format_rows(rows, columns) -> str:
    """A plain table of ``rows`` (dicts) with the given columns; ``-`` where a row has no such key."""
    cells = [[f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _stats(args):
    rows = stats_rows(args.file)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_rows(rows, ["task", "quantity", "graph", "info", "equal"]))
    return 0 if all(row["equal"] for row in rows) else 1


def _check(args):
    from moevit.model.onnx.check import FLOAT_ATOL, FLOAT_RTOL, check_graph

    report = check_graph(args.file, config=args.config, checkpoint=args.checkpoint, quantized=args.quantized,
                         seed=args.seed, atol=args.atol, rtol=args.rtol)
    rows, stats = report["rows"], stats_rows(args.file)
    failures = report["failures"] + [
        f"graph statistics: {row['task']} {row['quantity']} is {row['graph']}, moevit info says {row['info']}"
        for row in stats if not row["equal"]
    ]
    verdict = "FAIL" if failures else "PASS"
    if args.json:
        print(json.dumps({"differences": rows, "weights": report["weights"], "stats": stats, "failures": failures,
                          "verdict": verdict}))
        return 1 if failures else 0
    if report["kind"] == "float":
        atol = FLOAT_ATOL if args.atol is None else args.atol
        rtol = FLOAT_RTOL if args.rtol is None else args.rtol
        print(f"ONNX Runtime vs PyTorch: PASS if max |difference| <= {atol:g} + {rtol:g} x max |PyTorch| "
              "(--atol, --rtol) and every token selects the same experts")
        print("(experts_touched: distinct experts each MoE layer ran on this image, of all)")
        columns = ["task", "output", "shape", "max_abs_diff", "max_abs_ref", "tolerance", "experts_touched",
                   "routing_equal", "verdict"]
    else:
        print("ONNX Runtime vs the integer golden model, in int8 steps; 'alike': the pixels of tokens that select "
              "the golden model's experts in every MoE layer (--atol: their largest difference)")
        columns = ["task", "output", "shape", "max_steps", "mean_steps", "routing_agreement", "max_steps_alike",
                   "mean_steps_alike", "tolerance", "verdict"]
    print(format_rows(rows, columns))
    weights = report["weights"]
    print(f"weights recomputed from the graph's {weights['initializers']} initializers: hash {weights['graph_hash']}, "
          f"the reference's {weights['reference_hash']}: {weights['verdict']}")
    print("graph statistics vs moevit info:")
    print(format_rows(stats, ["task", "quantity", "graph", "info", "equal"]))
    print(f"{verdict}: {args.file}" + "".join(f"\n  {failure}" for failure in failures))
    return 1 if failures else 0


def register_onnx(subparsers):
    """Add ``export-onnx``, ``check-onnx`` and ``onnx-stats``."""
    from moevit.cli import non_negative_int, positive_int
    from moevit.model.config import DEFAULT_CONFIG

    export = subparsers.add_parser(
        "export-onnx",
        help="one ONNX graph per task (or --task any: the task id is an input); QDQ with --quantized",
    )
    export.add_argument("--config", default=DEFAULT_CONFIG)
    export.add_argument("--checkpoint", default=None, help="float weights (default: random, --seed)")
    export.add_argument("--seed", type=non_negative_int, default=None, help="seed of random weights (default 0)")
    export.add_argument("--quantized", default=None, help="a quantized-model file: export its QDQ graph")
    export.add_argument("--task", required=True, help="a task name or index, or 'any'")
    export.add_argument("--batch", type=positive_int, default=None, help="fixed batch size of float graphs (default 1)")
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    export.add_argument("--quiet", action="store_true", help="no progress")
    export.set_defaults(handler=_export)

    check = subparsers.add_parser(
        "check-onnx",
        help="run an ONNX file in ONNX Runtime beside its reference: PASS, or FAIL and exit status 1",
    )
    check.add_argument("file")
    check.add_argument("--config", default=None, help="the model expected (default: the file's)")
    check.add_argument("--checkpoint", default=None, help="default: the one named in the file")
    check.add_argument("--quantized", default=None, help="QDQ graphs: default the file named in the graph")
    check.add_argument("--seed", type=int, default=0, help="seed of the random input image")
    check.add_argument("--atol", type=float, default=None,
                       help="float graphs: absolute tolerance (default 1e-5); QDQ graphs: the most int8 steps "
                            "(default: the stated bounds, printed with the results)")
    check.add_argument("--rtol", type=float, default=None,
                       help="float graphs: tolerance relative to the largest |output| (default 1e-5)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_check)

    stats = subparsers.add_parser(
        "onnx-stats", help="parameters, MACs per task and experts of an ONNX file beside moevit info"
    )
    stats.add_argument("file")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=_stats)
