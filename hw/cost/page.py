"""``moevit report``: one Markdown page and PNG charts of the design points per board.

The page (``build/report/report.md``) holds, for the ``edge-moe`` model:

* a table of the anchors' published figures beside our predicted ones, each
  number labelled *published* (with the paper it is read from), *derived*
  (computed here from a published figure, the formula given), *predicted* (the
  cost model, :mod:`moevit.hw.cost.dse`) or *simulated*; a figure the sources
  do not give is said to be missing, never guessed;
* a roofline per board (``roofline-<board>.png``): the compute roof of the
  chosen point and of the board's DSPs, the bandwidth roof of the top's memory
  port and of the board's memory, our points at batch 1 and at the best batch,
  and the anchors' points where a published figure allows one;
* the predicted latency per unit of each board's chosen point
  (``latency-units.png``).

:func:`write_report` takes ``sections``: extra ``(title, markdown)`` pairs
appended to the page, the hook for figures other areas measure (the
reliability counts of ``moevit bench reliability --json``, for one).
"""

from pathlib import Path

__all__ = ["ANCHORS", "write_report"]

#: The anchors' figures found in public sources (their abstracts; the search index held
#: no copy of their result tables). Each: (design, board, what, value, label, source).
ANCHORS = (
    ("Edge-MoE", "zcu102", "energy efficiency vs GPU / CPU", "2.24x / 4.90x", "published",
     "Sarkar et al., Edge-MoE, ICCAD 2023, arXiv 2305.18691, abstract"),
    ("Edge-MoE", "zcu102", "latency, FPS, GOPS", "not found", "-",
     "not in the abstract; the result tables were not in the searched copies"),
    ("UbiMoE", "zcu102", "throughput vs the best prior FPGA design", "1.34x", "published",
     "Dong et al., UbiMoE, ISCAS 2025, arXiv 2502.05602, abstract"),
    ("UbiMoE", "u280", "throughput vs the best prior FPGA design", "3.35x", "published",
     "Dong et al., UbiMoE, arXiv 2502.05602, abstract"),
    ("UbiMoE", "zcu102 / u280", "energy efficiency vs the best prior FPGA design",
     "1.75x / 1.54x", "published", "Dong et al., UbiMoE, arXiv 2502.05602, abstract"),
    ("CoQMoE", "u280", "throughput", "about 155 FPS", "published",
     "Dong et al., CoQMoE, arXiv 2506.08496, abstract ('nearly 155 frames per second'; the "
     "board, U280, is the issue's: the abstract does not name it)"),
    ("CoQMoE", "u280", "throughput vs the best prior FPGA MoE accelerator", "5.35x",
     "published", "Dong et al., CoQMoE, arXiv 2506.08496, abstract"),
    ("M³ViT", "zcu104", "memory requirement / energy efficiency vs an FPGA baseline",
     "2.4x less / up to 9.23x", "published",
     "Liang et al., M³ViT, NeurIPS 2022, arXiv 2210.14793, abstract"),
    ("M³ViT", "zcu104", "latency, FPS", "not found", "-",
     "not in the abstract; the result tables were not in the searched copies"),
)
#: CoQMoE's published throughput, the one anchor point a roofline can place.
COQMOE_FPS = 155.0
BOARDS = ("zcu102", "zcu104", "u280")


def _rows(quick, progress):
    from moevit.hw.cost.dse import dse_rows

    rows = []
    for board in BOARDS:
        for fabric in (True, False):
            rows += dse_rows(board, "edge-moe", quick=quick, fabric=fabric, progress=progress)
    return rows


