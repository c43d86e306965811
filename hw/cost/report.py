"""``moevit hw cost``: the cost model's figures as rows and as a table."""

from moevit.errors import ConfigError

__all__ = ["cost_rows", "print_cost", "check_rows", "top_check_rows", "variant_check_rows",
           "VARIANTS", "print_check", "AIM",
           "record_check", "record_bench_top", "record_confirm", "measured_sections"]


def _program_and_image(quantized, config, hw=None, routing="model"):
    """The compiled program and the image ``moevit bench top`` runs (the validation set's
    ninth synthetic image), from a quantized-model file or a config's signal model, on the
    named HwConfig ``hw`` (default: the model's), with the model's gates or ``routing``
    ``"balanced"`` (:func:`~moevit.hw.bench_top.balanced_gates`)."""
    from moevit.hw.bench_top import _hw, _program, bench_program

    if config is not None:
        from moevit.model.config import get_config

        get_config(config)  # an unknown name fails here, before the quantization
        return _program(config, hw=_hw(config, hw), routing=routing)
    from moevit.hw.config import HwConfig, get_hw_config
    from moevit.model.integer.quantize import load_quantized

    instance = get_hw_config(hw) if hw is not None else None  # a bad name before the load
    qmodel = load_quantized(quantized)
    if instance is None:
        instance = HwConfig.for_model(qmodel.config)
    instance.check_model(qmodel.config)
    return bench_program(qmodel, instance, routing)


def _tasks(program, task):
    names = [t["name"] for t in program.tasks]
    if task is None:
        return list(range(len(names)))
    if task in names:
        return [names.index(task)]
    if task.isdigit() and int(task) < len(names):
        return [int(task)]
    raise ConfigError(f"Unknown task {task!r}; the program's tasks: {', '.join(names)}")


def cost_rows(*, quantized=None, config=None, task=None, board=None, latency=None,
              per_instruction=False, progress=False, hw=None, routing="model"):
    """One row per unit (or per instruction: also its compute and memory cycles and its
    bytes read and written) and task, then a ``total`` row per task with the latency.
    ``latency``: the memory's, in cycles (default: the board's, else 0); ``hw``: a named
    HwConfig (default: the model's); ``routing``: the model's gates or ``"balanced"``
    (every expert chosen, as the search assumes)."""
    from moevit.errors import UsageError
    from moevit.hw.bench_top import ROUTINGS
    from moevit.hw.boards import get_board
    from moevit.hw.cost.cycles import (board_bandwidth, board_latency, board_memory_bandwidth,
                                       check_latency, program_cycles)
    from moevit.hw.program.isa import LANE_OF

    if latency is not None:
        check_latency(latency)
    if routing not in ROUTINGS:
        raise UsageError(f"--routing {routing!r}: {' or '.join(ROUTINGS)}")
    board = get_board(board) if board is not None else None  # before the long work
    program, image = _program_and_image(quantized, config, hw, routing)
    hw = program.hw
    bandwidth = board_bandwidth(board, hw) if board else None       # each memory port's
    memory = board_memory_bandwidth(board, hw) if board else None  # all ports together
    if latency is None:
        latency = board_latency(board, hw) if board else 0
    rows = []
    for t in _tasks(program, task):
        cost = program_cycles(program, image, t, bandwidth=bandwidth, memory_bandwidth=memory,
                              latency=latency, progress=progress)
        common = {"task": program.tasks[t]["name"], "board": board.name if board else None,
                  "bandwidth": round(cost.bandwidth, 3), "memory_latency": latency}
        total = cost.cycles
        if per_instruction:
            parts = [dict(i.row(), name=f"{i.index:>2} {i.mnemonic}", memory_bound=int(
                i.bound == "memory"), instructions=1, bytes=i.bytes_read + i.bytes_written)
                for i in cost.instructions]
            for part, start, end in zip(parts, cost.starts, cost.ends):   # two issue lanes
                part.update(lane=LANE_OF[part["mnemonic"]], start=start, end=end)
        else:
            parts = [dict(u, name=u["unit"], bound="memory" if 2 * u["memory_cycles"] >
                          u["cycles"] else "compute")
                     for u in cost.by_unit().values()]
        for p in parts:
            rows.append(dict(common, **p, share=p["cycles"] / total))
        bound = sum(i.cycles for i in cost.instructions if i.bound == "memory")
        rows.append(dict(common, name="total", instructions=len(cost.instructions),
                         cycles=total, bound="memory" if 2 * bound > total else "compute",
                         memory_bound=sum(i.bound == "memory" for i in cost.instructions),
                         bytes=sum(i.bytes_read + i.bytes_written for i in cost.instructions),
                         share=1.0, latency_ms=cost.latency_ms, clock_mhz=cost.clock_mhz,
                         issue_lanes=hw.issue_lanes))
    return rows


