"""``moevit bench attention``: simulated cycles of the attention kernel against the ideal.

Each case runs in the cocotb bench (:mod:`moevit.sim.benches.sequences`)
with no gaps and no back-pressure; every context value is checked against
the golden model, and the cycles are counted from the descriptor to the last
context beat (loading K and V, filling and draining the row pipeline
included). ``model_cycles`` is the exact cost model
(:meth:`AttentionDescriptor.expected_cycles`); the bench fails if it
differs from the simulation. ``ideal_cycles = MACs / MAC units`` with
``MACs = 2 * heads * tokens**2 * head_dim`` (``Q Kᵀ`` and ``P V``) and
``hw.attention_macs`` MAC units (``2 * score_lanes * heads_parallel * row_lanes``;
``lanes`` prints heads x rows x 2 x score lanes, the rows left out when 1); ``utilization = ideal /
cycles``.

Cases: one attention layer of ``tiny`` (4 heads, 65 tokens, head dim 16) and
one of ``edge-moe`` (3 heads, 129 tokens, head dim 64) on their default
hardware, and one ViT-S head (197 tokens, head dim 64) on the default
attention parameters (8 score lanes, 256-token K/V buffers), and tiny's layer again
with four row lanes (``HwConfig.row_lanes``: four query rows of a head at once). ``--quick``:
the tiny layer only. ``--hw NAME``: the attention layer of the model that
the named hardware config serves, on it.
"""

import numpy as np

__all__ = ["bench_attention", "print_table"]


def _case(hw, name, heads, tokens, head_dim, simulator, seed):
    from moevit.model.integer import intops
    from moevit.sim.units import attention_descriptor, run_attention

    rng = np.random.default_rng(seed)
    q, k, v = (rng.integers(-128, 128, (heads, tokens, head_dim)) for _ in range(3))
    consts = (*intops.softmax_constants(1 / 512), *map(int, intops.quantize_multiplier(1 / 40)))
    run = run_attention(hw, q, k, v, consts,
                        test_id=f"bench-attention-{hw.name}-{name}-{simulator}",
                        simulator=simulator, gaps="none", stall="none", seed=seed)
    desc = attention_descriptor(hw, tokens, heads, head_dim, consts)
    if run.cycles != desc.expected_cycles():
        from moevit.errors import MoevitError

        raise MoevitError(f"Bench {name}: {run.cycles} simulated cycles, but the cost model "
                          f"gives {desc.expected_cycles()}")
    lanes = f"{hw.heads_parallel}x{hw.row_lanes}x2x{hw.score_lanes}" if hw.row_lanes > 1 \
        else f"{hw.heads_parallel}x2x{hw.score_lanes}"
    return dict(
        config=hw.name, layer=name, shape=f"{heads}x{tokens}x{head_dim}", tokens=tokens,
        heads=heads, head_dim=head_dim, lanes=lanes, mac_units=hw.attention_macs,
        macs=desc.macs, cycles=run.cycles, model_cycles=desc.expected_cycles(),
        ideal_cycles=desc.ideal_cycles(),
        utilization=round(desc.ideal_cycles() / run.cycles, 4), simulator=simulator,
        sim_seconds=round(run.seconds, 1))


def bench_attention(simulator="verilator", quick=False, hw=None,
                    progress=True) -> list:
    """Rows of the attention benchmark (see the module's description). ``hw``: a named
    hardware config (``zcu102-edge-moe``, or a model config's name): instead, one attention
    layer of the model that instance serves, on it."""
    from tqdm import tqdm

    from moevit.hw.config import HwConfig, get_hw_config, hw_config_model
    from moevit.model.config import get_config

    cases = []
    names = (hw,) if hw is not None else ("tiny",) if quick else ("tiny", "edge-moe")
    for name in names:
        config, model = get_hw_config(name), get_config(hw_config_model(name))
        config.check_model(model)  # before any simulation
        cases.append((config, "attn", model.heads, model.tokens, model.head_dim, len(cases) + 1))
    if hw is None and not quick:
        cases.append((HwConfig(name="vit-s"), "vit-s.attn.head", 1, 197, 64, 3))
        tiny = get_config("tiny")
        cases.append((get_hw_config("tiny").replace(name="tiny-rows", row_lanes=4), "attn",
                      tiny.heads, tiny.tokens, tiny.head_dim, 4))
    return [_case(hw, name, heads, tokens, head_dim, simulator, seed=seed)
            for hw, name, heads, tokens, head_dim, seed in tqdm(cases, desc="bench attention",
                                                                 unit="case",
                                                                 disable=not progress)]


def print_table(rows) -> None:
    """Print :func:`bench_attention`'s rows as a table."""
    from moevit.hw.bench import print_rows

    print_rows(rows, [("config", "config", "<9", ""), ("layer", "layer", "<17", ""),
                      ("HxTxD", "shape", "<12", ""), ("lanes", "lanes", ">10", ""),
                      ("cycles", "cycles", ">10", ""), ("model", "model_cycles", ">10", ""),
                      ("ideal", "ideal_cycles", ">10", ""),
                      ("util", "utilization", ">8", ".1%")],
               "(cycles from the descriptor to the last context beat, simulated on "
               "{simulator}; model = the cost model; ideal = MACs / MAC units, "
               "lanes = heads x [row lanes x] (QK, PV) x score lanes)")
