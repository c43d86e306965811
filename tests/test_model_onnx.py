"""ONNX export: standard operators, ONNX Runtime against PyTorch, statistics, bad input.

Every config is exported once (module-scoped fixtures, random weights, batch
1). Bound of the float graphs: the largest absolute difference from PyTorch,
per task, is below ``FLOAT_BOUND`` (outputs are of magnitude ~1; measured
3e-7 for ``tiny``, 1.1e-6 for ``edge-moe``, 2e-6 for ``m3vit-s``).
"""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.model.config import get_config
from moevit.model.moevit import MoEViT
from moevit.model.onnx.check import (
    OnnxFileError,
    OnnxInputError,
    OnnxModel,
    compare_with_torch,
    graph_stats,
    read_graph,
    torch_model_for,
)
from moevit.model.onnx.commands import stats_rows
from moevit.model.onnx.export import export_onnx
from moevit.model.stats import model_stats

FLOAT_BOUND = 1e-5
CONFIGS = ("tiny", "edge-moe", "m3vit-s")


def random_model(name, seed=0):
    torch.manual_seed(seed)
    return MoEViT(get_config(name)).eval()


def random_images(config, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, config.in_chans, *config.image_size)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Config name -> (model, task-any graph path); tiny also has per-task graphs."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name, task="any"):
        key = (name, task)
        if key not in cache:
            model = random_model(name)
            path = export_onnx(model, task, folder / f"{name}-{task}.onnx", weights="random seed 0")
            cache[key] = (model, path)
        return cache[key]

    return get


def all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from all_nodes(attr.g)


def test_per_task_graph_is_standard_onnx_and_matches_pytorch(exported):
    task = "semseg"  # the depth graph: test_commands_export_check_and_stats
    model, path = exported("tiny", task)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
    ops = {node.op_type for node in all_nodes(proto.graph)}
    assert {node.domain for node in all_nodes(proto.graph)} == {""}
    assert {"TopK", "NonZero", "Gather", "GatherND", "ScatterND", "Gemm"} <= ops
    assert "If" not in ops and [i.name for i in proto.graph.input] == ["images"]
    rows = compare_with_torch(OnnxModel(path), model, random_images(model.config))
    assert [row["task"] for row in rows] == [task]
    assert rows[0]["shape"] == [1, model.config.tasks[model.config.task_index(task)].classes, 64, 64]
    assert rows[0]["max_abs_diff"] < FLOAT_BOUND and rows[0]["max_abs_ref"] > 0.1


@pytest.mark.parametrize("name", CONFIGS)
def test_task_any_graph_matches_pytorch_for_every_task(exported, name):
    model, path = exported(name)
    graph = OnnxModel(path)
    assert graph.inputs == ["images", "task"] and graph.task == "any"
    rows = compare_with_torch(graph, model, random_images(model.config))
    config = model.config
    assert [row["task"] for row in rows] == list(config.task_names)
    for row, spec in zip(rows, config.tasks):
        assert row["shape"] == [1, spec.classes, *config.image_size]
        assert row["max_abs_diff"] < FLOAT_BOUND, row
        assert row["max_abs_ref"] > 0.1  # a real signal, not zeros on both sides


def test_graphs_follow_the_renormalised_gate_too(tmp_path):
    """tiny's graphs use its V-MoE gate (the tests above); a "renorm" model's, the softmax over the top-k."""
    torch.manual_seed(0)
    model = MoEViT(get_config("tiny").replace(gate="renorm")).eval()
    path = export_onnx(model, "any", tmp_path / "renorm.onnx", weights="random seed 0")
    rows = compare_with_torch(OnnxModel(path), model, random_images(model.config))
    assert all(row["max_abs_diff"] < FLOAT_BOUND for row in rows), rows
    vmoe = MoEViT(get_config("tiny")).eval()  # the same weights under the V-MoE rule differ by far more
    vmoe.load_state_dict({k: v for k, v in model.state_dict().items() if ".noise." not in k})
    with torch.no_grad():
        x = torch.from_numpy(random_images(model.config))
        assert (model(x, 0) - vmoe(x, 0)).abs().max() > 100 * FLOAT_BOUND