def print_cost(rows) -> None:
    from moevit.hw.bench import print_rows

    for name in dict.fromkeys(r["task"] for r in rows):
        part = [r for r in rows if r["task"] == name]
        total = part[-1]
        where = f"board {total['board']}" if total["board"] else "one bus word a cycle"
        print(f"task {name}: {total['bandwidth']:g} bytes/cycle ({where}), memory latency "
              f"{total['memory_latency']} cycles")
        lanes = total["issue_lanes"] > 1
        timeline = lanes and "start" in part[0]
        for r in part:
            r.setdefault("bound_text", f"  {r['bound']}")
            if timeline:   # the total row: the image's span
                r.setdefault("lane_text", f"  {r.get('lane', '')}")
                r.setdefault("start_text", f"{r.get('start', 0):,}")
                r.setdefault("end_text", f"{r.get('end', r['cycles']):,}")
        print_rows(part, [("", "name", "<14", ""), ("instr", "instructions", ">6", ""),
                          ("cycles", "cycles", ">11", ","), ("share", "share", ">8", ".1%"),
                          *([("  lane", "lane_text", "<7", ""), ("start", "start_text", ">10", ""),
                             ("end", "end_text", ">10", "")] if timeline else []),
                          ("bytes", "bytes", ">11", ","), ("  bound", "bound_text", "<10", ""),
                          ("mem-bound", "memory_bound", ">10", "")])
        how = "per instruction max(compute, memory) + issue"
        if lanes:
            how += ("; on two issue lanes instructions overlap: their cycles alone add up to "
                    "more than the image's, which is the two-lane timeline's end"
                    + (" (start and end; end - start is more than the cycles alone where the "
                       "lanes share the memory)" if timeline else ""))
        print(f"predicted latency {total['latency_ms']:.3f} ms at {total['clock_mhz']:g} MHz "
              f"({how})\n")


#: The issue's aim: the cost model within 5 % of the simulated cycles on every bench row.
AIM = 0.05


def check_rows(*, simulator="verilator", quick=False, slow=False, progress=True) -> list:
    """The cost model against the simulated cycles of every row of ``bench linear``,
    ``bench attention`` and ``bench top`` (tiny; those benches run here, minutes; ``slow``:
    also ``bench top --config edge-moe`` on its default hardware, and the saved
    ``zcu102-edge-moe`` behind the ZCU102's memory, hours).

    The kernel rows compare the kernels' cycle models (``LinearDescriptor.sequence_cycles``,
    ``AttentionDescriptor.expected_cycles``: what :func:`program_cycles` builds each
    instruction on) with the simulated kernels; the top rows compare the whole program's
    prediction (:func:`program_cycles`, one bus word a cycle: the bench's memory answers
    without stalls) with the co-simulated top, per task and ``expert_prefetch`` setting
    (each predicted on the program compiled for that setting), and on two more tops
    (:func:`variant_check_rows`: striped weights, a batched program)."""
    from moevit.hw.bench import bench_linear
    from moevit.hw.bench_attention import bench_attention
    from moevit.hw.bench_top import bench_top

    rows = []
    for bench, found in (
            ("linear", bench_linear(simulator=simulator, quick=quick, progress=progress)),
            ("attention", bench_attention(simulator=simulator, quick=quick, progress=progress))):
        for r in found:
            rows.append(_check_row(bench, f"{r['config']} {r['layer']} {r['shape']}",
                                   r["model_cycles"], r["cycles"]))
    rows += top_check_rows(bench_top("tiny", simulator=simulator), progress=progress)
    rows += variant_check_rows(simulator=simulator, progress=progress)
    if slow:
        rows += top_check_rows(bench_top("edge-moe", simulator=simulator, prefetch=(0,)),
                               progress=progress)
        # The saved ZCU102 point (a 512-bit bus over four ports, the weights striped, a
        # 512 KiB window, one image in token chunks on two issue lanes), the whole image
        # behind the board's memory: every beat in the simulator (the Python memory would
        # take hours a run at this size).
        rows += top_check_rows(bench_top("edge-moe", simulator=simulator, hw="zcu102-edge-moe",
                                         board="zcu102", memory="verilog"), progress=progress)
    return rows


