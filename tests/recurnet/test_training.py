"""Protocols, the trainer, evaluation and gate training."""

import copy
import csv
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import recurnet
from recurnet.cost import ComponentCost, CostModel
from recurnet.losses import LoopLoss, LossTerm
from recurnet.output import LoopOutput
from recurnet.training import (
    PROTOCOLS,
    CheckpointError,
    EndToEnd,
    GateConfig,
    NonFiniteLossError,
    Phase,
    Progressive,
    RolloutData,
    TrainConfig,
    Trainer,
    collect_rollouts,
    config_from_dict,
    config_to_dict,
    evaluate,
    load_checkpoint,
    loss_metrics,
    temperature_sweep,
    tradeoff_point,
    train_gate,
)
from recurnet.training.gate import BASELINES
from recurnet.training.protocols import prepare_phase, protocol_from_dict, protocol_to_dict


def tiny_net(max_loops=2, seed=0):
    torch.manual_seed(seed)
    return recurnet.loopify(
        "test_resnet",
        stage=2,
        max_loops=max_loops,
        check_size=(32, 32),
        heads={"y": lambda c: nn.Linear(c, 1)},
        uncertainty=True,
        uncertainty_hidden=16,
    )


class MeanTask(torch.utils.data.Dataset):
    """Images of noise; the target is 3 x their mean (a quick-to-learn regression)."""

    def __init__(self, n=24, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = 3 * self.x.mean(dim=(1, 2, 3))[:, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i]}


