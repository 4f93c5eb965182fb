"""Training the learned exit gate by policy gradient (paper section 4.2), and trade-off sweeps.

The gate is trained after the rest of the network, which stays frozen. So
the network runs only once per sample: :func:`collect_rollouts` passes the
data through it in eval mode with ``exit="all"`` and keeps, for every sample
and iteration ``l``, the uncertainty features ``f_l`` and the task loss.
:func:`train_gate` then plays episodes on these stored tensors: at each
``l < L`` the gate samples EXIT / NOT_EXIT from ``softmax(logits(f_l) / T)``;
a sample that exits at ``l`` (or reaches ``L``) receives Eq. 11's reward::

    r_l = -lambda * L_task^l - cost_l,     cost_l = GMACs of loops 1..l (the "l * GFLOPs" term)

and the gate follows the REINFORCE gradient ``E[(r - b_t) grad log pi(a_t | f_t)]``
over the decisions ``t <= exit`` it made (Eq. 10), with a per-step baseline
``b_t`` (a running or per-batch mean of the rewards of samples deciding at
``t``) to reduce variance.

Two options make the gate practical where Eq. 11's raw units are lopsided (a
task loss in the thousands against a hundredth of a GMAC per loop):

* ``normalize_reward``: the loss term is divided by the mean loss at iteration
  0 and the cost by the GMACs of one loop, so
  ``r_l = -lambda * L^l / mean(L^0) - l`` (for equal-cost loops). ``lambda``
  then reads "one more loop is worth it when it lowers the loss by more than
  ``1/lambda`` of the average loss", whatever the units of the loss.
* ``sample_baseline``: each sample's mean reward over the exit steps is
  subtracted from its rewards. The stored rollouts know every step's loss, so
  this offset is known before any action; it does not depend on the actions,
  leaves the gradient's expectation unchanged and removes the spread between
  easy and hard samples, which otherwise drowns the small differences between
  exiting now and later.

:func:`temperature_sweep` applies the trained gate at several temperatures
``tau_gate`` to the stored outputs (``recurnet.simulate_exits``), giving
accuracy / compute trade-off points without running the network again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..cost import CostModel
from ..looped import simulate_exits
from ..output import LoopOutput
from ..policies import LearnedGate
from ..registry import Registry
from .distributed import unwrap

__all__ = [
    "RolloutData",
    "collect_rollouts",
    "GateConfig",
    "GateResult",
    "BASELINES",
    "train_gate",
    "TradeoffPoint",
    "tradeoff_point",
    "temperature_sweep",
]


@dataclass(frozen=True)
class RolloutData:
    """A frozen network's outputs over a dataset, the gate's training material.

    Attributes:
        output: the :class:`recurnet.LoopOutput` of every sample (``exit="all"``, batches concatenated).
        loss: ``(L + 1, N)`` per-sample task loss at each iteration (the reward's loss term).
        score: ``(L + 1, N)`` per-sample quality at each iteration (e.g. correct = 1), or None.
        input_shape: ``(C, H, W)`` of the images, to build the cost model.
    """

    output: LoopOutput
    loss: torch.Tensor
    score: torch.Tensor | None
    input_shape: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        """``N``."""
        return int(self.loss.shape[1])

    @property
    def max_loops(self) -> int:
        """``L``."""
        return int(self.loss.shape[0]) - 1

    @property
    def features(self) -> torch.Tensor:
        """``(L + 1, N, hidden)`` uncertainty features."""
        if any(f is None for f in self.output.features):
            raise ValueError("the network has no uncertainty head, so there are no gate features")
        return torch.stack(self.output.features)


def _per_sample_loss(loss, output: LoopOutput, batch) -> torch.Tensor:
    result = loss(output, batch)
    if hasattr(result, "weighted_task_per_sample"):
        result = result.weighted_task_per_sample()
    if not isinstance(result, torch.Tensor):
        raise TypeError(
            "the rollout loss must return a (L + 1, B) tensor or a result with weighted_task_per_sample(), "
            f"got {type(result).__name__}"
        )
    return result


@torch.no_grad()
def collect_rollouts(
    model: nn.Module,
    data: Dataset,
    loss: Callable[[LoopOutput, Mapping[str, Any]], Any],
    *,
    score: Callable[[LoopOutput, Mapping[str, Any]], torch.Tensor] | None = None,
    batch_size: int = 64,
    input_key: str = "image",
    device: torch.device | str | None = None,
) -> RolloutData:
    """Run the frozen network (eval mode, ``exit="all"``) once over ``data`` and store what the gate needs.

    Args:
        model: a trained :class:`recurnet.LoopedNet` with an uncertainty head.
        data: dataset of dicts (images under ``input_key``), e.g. the training set.
        loss: per-sample task loss per iteration: a :class:`recurnet.losses.LoopLoss` (its
            ``weighted_task_per_sample()`` is used) or any ``loss(output, batch) -> (L + 1, B)``.
        score: optional ``score(output, batch) -> (L + 1, B)`` quality per iteration (accuracy, -error).
        batch_size: batch size of the pass.
        input_key: batch key of the images.
        device: where to run (default: the model's device).

    Returns:
        :class:`RolloutData` on the CPU.
    """
    net = unwrap(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    outputs, losses, scores, shape = [], [], [], None
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            if not isinstance(batch, Mapping) or input_key not in batch:
                raise KeyError(f"rollout batches must be dicts with {input_key!r}; got {type(batch).__name__}")
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            images = batch[input_key]
            shape = tuple(images.shape[1:])
            out = net(images, exit="all", count_cost=False)
            losses.append(_per_sample_loss(loss, out, batch).float().cpu())
            if score is not None:
                scores.append(torch.as_tensor(score(out, batch)).float().cpu())
            outputs.append(_to_cpu(out))
    finally:
        net.train(was_training)
    if not outputs:
        raise ValueError("collect_rollouts got an empty dataset")
    return RolloutData(
        LoopOutput.concat(outputs),
        torch.cat(losses, dim=1),
        torch.cat(scores, dim=1) if score is not None else None,
        shape,
    )


def _to_cpu(out: LoopOutput) -> LoopOutput:
    return LoopOutput(
        [{k: v.cpu() for k, v in d.items()} for d in out.iterations],
        [{k: v.cpu() for k, v in d.items()} for d in out.log_variance],
        [None if f is None else f.cpu() for f in out.features],
        out.exit_step.cpu(),
        out.ran.cpu(),
    )


# ---------------------------------------------------------------------- policy gradient

#: Baselines by name: ``baseline(rewards (T, B), decided (T, B) bool, state dict, momentum) -> (T,)``.
BASELINES: Registry[torch.Tensor] = Registry("gate baseline")


def _step_means(rewards: torch.Tensor, decided: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = decided.sum(dim=1)
    mean = (rewards * decided).sum(dim=1) / count.clamp_min(1)
    return mean, count > 0


@BASELINES.register("batch_mean")
def _batch_mean(rewards, decided, state, momentum) -> torch.Tensor:
    return _step_means(rewards, decided)[0]


@BASELINES.register("running_mean")
def _running_mean(rewards, decided, state, momentum) -> torch.Tensor:
    mean, seen = _step_means(rewards, decided)
    if "mean" not in state:
        state["mean"] = mean.clone()
        state["seen"] = seen.clone()
        return mean
    old, was_seen = state["mean"], state["seen"]
    baseline = torch.where(was_seen, old, mean)  # the baseline uses past episodes only
    state["mean"] = torch.where(seen, torch.where(was_seen, momentum * old + (1 - momentum) * mean, mean), old)
    state["seen"] = was_seen | seen
    return baseline


@dataclass(frozen=True)
class GateConfig:
    """How to train the gate.

    Attributes:
        epochs: passes over the stored rollouts.
        batch_size: episodes per update.
        lr: Adam learning rate.
        loss_scale: ``lambda`` of Eq. 11, weight of the task loss against GMACs (with
            ``normalize_reward``: against loops).
        loop_cost: GMACs charged per loop; None: counted from the network (GMACs of loops ``1..l``).
        normalize_reward: divide the loss by its mean at iteration 0 and the cost by the GMACs of one
            loop (see the module docs); False keeps Eq. 11's raw units.
        sample_baseline: subtract each sample's mean reward over the exit steps (a per-sample,
            action-independent baseline) before the per-step baseline.
        baseline: a :data:`BASELINES` name, ``"running_mean"`` or ``"batch_mean"``.
        baseline_momentum: momentum of the running mean.
        entropy_weight: bonus on the decisions' entropy (0 = vanilla policy gradient).
        temperature: ``tau_gate`` while training.
        seed: seeds the episode order and the sampled actions.
        fit_input: set the gate's input standardisation from the rollout features first
            (:meth:`recurnet.LearnedGate.fit_input`).
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    loss_scale: float = 1.0
    loop_cost: float | None = None
    normalize_reward: bool = False
    sample_baseline: bool = False
    baseline: str = "running_mean"
    baseline_momentum: float = 0.9
    entropy_weight: float = 0.0
    temperature: float = 1.0
    seed: int = 0
    fit_input: bool = True

    def __post_init__(self):
        BASELINES.get(self.baseline)
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"GateConfig needs epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GateConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.baseline_momentum < 1:
            raise ValueError(f"GateConfig.baseline_momentum must be in [0, 1), got {self.baseline_momentum}")


@dataclass(frozen=True)
class GateResult:
    """What :func:`train_gate` returns.

    Attributes:
        history: per epoch ``{"reward": mean reward, "loops": mean exit step, "loss": mean task loss at exit}``.
        loop_costs: ``(L + 1,)`` GMACs charged for exiting at each iteration.
    """

    history: list[dict[str, float]]
    loop_costs: torch.Tensor


def _loop_costs(cost: CostModel | None, config: GateConfig, max_loops: int) -> torch.Tensor:
    if config.loop_cost is not None:
        return torch.arange(max_loops + 1, dtype=torch.float32) * config.loop_cost
    if cost is None:
        raise ValueError("train_gate needs the network's cost model (net.cost_model(input_shape)) or loop_cost")
    if cost.max_loops < max_loops:
        raise ValueError(f"the cost model covers {cost.max_loops} loops, the rollouts have {max_loops}")
    base = cost.macs_until(0)
    return torch.tensor([(cost.macs_until(l) - base) / 1e9 for l in range(max_loops + 1)], dtype=torch.float32)


def _rewards(loss: torch.Tensor, costs: torch.Tensor, config: GateConfig) -> torch.Tensor:
    """Eq. 11's reward of exiting at each step, ``(L + 1, N)``, raw or normalised."""
    if not config.normalize_reward:
        return -config.loss_scale * loss - costs[:, None]
    loss_unit = loss[0].mean().abs().clamp_min(1e-12)
    cost_unit = costs[1].clamp_min(1e-12)  # GMACs of the first loop
    return -config.loss_scale * loss / loss_unit - costs[:, None] / cost_unit


def _episode(gate: LearnedGate, feats: torch.Tensor, temperature: float, generator: torch.Generator):
    """Sample decisions on ``feats`` ``(L + 1, B, H)``; returns exit steps, log-probs and entropies ``(L, B)``."""
    last = feats.shape[0] - 1
    logp = torch.log_softmax(gate.logits(feats[:last]) / temperature, dim=-1)  # (L, B, 2)
    p_exit = logp[..., LearnedGate.EXIT].exp()
    u = torch.rand(p_exit.shape, generator=generator).to(p_exit.device)
    exits = u < p_exit.detach()
    steps = torch.arange(last, device=feats.device)[:, None]
    first = torch.where(exits, steps, torch.full_like(steps, last)).min(dim=0).values  # (B,)
    decided = steps <= first[None, :]  # decisions made: every step up to the exit
    taken = torch.where(exits, logp[..., LearnedGate.EXIT], logp[..., LearnedGate.NOT_EXIT])
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return first, taken, entropy, decided


def train_gate(
    gate: LearnedGate,
    rollouts: RolloutData,
    config: GateConfig = GateConfig(),
    *,
    cost: CostModel | None = None,
) -> GateResult:
    """Train ``gate`` with REINFORCE on stored rollouts (Eq. 10, 11).

    Args:
        gate: the :class:`recurnet.LearnedGate` (its ``temperature`` and ``mode`` are left unchanged).
        rollouts: from :func:`collect_rollouts`.
        config: :class:`GateConfig`.
        cost: the network's :class:`recurnet.CostModel` (for the per-loop GMACs), unless
            ``config.loop_cost`` is given.

    Returns:
        :class:`GateResult`.
    """
    last = rollouts.max_loops
    if last < 1:
        raise ValueError("the gate needs a network with max_loops >= 1 (there is nothing to decide)")
    feats_all = rollouts.features
    device = next(gate.parameters()).device
    if config.fit_input:
        gate.fit_input(feats_all[:-1].to(device))  # the features the gate decides on (not the last loop's)
    costs = _loop_costs(cost, config, last)
    rewards_all = _rewards(rollouts.loss, costs, config)  # (L + 1, N)
    offsets = rewards_all.mean(dim=0) if config.sample_baseline else torch.zeros(rewards_all.shape[1])
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(gate.parameters(), lr=config.lr)
    baseline_fn = BASELINES.get(config.baseline)
    baseline_state: dict[str, torch.Tensor] = {}
    history = []
    gate.train()
    n = rollouts.num_samples
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        sums = {"reward": 0.0, "loops": 0.0, "loss": 0.0}
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            feats = feats_all[:, idx].to(device)
            first, taken, entropy, decided = _episode(gate, feats, config.temperature, generator)
            cols = torch.arange(idx.numel())
            reward = rewards_all[:, idx].to(device)[first, cols]  # (B,)
            steps_reward = (reward - offsets[idx].to(device))[None, :].expand_as(taken)
            baseline = baseline_fn(steps_reward.detach(), decided, baseline_state, config.baseline_momentum)
            advantage = (steps_reward - baseline[:, None]).detach()
            objective = (advantage * taken * decided).sum() + config.entropy_weight * (entropy * decided).sum()
            optimizer.zero_grad(set_to_none=True)
            (-objective / idx.numel()).backward()
            optimizer.step()
            sums["reward"] += float(reward.sum())
            sums["loops"] += float(first.sum())
            sums["loss"] += float(rollouts.loss[:, idx][first.cpu(), cols].sum())
        history.append({k: v / n for k, v in sums.items()})
    gate.eval()
    return GateResult(history, costs)


# ---------------------------------------------------------------------- trade-off sweeps


@dataclass(frozen=True)
class TradeoffPoint:
    """Accuracy and compute of one policy setting on stored rollouts.

    Attributes:
        setting: the swept value (e.g. the temperature ``tau_gate``).
        mean_loops: mean exit step (the paper's "average of loops").
        mean_macs: mean multiply-adds per sample.
        loss: mean task loss at the exit step.
        score: mean score at the exit step (None without a score in the rollouts).
        exit_counts: samples exiting after iteration ``0, 1, ..., L``.
    """

    setting: float
    mean_loops: float
    mean_macs: float
    loss: float
    score: float | None
    exit_counts: tuple[int, ...]

    @property
    def mean_gmacs(self) -> float:
        """:attr:`mean_macs` in giga multiply-adds (the paper's "GFLOPs")."""
        return self.mean_macs / 1e9


def tradeoff_point(
    rollouts: RolloutData,
    policy: Callable,
    cost: CostModel,
    *,
    setting: float = math.nan,
    generator: torch.Generator | None = None,
) -> TradeoffPoint:
    """Apply ``policy`` to the stored outputs (``simulate_exits``) and summarise accuracy and compute.

    Args:
        rollouts: from :func:`collect_rollouts`.
        policy: any exit policy (gate, variance threshold, ...).
        cost: the network's cost model with this policy attached (``net.cost_model(shape)``).
        setting: recorded in the result.
        generator: random generator for stochastic policies.

    Returns:
        :class:`TradeoffPoint`.
    """
    with torch.no_grad():
        exit_step = simulate_exits(rollouts.output, policy, cost=cost, generator=generator)
    cols = torch.arange(rollouts.num_samples)
    loss = float(rollouts.loss[exit_step, cols].double().mean())
    score = None if rollouts.score is None else float(rollouts.score[exit_step, cols].double().mean())
    counts = torch.bincount(exit_step, minlength=rollouts.max_loops + 1)
    return TradeoffPoint(
        float(setting),
        float(exit_step.double().mean()),
        float(cost.macs_per_sample(exit_step).mean()),
        loss,
        score,
        tuple(int(c) for c in counts),
    )


def temperature_sweep(
    gate: LearnedGate,
    rollouts: RolloutData,
    temperatures: Sequence[float],
    cost: CostModel,
    *,
    seed: int = 0,
) -> list[TradeoffPoint]:
    """Trade-off points of ``gate`` at each temperature ``tau_gate`` (higher: earlier exits).

    The gate's temperature is restored afterwards. Each temperature uses a generator seeded
    with ``seed``, so points differ only by the temperature.

    Args:
        gate: the trained gate.
        rollouts: stored outputs (e.g. of the test set).
        temperatures: values of ``tau_gate`` (> 0).
        cost: the network's cost model with the gate attached.
        seed: seed of the sampled decisions.

    Returns:
        One :class:`TradeoffPoint` per temperature, in the given order.
    """
    saved = gate.temperature
    points = []
    try:
        gate.eval()
        for t in temperatures:
            gate.temperature = t
            generator = torch.Generator().manual_seed(seed)
            points.append(tradeoff_point(rollouts, gate, cost, setting=t, generator=generator))
    finally:
        gate.temperature = saved
    return points
