"""``check-onnx``'s verdict: it passes good graphs and fails edited ones.

Each broken graph is a real exported graph edited with the onnx API (a
LayerNorm epsilon, a weight, a gate's rows, a QDQ scale); the check must say
FAIL, name the reason and exit with status 1.
"""

import json
import math
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from moevit.cli import main
from moevit.model.config import get_config
from moevit.model.moevit import MoEViT
from moevit.errors import MoevitError
from moevit.model.onnx.qdq import QDQ_BOUNDS
from moevit.model.onnx.check import (
    FLOAT_ATOL,
    FLOAT_RTOL,
    _routing_differences,
    check_graph,
    judge_float,
    judge_qdq,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A float graph of tiny's semseg task and a QDQ graph of its depth task (random weights)."""
    from moevit.model.onnx.export import export_onnx
    from moevit.model.onnx.qdq import export_qdq
    from moevit.model.integer.quantize import quantize, save_quantized

    folder = tmp_path_factory.mktemp("check")
    torch.manual_seed(0)
    model = MoEViT(get_config("tiny")).eval()
    float_graph = export_onnx(model, "semseg", folder / "semseg.onnx", weights="random seed 0")
    calibration = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    qmodel = quantize(model, calibration)
    qpath = save_quantized(folder / "tiny.npz", qmodel)
    qdq_graph = export_qdq(qmodel, "depth", folder / "depth-qdq.onnx", source=str(qpath))
    return {"float": float_graph, "qdq": qdq_graph}


def edited(source, path, edit):
    """``source`` loaded with the onnx API, changed by ``edit(proto)``, saved to ``path``."""
    proto = onnx.load(str(source))
    edit(proto)
    onnx.save(proto, str(path))
    return path


def set_initializer(proto, name, change):
    """Replace initializer ``name`` by ``change(its array)``."""
    for tensor in proto.graph.initializer:
        if tensor.name == name:
            array = numpy_helper.to_array(tensor).copy()
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(change(array), array.dtype), name))
            return
    raise KeyError(name)


def set_first_layernorm_epsilon(value):
    def edit(proto):
        node = next(n for n in proto.graph.node if n.op_type == "LayerNormalization")
        next(a for a in node.attribute if a.name == "epsilon").f = value

    return edit


def run_cli(capsys, *args):
    status = main(["check-onnx", *map(str, args)])
    return status, capsys.readouterr()


def test_float_graph_passes(graphs, capsys):
    report = check_graph(graphs["float"])
    assert report["passed"] and report["failures"] == [] and report["reference"] == "PyTorch"
    (row,) = report["rows"]
    assert row["verdict"] == "PASS" and row["routing_equal"] and row["routing_differences"] == []
    assert row["tolerance"] == FLOAT_ATOL + FLOAT_RTOL * row["max_abs_ref"]
    assert 0 < row["max_abs_diff"] < row["tolerance"] and row["max_abs_ref"] > 0.1
    status, out = run_cli(capsys, graphs["float"])
    assert status == 0
    assert "PASS if max |difference| <= 1e-05 + 1e-05 x max |PyTorch| (--atol, --rtol)" in out.out
    assert re.search(r"^semseg +prediction +\[1, 4, 64, 64\] +\S+ +\S+ +\S+ +\d/8 \d/8 +True +PASS *$", out.out, re.M)
    assert out.out.splitlines()[-1] == f"PASS: {graphs['float']}"


def test_edited_layernorm_epsilon_fails(graphs, tmp_path, capsys):
    path = edited(graphs["float"], tmp_path / "eps.onnx", set_first_layernorm_epsilon(1.0))
    report = check_graph(path)
    assert not report["passed"]
    assert re.fullmatch(r"semseg prediction: max \|difference\| \S+ > tolerance \S+", report["failures"][0])
    (row,) = report["rows"]
    assert row["max_abs_diff"] > 100 * row["tolerance"] and row["verdict"] == "FAIL"
    status, out = run_cli(capsys, path)
    assert status == 1
    assert re.search(r"^semseg +prediction .* FAIL *$", out.out, re.M)
    lines = out.out.splitlines()
    assert lines[lines.index(f"FAIL: {path}") + 1 :] == [f"  {failure}" for failure in report["failures"]]


