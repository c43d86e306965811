"""``moevit bench top``: the whole accelerator in co-simulation, per task.

The config's model (its golden model's ``signal_model``, quantized on eight
synthetic images) is compiled for the config's default hardware and run on
the co-simulated top (:mod:`moevit.sim.benches.top`) by registers only, as a
host would: each task twice in a row and then after the other task, so that

* ``cycles`` is a task's run after a run of the same task (the ``cycles``
  register: from ``ap_start`` to ``ap_done``); each task runs twice in a
  row, then the first task once more;
* ``switch_cycles`` is what the same run costs more right after the other
  task (0: a task switch costs nothing);
* ``bit_exact``: every run's output and whole activation scratch equal the
  instruction-level interpreter's (itself equal to the golden model);
* ``busy``: the share of the cycles each unit was busy (the ``busy_<unit>``
  registers); ``bytes_read``: bytes the memory served;
* ``utilization`` = MACs / (MAC units x cycles), the MACs of every linear
  layer and attention head the run computed (experts no token chose
  excluded), the MAC units those of the linear array and of the attention
  kernel's two multiplier banks;
* ``latency_ms`` at the HwConfig's clock; ``sim_seconds`` the wall time of
  the whole simulation (all runs);
* ``expert_prefetch``: the HwConfig's (:class:`~moevit.hw.config.HwConfig`):
  the rows come for the default hardware as it is (0) and with the expert
  schedule overlapped (1), each on its own build, so the table shows what the
  prefetch changes in cycles and bytes read;
* ``onchip_bytes``: the HwConfig's on-chip activation memory (0: every
  activation in DRAM); ``onchip=N`` adds the rows of a top with ``N`` bytes
  (prefetch 0, its own build), whose ``bytes_read`` is what DRAM serves.

A bar chart of the busy shares is written to ``build/bench/top-<config>.png``.
"""

import numpy as np

__all__ = ["bench_top", "print_table", "plot"]


def _program(config, expert_prefetch=0, onchip_bytes=0):
    from moevit.hw.config import HwConfig
    from moevit.hw.program.compiler import compile_program
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer import golden
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize

    model = get_config(config)
    data = SyntheticDataset(model, "val", size=9, seed=1)
    qmodel = quantize(signal_model(model), data.images[:8])
    image = golden.quantize_image(data.images[8].numpy(), qmodel.scale("input"))
    hw = HwConfig.for_model(model, expert_prefetch=expert_prefetch, onchip_bytes=onchip_bytes)
    return compile_program(qmodel, hw), image


def bench_top(config="tiny", simulator="verilator", prefetch=(0, 1), onchip=0):
    """Rows (one per task and ``expert_prefetch`` setting in ``prefetch``, and with
    ``onchip`` bytes of on-chip activation memory if not 0) of the whole-model
    co-simulation of ``config``."""
    from moevit.hw.config import HwConfig

    HwConfig.for_model(config, onchip_bytes=onchip)   # a bad size: an error before any run
    settings = [(p, 0) for p in prefetch] + ([(0, onchip)] if onchip else [])
    return [row for p, window in settings for row in _bench(config, simulator, p, window)]


def _bench(config, simulator, expert_prefetch, onchip_bytes=0):
    from moevit.sim.benches.top import expected_runs, output_bytes, run_top

    program, image = _program(config, expert_prefetch, onchip_bytes)
    hw = program.hw
    tasks = list(range(len(program.tasks)))
    # Each task twice in a row (the second run: after itself; the first: after the task
    # before it), then the first task again (after the last one).
    runs = [(t, [image]) for t in tasks for _ in range(2)] + [(tasks[0], [image])]
    name = f"bench-top-{config}-{simulator}-{expert_prefetch}" + \
        (f"-onchip{onchip_bytes}" if onchip_bytes else "")
    got = run_top(program, runs, test_id=name, simulator=simulator)
    want = expected_runs(program, runs)
    exact = all(g["error"] == 0 and np.array_equal(g["scratch"], w["scratch"])
                and all(np.array_equal(a[:size], b[:size]) for a, b in zip(g["outputs"],
                                                                          w["outputs"]))
                for g, w, size in ((g, w, output_bytes(program, g["task"]))
                                   for g, w in zip(got, want)))
    mac_units = hw.macs + 2 * hw.score_lanes * hw.heads_parallel
    rows = []
    for t in tasks:
        steady = got[2 * t + 1]
        switched = got[2 * t] if t else got[-1]
        cycles = steady["cycles"]
        macs = want[2 * t + 1]["stats"]["macs"]
        rows.append({
            "config": config, "task": program.tasks[t]["name"],
            "expert_prefetch": expert_prefetch, "onchip_bytes": onchip_bytes, "cycles": cycles,
            "switch_cycles": switched["cycles"] - cycles, "bit_exact": bool(exact),
            "utilization": macs / (mac_units * cycles), "macs": int(macs),
            "mac_units": mac_units, "bytes_read": steady["bytes_read"],
            "busy": {unit: value / cycles for unit, value in steady["busy"].items()},
            "latency_ms": cycles / (hw.clock_mhz * 1e3), "clock_mhz": hw.clock_mhz,
            "simulator": simulator, "sim_seconds": round(steady["seconds"], 1),
            "sim_cycles_per_second": round(sum(g["cycles"] for g in got) / steady["seconds"]),
        })
    return rows


def print_table(rows) -> None:
    from moevit.hw.bench import print_rows

    units = list(rows[0]["busy"]) if rows else []
    shown = [dict(r, busy_text="  " + " ".join(f"{r['busy'][u]:.0%}" for u in units),
                  exact_text="yes" if r["bit_exact"] else "NO") for r in rows]
    print_rows(shown, [("config", "config", "<9", ""), ("task", "task", "<10", ""),
                       ("prefetch", "expert_prefetch", ">8", ""),
                       ("on chip", "onchip_bytes", ">7", ""),
                       ("cycles", "cycles", ">10", ""), ("switch", "switch_cycles", ">7", ""),
                       ("exact", "exact_text", ">6", ""), ("util", "utilization", ">7", ".1%"),
                       ("bytes read", "bytes_read", ">11", ""),
                       ("ms", "latency_ms", ">8", ".3f"),
                       (f"  busy {'/'.join(units)}", "busy_text", "<40", "")],
               "(cycles of one image from ap_start to ap_done, simulated on {simulator} in "
               "{sim_seconds} s for all runs, {sim_cycles_per_second} cycles/s; switch = extra "
               "cycles right after the other task; util = MACs / ({mac_units} MAC units x "
               "cycles); ms at {clock_mhz} MHz)")


def plot(rows, path) -> None:
    """The busy share of each unit per task, as a bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = list(rows[0]["busy"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(rows)
    for k, row in enumerate(rows):
        ax.bar(np.arange(len(units)) + k * width, [row["busy"][u] for u in units], width,
               label=f"{row['task']}, prefetch {row['expert_prefetch']}: "
                     f"{row['cycles']} cycles")
    ax.set_xticks(np.arange(len(units)) + width * (len(rows) - 1) / 2, units)
    ax.set_ylabel("share of the run's cycles busy")
    ax.set_ylim(0, 1)
    ax.set_title(f"moevit top, {rows[0]['config']}: one image per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