def top_check_rows(found, progress=False) -> list:
    """The whole program's predicted cycles against ``bench top``'s rows ``found``, one
    row each (the program compiled again for each row's hardware and prefetch setting)."""
    from moevit.hw.bench_top import _board_memory, _hw, _program
    from moevit.hw.cost.cycles import program_cycles

    programs, rows = {}, []
    for r in found:
        routing = r.get("routing", "model")
        key = (r["config"], r.get("hw"), r["expert_prefetch"], r.get("blocks"), routing)
        if key not in programs:
            named = r.get("hw") if r.get("hw") not in (None, r["config"]) else None
            programs[key] = _program(r["config"], r["expert_prefetch"], _hw(r["config"], named),
                                     blocks=r.get("blocks"), routing=routing)
        program, image = programs[key]
        task = [t["name"] for t in program.tasks].index(r["task"])
        memory = _board_memory(r.get("board"), program.hw)
        predicted = program_cycles(program, image, task, progress=progress,
                                   bandwidth=memory.get("bandwidth"),
                                   memory_bandwidth=memory.get("memory_bandwidth"),
                                   latency=memory.get("board_latency", 0)).cycles
        whole = r.get("blocks") in (None, program.model.get("depth"))
        part = "whole program" if whole else f"first {r['blocks']} blocks"
        at = (f", {r['board']}'s memory" if r.get("board") else "") \
            + (", balanced routing" if routing == "balanced" else "")
        rows.append(_check_row("top", f"{program.hw.name} {r['task']} prefetch "
                                      f"{r['expert_prefetch']} ({part}{at})",
                               predicted, r["cycles"]))
    return rows


#: The two more tops the check runs tiny on (:func:`variant_check_rows`): name -> (HwConfig
#: changes from tiny's, the program's batch).
VARIANTS = {"striped": ({"memory_ports": 2, "weight_ports": 2}, 1),
            "batched": ({"max_tokens": 256}, 2),
            "lanes": ({"heads_parallel": 4, "memory_ports": 2}, 1),
            "rows": ({"row_lanes": 4, "memory_ports": 2}, 1),
            "issue-lanes": ({"max_tokens": 256, "memory_ports": 2, "issue_lanes": 2}, 2)}


def variant_check_rows(simulator="verilator", progress=False) -> list:
    """The whole tiny program's predicted cycles against the co-simulated top's on the tops of
    :data:`VARIANTS`, per task: its weights striped over both of two memory ports, a
    batch-2 program (one start, two images, every weight read once for both), four
    attention head lanes (one round an attention) on two ports, one head lane of four
    row lanes on two ports, and a batch-2 program on two issue lanes (its halves
    interleaved, the two-lane timeline of :func:`program_cycles`). Each run is
    checked bit-exact against the interpreter first (a row of a wrong run would mean
    nothing); the memory answers without stalls, as bench top's."""
    import numpy as np

    from moevit.errors import MoevitError
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.cost.cycles import program_cycles
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.benches.top import expected_runs, output_bytes, run_top
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    image = golden.quantize_image(image, qmodel.scale("input"))
    rng = np.random.default_rng(0)
    rows = []
    for name, (changes, batch) in VARIANTS.items():
        hw = DEFAULT_HW["tiny"].replace(name=f"tiny-{name}", **changes)
        program = compile_program(qmodel, hw, batch=batch)
        images = np.stack([image] + [rng.integers(-128, 128, image.shape, dtype=np.int8)
                                     for _ in range(batch - 1)]) if batch > 1 else image
        runs = [(t, [images]) for t in range(len(program.tasks))]
        got = run_top(program, runs, simulator=simulator, test_id=f"cost-check-tiny-{name}")
        want = expected_runs(program, runs)
        for run, expected in zip(got, want):
            size = output_bytes(program, run["task"])
            if run["error"] or not (np.array_equal(run["scratch"], expected["scratch"]) and all(
                    np.array_equal(a[:size], b[:size])
                    for a, b in zip(run["outputs"], expected["outputs"]))):
                raise MoevitError(f"The co-simulated tiny-{name} top is not bit-exact on task "
                                  f"{run['task']} (error {run['error']}): no cost row for it")
            predicted = program_cycles(program, images, run["task"], progress=progress).cycles
            what = (f"batch {batch} in two halves, two issue lanes" if hw.issue_lanes == 2
                    else f"batch {batch}, one start" if batch > 1 else
                    f"{hw.heads_parallel} head lanes, {hw.memory_ports} ports"
                    if hw.heads_parallel > 1 else
                    f"{hw.row_lanes} row lanes a head lane, {hw.memory_ports} ports"
                    if hw.row_lanes > 1 else
                    f"weights over {hw.weight_ports} of {hw.memory_ports} ports")
            rows.append(_check_row("top", f"tiny-{name} {program.tasks[run['task']]['name']} "
                                          f"({what})", predicted, run["cycles"]))
    return rows


