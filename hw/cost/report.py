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
    from moevit.hw.cost.cycles import board_bandwidth, program_cycles

    board = get_board(board) if board is not None else None  # before the long work
    program, image = _program_and_image(quantized, config)
    hw = program.hw
    bandwidth = board_bandwidth(board, hw) if board else None
    rows = []
    for t in _tasks(program, task):
        cost = program_cycles(program, image, t, bandwidth=bandwidth, progress=progress)
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
