"""``moevit hw cost``: the cost model's figures as rows and as a table."""

from moevit.errors import ConfigError

__all__ = ["cost_rows", "print_cost"]


def _program_and_image(quantized, config):
    """The compiled program and the image ``moevit bench top`` runs (the validation set's
    ninth synthetic image), from a quantized-model file or a config's signal model."""
    from moevit.hw.bench_top import _program

    if config is not None:
        from moevit.model.config import get_config

        get_config(config)  # an unknown name fails here, before the quantization
        return _program(config)
    from moevit.hw.config import HwConfig
    from moevit.hw.program.compiler import compile_program
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer import golden
    from moevit.model.integer.quantize import load_quantized

    qmodel = load_quantized(quantized)
    image = SyntheticDataset(qmodel.config, "val", size=9, seed=1).images[8].numpy()
    return (compile_program(qmodel, HwConfig.for_model(qmodel.config)),
            golden.quantize_image(image, qmodel.scale("input")))


def _tasks(program, task):
    names = [t["name"] for t in program.tasks]
    if task is None:
        return list(range(len(names)))
    if task in names:
        return [names.index(task)]
    if task.isdigit() and int(task) < len(names):
        return [int(task)]
    raise ConfigError(f"Unknown task {task!r}; the program's tasks: {', '.join(names)}")


def cost_rows(*, quantized=None, config=None, task=None, board=None, per_instruction=False,
              progress=False):
    """One row per unit (or per instruction: also its compute and memory cycles and its
    bytes read and written) and task, then a ``total`` row per task with the latency."""
    from moevit.hw.boards import get_board
    from moevit.hw.cost.cycles import board_bandwidth, board_memory_bandwidth, program_cycles

    board = get_board(board) if board is not None else None  # before the long work
    program, image = _program_and_image(quantized, config)
    hw = program.hw
    bandwidth = board_bandwidth(board, hw) if board else None       # each memory port's
    memory = board_memory_bandwidth(board, hw) if board else None  # all ports together
    rows = []
    for t in _tasks(program, task):
        cost = program_cycles(program, image, t, bandwidth=bandwidth, memory_bandwidth=memory,
                              progress=progress)
        common = {"task": program.tasks[t]["name"], "board": board.name if board else None,
                  "bandwidth": round(cost.bandwidth, 3)}
        total = cost.cycles
        if per_instruction:
            parts = [dict(i.row(), name=f"{i.index:>2} {i.mnemonic}", memory_bound=int(
                i.bound == "memory"), instructions=1, bytes=i.bytes_read + i.bytes_written)
                for i in cost.instructions]
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
                         share=1.0, latency_ms=cost.latency_ms, clock_mhz=cost.clock_mhz))
    return rows


def print_cost(rows) -> None:
    from moevit.hw.bench import print_rows

    for name in dict.fromkeys(r["task"] for r in rows):
        part = [r for r in rows if r["task"] == name]
        total = part[-1]
        where = f"board {total['board']}" if total["board"] else "one bus word a cycle"
        print(f"task {name}: {total['bandwidth']:g} bytes/cycle ({where})")
        for r in part:
            r.setdefault("bound_text", f"  {r['bound']}")
        print_rows(part, [("", "name", "<14", ""), ("instr", "instructions", ">6", ""),
                          ("cycles", "cycles", ">11", ","), ("share", "share", ">8", ".1%"),
                          ("bytes", "bytes", ">11", ","), ("  bound", "bound_text", "<10", ""),
                          ("mem-bound", "memory_bound", ">10", "")])
        print(f"predicted latency {total['latency_ms']:.3f} ms at {total['clock_mhz']:g} MHz "
              f"(per instruction max(compute, memory) + issue)\n")


def check_rows(*, simulator="verilator", quick=False, progress=True) -> list:
    """The cost model against the simulated cycles of every row of ``bench linear``,
    ``bench attention`` and ``bench top`` (tiny; those benches run here, minutes).

    The kernel rows compare the kernels' cycle models (``LinearDescriptor.sequence_cycles``,
    ``AttentionDescriptor.expected_cycles``: what :func:`program_cycles` builds each
    instruction on) with the simulated kernels; the top rows compare the whole program's
    prediction (:func:`program_cycles`, one bus word a cycle: the bench's memory answers
    without stalls) with the co-simulated top, per task."""
    from moevit.hw.bench import bench_linear
    from moevit.hw.bench_attention import bench_attention
    from moevit.hw.bench_top import _program, bench_top
    from moevit.hw.cost.cycles import program_cycles

    rows = []
    for bench, found in (("linear", bench_linear(simulator=simulator, quick=quick)),
                         ("attention", bench_attention(simulator=simulator, quick=quick))):
        for r in found:
            rows.append(_check_row(bench, f"{r['config']} {r['layer']} {r['shape']}",
                                   r["model_cycles"], r["cycles"]))
    program, image = _program("tiny")
    for r in bench_top("tiny", simulator=simulator):
        task = [t["name"] for t in program.tasks].index(r["task"])
        predicted = program_cycles(program, image, task, progress=progress).cycles
        rows.append(_check_row("top", f"tiny {r['task']} (whole program)", predicted,
                               r["cycles"]))
    return rows


def _check_row(bench, name, predicted, simulated):
    return {"bench": bench, "row": name, "predicted": int(predicted),
            "simulated": int(simulated), "error": predicted / simulated - 1}


def print_check(rows) -> None:
    from moevit.hw.bench import print_rows

    print_rows(rows, [("bench", "bench", "<11", ""), ("row", "row", "<40", ""),
                      ("simulated", "simulated", ">11", ","),
                      ("predicted", "predicted", ">11", ","), ("error", "error", ">9", "+.2%")])
    worst = max(abs(r["error"]) for r in rows)
    print(f"(worst error {worst:.2%}; aim: within 5 % on every row. Memory: the benches' "
          f"memories answer without stalls, so the prediction is at one bus word a cycle; on a "
          f"board, each instruction is max(compute, bytes / bandwidth) + issue: the top overlaps "
          f"an instruction's transfers with its own compute, never two instructions)")
