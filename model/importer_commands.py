"""Command line of the importers: ``moevit import`` and ``moevit export``.

:func:`register_importers` is called by :func:`moevit.model.commands.register`.
Handlers import torch only when they run.
"""

__all__ = ["register_importers", "FORMATS"]

FORMATS = ("m3vit", "edge-moe")  # as moevit.model.importers.FORMATS, without importing torch


def _import(args):
    from moevit.model.checkpoint import load_checkpoint, save_checkpoint
    from moevit.model.importers import import_weights
    from moevit.paths import output_file

    output_file(args.output, "checkpoint")
    base = load_checkpoint(args.base)[0] if args.base else None
    model = import_weights(args.format, args.source, args.config, base=base)
    extra = {"imported_from": {"format": args.format, "source": str(args.source), "base": args.base}}
    path = save_checkpoint(args.output, model, extra=extra)
    rule = model.config.gate  # the rule the file implies (moevit.model.importers)
    print(f"imported {args.format} {args.source} as config {model.config.name!r}, gate {rule!r}: {path}")


def _export(args):
    from moevit.model.checkpoint import load_checkpoint
    from moevit.model.importers import export_weights
    from moevit.paths import output_file, output_folder

    if args.format == "edge-moe":
        output_folder(args.output, "Edge-MoE dump folder")
    else:
        output_file(args.output, "M³ViT checkpoint")
    model, _ = load_checkpoint(args.checkpoint)
    path = export_weights(args.format, model, args.output)
    print(f"exported {args.checkpoint} (config {model.config.name!r}) as {args.format}: {path}")


def register_importers(subparsers):
    """Add ``import`` and ``export`` to the ``moevit`` sub-commands."""
    parser = subparsers.add_parser(
        "import", help="an M³ViT checkpoint or an Edge-MoE weight dump into a moevit checkpoint"
    )
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument(
        "source", help="m3vit: a .pth file or a folder of per-rank <rank>.pth; edge-moe: a folder of *.float32.bin"
    )
    parser.add_argument("-o", "--output", required=True, help="the moevit checkpoint to write")
    parser.add_argument(
        "--config", default=None, help="model config (default: m3vit, the one the shapes fit; edge-moe, edge-moe)"
    )
    parser.add_argument(
        "--base", default=None, metavar="CKPT",
        help="a moevit checkpoint that supplies what the source lacks (final norm, heads, gate noise)",
    )
    parser.set_defaults(handler=_import)

    parser = subparsers.add_parser(
        "export", help="a moevit checkpoint as an M³ViT checkpoint or Edge-MoE weight files"
    )
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("checkpoint", help="the moevit checkpoint")
    parser.add_argument("-o", "--output", required=True, help="m3vit: the .pth file; edge-moe: the folder")
    parser.set_defaults(handler=_export)