def instruction_rows(program, image, task, issued, cycles, latency=0, bandwidth=None,
                     memory_bandwidth=None, stalls_at_end=(), finished=None) -> list:
    """Per instruction of one co-simulated run of ``program`` on ``image`` (one image,
    task ``task``): its simulated cycles beside the cost model's at the same memory (by
    default a bus word a cycle; :func:`program_cycles`); and for those on the linear
    kernel, ``stalls``: the cycles each of its inputs starved it, or its output FIFO held
    it, in that time (its counters in the marks, where the run has them). ``issued``,
    ``finished`` and ``stalls_at_end`` as ``run_top(timeline=True)`` gives them.

    On one issue lane, an instruction's cycles run from its issue to the next one's (the
    last: to the run's end, ``cycles``), as the model counts the issue after each
    instruction's work. On two, instructions overlap: from its issue to its lane's next
    finish (``finished``), beside the model's two-lane timeline from its start to its end
    (:func:`~moevit.hw.cost.cycles.lane_timeline`); each row also has its ``lane``, the
    cycle it was ``issued`` at and the cycle the model ``starts`` it."""
    from moevit.hw.cost.cycles import program_cycles

    cost = program_cycles(program, image, task, latency=latency, bandwidth=bandwidth,
                          memory_bandwidth=memory_bandwidth)
    if cost.ends:
        return _lane_rows(cost, issued, finished)
    marks = [*issued, [None, cycles, *stalls_at_end]]
    return [_instruction_row(cost.instructions[k], at, end, before, after)
            for (k, at, *before), (_, end, *after) in zip(marks, marks[1:])]


def _instruction_row(i, at, end, before, after, predicted=None) -> dict:
    """One instruction ``i`` (:class:`~moevit.hw.cost.cycles.InstructionCost`) simulated
    from cycle ``at`` to ``end``, the linear kernel's stall counters ``before`` and
    ``after``; ``predicted``: its modelled cycles (default ``i.cycles``)."""
    from moevit.hw.units.linear import STALL_CAUSES

    predicted = i.cycles if predicted is None else predicted
    row = {"index": i.index, "mnemonic": i.mnemonic, "bound": i.bound,
           "simulated": end - at, "predicted": predicted,
           "error": predicted / max(1, end - at) - 1}
    if (i.unit == "linear" or i.mnemonic == "EXPERT") and before and after:
        row["stalls"] = {cause: (b - a) % 2**32
                         for cause, a, b in zip(STALL_CAUSES, before, after)}
    return row


def _lane_rows(cost, issued, finished) -> list:
    """:func:`instruction_rows` on two issue lanes: each lane's instructions, in the order
    they were issued, end at its finishes in order (one instruction a lane at a time)."""
    from moevit.hw.program.isa import LANE_OF

    if finished is None:
        raise ValueError("two issue lanes: the run's finishes are needed (run_top(timeline=True))")
    ends = {"main": [], "side": []}
    for lanes, at, *stalls in finished:
        for bit, lane in enumerate(("main", "side")):
            if lanes >> bit & 1:
                ends[lane].append([at, *stalls])
    starts = {"main": [], "side": []}
    for k, at, *stalls in issued:
        starts[LANE_OF[cost.instructions[k].mnemonic]].append([k, at, *stalls])
    rows = []
    for lane in ("main", "side"):
        if len(starts[lane]) != len(ends[lane]):
            raise ValueError(f"the {lane} lane issued {len(starts[lane])} instructions and "
                             f"finished {len(ends[lane])}")
        for (k, at, *before), (end, *after) in zip(starts[lane], ends[lane]):
            rows.append(dict(_instruction_row(cost.instructions[k], at, end, before, after,
                                              cost.ends[k] - cost.starts[k]),
                             lane=lane, issued=at, starts=cost.starts[k]))
    return sorted(rows, key=lambda row: row["index"])


