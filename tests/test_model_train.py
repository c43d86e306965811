import os
import subprocess
import sys

import pytest
import torch

from moevit.errors import CheckpointError, ConfigError
from moevit.model.checkpoint import load_checkpoint, save_checkpoint
from moevit.model.config import get_config
from moevit.model.data import SyntheticDataset
from moevit.model.evaluate import evaluate
from moevit.model.metrics import chance_metrics
from moevit.model.moevit import MoEViT
from moevit.model.train import MultiTaskLoss, TrainOptions, global_batch_indices, train


pytestmark = pytest.mark.usefixtures("one_thread")


TINY = get_config("tiny")


@pytest.fixture(scope="module")
def small_set():
    return SyntheticDataset(TINY, "train", size=32)


def test_training_beats_chance_on_a_short_run():
    train_set = SyntheticDataset(TINY, "train", size=512)
    val = SyntheticDataset(TINY, "val", size=64)
    result = train(TINY, TrainOptions(steps=60, batch_size=16, warmup=5), train_set, progress=False)
    metrics = evaluate(result.model, val)
    chance = chance_metrics(TINY, train_set.targets, val.targets)
    assert metrics["semseg"]["miou"] > 2 * chance["semseg"]["miou"]
    assert metrics["depth"]["rmse"] < 0.75 * chance["depth"]["rmse"]
    assert result.history[-1][1] < result.history[0][1]


def test_resume_continues_exactly(tmp_path, small_set):
    options = dict(steps=4, batch_size=8, warmup=2)
    straight = train(TINY, TrainOptions(**options), small_set, progress=False)
    # Stop after 2 steps of the 4-step schedule (a checkpoint every 2), then resume.
    stop = tmp_path / "stop.pt"
    _train_until(TrainOptions(**options, checkpoint=str(stop), checkpoint_every=2), small_set, 2)
    assert load_checkpoint(stop)[1]["extra"]["step"] == 2
    resumed = train(TINY, TrainOptions(**options), small_set, resume=stop, progress=False)
    assert [h[0] for h in resumed.history] == [3, 4]
    assert resumed.history == straight.history[2:]
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def _train_until(options, dataset, stop_after):
    """Run ``train`` but interrupt it after ``stop_after`` steps (as a killed job would)."""

    class Interrupt(Exception):
        pass

    class Limited(torch.utils.data.Dataset):
        calls = 0

        def __len__(self):
            return len(dataset)

        def batch(self, indices):
            # The first call is the depth-head initialisation, then one per step.
            Limited.calls += 1
            if Limited.calls > stop_after + 1:
                raise Interrupt
            return dataset.batch(indices)

    with pytest.raises(Interrupt):
        train(TINY, options, Limited(), progress=False)


def test_resume_needs_training_state(tmp_path, small_set):
    path = save_checkpoint(tmp_path / "weights.pt", MoEViT(TINY))
    with pytest.raises(CheckpointError, match=r"^Checkpoint .*weights\.pt has no training state to resume from$"):
        train(TINY, TrainOptions(steps=2, batch_size=8), small_set, resume=path, progress=False)


def test_batch_order_is_a_permutation_per_epoch():
    epoch = torch.cat([global_batch_indices(step, 8, 32, 0) for step in range(4)])
    assert sorted(epoch.tolist()) == list(range(32))
    assert not torch.equal(global_batch_indices(4, 8, 32, 0), global_batch_indices(0, 8, 32, 0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, r"^Steps must be a positive integer, not 0$"),
        ({"batch_size": -2}, r"^Batch size must be a positive integer, not -2$"),
        ({"lr": 0.0}, r"^Learning rate must be a positive finite number, not 0\.0$"),
        ({"lr": float("nan")}, r"^Learning rate must be a positive finite number, not nan$"),
        ({"warmup": -1}, r"^Warm-up must be a non-negative integer, not -1$"),
        ({"checkpoint_every": -5}, r"^Checkpoint interval must be a non-negative integer, not -5$"),
        ({"seed": -1}, r"^Seed must be a non-negative integer, not -1$"),
        ({"dtype": "float16"}, r"^Training dtype must be one of \['float32', 'float64'\], not 'float16'$"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainOptions(**kwargs)


def test_batch_larger_than_the_set_is_a_clear_error(small_set):
    with pytest.raises(ConfigError, match=r"^Batch size 64 exceeds the dataset's 32 samples$"):
        train(TINY, TrainOptions(steps=1, batch_size=64), small_set, progress=False)


def test_two_ddp_processes_equal_one(tmp_path, small_set):
    """2 CPU processes (gloo, started by ``moevit train --nproc-per-node 2`` as torchrun
    would) give the weights of 1 process on the same data.

    In float64 the two differ only by the order of float additions (gradient
    all-reduce, per-share sums): measured 2e-15, checked at 1e-12. (In float32 the
    same run differs by ~2e-5 after 4 AdamW steps: Adam's g/sqrt(v) amplifies the
    1e-6 relative differences of near-zero gradients.)
    """
    checkpoint = tmp_path / "ddp.pt"
    env = {**os.environ, "MOEVIT_BUILD": str(tmp_path / "build"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "moevit", "train", "--nproc-per-node", "2", "--config", "tiny", "--steps", "4", "--batch-size", "8",
        "--train-size", "32", "--warmup", "2", "--dtype", "float64", "--quiet",
        "--checkpoint", str(checkpoint),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained tiny to step 4" in run.stdout
    ddp, meta = load_checkpoint(checkpoint, TINY)
    assert meta["extra"]["world_size"] == 2
    single = train(TINY, TrainOptions(steps=4, batch_size=8, warmup=2, dtype="float64"), small_set, progress=False)
    moved = 0.0
    torch.manual_seed(0)
    initial = dict(MoEViT(TINY).double().named_parameters())
    for name, a in single.model.named_parameters():
        b = dict(ddp.named_parameters())[name]
        assert b.dtype == torch.float64
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (name, (a - b).abs().max())
        moved = max(moved, float((a - initial[name]).detach().abs().max()))
    assert moved > 1e-3


def test_a_batch_without_valid_pixels_adds_nothing_to_the_loss(small_set):
    # Real data has images whose labels are all 'ignore' or whose depth is all invalid:
    # their task loss is 0 (nothing to learn), not nan (which would stop training as diverged).
    torch.manual_seed(0)
    net = MultiTaskLoss(MoEViT(TINY), aux_weight=0.0)
    batch = small_set.batch(range(2))
    _, losses = net(batch["image"], batch)
    assert (losses > 0).all()
    batch["semseg"][:] = 255
    batch["depth"][:] = 0
    total, losses = net(batch["image"], batch)
    assert losses.tolist() == [0.0, 0.0] and float(total.detach()) == 0.0