def test_perturbed_weight_fails(graphs, tmp_path):
    def bump(array):
        array.flat[0] += 0.05
        return array

    path = edited(graphs["float"], tmp_path / "w.onnx",
                  lambda p: set_initializer(p, "model.blocks.3.mlp.experts.fc1.weight", bump))
    report = check_graph(path)
    assert [f for f in report["failures"] if "max |difference|" in f]


def test_swapped_gate_rows_change_routing_and_fail(graphs, tmp_path, capsys):
    def swap(array):
        array[[0, 1]] = array[[1, 0]]  # experts 0 and 1 trade places
        return array

    path = edited(graphs["float"], tmp_path / "gate.onnx",
                  lambda p: set_initializer(p, "model.blocks.1.mlp.gates.0.weight", swap))
    report = check_graph(path)
    (row,) = report["rows"]
    assert not row["routing_equal"] and row["verdict"] == "FAIL"
    layer, token, got, ref = row["routing_differences"][0]
    assert layer == 0 and got != ref and {0, 1} & set(got + ref)  # the edited gate's layer, experts 0 and 1
    routing = [f for f in report["failures"] if "select other experts" in f]
    assert routing == [
        f"semseg prediction: {len(row['routing_differences'])} tokens select other experts than in PyTorch "
        f"(first: MoE layer 0, token {token}: {got}, PyTorch {ref})"
    ]
    status, out = run_cli(capsys, path, "--json")
    assert status == 1
    result = json.loads(out.out)
    assert result["verdict"] == "FAIL" and routing[0] in result["failures"]


def test_tolerance_options_decide(graphs, capsys):
    status, out = run_cli(capsys, graphs["float"], "--atol", "0", "--rtol", "0")
    assert status == 1 and "FAIL: " in out.out
    assert re.search(r"^  semseg prediction: max \|difference\| \S+ > tolerance 0$", out.out, re.M)
    status, out = run_cli(capsys, graphs["float"], "--atol", "1e-3")
    assert status == 0 and "<= 0.001 + 1e-05 x max |PyTorch|" in out.out


def test_judge_float_fails_on_nan_and_passes_at_the_bound():
    rows = [{"task": "t", "output": "o", "max_abs_diff": math.nan, "max_abs_ref": 1.0},
            {"task": "t", "output": "p", "max_abs_diff": 2e-5, "max_abs_ref": 1.0}]
    assert judge_float(rows, atol=1e-5, rtol=1e-5) == ["t o: max |difference| nan > tolerance 2e-05"]
    assert [row["verdict"] for row in rows] == ["FAIL", "PASS"]


def test_routing_is_compared_as_sets_of_experts():
    graph = [np.array([[1, 2], [3, 4]]), np.array([[0, 5], [6, 7]])]
    torch_ = [np.array([[2, 1], [3, 4]]), np.array([[0, 5], [6, 1]])]  # a swap within the k is no difference
    assert _routing_differences(graph, torch_) == [(1, 1, [6, 7], [1, 6])]
    with pytest.raises(MoevitError, match=r"^The graph has 2 MoE layers, PyTorch's model 1$"):
        _routing_differences(graph, torch_[:1])


