"""``moevit bench top``: the whole accelerator in co-simulation, per task.

The config's model (its golden model's ``signal_model``, quantized on eight
synthetic images) is compiled for the config's default hardware (or a
named hardware config, ``--hw zcu102-edge-moe``, checked against the model
first) and run on the co-simulated top (:mod:`moevit.sim.benches.top`) by registers only, as a
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
* ``memory_latency``: the cycles the bench's memory takes to answer a burst
  (``--latency``, default 0); ``predicted``: the cost model's cycles of the run
  at that latency (:func:`moevit.hw.cost.cycles.program_cycles`);
* ``board``: with ``--board NAME`` the memory serves each port at the board's
  rate and all of them at its memory's, answering at its latency (the board
  file's figures in the HwConfig's cycles), and ``predicted`` takes the same;
* ``memory``: the bench's memory, ``python`` (cocotbext-axi's RAM, every beat
  through Python) or ``verilog`` (``--memory verilog``: every beat in the
  simulator, :data:`moevit.sim.benches.top.SIM_MEMORY`; a large top's whole
  image in minutes instead of hours);
* ``routing``: the MoE gates, the model's (``model``) or :func:`balanced_gates`
  (``--routing balanced``: every expert chosen, as the search assumes);
* ``blocks``: the transformer blocks run (``--blocks N``: the program cut
  after the first N, for a row of a large model in less time; the output is
  then not written, and bit-exactness rests on every intermediate tensor);
* ``expert_prefetch``: the HwConfig's (:class:`~moevit.hw.config.HwConfig`):
  the rows come for the default hardware as it is (0) and with the expert
  schedule overlapped (1), each on its own build, so the table shows what the
  prefetch changes in cycles and bytes read (a named hardware config: its own
  setting; ``--prefetch`` picks one);
* ``onchip_bytes``: the HwConfig's on-chip activation memory (0: every
  activation in DRAM); ``onchip=N`` adds the rows of a top with ``N`` bytes
  (the first prefetch setting, its own build), whose ``bytes_read`` is what DRAM serves.

A bar chart of the busy shares is written to ``build/bench/top-<config>.png``
(``top-<config>-<hw>.png`` on a named hardware config).
"""

import numpy as np

__all__ = ["bench_top", "bench_program", "print_table", "plot"]


def _hw(config, hw=None):
    """The hardware the bench runs ``config``'s model on: the named instance ``hw`` or the
    model's default, checked against the model (before anything long starts)."""
    from moevit.hw.config import HwConfig, get_hw_config
    from moevit.model.config import get_config

    model = get_config(config)
    if hw is None:
        return HwConfig.for_model(model)
    instance = get_hw_config(hw)
    instance.check_model(model)
    return instance


