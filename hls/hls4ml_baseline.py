"""``moevit bench hls4ml``: one ``tiny`` expert FFN through hls4ml, beside our linear kernel.

The workload: the busiest expert (most tokens from the first task's gate) of the first MoE block of the quantized ``tiny``
model (:func:`moevit.hls.cases.quantized_model`: the untrained ``signal_model``
calibrated on eight images), on every token of one image's input to that
block's experts (``norm2.out``), fc1 -> GELU -> fc2. The same int8 input,
dequantized, feeds every model:

* the float expert (erf GELU), the float weights that were quantized;
* the golden model, ``golden.linear`` twice (the integer GELU fused in fc1),
  its int8 output dequantized at ``fc2.out``'s scale;
* hls4ml 1.3: the float expert converted with
  ``hls4ml.converters.convert_from_pytorch_model`` (Vitis backend,
  ``io_parallel``, ``Latency`` strategy, one precision for every tensor, one
  ReuseFactor for every layer), C-simulated by its own ``compile()`` /
  ``predict()`` (g++).

GELU: hls4ml 1.3's PyTorch front end has no GELU (its activations: Softmax,
ReLU, LeakyReLU, Threshold, ELU, PReLU, Sigmoid, Tanh) and no multiply by a
constant, so the hls4ml model computes the substitute ``h * sigmoid(1.702 h)``
(the sigmoid approximation of GELU in Hendrycks & Gimpel's GELU paper), the
``1.702`` as a ``BatchNorm1d`` whose scale is 1.702 (one multiply per
feature), hls4ml's table sigmoid, and a ``Multiply`` merge. The substitute's
own float error is reported as its own row.

Cost, for the same two layers: hls4ml's multipliers are its own count, the
``multiplier_limit`` of its dense template (``DIV_ROUNDUP(n_in * n_out,
reuse_factor) - n_zeros / reuse_factor``, hls4ml
``backends/vivado/passes/core_templates.py``), the reuse factor hls4ml kept;
its ``io_parallel`` top is pipelined at an interval of ``reuse_factor``
cycles per token, so the tokens take ``tokens * reuse_factor`` cycles before
its latency, which only a Vitis HLS synthesis reports (not here). Ours: the
linear kernel's MAC units (``hw.macs``, one array for both layers) and
:meth:`LinearDescriptor.sequence_cycles` (the cost model, equal to the RTL
simulation: ``moevit bench linear``).
"""

import contextlib
import sys
from dataclasses import dataclass

import numpy as np

from moevit.errors import ConfigError, ToolNotFoundError

__all__ = ["PRECISION", "REUSE_FACTOR", "GELU_SUBSTITUTE", "LATENCY_NOTE", "Workload",
           "expert_workload", "cost_rows", "both_layers", "hls4ml_predict", "bench_hls4ml", "print_table"]

PRECISION = "ap_fixed<16,6>"
#: 64 x 128 / 128 = 64 multipliers per dense layer: the 64 MAC units of tiny's array.
REUSE_FACTOR = 128
GELU_SUBSTITUTE = "h * sigmoid(1.702 h)"
GELU_SLOPE = 1.702
LATENCY_NOTE = ("hls4ml's latency needs a Vitis HLS synthesis, which is not here; its interval "
                "is reuse_factor cycles per token (io_parallel pipeline), latency excluded.")