def test_judge_qdq_states_each_bound():
    row = {"task": "depth", "output": "prediction_int8", "max_steps": 40, "mean_steps": 4.6,
           "routing_agreement": 0.49, "max_steps_alike": 29, "mean_steps_alike": 2.6}
    assert judge_qdq([row]) == [
        "depth prediction_int8: 29 steps on a token routed alike (bound 28)",
        "depth prediction_int8: mean 2.600 steps on tokens routed alike (bound 2.5)",
        "depth prediction_int8: 49.0% of tokens routed alike (bound 50%)",
        "depth prediction_int8: mean 4.600 steps (bound 4.5)",
    ]
    assert row["verdict"] == "FAIL"
    row.update(mean_steps=4.5, routing_agreement=0.5, max_steps_alike=28, mean_steps_alike=2.5)
    assert judge_qdq([row]) == [] and row["verdict"] == "PASS"  # the bounds are inclusive
    assert judge_qdq([row], max_steps=27) == ["depth prediction_int8: 28 steps on a token routed alike (bound 27)"]


def test_qdq_graph_passes(graphs, capsys):
    report = check_graph(graphs["qdq"])
    assert report["passed"] and report["reference"] == "the integer golden model"
    (row,) = report["rows"]
    assert row["output"] == "prediction_int8" and QDQ_BOUNDS.violations(row) == []
    status, out = run_cli(capsys, graphs["qdq"])
    assert status == 0 and out.out.splitlines()[-1] == f"PASS: {graphs['qdq']}"
    assert re.search(r"^depth +prediction_int8 .* PASS *$", out.out, re.M)


def test_qdq_graph_with_a_changed_output_scale_fails(graphs, tmp_path, capsys):
    path = edited(graphs["qdq"], tmp_path / "scale.onnx",
                  lambda p: set_initializer(p, "scale.heads.1.out", lambda a: a * 2))
    status, out = run_cli(capsys, path)
    assert status == 1
    assert re.search(r"^  depth prediction_int8: \d+ steps on a token routed alike \(bound 28\)$", out.out, re.M)


def test_qdq_atol_is_in_int8_steps(graphs, capsys):
    status, out = run_cli(capsys, graphs["qdq"], "--atol", "0")
    assert status == 1 and re.search(r"^  depth prediction_int8: \d+ steps on a token routed alike \(bound 0\)$",
                                     out.out, re.M)


@pytest.mark.parametrize("option, value", [("--atol", "-1"), ("--rtol", "nan"), ("--atol", "inf")])
def test_bad_tolerance_is_a_clear_error(graphs, capsys, option, value):
    status, out = run_cli(capsys, graphs["float"], option, value)
    name = option[2:]
    assert status == 2
    assert out.err == f"moevit: error: Tolerance {name} must be a finite number >= 0, not {float(value)!r}\n"


def test_negative_seed_is_a_clear_error(graphs, capsys):
    status, out = run_cli(capsys, graphs["float"], "--seed", "-1")
    assert status == 2 and out.err == "moevit: error: Seed must be a non-negative integer, not -1\n"


@pytest.mark.parametrize("kind, option, message", [
    ("qdq", "--rtol", "is a QDQ graph: its tolerance is in int8 steps (atol); rtol applies to float graphs"),
    ("qdq", "--checkpoint", "is a QDQ graph: its reference is a quantized model (quantized), not a checkpoint"),
    ("float", "--quantized", "is a float graph: its reference is a checkpoint, not a quantized model"),
])
def test_an_option_the_graph_has_no_use_for_is_a_clear_error(graphs, capsys, kind, option, message):
    status, out = run_cli(capsys, graphs[kind], option, "0.1")
    assert status == 2 and out.err == f"moevit: error: ONNX file {graphs[kind]} {message}\n"


# The weights: recomputed from the graph, not read from its metadata ---------------------
def test_good_graphs_hold_their_references_weights(graphs):
    for kind, count in (("float", 58), ("qdq", None)):
        weights = check_graph(graphs[kind])["weights"]
        assert weights["verdict"] == "PASS" and weights["differing"] == [] and weights["failure"] is None
        assert weights["graph_hash"] == weights["reference_hash"]
        assert count is None or weights["initializers"] == count  # tiny's semseg graph: every parameter it uses


