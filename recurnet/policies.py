"""Exit policies: per sample, stop looping or refine once more.

After every iteration ``l < max_loops`` the looped network hands the policy a
:class:`LoopState` describing the samples still running and receives a boolean
``(B_active,)`` tensor, ``True`` meaning *exit now*. At ``l == max_loops`` every
sample exits. Policies ship for the paper's criteria:

- ``"fixed"`` :class:`FixedLoops`: a fixed number of loops for every sample (IR-Net).
- ``"variance"`` :class:`VarianceThreshold`: exit once the mean predicted
  variance ``mean(exp(alpha))`` falls below ``tau_var`` (paper section 4.1).
- ``"gate"`` :class:`LearnedGate`: a two-layer network on the uncertainty
  features, softmax with temperature ``tau_gate``, sampled or greedy
  (section 4.2; trained by :func:`recurnet.training.train_gate`).
- ``"budget"`` :class:`ComputeBudget`: exit when the next loop would pass a
  per-sample budget of multiply-adds.

A policy is any callable ``policy(state) -> BoolTensor``; register one by name
with :func:`register_policy` to make it available to configs and the CLI.
Thresholds and temperatures are plain attributes, validated when set, so they
can be changed after training without rebuilding anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from .registry import Registry

if TYPE_CHECKING:
    from .cost import CostModel

__all__ = [
    "LoopState",
    "ExitPolicy",
    "POLICIES",
    "register_policy",
    "build_policy",
    "FixedLoops",
    "VarianceThreshold",
    "LearnedGate",
    "ComputeBudget",
    "check_decision",
]


@dataclass(frozen=True)
class LoopState:
    """What a policy sees after iteration ``iteration`` for the ``B_active`` samples still running.

    Attributes:
        iteration: the iteration just finished, ``0 <= iteration < max_loops``.
        max_loops: the last iteration index; samples still running then exit.
        predictions: output name -> ``(B_active, ...)`` predictions of this iteration.
        log_variance: output name -> ``(B_active, ...)`` predicted ``log sigma^2``.
        features: ``(B_active, hidden)`` uncertainty features, or None without an uncertainty head.
        index: ``(B_active,)`` positions of these samples in the full batch.
        batch_size: size of the full batch.
        cost: the network's :class:`recurnet.cost.CostModel` for this input size.
        generator: random generator for stochastic policies (None: torch's global RNG).
    """

    iteration: int
    max_loops: int
    predictions: Mapping[str, torch.Tensor]
    log_variance: Mapping[str, torch.Tensor]
    features: torch.Tensor | None
    index: torch.Tensor
    batch_size: int
    cost: "CostModel | None" = None
    generator: torch.Generator | None = None


@runtime_checkable
class ExitPolicy(Protocol):
    """``policy(state) -> (B_active,) bool`` tensor, True where a sample exits after this iteration.

    A policy declares what it needs from the loop through optional attributes:
    ``needs_cost = True`` when it reads ``state.cost`` (the network then builds its cost
    model even with ``count_cost=False``). Subclasses inherit the declaration.
    """

    def __call__(self, state: LoopState) -> torch.Tensor: ...


#: Registry of policy factories, e.g. ``build_policy("variance", threshold=0.01)``.
POLICIES: Registry[ExitPolicy] = Registry("exit policy")


def register_policy(name: str, *, overwrite: bool = False) -> Callable:
    """Register an exit policy factory under ``name``."""
    return POLICIES.register(name, overwrite=overwrite)


def build_policy(name: str, **kwargs) -> ExitPolicy:
    """Build the policy registered as ``name`` with keyword arguments."""
    return POLICIES.build(name, **kwargs)


def check_decision(decision: object, state: LoopState, policy: object) -> torch.Tensor:
    """Validate a policy's answer: a bool tensor of shape ``(B_active,)``."""
    n = state.index.shape[0]
    name = type(policy).__name__
    if not isinstance(decision, torch.Tensor):
        raise TypeError(
            f"exit policy {name} returned {type(decision).__name__}, expected a bool tensor of shape ({n},)")
    if decision.dtype != torch.bool:
        raise TypeError(f"exit policy {name} returned dtype {decision.dtype}, expected torch.bool")
    if tuple(decision.shape) != (n,):
        raise ValueError(f"exit policy {name} returned shape {tuple(decision.shape)}, expected ({n},)")
    return decision


def _finite_non_negative(name: str, value: float) -> float:
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value}")
    return value