@pytest.mark.parametrize("name", CONFIGS)
def test_graph_statistics_equal_moevit_info(exported, name):
    _, path = exported(name)
    proto, meta = read_graph(path)
    assert {node.domain for node in all_nodes(proto.graph)} == {""}
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
    stats = graph_stats(proto, meta)
    config = meta["config"]
    for task in config.task_names:
        info = model_stats(config, task)
        assert stats["tasks"][task]["macs"] == info["macs"]
        assert stats["tasks"][task]["macs_all_experts"] == info["macs_all_experts"]
    noise = model_stats(config)["params_by_part"]["gate_noise"]
    assert stats["params"] == model_stats(config)["params"] - noise
    assert stats["moe_layers"] == [
        {"tokens": config.tokens, "k": config.top_k, "experts": config.experts,
         "macs_per_token_expert": 2 * config.dim * config.expert_hidden}
    ] * len(config.moe_blocks)
    assert all(row["equal"] for row in stats_rows(path, graph=(proto, meta)))


def test_per_task_graph_parameters_are_the_active_ones(exported):
    _, path = exported("tiny", "semseg")
    proto, meta = read_graph(path)
    assert graph_stats(proto, meta)["params"] == model_stats(meta["config"], "semseg")["active_params"]


def test_routing_equals_pytorch(exported):
    model, path = exported("tiny")
    rows = compare_with_torch(OnnxModel(path, routing=True), model, random_images(model.config, seed=3))
    for row in rows:
        assert row["routing_equal"] is True
        touched = [int(layer.split("/")[0]) for layer in row["experts_touched"].split()]
        assert len(touched) == 2 and all(2 <= n <= 8 for n in touched)
    got = OnnxModel(path, routing=True).run(random_images(model.config, seed=3), 1)["routing"]
    assert [r.shape for r in got] == [(65, 2), (65, 2)]
    assert all(len(set(row)) == 2 for r in got for row in r.tolist())  # k distinct experts per token


def test_raw_task_any_graph_fails_on_a_task_id_out_of_range(exported):
    model, path = exported("tiny")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = random_images(model.config)
    for bad in (2, -1, -3):
        with pytest.raises(InvalidArgument, match=r"indices element out of data bounds"):
            session.run(None, {"images": images, "task": np.array([bad], np.int64)})


def test_task_id_out_of_range_is_a_clear_error(exported):
    model, path = exported("tiny")
    with pytest.raises(ConfigError, match=r"^Model 'tiny' has no task 2; task ids are 0\.\.1$"):
        OnnxModel(path).run(random_images(model.config), 2)


def test_task_any_graph_needs_a_task(exported):
    model, path = exported("tiny")
    with pytest.raises(OnnxInputError, match=r"^ONNX file .* takes the task as an input; give a task id in 0\.\.1"):
        OnnxModel(path).run(random_images(model.config))


def test_per_task_graph_refuses_another_task(exported):
    model, path = exported("tiny", "semseg")
    with pytest.raises(OnnxInputError, match=r"^ONNX file .* computes task 'semseg' only, not 'depth'$"):
        OnnxModel(path).run(random_images(model.config), "depth")


def test_wrong_image_shape_is_a_clear_error(exported):
    _, path = exported("tiny")
    with pytest.raises(OnnxInputError, match=r"^Images of shape \(1, 3, 32, 32\) do not fit ONNX file .*; expected \(1, 3, 64, 64\)$"):
        OnnxModel(path).run(np.zeros((1, 3, 32, 32), np.float32), 0)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(OnnxFileError, match=r"^ONNX file .*nothing\.onnx does not exist$"):
        OnnxModel(tmp_path / "nothing.onnx")
    with pytest.raises(OnnxFileError, match=r"^ONNX file .*nothing\.onnx does not exist$"):
        read_graph(tmp_path / "nothing.onnx")


def test_truncated_file_is_a_clear_error(exported, tmp_path):
    _, path = exported("tiny")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OnnxFileError, match=r"^ONNX file .*cut\.onnx is truncated or not an ONNX model: "):
        OnnxModel(cut)
    with pytest.raises(OnnxFileError, match=r"^ONNX file .*cut\.onnx is truncated or not an ONNX model: "):
        read_graph(cut)


def test_graph_not_from_moevit_is_a_clear_error(tmp_path):
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", 1, [1])], [onnx.helper.make_tensor_value_info("y", 1, [1])]
    )
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(OnnxFileError, match=r"^ONNX file .*relu\.onnx was not exported by moevit \(no moevit metadata\)$"):
        OnnxModel(path)


def test_graph_of_another_model_is_a_clear_error(exported):
    _, path = exported("tiny")
    with pytest.raises(OnnxFileError, match=r"^ONNX file .* holds model 'tiny' \(config hash [0-9a-f]{16}\), not 'edge-moe' \(config hash [0-9a-f]{16}\)$"):
        OnnxModel(path, config=get_config("edge-moe"))
    other = MoEViT(get_config("tiny").replace(name="tiny-deeper", depth=6, moe_blocks=(1, 3, 5)))
    with pytest.raises(OnnxFileError, match=r"^ONNX file .* holds model 'tiny' .*, not 'tiny-deeper'"):
        compare_with_torch(OnnxModel(path), other, np.zeros((1, 3, 64, 64), np.float32))