def _figure(size):
    """A figure and its axes, drawn off screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig, ax, ylabel, title, path, legend="best"):
    """Label ``ax``, write ``fig`` to ``path`` and free it."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _roofline(row, board, path):
    import numpy as np

    macs = row["macs_per_image"]
    clock = row["clock_mhz"] * 1e6
    ops = 2 * macs
    fig, ax = _figure((6.5, 4.2))
    x = np.logspace(-1, 4, 200)
    peak_point = 2 * row["mac_units"] * clock / 1e9
    peak_board = 2 * board.dsp * 2 * clock / 1e9      # every DSP two int8 MACs (packing)
    port = row["bandwidth_gbs"]
    memory = max(m.bandwidth_gbs for m in board.memories)
    ax.plot(x, np.minimum(peak_point, port * x), label=f"our point: {peak_point:,.0f} GOPS, "
            f"port {port:.1f} GB/s")
    ax.plot(x, np.minimum(peak_board, memory * x), "--",
            label=f"board: {peak_board:,.0f} GOPS (DSPs x2), {memory:g} GB/s")
    for gops, nbytes, batch in ((row["gops"], row["bytes_per_image"], 1),
                                (row["best_gops"], row["bytes_per_image_best"],
                                 row["best_batch"])):
        ax.plot(ops / nbytes, gops, "o",
                label=f"moevit, batch {batch}: {gops:.0f} GOPS (predicted)")
    if board.name == "u280":
        gops = 2 * macs * COQMOE_FPS / 1e9
        ax.axhline(gops, color="gray", lw=0.8, ls=":")
        ax.text(0.12, gops * 1.08, f"CoQMoE 155 FPS -> {gops:.0f} GOPS (derived)", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (int8 ops per byte of memory traffic)")
    _save(fig, ax, "GOPS", f"{board.name}: edge-moe roofline (predicted)", path, "lower right")


def _units_chart(rows, path):
    units = sorted({u for r in rows for u in r["unit_cycles"]})
    fig, ax = _figure((6.5, 3.5))
    labels = [r["board"] for r in rows]
    bottom = [0.0] * len(rows)
    for unit in units:
        ms = [r["unit_cycles"].get(unit, 0) / (r["clock_mhz"] * 1e3) for r in rows]
        ax.bar(labels, ms, bottom=bottom, label=unit)
        bottom = [b + m for b, m in zip(bottom, ms)]
    _save(fig, ax, "ms per image, batch 1 (predicted)",
          "edge-moe: latency per unit of each board's chosen point", path)


#: The batch-1 floors of a row (dse.latency_floors, dse.lowest_floor): the chart's label,
#: the table's, the row's key.
FLOORS = (
    ("one instruction at a time, this point", "serial", "serial_floor_ms"),
    ("one instruction at a time, any fitting point", "serial anywhere", "lowest_serial_floor_ms"),
    ("any schedule of one image, this point's units", "units", "units_floor_ms"),
    ("any schedule of one image, any fitting point", "units anywhere", "lowest_floor_ms"),
    ("every weight read once on its ports", "weights", "weights_floor_ms"),
)


def _floors_chart(rows, path):
    """Per board, the predicted batch-1 latency beside its floors, and the issue's latency
    target where it has one."""
    fig, ax = _figure((7, 3.8))
    width = 0.8 / (len(FLOORS) + 1)
    for k, (label, _, key) in enumerate((("predicted", "", "latency_ms"),) + FLOORS):
        ax.bar([i + (k - len(FLOORS) / 2) * width for i in range(len(rows))],
               [r[key] for r in rows], width, label=label)
    for i, r in enumerate(rows):
        for t in r["targets"]:
            if t["field"] == "latency_ms":
                ax.hlines(t["value"], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                          label=f"target ({r['board']})")
    ax.set_xticks(range(len(rows)), [r["board"] for r in rows])
    _save(fig, ax, "ms per image, batch 1",
          "edge-moe: each board's point and what no schedule or point goes under", path)


def _table(rows, columns):
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(f(r)) for _, f in columns) + " |")
    return "\n".join(lines)