def print_instructions(row) -> None:
    """``bench top --per-instruction``: one task's instructions, simulated and predicted,
    and what held the linear kernel in each of its instructions."""
    from moevit.hw.bench import print_rows

    shown = [dict(r, error_text=f"{r['error']:+.2%}", name=f"  {r['mnemonic']}",
                  stalls_text="  " + " ".join(f"{cause} {n:,}" for cause, n in r["stalls"].items()
                                              if n) if "stalls" in r else "")
             for r in row["instructions"]]
    lanes = "lane" in row["instructions"][0] if row["instructions"] else False
    print(f"\n{row['hw']} {row['task']} prefetch {row['expert_prefetch']}, per instruction"
          + (" (two issue lanes: from its issue to its finish, beside the model's two-lane "
             "timeline; at = the cycle it was issued, the model's start beside it):"
             if lanes else " (from its issue to the next one's):"))
    print_rows(shown, [("#", "index", ">3", ""), ("  instruction", "name", "<15", ""),
                       *([("lane", "lane", ">5", ""), ("at", "issued", ">10", ","),
                          ("model at", "starts", ">10", ",")] if lanes else []),
                       ("simulated", "simulated", ">10", ","),
                       ("predicted", "predicted", ">10", ","), ("error", "error_text", ">9", ""),
                       ("bound", "bound", ">9", ""),
                       ("  linear kernel starved / held (cycles)", "stalls_text", "<", "")])
    kinds = [dict(k, error_text=f"{k['error']:+.2%}", name=f"  {k['mnemonic']}")
             for k in kind_rows(row["instructions"])]
    print(f"\n{row['hw']} {row['task']}, per kind of instruction:")
    print_rows(kinds, [("  instruction", "name", "<15", ""), ("count", "count", ">6", ""),
                       ("simulated", "simulated", ">11", ","),
                       ("predicted", "predicted", ">11", ","), ("error", "error_text", ">9", "")])


def kind_rows(instructions) -> list:
    """Per kind of instruction (mnemonic, in the order they first come) of
    :func:`instruction_rows`' rows: their count and their simulated and predicted cycles
    summed, and the error of the sums."""
    kinds = {}
    for r in instructions:
        kind = kinds.setdefault(r["mnemonic"], {"mnemonic": r["mnemonic"], "count": 0,
                                                "simulated": 0, "predicted": 0})
        kind["count"] += 1
        kind["simulated"] += r["simulated"]
        kind["predicted"] += r["predicted"]
    return [dict(k, error=k["predicted"] / max(1, k["simulated"]) - 1) for k in kinds.values()]


def _check_row(bench, name, predicted, simulated):
    error = predicted / simulated - 1
    return {"bench": bench, "row": name, "predicted": int(predicted),
            "simulated": int(simulated), "error": error, "within_aim": abs(error) <= AIM}


def print_check(rows) -> None:
    from moevit.hw.bench import print_rows

    shown = [dict(r, error_text=f"{r['error']:+.2%}", aim_text="yes" if r["within_aim"]
                  else "NO") for r in rows]
    print_rows(shown, [("bench", "bench", "<11", ""), ("row", "row", "<46", ""),
                       ("simulated", "simulated", ">11", ","),
                       ("predicted", "predicted", ">11", ","), ("error", "error_text", ">9", ""),
                       ("within 5 %", "aim_text", ">12", "")])
    worst = max(abs(r["error"]) for r in rows)
    over = [r for r in rows if not r["within_aim"]]
    print(f"({len(rows) - len(over)} of {len(rows)} rows within the aim of {AIM:.0%}; worst "
          f"error {worst:.2%}. Memory: the benches' memories answer without stalls, so the "
          f"prediction is at one bus word a cycle, but --slow's board row at the board's; each "
          f"instruction is max(compute, bytes / bandwidth) + issue: the top overlaps an "
          f"instruction's transfers with its own compute, and on two issue lanes (the saved "
          f"ZCU102 point) runs one instruction a lane at once, on the model's two-lane timeline)")


# What the slow commands measured, kept under build/ for `moevit report` ----------------
def _record(rows, *parts):
    """Write ``rows`` (JSON) to ``build/<parts>``, with the time; return the path."""
    import json
    from datetime import datetime, timezone

    from moevit.paths import build_dir

    path = build_dir(*parts[:-1]) / parts[-1]
    path.write_text(json.dumps({"when": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
                                "rows": rows}))
    return path