def test_graph_of_other_weights_is_a_clear_error(exported):
    _, path = exported("tiny")
    _, meta = read_graph(path)
    assert torch_model_for(meta).state_dict().keys() == random_model("tiny").state_dict().keys()
    meta = dict(meta, **{"moevit.weights": "random seed 1"})
    with pytest.raises(OnnxFileError, match=r"^The graph holds other weights \(hash [0-9a-f]{16}\) than random seed 1 \(hash [0-9a-f]{16}\)$"):
        torch_model_for(meta)


def test_bad_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^Batch must be a positive integer, not 0$"):
        export_onnx(random_model("tiny"), "semseg", tmp_path / "x.onnx", batch=0)


def test_commands_export_check_and_stats(tmp_path, capsys):
    path = tmp_path / "tiny-depth.onnx"
    assert main(["export-onnx", "--config", "tiny", "--task", "1", "-o", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "export-onnx, check (onnx.checker): 2/2 stages done" in err  # the progress, on stderr
    assert re.search(r"float graph of 'tiny', task 'depth', opset 18, \d+ nodes; onnx.checker full check passed", out)
    assert main(["check-onnx", str(path)]) == 0  # the JSON form: test_qdq_commands
    out = capsys.readouterr().out
    (diff,) = re.findall(r"^depth +prediction +\[1, 1, 64, 64\] +(\S+) ", out, re.M)
    assert float(diff) < FLOAT_BOUND
    assert re.search(r"^depth +MACs \(top-k\) +16057856 +16057856 +True", out, re.M) and " False" not in out
    assert main(["onnx-stats", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and all(row["equal"] for row in rows)
    assert main(["check-onnx", str(path), "--config", "m3vit-s"]) == 2
    assert re.search(r"^moevit: error: ONNX file .* holds model 'tiny' .*, not 'm3vit-s'", capsys.readouterr().err, re.M)
    assert main(["check-onnx", str(tmp_path / "none.onnx")]) == 2
    assert re.search(r"^moevit: error: ONNX file .*none\.onnx does not exist$", capsys.readouterr().err, re.M)


@pytest.mark.parametrize("where", ["weight", "input"])
def test_stats_of_a_graph_naming_a_tensor_nothing_defines(exported, tmp_path, capsys, where):
    """A byte changed in a tensor's name (the readers' fuzzer found both): the Conv's weight
    renamed past shape inference, or its input, which shape inference refuses: one line,
    exit 2, not a KeyError or onnx's exception."""
    import onnx

    _, path = exported("tiny")
    proto = onnx.load(str(path))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    conv.input[1 if where == "weight" else 0] = "lodel.nothing"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    assert main(["onnx-stats", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("moevit: error: Cannot count Conv node" if where == "weight"
                          else "moevit: error: Cannot infer the graph's shapes: ")
    assert ("lodel.nothing" in err) == (where == "weight")   # onnx's message does not name it


def test_stats_of_a_node_whose_input_has_too_few_dimensions():
    """A flipped byte of tiny's graph (the readers' fuzzer: byte 136,185, bit 0, of
    ``export-onnx --config tiny --task 0``) left a Gemm's input of shape ``[]`` past shape
    inference: an error of one line naming the tensor, not an IndexError."""
    from onnx import helper

    from moevit.errors import MoevitError
    from moevit.model.onnx.check import _node_macs

    gemm = helper.make_node("Gemm", ["val_129", "w"], ["y"], name="node_Gemm_124")
    with pytest.raises(MoevitError, match=r"^Cannot count Gemm node 'node_Gemm_124': its tensor "
                                          r"'val_129' has shape \[\], not of 1 dimensions$"):
        _node_macs(gemm, {"y": [1, 8], "val_129": [], "w": [8, 8]})


# QDQ graphs of the quantized model ---------------------------------------------------
# The bounds are QDQ_BOUNDS (model/onnx/qdq.py: its docstring says how they
# were measured); these tests hold every graph to them, image by image.


def quantize_and_export(name, folder):
    from moevit.model.onnx.qdq import export_qdq
    from moevit.model.integer.quantize import quantize, save_quantized

    model = random_model(name)
    config = model.config
    calibration = torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(1))
    qmodel = quantize(model, calibration)
    qpath = save_quantized(folder / f"{name}.npz", qmodel)
    graphs = {task: export_qdq(qmodel, task, folder / f"{name}-{task}-qdq.onnx", source=str(qpath))
              for task in config.task_names}
    return qmodel, qpath, graphs


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    return quantize_and_export("tiny", tmp_path_factory.mktemp("qdq"))


def test_qdq_graph_of_edge_moe_is_within_bound(tmp_path):
    """Edge-MoE's 12 blocks (6 MoE layers): more flips, within the same bounds."""
    from moevit.model.onnx.qdq import QDQ_BOUNDS, compare_with_golden

    qmodel, _, graphs = quantize_and_export("edge-moe", tmp_path)
    images = random_images(qmodel.config, seed=5)
    for task, path in graphs.items():
        (row,) = compare_with_golden(OnnxModel(path), images)
        assert QDQ_BOUNDS.violations(row) == [], row


def test_qdq_graph_is_standard_onnx_with_integer_weights(quantized):
    qmodel, _, graphs = quantized
    proto = onnx.load(str(graphs["semseg"]))
    onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
    assert {node.domain for node in proto.graph.node} == {""}
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("TopK") == 2 and ops.count("NonZero") == 16
    weights = {t.name: t for t in proto.graph.initializer}
    assert weights["blocks.1.mlp.experts.3.fc1.weight"].data_type == onnx.TensorProto.INT8
    assert weights["blocks.0.attn.qkv.bias"].data_type == onnx.TensorProto.INT32
    assert {"heads.1.weight", "blocks.1.mlp.gates.1.weight"}.isdisjoint(weights)  # semseg's only
    consumers = {i for node in proto.graph.node if node.op_type == "DequantizeLinear" for i in node.input}
    int8 = {name for name, t in weights.items() if t.data_type == onnx.TensorProto.INT8}
    assert int8 - consumers == {"cls"}  # the class token joins the int8 tokens (Concat), then one DQ
    assert [o.name for o in proto.graph.output] == ["prediction", "prediction_int8"]


@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_qdq_graph_is_within_the_stated_bounds(quantized, task):
    from moevit.model.onnx.qdq import QDQ_BOUNDS, compare_with_golden

    qmodel, _, graphs = quantized
    tensors = ["patch_embed.out", "embed.out"]
    for seed in (5, 6):
        images = random_images(qmodel.config, seed=seed)
        rows = {row["output"]: row for row in compare_with_golden(OnnxModel(graphs[task]), images, tensors=tensors)}
        out = rows["prediction_int8"]
        assert out["shape"] == [qmodel.config.tasks[qmodel.config.task_index(task)].classes, 64, 64]
        assert QDQ_BOUNDS.violations(out) == [], out
        # the integer layers: float32 Gemm/Conv + round half to even, now and then 1 step off
        assert rows["patch_embed.out"]["max_steps"] <= 1 and rows["patch_embed.out"]["equal_fraction"] > 0.999
        assert rows["embed.out"]["max_steps"] <= 1 and rows["embed.out"]["equal_fraction"] > 0.999


def test_qdq_routing_accounting_by_hand(quantized):
    """routing_agreement and the steps of tokens routed alike, recomputed from both models' own outputs."""
    from moevit.model.integer import golden
    from moevit.model.onnx.qdq import compare_with_golden

    qmodel, _, graphs = quantized
    config = qmodel.config
    images = random_images(config, seed=8)
    (row,) = compare_with_golden(OnnxModel(graphs["semseg"]), images)
    ours = OnnxModel(graphs["semseg"], routing=True).run(images)
    ref = golden.run(qmodel, images[0], "semseg")
    alike = np.ones(config.tokens, bool)
    for block, got in zip(config.moe_blocks, ours["routing"]):
        expected = ref.tensors[f"blocks.{block}.mlp.gate.topk"]
        alike &= [set(a) == set(b) for a, b in zip(got.tolist(), expected.tolist())]
    assert row["routing_agreement"] == alike.mean()
    steps = np.abs(ours["prediction_int8"][0].astype(int) - ref.output)
    patch_alike = alike[1:].reshape(config.grid)
    pixel_alike = np.kron(patch_alike, np.ones((config.patch, config.patch), bool))[None].repeat(steps.shape[0], 0)
    assert row["max_steps_alike"] == steps[pixel_alike].max()
    assert row["mean_steps_alike"] == pytest.approx(steps[pixel_alike].mean())
    flipped = steps[~pixel_alike]
    assert row["max_steps_flipped"] == (flipped.max() if flipped.size else None)


def test_qdq_bounds_name_what_they_exceed():
    from moevit.model.onnx.qdq import QDQ_BOUNDS

    row = {"max_steps_alike": QDQ_BOUNDS.max_steps_alike + 1, "mean_steps_alike": 0.0,
           "routing_agreement": QDQ_BOUNDS.min_routing_agreement - 0.01, "mean_steps": 0.0}
    found = QDQ_BOUNDS.violations(row)
    assert len(found) == 2
    assert found[0] == f"{QDQ_BOUNDS.max_steps_alike + 1} steps on a token routed alike (bound {QDQ_BOUNDS.max_steps_alike})"
    assert re.match(r"^\d+\.\d% of tokens routed alike \(bound \d+%\)$", found[1])


@pytest.mark.slow
def test_qdq_graph_of_the_trained_tiny_is_within_the_stated_bounds(tmp_path):
    """The trained tiny (sim.units' cached one): routing flips happen, and only they go far."""
    from moevit.model.data import SyntheticDataset
    from moevit.model.onnx.qdq import QDQ_BOUNDS, compare_with_golden, export_qdq
    from moevit.model.integer.quantize import save_quantized
    from moevit.sim.units import tiny_quantized

    qmodel, _ = tiny_quantized()
    qpath = save_quantized(tmp_path / "tiny.npz", qmodel)
    images = SyntheticDataset(qmodel.config, "val", size=8, seed=3).images.numpy()
    flipped = []
    for task in qmodel.config.task_names:
        graph = OnnxModel(export_qdq(qmodel, task, tmp_path / f"{task}.onnx", source=str(qpath)))
        for image in images:
            (row,) = compare_with_golden(graph, image[None])
            assert QDQ_BOUNDS.violations(row) == [], row
            flipped.append(row["max_steps_flipped"])
    assert any(steps is not None for steps in flipped)  # 8 images x 65 tokens: some flip


def test_qdq_graph_statistics_equal_moevit_info(quantized):
    _, _, graphs = quantized
    rows = stats_rows(graphs["depth"])
    assert rows[0]["quantity"] == "params (active, cls+pos folded)"
    assert all(row["equal"] for row in rows)


def test_onnx_runtime_topk_breaks_ties_like_the_golden_model():
    from moevit.model.integer.intops import topk

    logits = np.random.default_rng(0).integers(-3, 3, size=(200, 8)).astype(np.float32)
    node = onnx.helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=1, sorted=1)
    graph = onnx.helper.make_graph(
        [node], "topk", [onnx.helper.make_tensor_value_info("x", 1, [200, 8])],
        [onnx.helper.make_tensor_value_info("i", 7, [200, 4])],
        initializer=[onnx.numpy_helper.from_array(np.array([4], np.int64), "k")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (indices,) = session.run(["i"], {"x": logits})
    np.testing.assert_array_equal(indices, topk(logits.astype(np.int64), 4))


def test_qdq_graph_of_another_quantized_model_is_a_clear_error(quantized, tmp_path):
    from moevit.model.onnx.qdq import compare_with_golden
    from moevit.model.integer.quantize import QuantizedModel, save_quantized

    qmodel, _, graphs = quantized
    arrays = dict(qmodel.arrays)
    arrays["heads.0.bias"] = arrays["heads.0.bias"] + 1
    other = save_quantized(tmp_path / "other.npz", QuantizedModel(qmodel.config, arrays))
    with pytest.raises(OnnxFileError, match=r"^ONNX file .* was exported from another quantized model than .*other\.npz \(checksum [0-9a-f]{16}, not [0-9a-f]{16}\)$"):
        compare_with_golden(OnnxModel(graphs["semseg"]), random_images(qmodel.config), quantized=other)


def test_qdq_graph_is_per_task(quantized, tmp_path):
    from moevit.model.onnx.qdq import export_qdq

    with pytest.raises(ConfigError, match=r"^QDQ graphs are exported per task, not 'any'"):
        export_qdq(quantized[0], "any", tmp_path / "any.onnx")


def test_qdq_commands(quantized, tmp_path, capsys):
    from moevit.model.onnx.qdq import QDQ_BOUNDS

    _, qpath, _ = quantized
    path = tmp_path / "q.onnx"
    assert main(["export-onnx", "--quantized", str(qpath), "--task", "semseg", "-o", str(path)]) == 0
    assert "qdq graph of 'tiny', task 'semseg'" in capsys.readouterr().out
    assert main(["check-onnx", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["differences"]
    assert row["output"] == "prediction_int8" and QDQ_BOUNDS.violations(row) == []
    assert all(r["equal"] for r in report["stats"]) and report["verdict"] == "PASS" and report["failures"] == []