def test_weight_edited_below_the_tolerance_is_found(graphs, tmp_path, capsys):
    """One weight moved by one float32 step: the outputs stay within tolerance,
    the metadata still names the old weights; the recomputed hash fails it."""
    def nudge(array):
        array.flat[7] = np.nextafter(array.flat[7], np.float32(np.inf))
        return array

    path = edited(graphs["float"], tmp_path / "nudged.onnx",
                  lambda p: set_initializer(p, "model.blocks.2.mlp.fc2.weight", nudge))
    report = check_graph(path)
    assert [row["verdict"] for row in report["rows"]] == ["PASS"]  # invisible in the outputs
    assert report["weights"]["differing"] == ["blocks.2.mlp.fc2.weight"]
    status, out = run_cli(capsys, path)
    assert status == 1
    assert re.search(
        r"^  weights: the graph's initializers \(hash [0-9a-f]{16}, recomputed\) are not those of random seed 0 "
        r"\(hash [0-9a-f]{16}\): 1 of 58 differ, first 'blocks\.2\.mlp\.fc2\.weight'$", out.out, re.M)
    assert re.search(r"^weights recomputed from the graph's 58 initializers: hash [0-9a-f]{16}, the reference's "
                     r"[0-9a-f]{16}: FAIL$", out.out, re.M)


def test_qdq_weight_scale_edited_within_the_tolerance_is_found(graphs, tmp_path, capsys):
    """A QDQ weight scale 2 % off moves the prediction by a few int8 steps, inside
    the numeric tolerance; the graph rebuilt from the quantized model shows it."""
    path = edited(graphs["qdq"], tmp_path / "wscale.onnx",
                  lambda p: set_initializer(p, "scale.blocks.3.attn.qkv.weight", lambda a: a * 1.02))
    report = check_graph(path)
    assert all(row["verdict"] == "PASS" for row in report["rows"])
    assert report["weights"]["differing"] == ["scale.blocks.3.attn.qkv.weight"]
    status, out = run_cli(capsys, path)
    assert status == 1
    assert re.search(
        r"^  weights: the graph's initializers \(hash [0-9a-f]{16}, recomputed\) are not those of quantized model "
        r".*tiny\.npz \(hash [0-9a-f]{16}\): 1 of \d+ differ, first 'scale\.blocks\.3\.attn\.qkv\.weight'$",
        out.out, re.M)


def test_an_initializer_the_model_lacks_is_found(graphs, tmp_path):
    def add(proto):
        proto.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "model.extra"))

    weights = check_graph(edited(graphs["float"], tmp_path / "extra.onnx", add))["weights"]
    assert weights["differing"] == ["extra"] and weights["verdict"] == "FAIL"


def test_weights_sha256_hashes_arrays_as_their_tensors():
    from moevit.model.checkpoint import weights_sha256

    state = {"b": torch.arange(3, dtype=torch.int8), "a": torch.ones(2, 2)}
    digest = weights_sha256(state)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert weights_sha256({name: value.numpy() for name, value in state.items()}) == digest
    assert weights_sha256(dict(state, a=torch.ones(4))) != digest  # the shape counts
    assert weights_sha256(dict(state, a=torch.ones(2, 2, dtype=torch.float64))) != digest  # the dtype counts


def test_graph_statistics_unlike_moevit_info_fail(graphs, capsys, monkeypatch):
    from moevit.model.onnx import commands as onnx_commands

    row = {"task": "semseg", "quantity": "MACs (top-k)", "graph": 1, "info": 2, "equal": False}
    monkeypatch.setattr(onnx_commands, "stats_rows", lambda path: [row])
    status, out = run_cli(capsys, graphs["float"])
    assert status == 1
    assert out.out.splitlines()[-2:] == [f"FAIL: {graphs['float']}",
                                         "  graph statistics: semseg MACs (top-k) is 1, moevit info says 2"]