def record_check(rows):
    """Keep ``moevit hw cost --check``'s rows (``build/cost/check.json``)."""
    return _record(rows, "cost", "check.json")


def record_bench_top(rows, name):
    """Keep ``moevit bench top``'s rows (``build/bench/<name>.json``)."""
    return _record(rows, "bench", f"{name}.json")


def record_confirm(rows):
    """Keep ``moevit dse --confirm``'s rows (``build/confirm/<board>-<config>.json``)."""
    for r in rows:
        _record([r], "confirm", f"{r['name']}.json")


def _recorded(pattern):
    """``(when, rows)`` of each file under ``build/`` matching ``pattern``, sorted by name."""
    import json
    import os
    from pathlib import Path

    from moevit.paths import BUILD_VARIABLE

    root = Path(os.environ.get(BUILD_VARIABLE) or "build")
    found = []
    for path in sorted(root.glob(pattern)):
        try:
            data = json.loads(path.read_text())
            found.append((data["when"], data["rows"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # another tool's file, or one cut short: not a measurement
    return found


def measured_sections() -> list:
    """``(title, markdown)`` sections of what the last slow runs measured: bench top's rows
    (*simulated*), the cost model against the benches (``hw cost --check``), the Yosys
    confirmation of the chosen points (``dse --confirm``); each says when it ran, or the
    command to run when nothing is kept."""
    top = ["| config | hardware | task | prefetch | cycles | switch | bit-exact | MAC util. "
           "| bytes read | ms | sim s | when (UTC) |", "|---|---|---|---:|---:|---:|---|---:"
           "|---:|---:|---:|---|"]
    for when, rows in _recorded("bench/top-*.json"):
        for r in rows:
            # How it ran: the memory's latency or board, the routing (rows of older runs
            # lack the keys).
            latency = (f", {r['board']}'s memory" if r.get("board") else
                       f", latency {r['memory_latency']}" if r.get("memory_latency") else "") \
                + (", balanced routing" if r.get("routing") == "balanced" else "")
            top.append(f"| {r['config']} | {r.get('hw', r['config'])}{latency} | {r['task']} | "
                       f"{r['expert_prefetch']} | {r['cycles']:,} | {r['switch_cycles']:,} | "
                       f"{'yes' if r['bit_exact'] else '**no**'} | {r['utilization']:.1%} | "
                       f"{r['bytes_read']:,} | {r['latency_ms']:.3f} | {r['sim_seconds']:g} | "
                       f"{when} |")
    check = ["| bench | row | simulated | predicted | error | within 5 % | when (UTC) |",
             "|---|---|---:|---:|---:|---|---|"]
    for when, rows in _recorded("cost/check.json"):
        for r in rows:
            check.append(f"| {r['bench']} | {r['row']} | {r['simulated']:,} | "
                         f"{r['predicted']:,} | {r['error']:+.2%} | "
                         f"{'yes' if r['within_aim'] else '**no**'} | {when} |")
    confirm = ["| point | slice | slice predicted DSP / BRAM36 / URAM | slice Yosys | whole "
               "predicted | whole from the slice | when (UTC) |", "|---|---|---|---|---|---|---|"]
    for when, rows in _recorded("confirm/*.json"):
        for r in rows:
            c = r["confirm"]
            confirm.append(f"| {r['name']} | {c['slice']} | " + " | ".join(
                " / ".join(f"{c[k][x]:g}" for x in ("dsp", "bram36", "uram"))
                for k in ("slice_predicted", "slice_yosys", "predicted", "estimated"))
                + f" | {when} |")

    def text(lines, command):
        return "\n".join(lines) + "\n" if len(lines) > 2 else f"Not run here yet: `{command}`.\n"

    return [("Simulated: the whole model on the co-simulated top (*simulated*, `moevit bench "
             "top`, last runs)", text(top, "moevit bench top [--config edge-moe]")),
            ("The cost model against the benches (`moevit hw cost --check`, last run; aim: "
             "within 5 % on every row)", text(check, "moevit hw cost --check")),
            ("The chosen points through Yosys (`moevit dse --confirm`: a slice of the linear "
             "array, the whole extrapolated)", text(confirm, "moevit dse --board B --config "
                                                             "edge-moe --confirm"))]