@dataclass
class Workload:
    """One expert FFN and its input, in float and in the golden model's integers."""

    config: str
    layer: str                 # e.g. "blocks.1.mlp.experts.0"
    x_int: np.ndarray          # int8 (tokens, dim)
    x: np.ndarray              # float32, x_int dequantized
    weights: dict              # float fc1/fc2 weight and bias (numpy)
    float_out: np.ndarray      # the float expert (erf GELU)
    golden_out: np.ndarray     # the golden model's int8 output, dequantized
    golden_int: dict           # the golden layers' int8 outputs and constants

    @property
    def tokens(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def hidden(self) -> int:
        return self.weights["fc1.weight"].shape[0]


def expert_workload(config="tiny", expert=None) -> Workload:
    """The expert FFN of the first MoE block of ``config`` (see the module's description):
    ``expert``, or by default the one the first task's gate sends most tokens to."""
    import torch

    from moevit.hls.cases import quantized_model
    from moevit.model.config import get_config
    from moevit.model.integer import golden
    from moevit.model.integer.evaluate import signal_model

    model_config = get_config(config)
    moe = [i for i in range(model_config.depth) if model_config.is_moe(i)]
    if not moe:
        raise ConfigError(f"Model config {config!r} has no MoE block")
    if expert is not None and not 0 <= expert < model_config.experts:
        raise ConfigError(f"Expert {expert} is not one of the {model_config.experts} experts "
                          f"of {config!r}")
    block = f"blocks.{moe[0]}"
    qmodel, image = quantized_model(config)
    tensors = golden.run(qmodel, image, 0).tensors
    if expert is None:
        routed = [tensors.get(f"{block}.mlp.experts.{e}.tokens", ()) for e in
                  range(model_config.experts)]
        expert = max(range(model_config.experts), key=lambda e: len(routed[e]))
    layer = f"{block}.mlp.experts.{expert}"
    x_int = tensors[f"{block}.norm2.out"]
    x = (x_int * qmodel.scale(f"{block}.norm2.out")).astype(np.float32)

    state = signal_model(model_config).state_dict()
    weights = {f"{fc}.{part}": state[f"{block}.mlp.experts.{fc}.{part}"][expert].numpy()
               for fc in ("fc1", "fc2") for part in ("weight", "bias")}
    with torch.no_grad():
        h = torch.nn.functional.gelu(torch.nn.functional.linear(
            torch.from_numpy(x), torch.from_numpy(weights["fc1.weight"]),
            torch.from_numpy(weights["fc1.bias"])))
        float_out = torch.nn.functional.linear(
            h, torch.from_numpy(weights["fc2.weight"]), torch.from_numpy(weights["fc2.bias"]))

    def run(name, inputs):
        gelu = qmodel.arrays.get(f"{name}.gelu")
        gelu = golden.GeluConsts(*(int(v) for v in gelu)) if gelu is not None else None
        return golden.linear(inputs, *(qmodel[f"{name}.{part}"] for part in
                                       ("weight", "bias", "mult", "shift")), gelu), gelu

    hidden, gelu = run(f"{layer}.fc1", x_int)
    out, _ = run(f"{layer}.fc2", hidden)
    return Workload(config, layer, x_int, x, weights, float_out.numpy(),
                    out * qmodel.scale(f"{layer}.fc2.out"),
                    {"fc1.out": hidden, "fc2.out": out, "gelu": gelu})


def _substitute_module(weights):
    """The float expert with the GELU substitute, as hls4ml's PyTorch front end reads it."""
    import torch

    class Expert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            hidden, dim = weights["fc1.weight"].shape
            self.fc1 = torch.nn.Linear(dim, hidden)
            self.slope = torch.nn.BatchNorm1d(hidden, eps=0.0)
            self.fc2 = torch.nn.Linear(hidden, dim)
            with torch.no_grad():
                for fc in ("fc1", "fc2"):
                    getattr(self, fc).weight.copy_(torch.from_numpy(weights[f"{fc}.weight"]))
                    getattr(self, fc).bias.copy_(torch.from_numpy(weights[f"{fc}.bias"]))
                self.slope.weight.fill_(GELU_SLOPE)
                self.slope.bias.zero_()

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(h * torch.sigmoid(self.slope(h)))

    return Expert().eval()


def hls4ml_predict(workload, precision=PRECISION, reuse_factor=REUSE_FACTOR, folder=None):
    """Convert the expert with hls4ml, ``compile()`` and ``predict()`` it.

    Returns ``(hls4ml output, substitute's float output, {layer: reuse factor kept})``.
    """
    import torch

    try:
        import hls4ml
    except ImportError:
        raise ToolNotFoundError("hls4ml is not installed (make install)") from None
    from moevit.hls.csim import compiler
    from moevit.paths import build_dir

    compiler()
    module = _substitute_module(workload.weights)
    with torch.no_grad():
        substitute = module(torch.from_numpy(workload.x)).numpy()
    config = hls4ml.utils.config_from_pytorch_model(
        module, (workload.dim,), granularity="model", backend="Vitis",
        default_precision=precision, default_reuse_factor=reuse_factor)
    folder = folder or build_dir("hls", workload.config, "hls4ml")
    # hls4ml prints its progress on stdout, which belongs to the table or the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        model = hls4ml.converters.convert_from_pytorch_model(
            module, hls_config=config, output_dir=str(folder), backend="Vitis",
            io_type="io_parallel")
        model.compile()
        out = model.predict(np.ascontiguousarray(workload.x))
    kept = {layer.name: int(layer.get_attr("reuse_factor")) for layer in model.get_layers()
            if layer.class_name == "Dense"}
    return np.asarray(out, np.float64).reshape(workload.float_out.shape), substitute, kept


def dense_multipliers(n_in, n_out, reuse_factor, zeros=0) -> int:
    """hls4ml's ``multiplier_limit`` of a dense layer (its core_templates.py)."""
    return -(-n_in * n_out // reuse_factor) - zeros // reuse_factor


def cost_rows(hw, tokens, dim, hidden, reuse, gelu_consts=None) -> list:
    """The cost rows: hls4ml's (``reuse``: ``{"fc1": rf, "fc2": rf}``) and ours, per layer.

    ``gelu_consts`` (a :class:`~moevit.model.integer.golden.GeluConsts`) are fc1's;
    the cycles do not depend on them.
    """
    from moevit.hw.program.descriptor import LinearDescriptor

    shapes = (("fc1", dim, hidden), ("fc2", hidden, dim))
    rows = []
    for name, n_in, n_out in shapes:
        rf = reuse[name]
        rows.append(dict(kind="cost", design="hls4ml", layer=name,
                         shape=f"{tokens}x{n_in}->{n_out}", multipliers=dense_multipliers(
                             n_in, n_out, rf), reuse_factor=rf, interval_per_token=rf,
                         cycles=tokens * rf, basis="tokens x reuse_factor (II), before latency"))
    g = gelu_consts
    descs = [LinearDescriptor(hw, tokens=tokens, in_features=dim, out_features=hidden,
                              **(dict(gelu=1, gelu_b=g.b, gelu_c=g.c, gelu_mult=g.mult,
                                      gelu_shift=g.shift) if g else {})),
             LinearDescriptor(hw, tokens=tokens, in_features=hidden, out_features=dim)]
    for (name, n_in, n_out), desc, cycles in zip(shapes, descs,
                                                  LinearDescriptor.sequence_cycles(descs)):
        rows.append(dict(kind="cost", design=f"moevit {hw.rows}x{hw.cols}", layer=name,
                         shape=f"{tokens}x{n_in}->{n_out}", multipliers=hw.macs,
                         reuse_factor=None, interval_per_token=None, cycles=cycles,
                         basis="LinearDescriptor.sequence_cycles (= RTL simulation)"))
    return rows


def _error(name, got, reference, against):
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(reference, np.float64))
    return dict(kind="accuracy", model=name, against=against,
                max_abs_error=float(diff.max()), mean_abs_error=float(diff.mean()),
                reference_max_abs=float(np.abs(reference).max()))


