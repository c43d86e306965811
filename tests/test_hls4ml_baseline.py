"""``moevit bench hls4ml``: the expert FFN workload, the cost arithmetic, hls4ml's C simulation.

Fast: the workload is the golden model's own expert (its output equals the
expert output the golden model records for the tokens routed to it), the
float model agrees with the golden one within the measured int8 error, the
cost arithmetic (hls4ml's multiplier count, interval, our cycles) and the
command's table, JSON and bad inputs, with hls4ml's C simulation replaced by
the float substitute. Slow: hls4ml's ``compile()`` / ``predict()`` (tens of
seconds of g++), its agreement with the float and golden models, and our
multiplier count against the one hls4ml writes into its ``parameters.h``.
"""

import json
import re

import numpy as np
import pytest

from moevit.cli import main
from moevit.hls import hls4ml_baseline as B
from moevit.hw.config import get_hw_config
from moevit.hw.program.descriptor import LinearDescriptor
from moevit.model.integer import golden

pytestmark = pytest.mark.usefixtures("one_thread")

# Measured on tiny's signal model, expert 4 of block 1 (max |ref| 1.57), as fractions of the
# reference's largest magnitude: golden vs float 3.4%, the float GELU substitute vs erf GELU
# 1.1%, hls4ml ap_fixed<16,6> RF 128 vs float 7.9% and vs golden 10.0% (every tensor,
# accumulators included, in ap_fixed<16,6>: 10 fraction bits, truncated). The bounds:
GOLDEN_VS_FLOAT = 0.05
SUBSTITUTE_VS_FLOAT = 0.02
HLS4ML_VS_FLOAT = 0.15


@pytest.fixture(scope="module")
def work():
    return B.expert_workload("tiny")


def _relative_max(got, reference):
    return float(np.abs(np.asarray(got) - reference).max() / np.abs(reference).max())


def test_workload_is_the_golden_models_expert(work):
    from moevit.hls.cases import quantized_model

    qmodel, image = quantized_model("tiny")
    tensors = golden.run(qmodel, image, 0).tensors
    tokens = tensors[f"{work.layer}.tokens"]
    assert tokens.size > 0
    np.testing.assert_array_equal(work.golden_int["fc2.out"][tokens],
                                  tensors[f"{work.layer}.fc2.out"])
    np.testing.assert_array_equal(work.golden_int["fc1.out"][tokens],
                                  tensors[f"{work.layer}.fc1.out"])
    assert work.x_int.shape == (65, 64) and work.hidden == 128


def test_float_and_substitute_agree_with_the_golden_model(work):
    assert _relative_max(work.golden_out, work.float_out) < GOLDEN_VS_FLOAT
    import torch

    with torch.no_grad():
        substitute = B._substitute_module(work.weights)(torch.from_numpy(work.x)).numpy()
    error = _relative_max(substitute, work.float_out)
    assert 0 < error < SUBSTITUTE_VS_FLOAT  # an approximation, never exact


def test_hls4ml_multiplier_count():
    assert B.dense_multipliers(64, 128, 128) == 64
    assert B.dense_multipliers(64, 128, 1) == 8192
    assert B.dense_multipliers(10, 3, 4) == 8          # DIV_ROUNDUP(30, 4)
    assert B.dense_multipliers(64, 128, 128, zeros=256) == 62


def test_cost_rows():
    hw = get_hw_config("tiny")
    rows = B.cost_rows(hw, 65, 64, 128, {"fc1": 128, "fc2": 64})
    theirs = [r for r in rows if r["design"] == "hls4ml"]
    ours = [r for r in rows if r["design"] != "hls4ml"]
    assert [(r["multipliers"], r["interval_per_token"], r["cycles"]) for r in theirs] == \
        [(64, 128, 65 * 128), (128, 64, 65 * 64)]
    assert all(r["multipliers"] == 64 for r in ours)
    fc1 = LinearDescriptor(hw, tokens=65, in_features=64, out_features=128)
    # fc1 alone from its acceptance; fc2 from fc1's last beat; each at least MACs / MAC units.
    assert ours[0]["cycles"] == fc1.expected_cycles()
    assert ours[0]["cycles"] >= 65 * 64 * 128 // 64 and ours[1]["cycles"] >= 65 * 128 * 64 // 64
    totals = B.both_layers(rows)
    assert totals["hls4ml"]["multipliers"] == 192 and totals["hls4ml"]["cycles"] == 65 * 128
    assert totals["moevit 4x16"] == dict(multipliers=64, cycles=ours[0]["cycles"] + ours[1]["cycles"],
                                          how="one array, the layers back to back")