def _first_blocks(program, model, blocks):
    """``program`` cut after the first ``blocks`` (fewer than all) transformer blocks of
    ``model``, in the compiler's order: the embedding's three instructions, then per block
    seven (dense) or eight and one per expert (MoE). A program of interleaved streams (two
    issue lanes) is cut before block ``blocks``' first ATTENTION instead, so its
    LayerNorm and QKV run too. The heads are not reached, so the output region stays as it
    was and bit-exactness rests on the scratch (every intermediate tensor)."""
    import dataclasses

    if any(stream >= 0 for stream in program.streams):
        attentions = [k for k, d in enumerate(program.instructions) if d.MNEMONIC == "ATTENTION"]
        cut = attentions[blocks * len(attentions) // model.depth]
    else:
        cut = 3 + sum(8 + model.experts if model.is_moe(i) else 7 for i in range(blocks))
        following = program.instructions[cut].MNEMONIC
        assert following == "LAYERNORM", f"the compiler's order changed: {following} after the cut"
    return dataclasses.replace(program, instructions=program.instructions[:cut],
                               concurrent=program.concurrent[:cut],
                               streams=program.streams[:cut])


def _check_blocks(model, blocks):
    from moevit.errors import UsageError

    if blocks is not None and not 1 <= blocks <= model.depth:
        raise UsageError(f"--blocks {blocks}: model {model.name!r} has blocks 1 to "
                         f"{model.depth}")


def balanced_gates(qmodel, image, *, seed=23):
    """``qmodel`` with every MoE gate of every task replaced, block by block, so that the
    routing of ``image`` is about balanced (the search's assumption: every expert chosen,
    its weights read once an image): seeded random int8 weights, a bias that takes each
    logit's mean over the tokens away and a multiplier that spreads the logits to a standard
    deviation of about 30 (so that few clip). On edge-moe's bench image every expert of every
    MoE layer then gets 5 to 32 of its 129 tokens x 2 slots (seed 23)."""
    from moevit.model.integer import golden

    rng = np.random.default_rng(seed)
    config = qmodel.config
    for i in (i for i in range(config.depth) if config.is_moe(i)):
        for task in range(len(config.tasks)):
            gate = f"blocks.{i}.mlp.gates.{task}"
            x = golden.run(qmodel, image, task).tensors[f"blocks.{i}.norm2.out"]
            weight = rng.integers(-20, 21, qmodel.arrays[f"{gate}.weight"].shape)
            acc = x.astype(np.int64) @ weight.T
            spread = np.maximum(acc.std(0), 1.0)
            # The largest shift whose multiplier stays within its 15 bits.
            shift = np.floor(np.log2(32767 * spread / 30)).astype(np.int64)
            qmodel.arrays[f"{gate}.weight"][...] = weight
            qmodel.arrays[f"{gate}.bias"][...] = -np.round(acc.mean(0))
            qmodel.arrays[f"{gate}.shift"][...] = shift
            qmodel.arrays[f"{gate}.mult"][...] = np.round(30 / spread * 2.0 ** shift)
    return qmodel


#: ``--routing``: the model's own gates (the signal model's: on edge-moe a few experts take
#: most tokens) or :func:`balanced_gates` (the search's assumption).
ROUTINGS = ("model", "balanced")


def _program(config, expert_prefetch=None, hw=None, blocks=None, routing="model"):
    """The compiled program of ``config``'s model (its signal model quantized on eight
    synthetic images) on ``hw`` (a HwConfig; default: the model's), with
    ``expert_prefetch`` replacing the instance's, and the image the bench runs;
    ``blocks``: only the first ``blocks`` transformer blocks (:func:`_first_blocks`);
    ``routing``: ``"balanced"`` replaces the gates (:func:`balanced_gates`)."""
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize

    model = get_config(config)
    hw = hw if hw is not None else _hw(config)
    if expert_prefetch is not None:
        hw = hw.replace(expert_prefetch=expert_prefetch)
    data = SyntheticDataset(model, "val", size=9, seed=1)
    program, image = bench_program(quantize(signal_model(model), data.images[:8]), hw,
                                   routing, data.images[8])
    if blocks is not None and blocks < model.depth:
        _check_blocks(model, blocks)
        program = _first_blocks(program, model, blocks)
    return program, image


def bench_program(qmodel, hw, routing="model", image=None):
    """``(program, image)``: quantized model ``qmodel`` compiled for ``hw`` with its gates or
    ``routing`` ``"balanced"`` (:func:`balanced_gates`), and the image the bench runs,
    ``image`` (float; default: the ninth synthetic validation image) quantized."""
    from moevit.hw.program.compiler import compile_program
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer import golden

    if image is None:
        image = SyntheticDataset(qmodel.config, "val", size=9, seed=1).images[8]
    image = golden.quantize_image(image.numpy(), qmodel.scale("input"))
    if routing == "balanced":
        qmodel = balanced_gates(qmodel, image)
    return compile_program(qmodel, hw), image


def bench_top(config="tiny", simulator="verilator", prefetch=None, hw=None, blocks=None,
              onchip=0, per_instruction=False, latency=0, board=None, memory="python",
              routing="model"):
    """Rows (one per task and ``expert_prefetch`` setting in ``prefetch``, and with
    ``onchip`` bytes of on-chip activation memory if not 0) of the whole-model
    co-simulation of ``config``.

    ``hw``: a named hardware config (``zcu102-edge-moe``; default: the model's default
    instance); ``prefetch``: the ``expert_prefetch`` settings to run (default: 0 and 1 on
    the default instance, a named instance's own setting); ``blocks``: the program cut
    after its first ``blocks`` transformer blocks (a shorter row of a large model);
    ``per_instruction``: each row also has ``instructions``, every instruction's simulated
    and predicted cycles (:func:`moevit.hw.cost.report.instruction_rows`); ``latency``: the
    memory answers each burst that many cycles after its address (``run_top(latency=)``;
    the rows' ``predicted`` and the instructions' figures take it too); ``board``: a
    board's name, whose ports' and memory's bandwidths and latency the memory has (then
    not ``latency``); ``memory``: ``"python"`` or ``"verilog"`` (``run_top(memory=)``);
    ``routing``: ``"model"`` or ``"balanced"`` (:func:`balanced_gates`)."""
    from moevit.model.config import get_config

    from moevit.errors import UsageError
    from moevit.hw.cost.cycles import check_latency

    check_latency(latency)                  # before the long work
    if memory not in ("python", "verilog"):
        raise UsageError(f"--memory {memory!r}: python or verilog")
    if routing not in ROUTINGS:
        raise UsageError(f"--routing {routing!r}: {' or '.join(ROUTINGS)}")
    if board is not None and latency:
        raise UsageError("--latency with --board: the board's memory has its own latency")
    base = _hw(config, hw)
    board_memory = _board_memory(board, base)
    model = get_config(config)
    _check_blocks(model, blocks)
    blocks = model.depth if blocks is None else blocks
    if prefetch is None:
        prefetch = (0, 1) if hw is None else (base.expert_prefetch,)
    instances = [base.replace(expert_prefetch=setting) for setting in prefetch]
    if onchip:   # a bad size: an error before any run
        instances.append(instances[0].replace(onchip_bytes=onchip))
    return [row for instance in instances
            for row in _bench(config, instance, simulator, blocks, per_instruction,
                              memory=memory, **board_memory, latency=latency,
                              routing=routing)]


def _board_memory(board, hw) -> dict:
    """``bandwidth``, ``memory_bandwidth`` and ``latency`` of ``board``'s memory in ``hw``'s
    cycles (:func:`~moevit.hw.cost.cycles.board_bandwidth` ...; none for no board): the bus
    and the clock decide them, which every instance of a bench shares. The board is read
    here: a bad name fails before any run."""
    from moevit.hw.boards import get_board
    from moevit.hw.cost.cycles import board_bandwidth, board_latency, board_memory_bandwidth

    if board is None:
        return {}
    spec = get_board(board)
    return {"board": spec.name, "bandwidth": board_bandwidth(spec, hw),
            "memory_bandwidth": board_memory_bandwidth(spec, hw),
            "board_latency": board_latency(spec, hw)}


def _bench(config, hw, simulator, blocks, per_instruction=False, latency=0, board=None,
           bandwidth=None, memory_bandwidth=None, board_latency=None, memory="python",
           routing="model"):
    from moevit.hw.cost.cycles import program_cycles
    from moevit.hw.cost.report import instruction_rows
    from moevit.sim.benches.top import expected_runs, output_bytes, run_top

    if board is not None:
        latency = board_latency
    program, image = _program(config, hw=hw, blocks=blocks, routing=routing)
    tasks = list(range(len(program.tasks)))
    # Each task twice in a row (the second run: after itself; the first: after the task
    # before it), then the first task again (after the last one).
    runs = [(t, [image]) for t in tasks for _ in range(2)] + [(tasks[0], [image])]
    got = run_top(program, runs, simulator=simulator,
                  test_id=f"bench-top-{config}-{hw.name}-{simulator}-{hw.expert_prefetch}"
                          f"-{blocks}" + (f"-onchip{hw.onchip_bytes}" if hw.onchip_bytes else "")
                          + (f"-latency{latency}" if latency else "")
                          + (f"-{board}" if board else "") + f"-{memory}"
                          + ("-balanced" if routing == "balanced" else ""),
                  timeline=per_instruction, latency=latency, bandwidth=bandwidth,
                  memory_bandwidth=memory_bandwidth, memory=memory)
    speeds = {"bandwidth": bandwidth, "memory_bandwidth": memory_bandwidth}
    want = expected_runs(program, runs)
    exact = all(g["error"] == 0 and np.array_equal(g["scratch"], w["scratch"])
                and all(np.array_equal(a[:size], b[:size]) for a, b in zip(g["outputs"],
                                                                          w["outputs"]))
                for g, w, size in ((g, w, output_bytes(program, g["task"]))
                                   for g, w in zip(got, want)))
    mac_units = hw.macs + hw.attention_macs
    rows = []
    for t in tasks:
        steady = got[2 * t + 1]
        switched = got[2 * t] if t else got[-1]
        cycles = steady["cycles"]
        macs = want[2 * t + 1]["stats"]["macs"]
        rows.append({
            "config": config, "hw": hw.name, "blocks": blocks,
            "task": program.tasks[t]["name"],
            "expert_prefetch": hw.expert_prefetch, "onchip_bytes": hw.onchip_bytes,
            "cycles": cycles,
            "switch_cycles": switched["cycles"] - cycles, "bit_exact": bool(exact),
            "utilization": macs / (mac_units * cycles), "macs": int(macs),
            "mac_units": mac_units, "bytes_read": steady["bytes_read"],
            "busy": {unit: value / cycles for unit, value in steady["busy"].items()},
            "latency_ms": cycles / (hw.clock_mhz * 1e3), "clock_mhz": hw.clock_mhz,
            "memory_latency": latency, "board": board, "memory": memory, "routing": routing,
            "predicted": program_cycles(program, image, t, latency=latency, **speeds).cycles,
            "simulator": simulator, "sim_seconds": round(steady["seconds"], 1),
            "sim_cycles_per_second": round(sum(g["cycles"] for g in got) / steady["seconds"]),
        })
        if per_instruction:
            rows[-1]["instructions"] = instruction_rows(
                program, image, t, steady["issued"], cycles, latency, **speeds,
                stalls_at_end=steady["stalls_at_end"], finished=steady["finished"])
    return rows


def print_table(rows) -> None:
    from moevit.hw.bench import print_rows

    units = list(rows[0]["busy"]) if rows else []
    shown = [dict(r, busy_text="  " + " ".join(f"{r['busy'][u]:.0%}" for u in units),
                  exact_text="yes" if r["bit_exact"] else "NO") for r in rows]
    print_rows(shown, [("config", "config", "<9", ""), ("hw", "hw", "<16", ""),
                       ("task", "task", "<10", ""),
                       ("prefetch", "expert_prefetch", ">8", ""),
                       ("on chip", "onchip_bytes", ">7", ""),
                       ("mem lat", "memory_latency", ">7", ""),
                       ("cycles", "cycles", ">10", ""), ("model", "predicted", ">10", ""),
                       ("switch", "switch_cycles", ">7", ""),
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
