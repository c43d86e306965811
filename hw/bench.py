"""``moevit bench linear``: simulated cycles of the linear kernel against the ideal.

The shapes of one config run back to back in one simulation of the cocotb
bench (:mod:`moevit.sim.benches.linear`) with no gaps and no back-pressure;
each output is checked against the golden model, and each shape's cycles are
counted from its descriptor's acceptance (for the first; for the others, from
the previous shape's last output beat) to its last output beat, so the first
weight tile's load and the pipeline's drain are included.
``ideal_cycles = MACs / MAC units``; ``utilization = ideal / cycles``;
``model_cycles`` is :meth:`LinearDescriptor.sequence_cycles` (the cost
model, which counts the same way); ``stalls`` are the kernel's stall
counters per cause (all 0 here: nothing pauses). The shapes are
:func:`bench_points`'s (``--hw NAME``: every layer shape of the model that
the named hardware config serves, on it); a progress bar on stderr counts
the operations.
"""

import numpy as np

__all__ = ["linear_shapes", "bench_points", "bench_linear", "print_table", "print_rows"]


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
    from moevit.hw.program.descriptor import LinearDescriptor
    from moevit.model.integer import intops

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


def _check_fits(hw, shapes):
    from moevit.hw.program.descriptor import DescriptorError, LinearDescriptor

    for name, tokens, fin, fout, _ in shapes:
        try:
            LinearDescriptor(hw, tokens=tokens, in_features=fin, out_features=fout)
        except DescriptorError as error:
            raise DescriptorError(f"Bench linear: layer {name} ({tokens}x{fin}->{fout}) does "
                                  f"not fit hardware config {hw.name!r}: {error}") from None


def _simulate(hw, runs, simulator, test_id, bar):
    """:func:`~moevit.sim.units.run_linear`, advancing ``bar`` by each operation done
    (counted from the outputs the bench writes as it goes)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from moevit.sim.runner import sim_folder
    from moevit.sim.units import run_linear

    out, done = sim_folder(test_id) / "out", 0
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run_linear, hw, runs, test_id=test_id, simulator=simulator)
        while not job.done():
            time.sleep(0.5)
            now = len(list(out.glob("y*.npy"))) if out.exists() else 0
            bar.update(max(0, now - done))
            done = max(done, now)
        results, result = job.result()
    bar.update(sum(len(run["ops"]) for run in runs) - done)
    return results, result


def _run(hw, shapes, simulator, test_id, bar):
    from moevit.errors import MoevitError
    from moevit.hw.program.descriptor import LinearDescriptor
    from moevit.hw.units.linear import STALL_CAUSES
    from moevit.sim.linear_cases import check_outputs

    runs = [dict(ops=_ops(hw, shapes, seed=len(shapes)))]
    results, result = _simulate(hw, runs, simulator, test_id, bar)
    try:
        check_outputs(runs, results, f"bench {hw.name}")
    except AssertionError as error:
        raise MoevitError(f"Bench linear: the kernel's output differs from the golden model: "
                          f"{error}") from None
    got = results[0]
    model = LinearDescriptor.sequence_cycles([op["desc"] for op in runs[0]["ops"]])
    rows = []
    for k, ((name, tokens, fin, fout, gelu), op) in enumerate(zip(shapes, runs[0]["ops"])):
        desc, cycles, stalls = op["desc"], got["cycles"][k], got["stalls"][k]
        rows.append(dict(
            config=hw.name, layer=name, shape=f"{tokens}x{fin}->{fout}", tokens=tokens,
            in_features=fin, out_features=fout, gelu=bool(gelu),
            array=f"{hw.rows}x{hw.cols}", macs=desc.macs, cycles=cycles,
            ideal_cycles=desc.ideal_cycles(), array_cycles=desc.array_cycles(),
            model_cycles=model[k], utilization=round(desc.ideal_cycles() / cycles, 4),
            stalls=stalls,
            simulator=simulator, sim_seconds=round(result.seconds, 1)))
    return rows


def bench_points(quick=False, hw=None) -> list:
    """``(hardware config name, shapes)`` the bench simulates.

    By default, each on its model config's default array: the ``tiny``
    model's every layer shape; then (unless ``quick``) the MoE sequences
    that once went wrong back to back (issue 11: the gate on the last token
    chunk, an odd number of out tiles with few rows in its last token tile,
    then an expert) on ``edge-moe`` (129 tokens) and ``m3vit-s`` (the last
    177 of 1,201 tokens), and one ViT-S layer, 197 tokens 384 -> 1536 (the
    MLP's fc1 with GELU). With ``hw`` (a named instance, ``zcu102-edge-moe``,
    or a model config's name): every layer shape of the model that instance
    serves, on it, a layer longer than its token buffer cut into chunks of
    ``max_tokens`` as the search's cost model runs it (``name[k]``).
    """
    from moevit.hw.config import get_hw_config, hw_config_model
    from moevit.model.config import get_config

    if hw is not None:
        limit, shapes = get_hw_config(hw).max_tokens, []
        for name, tokens, *rest in linear_shapes(get_config(hw_config_model(hw))):
            starts = range(0, tokens, limit)
            shapes += [(name if len(starts) == 1 else f"{name}[{k}]",
                        min(limit, tokens - start), *rest) for k, start in enumerate(starts)]
        return [(hw, shapes)]
    points = [("tiny", linear_shapes(get_config("tiny")))]
    if not quick:
        points += [
            ("edge-moe", [("mlp.gate", 129, 192, 16, 0), ("expert.fc1", 16, 192, 384, 1),
                          ("expert.fc2", 16, 384, 192, 0)]),
            ("m3vit-s", [("mlp.gate.tail", 177, 384, 16, 0), ("expert.fc1", 16, 384, 64, 0),
                         ("vit-s.mlp.fc1", 197, 384, 1536, 1)]),
        ]
    return points


def bench_linear(simulator="verilator", quick=False, hw=None, progress=True) -> list:
    """Rows of the linear-kernel benchmark (see the module's description), with a
    progress bar (on stderr) of the operations simulated. ``hw``: a named hardware
    config (:func:`bench_points`)."""
    from tqdm import tqdm

    from moevit.hw.config import get_hw_config

    points = [(get_hw_config(name), shapes) for name, shapes in bench_points(quick, hw)]
    for config, shapes in points:  # every shape checked against its array before simulating
        _check_fits(config, shapes)
    rows = []
    with tqdm(total=sum(len(shapes) for _, shapes in points), unit="op",
              desc="bench linear", disable=not progress) as bar:
        for config, shapes in points:
            bar.set_postfix_str(config.name)
            rows += _run(config, shapes, simulator,
                         f"bench-linear-{config.name}-{simulator}", bar)
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
    from moevit.hw.units.linear import STALL_CAUSES

    rows = [dict(r, stalls_text="/".join(str(r["stalls"][c]) for c in STALL_CAUSES))
            for r in rows]
    print_rows(rows, [("config", "config", "<9", ""), ("layer", "layer", "<15", ""),
                      ("shape", "shape", "<17", ""), ("array", "array", ">6", ""),
                      ("cycles", "cycles", ">10", ""), ("model", "model_cycles", ">10", ""),
                      ("ideal", "ideal_cycles", ">10", ""), ("util", "utilization", ">8", ".1%"),
                      ("stalls x/w/chan/res/out", "stalls_text", ">25", "")],
               "(cycles from the descriptor, or the previous shape's last beat, to the last "
               "output beat, simulated on {simulator}; model = the cost model; ideal = MACs / "
               "MAC units; stalls: cycles each stream starved the kernel, or the output "
               "held it)")