def write_report(folder, *, quick=False, progress=True, sections=()) -> Path:
    """Write ``report.md`` and its charts into ``folder``; return the page's path.

    Parameters
    ----------
    sections : sequence of (str, str)
        Extra ``(title, markdown)`` sections appended to the page (the hook for the
        reliability counts and any other area's figures).
    """
    from datetime import datetime, timezone

    from moevit.hw.boards import get_board
    from moevit.hw.cost.dse import OBJECTIVES, ROUTING, USABLE, workload

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(quick, progress)
    work = workload("edge-moe")
    for r in rows:
        _add_bytes(r, work)
    chosen = [r for r in rows if r["fabric_limits"]]
    unbounded = [r for r in rows if not r["fabric_limits"]]
    for r in chosen:
        _roofline(r, get_board(r["board"]), folder / f"roofline-{r['board']}.png")
    _units_chart(chosen, folder / "latency-units.png")
    _floors_chart(chosen, folder / "floors.png")

    def pct(key):
        return lambda r: f"{r[key]:,.0f} ({r[key] / r['board_' + key]:.0%})" \
            if r["board_" + key] else f"{r[key]:,.0f}"

    ours = _table(chosen, [
        ("board", lambda r: r["board"]),
        ("array (MAC units)", lambda r: f"{r['hw']['rows']}x{r['hw']['cols']} + attention "
                                        f"({r['mac_units']:,})"),
        ("packing", lambda r: r["dsp_packing"]),
        ("latency, batch 1", lambda r: f"{r['latency_ms']:.2f} ms *predicted*"),
        ("floors: " + " / ".join(short for _, short, _ in FLOORS),
         lambda r: " / ".join(f"{r[key]:.2f}" for *_, key in FLOORS) + " ms *derived*"),
        ("FPS batch 1", lambda r: f"{r['fps_batch1']:.0f} *predicted*"),
        ("best FPS (batch)", lambda r: f"{r['best_fps']:.0f} ({r['best_batch']}) *predicted*"),
        ("GOPS", lambda r: f"{r['gops']:.0f} *predicted*"),
        ("binding limit", lambda r: r["binding_limit"]),
        ("DSP", pct("dsp")), ("BRAM36", pct("bram36")), ("LUT", pct("lut")),
    ])
    no_fabric = _table(unbounded, [
        ("board", lambda r: r["board"]),
        ("array (MAC units)", lambda r: f"{r['hw']['rows']}x{r['hw']['cols']} "
                                        f"({r['mac_units']:,})"),
        ("latency, batch 1", lambda r: f"{r['latency_ms']:.2f} ms"),
        ("best FPS (batch)", lambda r: f"{r['best_fps']:.0f} ({r['best_batch']})"),
        ("binding limit", lambda r: r["binding_limit"]),
        ("DSP", pct("dsp")), ("LUT (Yosys)", pct("lut")),
    ])
    anchors = _table([dict(zip(("design", "board", "what", "value", "label", "source"), a))
                      for a in ANCHORS],
                     [(h, (lambda k: lambda r: r[k] if k != "label" or r[k] == "-"
                           else f"*{r[k]}*")(k))
                      for h, k in (("design", "design"), ("board", "board"), ("figure", "what"),
                                   ("value", "value"), ("label", "label"),
                                   ("source", "source"))])
    u280 = next(r for r in chosen if r["board"] == "u280")
    derived = (f"* CoQMoE at 155 FPS on the edge-moe model ({work.macs[u280['task']]:,} MACs "
               f"per image, {u280['task']}) is {2 * work.macs[u280['task']] * COQMOE_FPS / 1e9:.0f}"
               f" GOPS *derived* (2 x MACs x FPS; that it runs the same model is the issue's "
               f"statement, not checked).\n"
               f"* Edge-MoE's 256 MAC units need at least "
               f"{work.macs[u280['task']] / 256 / 200e6 * 1e3:.1f} ms per image at 200 MHz "
               f"*derived* (MACs / (256 x clock); its clock is not in the sources found, 200 MHz "
               f"is our board file's).")
    targets = "\n".join(
        f"* {r['board']}: {t['field']} {t['op']} {t['value']:g}: predicted "
        f"{t['predicted']:,.2f}: " + ("met" if t["met"] else f"**not met**, limit: {t['limit']}")
        for r in chosen for t in r["targets"])
    ceilings = "\n".join(_ceilings(r) for r in chosen)
    page = f"""# moevit: edge-moe on ZCU102, ZCU104 and U280

Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `moevit report`{' (reduced grid)' if quick else ''}.
Labels: *published* (read in the cited paper), *derived* (computed here from a published
figure, formula given), *predicted* (moevit's cost model: `moevit dse`), *simulated*
(co-simulated RTL).

## Our design points (predicted)

Each board's point chosen by `moevit dse --board B --config edge-moe` (by the board's
objective: {'; '.join(f'{host}: {why}' for host, (_, why) in OBJECTIVES.items())}), LUT and FF limited by Yosys's
counts (upper bounds), every resource at most {', '.join(f'{k} {v:.0%}' for k, v in USABLE.items())}
of the board. Routing: {ROUTING}. The floors bound the batch-1 latency from below
(`latency_floors`, the same cycle model's terms): every weight read once at the design's
bandwidth; one instruction at a time, each holding its unit the fewest
cycles it can (the linear array's steps, a tile of rows tokens by cols outputs taking
in_features of them; the attention's MACs at its peak) or at its weights' reading,
whichever is longer (only instructions run side by side go under it), on this point and
at least on any HwConfig of these kernels that fits the board (`lowest_floor`: every linear
array, rows up to the tokens and columns dividing the model's width, beside every attention
kernel that fits with it, the rest at its smallest; LayerNorm, routing and COMBINE left
out); and any schedule that respects the image's data dependencies (each attention after
every token's K and V, each MoE layer's experts after every token's routing; the layers
between those joins pipelined token by token across the units, each stretch as long as its
busiest unit's work, every weight read ahead), on this point's units and at least on any
fitting HwConfig.

{ours}

![latency per unit](latency-units.png)

![floors](floors.png)

Without the LUT/FF limits (Vivado packs the accumulators Yosys leaves in fabric into the
DSP48E2, so the real fabric is smaller; DSP, BRAM and URAM still limit):

{no_fabric}

### The issue's targets

{targets}

What bounds each point, whatever the array (predicted, batch 1):

{ceilings}

## The anchors

{anchors}

{derived}

No anchor publishes a simulated or measured figure of our own RTL: moevit's *simulated*
figures are `moevit bench top`'s, and the cost model's error per bench row is `moevit hw
cost --check`'s (their last runs: the sections below).

## Rooflines

""" + "\n".join(f"![{r['board']}](roofline-{r['board']}.png)" for r in chosen) + "\n"
    for title, text in sections:
        page += f"\n## {title}\n\n{text}\n"
    path = folder / "report.md"
    path.write_text(page)
    return path