@pytest.fixture
def no_hls4ml_compile(work, monkeypatch):
    """hls4ml's C simulation replaced by the float substitute (the fast tests of the command)."""
    import torch

    def predict(workload, precision, reuse_factor, folder=None):
        with torch.no_grad():
            out = B._substitute_module(workload.weights)(torch.from_numpy(workload.x)).numpy()
        return out, out, {"fc1": reuse_factor, "fc2": reuse_factor}

    monkeypatch.setattr(B, "hls4ml_predict", predict)
    monkeypatch.setattr(B, "expert_workload", lambda config: work)


def test_command_table_and_json(work, no_hls4ml_compile, capsys):
    assert main(["bench", "hls4ml", "--reuse-factor", "64"]) == 0
    out = capsys.readouterr().out
    assert f"{work.layer} of tiny, 65 tokens" in out
    assert re.search(r"^hls4ml: 256 multipliers, 4160 cycles for both layers", out, re.M)
    assert re.search(r"^moevit 4x16: 64 multipliers, \d+ cycles for both layers", out, re.M)
    assert "latency needs a Vitis HLS synthesis, which is not here" in out
    assert main(["bench", "hls4ml", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in rows] == ["accuracy"] * 4 + ["cost"] * 4
    assert {r["against"] for r in rows[:4]} == {"float", "golden"}


@pytest.mark.parametrize("argv, message", [
    (["--precision", "float"], r"Precision 'float' is not an ap_fixed<W,I> type"),
    (["--reuse-factor", "0"], r"argument --reuse-factor: must be a positive integer"),
    (["--config", "nope"], r".*nope"),
])
def test_bad_input(argv, message, capsys):
    assert main(["bench", "hls4ml", *argv]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"moevit: error: {message}.*\n", err), err


@pytest.mark.slow
def test_hls4ml_c_simulation(work, tmp_path):
    out, substitute, kept = B.hls4ml_predict(work, folder=tmp_path / "prj")
    assert kept == {"fc1": B.REUSE_FACTOR, "fc2": B.REUSE_FACTOR}
    error = _relative_max(out, work.float_out)
    print(f"hls4ml {B.PRECISION} RF {B.REUSE_FACTOR}: max |err| vs float {error:.3%} of max |ref|, "
          f"vs golden {_relative_max(out, work.golden_out):.3%}")
    assert error < HLS4ML_VS_FLOAT
    assert _relative_max(out, work.golden_out) < HLS4ML_VS_FLOAT
    assert not np.array_equal(out, substitute)  # fixed point, not the float model again
    # Our count against the one hls4ml's dense configuration states.
    params = (tmp_path / "prj" / "firmware" / "parameters.h").read_text()
    for layer, n_in, n_out in (("fc1", 64, 128), ("fc2", 128, 64)):
        struct = re.search(rf"^// {layer}\nstruct config\d+ : nnet::dense_config {{.*?^}};",
                           params, re.S | re.M)
        assert struct, f"no dense config of {layer} in parameters.h"
        body = struct.group(0)
        values = {k: int(v) for k, v in re.findall(r"static const unsigned (\w+) = (\d+);", body)}
        assert (values["n_in"], values["n_out"], values["reuse_factor"]) == \
            (n_in, n_out, B.REUSE_FACTOR)
        assert "DIV_ROUNDUP(n_in * n_out, reuse_factor) - n_zeros / reuse_factor" in body
        assert B.dense_multipliers(n_in, n_out, values["reuse_factor"], values["n_zeros"]) == 64
