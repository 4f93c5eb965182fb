"""The weight average: its update rule, what it tracks, checkpoints and the trainer's use of it."""

import pytest
import torch
from torch import nn

from recurnet.training import CheckpointError, Progressive, TrainConfig, Trainer
from recurnet.training.ema import WeightAverage

from test_checkpoint import LOSS, NoisyMean, assert_same_weights, config, tiny_net


def test_update_follows_the_warmed_up_decay_and_copy_writes_the_average():
    net = nn.Linear(3, 2)
    start = net.weight.detach().clone()
    avg = WeightAverage(net, decay=0.95)
    assert avg.rate() == pytest.approx(2 / 11)  # warm-up: (1 + t) / (10 + t) below the decay
    expected = start.clone()
    for t in range(1, 400):
        with torch.no_grad():
            net.weight.add_(0.01)
        d = min(0.95, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * net.weight.detach()
        avg.update()
    assert avg.steps == 399 and avg.rate() == 0.95
    current = net.weight.detach().clone()
    avg.copy_to()
    assert torch.allclose(net.weight, expected, atol=1e-6)
    assert (net.weight < current).all() and (net.weight > start).all()  # it lags the drifting weights


def test_only_trainable_parameters_and_train_mode_norm_statistics_are_tracked():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    net[0].weight.requires_grad_(False)
    net[1].eval()
    names = WeightAverage(net, 0.9).names
    assert "0.weight" not in names and "0.bias" in names
    assert "1.running_mean" not in names  # a frozen (eval-mode) norm keeps its statistics
    assert {"3.running_mean", "3.running_var"} <= set(names)
    assert "3.num_batches_tracked" not in names  # integer buffers are not averaged


def test_state_round_trip_and_mismatch_errors():
    net = nn.Linear(2, 2)
    avg = WeightAverage(net, 0.9)
    avg.update()
    other = WeightAverage(nn.Linear(2, 2), 0.5)
    other.load_state_dict(avg.state_dict())
    assert other.steps == 1 and other.decay == 0.9
    assert all(torch.equal(other.average[k], avg.average[k]) for k in avg.names)
    with pytest.raises(ValueError, match="tracks other tensors"):
        WeightAverage(nn.Linear(2, 2, bias=False), 0.9).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="shape"):
        WeightAverage(nn.Linear(3, 2), 0.9).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(Progressive((1,)), ema=1.5)


def test_each_phase_ends_on_its_average_and_a_resumed_run_reaches_the_same_weights(tmp_path):
    plain = tiny_net(max_loops=2)
    Trainer(plain, LOSS, NoisyMean(), config(tmp_path / "plain")).fit()
    full = tiny_net(max_loops=2)
    Trainer(full, LOSS, NoisyMean(), config(tmp_path / "full", ema=0.9)).fit()
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), full.state_dict().values()))

    part = tiny_net(max_loops=2)
    Trainer(part, LOSS, NoisyMean(), config(tmp_path / "part", ema=0.9)).fit(max_epochs=1)  # inside phase 0
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    resumed = tiny_net(max_loops=2, seed=5)
    assert Trainer(resumed, LOSS, NoisyMean(), config(tmp_path / "part", ema=0.9)).fit(resume=ckpt).finished
    assert_same_weights(full, resumed)


def test_resuming_without_the_stored_average_fails_clearly(tmp_path):
    Trainer(tiny_net(max_loops=2), LOSS, NoisyMean(), config(tmp_path, ema=0.9)).fit(max_epochs=1)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["ema"] = None
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="weight average"):
        Trainer(tiny_net(max_loops=2), LOSS, NoisyMean(), config(tmp_path, ema=0.9)).fit(resume=ckpt)