def bench_hls4ml(config="tiny", precision=PRECISION, reuse_factor=REUSE_FACTOR,
                 progress=False) -> list:
    """The rows of ``moevit bench hls4ml``: accuracy, then cost (see the module's description)."""
    from tqdm import tqdm

    from moevit.hls.generate import check_hls
    from moevit.hw.config import get_hw_config

    hw = get_hw_config(config)
    check_hls(hw)
    with tqdm(total=3, desc="bench hls4ml", disable=not progress, dynamic_ncols=True) as bar:
        bar.set_postfix_str("golden and float models")
        work = expert_workload(config)
        bar.update()
        bar.set_postfix_str("hls4ml convert + compile (g++)")
        out, substitute, kept = hls4ml_predict(work, precision, reuse_factor)
        bar.update()
        rows = [
            _error(f"hls4ml {precision} RF {reuse_factor}", out, work.float_out, "float"),
            _error(f"hls4ml {precision} RF {reuse_factor}", out, work.golden_out, "golden"),
            _error("golden (int8, dequantized)", work.golden_out, work.float_out, "float"),
            _error(f"float, GELU as {GELU_SUBSTITUTE}", substitute, work.float_out, "float"),
        ]
        reuse = {"fc1": kept.get("fc1", reuse_factor), "fc2": kept.get("fc2", reuse_factor)}
        rows += cost_rows(hw, work.tokens, work.dim, work.hidden, reuse,
                          work.golden_int["gelu"])
        bar.update()
    for row in rows:
        row.update(config=config, layer_of_model=work.layer, tokens=work.tokens)
    return rows


def both_layers(cost) -> dict:
    """Per design, the multipliers and cycles of both layers: hls4ml has one set of
    multipliers per layer and runs the layers in one pipeline (the slower layer's
    interval sets the pace); ours shares one array and runs them back to back."""
    totals = {}
    for design in dict.fromkeys(r["design"] for r in cost):
        layers = [r for r in cost if r["design"] == design]
        if design == "hls4ml":
            totals[design] = dict(multipliers=sum(r["multipliers"] for r in layers),
                                  cycles=max(r["cycles"] for r in layers),
                                  how="a multiplier set per layer, the layers in one pipeline")
        else:
            totals[design] = dict(multipliers=layers[0]["multipliers"],
                                  cycles=sum(r["cycles"] for r in layers),
                                  how="one array, the layers back to back")
    return totals


def print_table(rows) -> None:
    from moevit.hw.bench import print_rows

    accuracy = [r for r in rows if r["kind"] == "accuracy"]
    cost = [r for r in rows if r["kind"] == "cost"]
    print(f"{rows[0]['layer_of_model']} of {rows[0]['config']}, {rows[0]['tokens']} tokens: "
          f"fc1 -> GELU -> fc2 (hls4ml: GELU as {GELU_SUBSTITUTE})")
    print_rows(accuracy, [("model", "model", "<38", ""), ("vs", "against", "<8", ""),
                          ("max |err|", "max_abs_error", ">11", ".4f"),
                          ("mean |err|", "mean_abs_error", ">11", ".4f"),
                          ("max |ref|", "reference_max_abs", ">11", ".3f")])
    print()
    table = [dict(r, rf=r["reuse_factor"] or "-", ii=r["interval_per_token"] or "-",
                  basis_text="  " + r["basis"])
             for r in cost]
    print_rows(table, [("design", "design", "<14", ""), ("layer", "layer", "<6", ""),
                       ("shape", "shape", "<14", ""), ("multipliers", "multipliers", ">12", ""),
                       ("RF", "rf", ">5", ""), ("II/token", "ii", ">9", ""),
                       ("cycles", "cycles", ">9", ""), ("  basis", "basis_text", "<0", "")])
    for design, total in both_layers(cost).items():
        print(f"{design}: {total['multipliers']} multipliers, {total['cycles']} cycles for both "
              f"layers ({total['how']})")
    print(LATENCY_NOTE)
