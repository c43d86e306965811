"""``moevit bench linear``: simulated cycles of the linear kernel against the ideal.

The shapes of one config run back to back in one simulation of the cocotb
bench (:mod:`moevit.sim.benches.linear`) with no gaps and no back-pressure;
each output is checked against the golden model, and each shape's cycles are
counted from its descriptor's acceptance (for the first; for the others, from
the previous shape's last output beat, one cycle later) to its last output
beat, so the first weight tile's load and the pipeline's drain are included.
``ideal_cycles = MACs / MAC units``; ``utilization = ideal / cycles``;
``model_cycles`` is :meth:`LinearDescriptor.sequence_cycles` (the cost
model, which counts the same way); ``stall_*`` are the kernel's stall
counters (all 0 here: nothing pauses).

Shapes: every linear layer shape of the ``tiny`` model on its default
hardware (a top-2 expert sees about ``2 * tokens / experts`` tokens), then
one ViT-S layer, 197 tokens 384 -> 1536 (the MLP's fc1 with GELU), on the
``m3vit-s`` hardware (8 x 32 = 256 MAC units), simulated in full.
"""

import numpy as np

__all__ = ["linear_shapes", "bench_linear", "print_table", "print_rows"]


def linear_shapes(model) -> list:
    """``(name, tokens, in, out, gelu)`` of every linear layer shape of ``model``."""
    t, d = model.tokens, model.dim
    expert_tokens = max(1, round(model.top_k * t / model.experts))
    shapes = [
        ("patch_embed", model.patches, model.patch_dim, d, 0),
        ("attn.qkv", t, d, 3 * d, 0),
        ("attn.proj", t, d, d, 0),
        ("mlp.fc1", t, d, model.mlp_hidden, 1),
        ("mlp.fc2", t, model.mlp_hidden, d, 0),
        ("mlp.gate", t, d, model.experts, 0),
        ("expert.fc1", expert_tokens, d, model.expert_hidden, 1),
        ("expert.fc2", expert_tokens, model.expert_hidden, d, 0),
    ]
    for task in model.tasks:
        shapes.append((f"head.{task.name}", model.patches, d, task.classes * model.patch ** 2, 0))
    return shapes


def _ops(hw, shapes, seed):
    from moevit.hw.descriptor import LinearDescriptor
    from moevit.model import intops

    rng = np.random.default_rng(seed)
    ops = []
    for _, tokens, fin, fout, gelu in shapes:
        fields = dict(tokens=tokens, in_features=fin, out_features=fout)
        if gelu:
            b, c = intops.gelu_constants(0.05)
            gm, gs = intops.quantize_multiplier(1.0 / (2 * c))
            fields.update(gelu=1, gelu_b=b, gelu_c=c, gelu_mult=int(gm), gelu_shift=int(gs))
        spread = 74.0 * 74.0 * np.sqrt(fin)
        mult, shift = intops.quantize_multiplier(np.full(fout, 40.0 / spread))
        ops.append(dict(
            desc=LinearDescriptor(hw, **fields),
            x=rng.integers(-128, 128, (tokens, fin), dtype=np.int8),
            weight=rng.integers(-128, 128, (fout, fin), dtype=np.int8),
            bias=rng.integers(-1000, 1000, fout).astype(np.int32),
            multiplier=mult, shift=shift))
    return ops


def _run(hw, shapes, simulator, test_id):
    from moevit.hw.descriptor import LinearDescriptor
    from moevit.hw.linear import STALL_CAUSES
    from moevit.errors import MoevitError
    from moevit.sim.linear_cases import check_outputs
    from moevit.sim.units import run_linear

    runs = [dict(ops=_ops(hw, shapes, seed=len(shapes)))]
    results, result = run_linear(hw, runs, test_id=test_id, simulator=simulator)
    try:
        check_outputs(runs, results, f"bench {hw.name}")
    except AssertionError as error:
        raise MoevitError(f"Bench linear: the kernel's output differs from the golden model: "
                          f"{error}") from None
    got = results[0]
    model = LinearDescriptor.sequence_cycles([op["desc"] for op in runs[0]["ops"]])
    rows = []
    for k, ((name, tokens, fin, fout, gelu), op) in enumerate(zip(shapes, runs[0]["ops"])):
        desc, cycles = op["desc"], got["cycles"][k]
        rows.append(dict(
            config=hw.name, layer=name, shape=f"{tokens}x{fin}->{fout}", tokens=tokens,
            in_features=fin, out_features=fout, gelu=bool(gelu),
            array=f"{hw.rows}x{hw.cols}", macs=desc.macs, cycles=cycles,
            ideal_cycles=desc.ideal_cycles(), array_cycles=desc.array_cycles(),
            model_cycles=model[k], utilization=round(desc.ideal_cycles() / cycles, 4),
            **{f"stall_{c}": got["stalls"][k][c] for c in STALL_CAUSES},
            simulator=simulator, sim_seconds=round(result.seconds, 1)))
    return rows


def bench_linear(simulator="verilator", quick=False) -> list:
    """Rows of the linear-kernel benchmark (see the module's description)."""
    from moevit.hw.config import get_hw_config
    from moevit.model.config import get_config

    rows = _run(get_hw_config("tiny"), linear_shapes(get_config("tiny")), simulator,
                f"bench-linear-tiny-{simulator}")
    if not quick:
        vit = [("vit-s.mlp.fc1", 197, 384, 1536, 1)]
        rows += _run(get_hw_config("m3vit-s"), vit, simulator, f"bench-linear-vits-{simulator}")
    return rows


def print_rows(rows, columns, note=None) -> None:
    """Print benchmark ``rows`` as a table.

    Parameters
    ----------
    rows : list of dict
    columns : list of tuple
        ``(header, key, place, fmt)``: ``place`` the alignment and width of
        the header and the values (``"<9"``, ``">10"``), ``fmt`` the rest of
        the values' format spec (``""``, ``".1%"``).
    note : str, optional
        Printed after the rows (if any), formatted with the first row's keys.
    """
    print("".join(f"{header:{place}}" for header, _, place, _ in columns))
    for r in rows:
        print("".join(f"{r[key]:{place}{fmt}}" for _, key, place, fmt in columns))
    if rows and note:
        print(note.format(**rows[0]))


def print_table(rows) -> None:
    """Print :func:`bench_linear`'s rows as a table."""
    print_rows(rows, [("config", "config", "<9", ""), ("layer", "layer", "<15", ""),
                      ("shape", "shape", "<17", ""), ("array", "array", ">6", ""),
                      ("cycles", "cycles", ">10", ""), ("model", "model_cycles", ">10", ""),
                      ("ideal", "ideal_cycles", ">10", ""), ("util", "utilization", ">8", ".1%")],
               "(cycles from the descriptor to the last output beat, simulated on "
               "{simulator}; ideal = MACs / MAC units)")