class Blobs(torch.utils.data.Dataset):
    """Counting task: 1..5 Gaussian blobs at random places; target = count / 5."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        images, targets = [], []
        for _ in range(n):
            k = int(torch.randint(1, 6, (1,), generator=g))
            centres = torch.rand(k, 2, generator=g) * 28 + 2
            img = sum(torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0) for cy, cx in centres)
            images.append(img.expand(3, 32, 32) + 0.05 * torch.randn(3, 32, 32, generator=g))
            targets.append(torch.tensor([k / 5.0]))
        self.x, self.y = torch.stack(images), torch.stack(targets)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i]}


LOSS = LoopLoss([LossTerm("y", "target", "l2", variance_weight=0.1)])


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------- protocols


def test_protocol_phases():
    assert EndToEnd(7).phases(max_loops=3) == [Phase(0, 3, 7)]
    assert EndToEnd(7, loops=1).phases(max_loops=3)[0].loops == 1
    phases = Progressive((50, 20, 20)).phases(max_loops=2)
    assert [(p.loops, p.epochs) for p in phases] == [(0, 50), (1, 20), (2, 20)]
    assert [p.lr_scale for p in phases] == pytest.approx([1.0, 0.1, 0.01])
    assert phases[0].frozen == () and phases[1].frozen == phases[2].frozen == ("extractor", "auxiliary")
    assert phases[0].full_lr == () and phases[2].full_lr == ("feedback",)
    assert [p.init_from_previous for p in phases] == [False, True, True]
    assert Progressive((50, 20, 20)).total_epochs == 90


def test_protocol_validation_and_round_trip():
    with pytest.raises(ValueError, match="max_loops >= 3"):
        Progressive((1, 1, 1, 1)).phases(max_loops=2)
    with pytest.raises(ValueError, match="exceeds"):
        EndToEnd(3, loops=4).phases(max_loops=2)
    with pytest.raises(ValueError, match="lr_decay"):
        Progressive((1,), lr_decay=0.0)
    with pytest.raises(ValueError, match="non-negative integer"):
        EndToEnd(-1)
    p = Progressive([3, 2], lr_decay=0.5)
    assert protocol_from_dict(protocol_to_dict(p)) == p
    assert protocol_to_dict(p) == {"name": "progressive", "epochs": [3, 2], "lr_decay": 0.5,
                                   "full_lr": ["feedback"], "freeze": ["extractor", "auxiliary"]}
    with pytest.raises(KeyError, match="unknown training protocol 'nope'"):
        protocol_from_dict({"name": "nope"})
    assert set(PROTOCOLS.names()) >= {"end_to_end", "progressive"}


def test_prepare_phase_freezes_copies_norms_and_sets_learning_rates():
    net = tiny_net()
    net.policy = recurnet.LearnedGate(16)
    net.heads["y"].bias.requires_grad_(False)  # the user froze this one: it must stay frozen
    base = {n: p.requires_grad for n, p in net.named_parameters()}
    phases = Progressive((1, 1, 1)).phases(net.max_loops)
    norm = net.per_iteration_norms[0]

    groups = prepare_phase(net, phases[0], base, lr=1.0, start=True)
    assert len(groups) == 1 and groups[0]["lr"] == 1.0
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("feedback.", "policy.")) for n in trainable)  # unused with loops=0
    assert not any(".norms.1." in n or ".norms.2." in n for n in trainable)
    assert "heads.y.bias" not in trainable and "heads.y.weight" in trainable

    with torch.no_grad():
        norm.norms[0].weight.uniform_()
        norm.norms[0].running_mean.uniform_()
    before2 = norm.norms[2].weight.clone()
    groups = prepare_phase(net, phases[1], base, lr=1.0, start=True)
    torch.testing.assert_close(norm.norms[1].weight, norm.norms[0].weight)
    torch.testing.assert_close(norm.norms[1].running_mean, norm.norms[0].running_mean)
    assert torch.equal(norm.norms[2].weight, before2)
    by_name = {g["name"]: g for g in groups}
    assert by_name["scaled"]["lr"] == pytest.approx(0.1) and by_name["full"]["lr"] == 1.0
    feedback_ids = {id(p) for p in net.feedback.parameters()}
    assert all(id(p) in feedback_ids for p in by_name["full"]["params"])
    assert not any(p.requires_grad for p in net.extractor.parameters())
    net.train()
    from recurnet.training.protocols import apply_frozen_modes

    apply_frozen_modes(net, phases[1])
    assert not net.extractor.training and net.refiner.training

    with torch.no_grad():
        norm.norms[1].weight.fill_(5.0)
    prepare_phase(net, phases[2], base, lr=1.0, start=False)  # resuming inside phase 2: no copy
    assert not torch.equal(norm.norms[2].weight, norm.norms[1].weight)


# ---------------------------------------------------------------------- config


def test_train_config_validation_and_round_trip():
    cfg = TrainConfig(Progressive((2, 1)), lr=0.01, out_dir="runs/x")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_to_dict(cfg)["protocol"] == {"name": "progressive", "epochs": [2, 1], "lr_decay": 0.1,
                                               "full_lr": ["feedback"], "freeze": ["extractor", "auxiliary"]}
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(EndToEnd(1), lr=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(EndToEnd(1), batch_size=0)
    with pytest.raises(KeyError, match="unknown optimizer 'adamax'"):
        TrainConfig(EndToEnd(1), optimizer="adamax")
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        config_from_dict({"protocol": {"name": "end_to_end", "epochs": 1}, "learning_rate": 1})


# ---------------------------------------------------------------------- training


def test_end_to_end_training_learns_and_later_loops_beat_loop_0():
    train, val = Blobs(512, seed=1), Blobs(256, seed=2)
    net = tiny_net(max_loops=2, seed=0)
    metrics = loss_metrics(LOSS)
    before = evaluate(net, val, metrics, batch_size=128)
    cfg = TrainConfig(EndToEnd(6), batch_size=32, lr=1e-3, schedule="cosine", progress=False, seed=0)
    result = Trainer(net, LOSS, train, cfg).fit()
    after = evaluate(net, val, metrics, batch_size=128)
    assert result.finished and result.global_step == 6 * 16
    epoch_losses = [h["train/epoch_loss"] for h in result.history]
    assert epoch_losses[-1] < epoch_losses[0] - 0.3
    task = [after[f"y/task/l{l}"] for l in range(3)]
    assert task[0] < 0.25 * before["y/task/l0"]  # learned: mean squared error of count/5 fell 4x or more
    # refinement helps: loops 1 and 2 measured at 0.65-0.75 of loop 0's error for seeds 0-3
    assert task[1] < 0.9 * task[0] and task[2] < 0.9 * task[0]


def test_progressive_training_follows_algorithm_1(tmp_path):
    net = tiny_net(max_loops=2)
    snapshots = {}

    def snapshot(trainer, info):
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        snapshots[(info.phase, info.epoch)] = state
        return {"check/loops": float(info.loops)}

    init = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(
        Progressive((2, 1, 1)), batch_size=8, lr=1e-3, progress=False, out_dir=str(tmp_path), log_every=1
    )
    result = Trainer(net, LOSS, MeanTask(), cfg, callbacks=[snapshot]).fit()
    assert result.finished and (result.phase, result.epoch) == (2, 1) and result.global_step == 4 * 3
    end0, end1, end2 = snapshots[(0, 2)], snapshots[(1, 1)], snapshots[(2, 1)]
    extractor = [k for k in init if k.startswith("extractor.")]
    feedback = [k for k in init if k.startswith("feedback.") and "num_batches" not in k]
    # phase 0 trains the extractor; later phases leave it (weights and BN statistics) alone
    assert any(not torch.equal(init[k], end0[k]) for k in extractor)
    assert all(torch.equal(end0[k], end2[k]) for k in extractor)
    # the feedback decoder does not run in phase 0, then trains
    assert all(torch.equal(init[k], end0[k]) for k in feedback)
    assert any(not torch.equal(end0[k], end1[k]) for k in feedback)

    rows = read_metrics(tmp_path / "metrics.csv")
    lrs = {(int(r["phase"]), r["name"]): float(r["value"]) for r in rows if r["name"].startswith("lr/")}
    assert lrs[(0, "lr/scaled")] == pytest.approx(1e-3)
    assert lrs[(1, "lr/scaled")] == pytest.approx(1e-4) and lrs[(1, "lr/full")] == pytest.approx(1e-3)
    assert lrs[(2, "lr/scaled")] == pytest.approx(1e-5) and lrs[(2, "lr/full")] == pytest.approx(1e-3)
    names_by_phase = {p: {r["name"] for r in rows if int(r["phase"]) == p} for p in range(3)}
    assert "train/y/task/l0" in names_by_phase[0] and "train/y/task/l1" not in names_by_phase[0]
    assert "train/y/task/l2" in names_by_phase[2] and "check/loops" in names_by_phase[2]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["phase"] == 2


class PoisonedLoss:
    """LoopLoss whose target turns NaN from the ``bad_call``-th call on."""

    def __init__(self, bad_call):
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, output, batch):
        self.calls += 1
        if self.calls >= self.bad_call:
            batch = {**batch, "target": batch["target"] * float("nan")}
        return LOSS(output, batch)


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(tmp_path):
    net = tiny_net(max_loops=1)
    cfg = TrainConfig(EndToEnd(3), batch_size=8, progress=False, out_dir=str(tmp_path))
    trainer = Trainer(net, PoisonedLoss(bad_call=5), MeanTask(), cfg)  # 3 steps per epoch: step 5 is in epoch 2
    with pytest.raises(NonFiniteLossError, match=r"step 5 \(phase 0, epoch 2, batch 1\): y/task at loop 0 = nan"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["epoch"], state["global_step"]) == (1, 3)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unwritable_out_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    cfg = TrainConfig(EndToEnd(1), batch_size=8, progress=False, out_dir=str(blocker / "run"))
    with pytest.raises(CheckpointError, match="cannot write to"):
        Trainer(tiny_net(1), LOSS, MeanTask(), cfg)


def test_bad_data_fails_clearly():
    class Tuples(MeanTask):
        def __getitem__(self, i):
            return self.x[i], self.y[i]

    with pytest.raises(TypeError, match="batches must be dicts"):
        Trainer(tiny_net(1), LOSS, Tuples(), TrainConfig(EndToEnd(1), batch_size=8, progress=False)).fit()
    with pytest.raises(ValueError, match="gives no batch"):
        Trainer(tiny_net(1), LOSS, MeanTask(n=4), TrainConfig(EndToEnd(1), batch_size=8, progress=False))


def test_evaluate_averages_per_sample_metrics():
    net = tiny_net(max_loops=1)
    data = MeanTask(n=10)

    def metrics(out, batch):
        return {"err": (out.iterations[-1]["y"] - batch["target"]).abs()[:, 0], "const": torch.tensor(2.0)}

    got = evaluate(net, data, metrics, batch_size=4)
    net.eval()
    with torch.no_grad():
        pred = net(data.x, exit="all").iterations[-1]["y"]
    assert got["err"] == pytest.approx(float((pred - data.y).abs().mean()), rel=1e-5)
    assert got["const"] == pytest.approx(2.0)
    assert net.training is False  # evaluate restores the previous mode


# ---------------------------------------------------------------------- gate


def fake_rollouts():
    """Easy samples: no error anywhere. Hard ones: error 1 at loop 0, none after. Loops 0..2."""
    n, hidden = 64, 4
    easy = torch.arange(n) % 2 == 0
    feats = torch.zeros(3, n, hidden)
    feats[:, easy, 0] = 1.0
    feats[0, ~easy, 1] = 1.0  # hard samples before refinement
    feats[1:, ~easy, 2] = 1.0  # hard samples once refined
    loss = torch.zeros(3, n)
    loss[0, ~easy] = 1.0
    b = n
    output = LoopOutput(
        [{} for _ in range(3)],
        [{} for _ in range(3)],
        list(feats),
        torch.full((b,), 2),
        torch.ones(3, b, dtype=torch.bool),
    )
    return RolloutData(output, loss, (loss == 0).float(), (3, 32, 32)), easy


def hand_cost(max_loops=2):
    c = ComponentCost
    return CostModel((3, 32, 32), max_loops, c(0, 10**9), c(0, 10**8), c(0, 0), c(0, 0), c(0, 0), c(0, 0))


def test_gate_learns_to_exit_easy_samples_and_refine_hard_ones():
    rollouts, easy = fake_rollouts()
    torch.manual_seed(0)
    gate = recurnet.LearnedGate(4, hidden=8)
    config = GateConfig(epochs=150, batch_size=32, lr=1e-2, loss_scale=1.0)
    result = train_gate(gate, rollouts, config, cost=hand_cost())
    torch.testing.assert_close(result.loop_costs, torch.tensor([0.0, 0.1, 0.2]))
    assert result.history[-1]["reward"] > result.history[0]["reward"]
    gate.mode = "greedy"
    point = tradeoff_point(rollouts, gate, hand_cost())
    exits = recurnet.simulate_exits(rollouts.output, gate)
    assert exits[easy].eq(0).all() and exits[~easy].eq(1).all()
    # optimum: easy exit at 0 (reward 0), hard at 1 (reward -0.1)
    assert point.exit_counts == (32, 32, 0) and point.mean_loops == pytest.approx(0.5)
    assert point.mean_macs == pytest.approx(10**9 + 10**8 + 0.5 * 10**8)
    assert point.score == 1.0 and point.loss == 0.0


def test_normalised_reward_finds_the_same_optimum_whatever_the_units():
    rollouts, easy = fake_rollouts()
    # Losses in the thousands, a loop costing a ten-thousandth of a GMAC: Eq. 11's raw reward
    # would weigh them 10^7 : 1; normalised, a loop costs 1 and the loss is relative to loop 0's mean.
    big = RolloutData(rollouts.output, rollouts.loss * 1000.0, rollouts.score, rollouts.input_shape)
    torch.manual_seed(0)
    gate = recurnet.LearnedGate(4, hidden=8)
    config = GateConfig(epochs=60, batch_size=32, lr=1e-2, loss_scale=1.0, loop_cost=1e-4,
                        normalize_reward=True, sample_baseline=True)
    result = train_gate(gate, big, config)
    # mean loss at loop 0 is 500, so a hard sample scores -2 at loop 0 and -1 (one loop) after.
    assert result.history[-1]["reward"] == pytest.approx(-0.5, abs=0.05)
    gate.mode = "greedy"
    exits = recurnet.simulate_exits(big.output, gate)
    assert exits[easy].eq(0).all() and exits[~easy].eq(1).all()
    # Normalised, the units cancel: the same seed gives the same training on the unscaled losses.
    small = recurnet.LearnedGate(4, hidden=8)
    scaled = copy.deepcopy(small)
    a = train_gate(small, rollouts, replace(config, epochs=3))
    b = train_gate(scaled, big, replace(config, epochs=3, loop_cost=1.0))
    for ha, hb in zip(a.history, b.history):  # same rewards and exits; the loss is reported in its own units
        assert (ha["reward"], ha["loops"], 1000 * ha["loss"]) == pytest.approx((hb["reward"], hb["loops"], hb["loss"]))
    raw = train_gate(recurnet.LearnedGate(4, hidden=8), big, replace(config, epochs=3, normalize_reward=False))
    assert raw.history[0]["reward"] < -100  # Eq. 11's raw units


def test_running_mean_baseline_uses_past_episodes():
    fn = BASELINES.get("running_mean")
    state = {}
    decided = torch.tensor([[True, True], [True, False]])
    first = fn(torch.tensor([[1.0, 3.0], [1.0, 3.0]]), decided, state, 0.5)
    torch.testing.assert_close(first, torch.tensor([2.0, 1.0]))  # per step: mean over samples that decided
    second = fn(torch.tensor([[5.0, 5.0], [7.0, 7.0]]), decided, state, 0.5)
    torch.testing.assert_close(second, torch.tensor([2.0, 1.0]))  # the previous means, not this batch's
    torch.testing.assert_close(state["mean"], torch.tensor([3.5, 4.0]))
    with pytest.raises(KeyError, match="unknown gate baseline"):
        GateConfig(baseline="median")


def test_collect_rollouts_and_temperature_sweep_on_a_network():
    net = tiny_net(max_loops=2)
    data = MeanTask(n=12)
    rollouts = collect_rollouts(net, data, LOSS, score=lambda out, b: -torch.stack(
        [(it["y"] - b["target"]).abs()[:, 0] for it in out.iterations]), batch_size=5)
    assert rollouts.loss.shape == (3, 12) and rollouts.features.shape == (3, 12, 16)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        out = net(data.x, exit="all")
    torch.testing.assert_close(rollouts.loss, LOSS(out, {"target": data.y}).weighted_task_per_sample())

    gate = recurnet.LearnedGate(16, temperature=1.5)
    net.policy = gate
    cost = net.cost_model((3, 32, 32))
    points = temperature_sweep(gate, rollouts, [0.5, 1.0, 8.0], cost, seed=3)
    assert [p.setting for p in points] == [0.5, 1.0, 8.0] and gate.temperature == 1.5
    for p, t in zip(points, [0.5, 1.0, 8.0]):
        gate.temperature = t
        exits = recurnet.simulate_exits(rollouts.output, gate, cost=cost, generator=torch.Generator().manual_seed(3))
        assert p.mean_macs == pytest.approx(float(cost.macs_per_sample(exits).mean()))
        assert sum(p.exit_counts) == 12 and p.mean_loops == pytest.approx(float(exits.double().mean()))
    fixed = tradeoff_point(rollouts, recurnet.FixedLoops(1), cost, setting=1)
    assert fixed.exit_counts == (0, 12, 0) and fixed.mean_gmacs == pytest.approx(cost.gmacs_until(1))
    assert fixed.loss == pytest.approx(float(rollouts.loss[1].mean()))
    assert fixed.score == pytest.approx(float(rollouts.score[1].mean()))


def test_gate_needs_loops_and_costs():
    rollouts, _ = fake_rollouts()
    with pytest.raises(ValueError, match="cost model"):
        train_gate(recurnet.LearnedGate(4), rollouts, GateConfig(epochs=1))
    result = train_gate(recurnet.LearnedGate(4), rollouts, GateConfig(epochs=1, loop_cost=0.5))
    torch.testing.assert_close(result.loop_costs, torch.tensor([0.0, 0.5, 1.0]))
    assert math.isfinite(result.history[0]["reward"])


def test_progress_bar_runs_and_missing_tensorboard_fails_at_start(tmp_path, capsys):
    net = tiny_net(max_loops=1)
    cfg = TrainConfig(EndToEnd(1), batch_size=8, progress=True)
    assert Trainer(net, LOSS, MeanTask(), cfg).fit().finished
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        cfg = TrainConfig(EndToEnd(1), batch_size=8, progress=False, out_dir=str(tmp_path), tensorboard=True)
        with pytest.raises(ImportError, match="pip install tensorboard"):
            Trainer(net, LOSS, MeanTask(), cfg)
    else:
        cfg = TrainConfig(EndToEnd(1), batch_size=8, progress=False, out_dir=str(tmp_path), tensorboard=True)
        Trainer(net, LOSS, MeanTask(), cfg).fit()
        assert any((tmp_path / "tensorboard").iterdir())


class _FeedbackLoss(LoopLoss):
    """LOSS that records the feedback each call received and declares whether it reads it."""

    def __init__(self, reads: bool):
        super().__init__(LOSS.terms)
        self.reads, self.seen = reads, []

    @property
    def uses_feedback(self) -> bool:
        return self.reads

    def forward(self, output, batch):
        self.seen.append([None if f is None else tuple(f.shape) for f in output.feedback])
        return super().forward(output, batch)


def test_trainer_hands_the_feedback_only_to_losses_that_read_it():
    assert LOSS.uses_feedback is False  # the base loss reads predictions only
    for reads in (False, True):
        loss = _FeedbackLoss(reads)
        cfg = TrainConfig(EndToEnd(1), batch_size=8, progress=False, seed=0)
        Trainer(tiny_net(max_loops=2), loss, MeanTask(16), cfg).fit()
        assert len(loss.seen) == 2  # two steps
        for shapes in loss.seen:
            if reads:  # loop 0 has no feedback; loops 1 and 2 get attention maps (B, C, H, W)
                assert shapes[0] is None and len(shapes) == 3
                assert all(s is not None and s[0] == 8 and len(s) == 4 for s in shapes[1:])
            else:
                assert shapes == []


# ---------------------------------------------------------------------- memory format and precision


def _fit_losses(**config):
    net = tiny_net(max_loops=1, seed=0)
    cfg = TrainConfig(EndToEnd(2), batch_size=8, lr=1e-3, progress=False, seed=0, **config)
    result = Trainer(net, LOSS, MeanTask(32), cfg).fit()
    return net, [h["train/epoch_loss"] for h in result.history]


def test_channels_last_training_matches_the_default_format_to_rounding():
    _, reference = _fit_losses()
    net, losses = _fit_losses(channels_last=True)
    assert losses == pytest.approx(reference, rel=5e-3)  # rounding drifts over the steps (5e-4 seen)
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()


@pytest.mark.slow
def test_compiled_training_matches_eager_to_rounding_and_keeps_the_model_plain(monkeypatch):
    calls = []
    original = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(module) or original(module, **kw))
    try:
        _, reference = _fit_losses()
        assert not calls
        net, losses = _fit_losses(compile=True)
    finally:
        torch._dynamo.reset()
    assert calls == [net]  # one phase, compiled once; checkpoints and callbacks keep the plain module
    assert isinstance(net, recurnet.LoopedNet)
    assert losses == pytest.approx(reference, rel=5e-3)


@pytest.mark.filterwarnings("ignore:precision .bfloat16. on:RuntimeWarning")  # emulated where not native
def test_bfloat16_training_runs_the_forward_in_bfloat16_and_keeps_float32_weights(monkeypatch):
    seen = []
    original = recurnet.LoopedNet.forward

    def spy(self, x, **kw):
        out = original(self, x, **kw)
        seen.append(out.iterations[0]["y"].dtype)
        return out

    monkeypatch.setattr(recurnet.LoopedNet, "forward", spy)
    _, reference = _fit_losses()
    seen.clear()
    net, losses = _fit_losses(precision="bfloat16")
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(math.isfinite(v) for v in losses)
    assert losses == pytest.approx(reference, rel=0.05)  # bf16 rounding, the same training otherwise
    assert losses != reference


@pytest.mark.filterwarnings("ignore:precision .bfloat16. on:RuntimeWarning")  # emulated where not native
def test_precision_is_validated_and_must_match_on_resume(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(EndToEnd(1), precision="float16")
    net = tiny_net(max_loops=1)
    cfg = TrainConfig(EndToEnd(2), batch_size=8, progress=False, out_dir=str(tmp_path))
    Trainer(net, LOSS, MeanTask(16), cfg).fit(max_epochs=1)
    other = replace(cfg, precision="bfloat16")
    with pytest.raises(CheckpointError, match="precision"):
        Trainer(tiny_net(max_loops=1), LOSS, MeanTask(16), other).fit(resume=tmp_path / "checkpoints" / "last.pt")
    # channels_last says how this process runs: a resume may change it
    again = replace(cfg, channels_last=True)
    assert Trainer(tiny_net(max_loops=1), LOSS, MeanTask(16), again).fit(
        resume=tmp_path / "checkpoints" / "last.pt").finished


def test_native_bfloat16_answers_for_every_device_kind():
    from recurnet.training.config import native_bfloat16

    assert isinstance(native_bfloat16("cpu"), bool)
    assert native_bfloat16("meta") is False
    if not torch.cuda.is_available():
        assert native_bfloat16("cuda") is False


def test_loop_output_float_casts_every_floating_tensor_and_keeps_the_rest():
    b = torch.bfloat16
    out = LoopOutput([{"y": torch.ones(2, 1, dtype=b, requires_grad=True)}], [{"y": torch.zeros(2, 1, dtype=b)}],
                     [torch.ones(2, 4, dtype=b)], torch.zeros(2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool),
                     feedback=[None], auxiliary={"maps": torch.ones(2, 3, dtype=b)})
    f = out.float()
    assert f.iterations[0]["y"].dtype == f.log_variance[0]["y"].dtype == f.features[0].dtype == torch.float32
    assert f.auxiliary["maps"].dtype == torch.float32 and f.feedback == [None]
    assert f.exit_step.dtype == torch.long and f.ran.dtype == torch.bool
    f.iterations[0]["y"].sum().backward()  # autograd flows through the cast
    assert out.iterations[0]["y"].grad is not None
    kept = torch.ones(2, 1)
    assert LoopOutput([{"y": kept}], [{}], [None], out.exit_step, out.ran).float().iterations[0]["y"] is kept


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_optimizers_use_the_fused_kernels_and_make_the_same_update(name):
    from recurnet.training.optim import OPTIMIZERS

    torch.manual_seed(0)
    fused_net, plain_net = nn.Linear(5, 3), nn.Linear(5, 3)
    plain_net.load_state_dict(fused_net.state_dict())
    fused = OPTIMIZERS.build(name, [{"params": list(fused_net.parameters()), "lr": 1e-2}], 1e-2, 1e-3)
    plain_cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    plain = plain_cls(plain_net.parameters(), lr=1e-2, weight_decay=1e-3, foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(16, 5)
    for _ in range(5):
        for net, opt in ((fused_net, fused), (plain_net, plain)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(fused_net.parameters(), plain_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