@register_policy("fixed")
class FixedLoops:
    """Every sample runs ``loops`` loops (iterations ``0..loops``), capped at the network's maximum.

    Examples:
        >>> FixedLoops(2).loops
        2
    """

    def __init__(self, loops: int):
        self.loops = loops

    @property
    def loops(self) -> int:
        return self._loops

    @loops.setter
    def loops(self, value: int) -> None:
        if int(value) != value or value < 0:
            raise ValueError(f"loops must be a non-negative integer, got {value}")
        self._loops = int(value)

    def __call__(self, state: LoopState) -> torch.Tensor:
        index = state.index
        return torch.full((index.shape[0],), state.iteration >= self._loops, dtype=torch.bool, device=index.device)

    def __repr__(self) -> str:
        return f"FixedLoops(loops={self._loops})"


@register_policy("variance")
class VarianceThreshold:
    """Exit when the mean predicted variance ``mean(exp(alpha))`` drops below ``threshold`` (``tau_var``).

    Args:
        threshold: ``tau_var`` in the (squared) units of the outputs, >= 0.
        outputs: output names whose variances are averaged (default: all with a log-variance).

    Examples:
        >>> policy = VarianceThreshold(0.5)
        >>> policy.threshold = -1.0
        Traceback (most recent call last):
        ...
        ValueError: threshold must be a non-negative number, got -1.0
    """

    def __init__(self, threshold: float, outputs: Sequence[str] | None = None):
        self.threshold = threshold
        self.outputs = tuple(outputs) if outputs is not None else None

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = _finite_non_negative("threshold", value)

    def mean_variance(self, log_variance: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B,)`` mean of ``exp(alpha)`` over every element of the selected outputs."""
        names = self.outputs if self.outputs is not None else tuple(log_variance)
        missing = [n for n in names if n not in log_variance]
        if missing or not names:
            raise ValueError(
                f"VarianceThreshold needs log-variances for {missing or 'at least one output'}; "
                f"the network predicts them for {sorted(log_variance)} (build it with uncertainty=...)"
            )
        flat = torch.cat([log_variance[n].flatten(1) for n in names], dim=1)
        return flat.exp().mean(dim=1)

    def __call__(self, state: LoopState) -> torch.Tensor:
        return self.mean_variance(state.log_variance) < self._threshold

    def __repr__(self) -> str:
        return f"VarianceThreshold(threshold={self._threshold})"


@register_policy("gate")
class LearnedGate(nn.Module):
    """Learned exit gate: two linear layers on the uncertainty features giving ``[NOT_EXIT, EXIT]`` logits.

    The features are first standardised with per-feature statistics kept as buffers
    (``input_mean``, ``input_std``; identity until :meth:`fit_input` sets them from
    training features, as :func:`recurnet.training.train_gate` does). Uncertainty
    features can be large; unscaled, they saturate the softmax of a freshly
    initialised gate, whose log-probabilities then have no gradient, so policy
    gradient never moves it from its random first preference.

    At decision time the logits are divided by ``temperature`` (``tau_gate``) and
    softmaxed; ``mode="sample"`` draws the action (the paper's inference),
    ``mode="greedy"`` takes the likelier one. Sampling draws one uniform number
    per sample of the *full* batch at every iteration and uses those of the
    running samples, so a compacted run and a simulated run given the same
    generator make the same decisions.

    Args:
        in_features: width of the uncertainty features.
        hidden: hidden width.
        temperature: ``tau_gate > 0``.
        mode: ``"sample"`` or ``"greedy"``.

    Examples:
        >>> gate = LearnedGate(16, temperature=2.0)
        >>> gate.probabilities(torch.zeros(3, 16)).shape
        torch.Size([3, 2])
    """

    EXIT = 1
    NOT_EXIT = 0

    def __init__(self, in_features: int, hidden: int = 64, temperature: float = 1.0, mode: str = "sample"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.register_buffer("input_mean", torch.zeros(in_features))
        self.register_buffer("input_std", torch.ones(in_features))
        self.temperature = temperature
        self.mode = mode

    @torch.no_grad()
    def fit_input(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the input standardisation from example features ``(..., in_features)``."""
        flat = features.detach().reshape(-1, features.shape[-1]).float()
        if flat.shape[-1] != self.input_mean.numel():
            raise ValueError(f"features have {flat.shape[-1]} channels, the gate expects {self.input_mean.numel()}")
        if not torch.isfinite(flat).all():
            raise ValueError("cannot fit the gate's input statistics: the features contain NaN or inf")
        self.input_mean.copy_(flat.mean(dim=0))
        self.input_std.copy_(flat.std(dim=0, unbiased=False).clamp_min(eps) if flat.shape[0] > 1
                             else torch.ones_like(self.input_std))

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = float(value)
        if not value > 0 or math.isinf(value):
            raise ValueError(f"temperature must be a finite number > 0, got {value}")
        self._temperature = value

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in ("sample", "greedy"):
            raise ValueError(f"mode must be 'sample' or 'greedy', got {value!r}")
        self._mode = value

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, in_features)`` -> ``(B, 2)`` logits ``[NOT_EXIT, EXIT]`` (temperature not applied)."""
        return self.net((features - self.input_mean) / self.input_std)

    def probabilities(self, features: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """``(B, 2)`` action probabilities ``softmax(logits / tau_gate)``."""
        t = self._temperature if temperature is None else temperature
        return torch.softmax(self.logits(features) / t, dim=-1)

    def forward(self, state: LoopState) -> torch.Tensor:
        """Decide for the running samples of ``state``; returns ``(B_active,)`` bool."""
        if state.features is None:
            raise ValueError("LearnedGate needs uncertainty features; build the network with uncertainty=...")
        p_exit = self.probabilities(state.features)[:, self.EXIT]
        if self._mode == "greedy":
            return p_exit > 0.5
        u = torch.rand(state.batch_size, generator=state.generator, device="cpu")
        return u.to(p_exit.device)[state.index.cpu()] < p_exit

    def extra_repr(self) -> str:
        return f"temperature={self._temperature}, mode={self._mode!r}"


@register_policy("budget")
class ComputeBudget:
    """Exit when the next loop would take a sample past ``max_macs`` multiply-adds.

    Args:
        max_macs: per-sample budget in multiply-adds (the paper's "GFLOPs" x 1e9).

    Raises:
        ValueError: at decision time, if the budget is below one pass (extractor + iteration 0).
    """

    #: Reads ``state.cost`` (see :class:`ExitPolicy`).
    needs_cost = True

    def __init__(self, max_macs: float):
        self.max_macs = max_macs

    @property
    def max_macs(self) -> float:
        return self._max_macs

    @max_macs.setter
    def max_macs(self, value: float) -> None:
        value = _finite_non_negative("max_macs", value)
        if value == 0:
            raise ValueError("max_macs must be > 0")
        self._max_macs = value

    def __call__(self, state: LoopState) -> torch.Tensor:
        if state.cost is None:
            raise ValueError("ComputeBudget needs the network's cost model in the loop state")
        one_pass = state.cost.macs_until(0)
        if self._max_macs < one_pass:
            raise ValueError(
                f"budget of {self._max_macs:.4g} multiply-adds is below one pass of the network "
                f"({one_pass:.4g}: extractor + iteration 0)"
            )
        exit_now = state.cost.macs_until(state.iteration + 1) > self._max_macs
        return torch.full((state.index.shape[0],), exit_now, dtype=torch.bool, device=state.index.device)

    def __repr__(self) -> str:
        return f"ComputeBudget(max_macs={self._max_macs:.4g})"