def _ceilings(row):
    """The floors a larger array cannot lower: the LayerNorm unit's cycles (at its lanes)
    and the bytes over the memory ports' bandwidth."""
    ms = row["unit_cycles"].get("layernorm", 0) / (row["clock_mhz"] * 1e3)
    memory = row["bytes_per_image"] / (row["bandwidth_gbs"] * 1e6)
    best = row["bytes_per_image_best"] / (row["bandwidth_gbs"] * 1e6)
    return (f"* {row['board']}: LayerNorm {ms:.2f} ms per image (at most {1e3 / ms:,.0f} images/s "
            f"at any batch); memory traffic {row['bytes_per_image'] / 1e6:.1f} MB per image over "
            f"{row['bandwidth_gbs']:.1f} GB/s (the top's {row['memory_ports']} memory "
            f"port{'s' * (row['memory_ports'] > 1)}) = {memory:.2f} ms at "
            f"batch 1, {best:.2f} ms per image at batch {row['best_batch']}")


def _add_bytes(row, work):
    """Bytes per image at batch 1 and at the best batch, for the roofline."""
    from moevit.hw.boards import get_board
    from moevit.hw.config import HwConfig
    from moevit.hw.cost.cycles import board_bandwidth
    from moevit.hw.cost.dse import predict, workload

    hw = HwConfig.from_dict(row["hw"])
    bandwidth = board_bandwidth(get_board(row["board"]), hw)
    row["bytes_per_image"] = predict(work.steps(row["task"]), hw, bandwidth).bytes
    b = row["best_batch"]
    batched = workload(work.config, batch=b).steps(row["task"])  # its compiled program
    row["bytes_per_image_best"] = predict(batched, hw, bandwidth, b).bytes / b
