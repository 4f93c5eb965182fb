"""Training protocols: which loops train, for how long, with what learning rates.

A protocol turns into a list of :class:`Phase` entries; the trainer runs them in
order, preparing the network at the start of each with :func:`prepare_phase`.

- :class:`EndToEnd`: one phase, every loop ``0..L`` from the start, losses of all
  loops summed (paper section 5, "end-to-end").
- :class:`Progressive`: Algorithm 1. Phase ``p`` trains loops ``0..p``. The
  network is built once with ``max_loops = L`` and phase ``p`` runs it with
  ``loops=p``; at the start of phase ``p > 0`` the per-iteration norms of
  iteration ``p`` are loaded from those of iteration ``p - 1`` (the paper's
  "parameters learned in the ``l_prog - 1`` iteration are loaded ... except for
  the extra BatchNorm layer", which we initialise from its predecessor rather
  than from scratch), the extractor is frozen (no gradients, norms in eval mode
  so its statistics stay those of phase 0), and the learning rate of every
  other part except the feedback decoder is ``lr * lr_decay ** p``: our reading
  of "reduced by a factor of 1/10 in every iteration" is cumulative, 1/10 in
  phase 1, 1/100 in phase 2, and so on, while the feedback decoder (AMG) keeps
  the base rate. Each phase starts a fresh optimizer and schedule.

In every phase, parameters that cannot receive a gradient are frozen so that
optimizers skip them and DDP does not wait for them: norms of iterations
beyond the phase's loops, the feedback decoder when only iteration 0 runs,
and the exit policy (trained separately, see :mod:`recurnet.training.gate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..registry import Registry

__all__ = [
    "Phase",
    "EndToEnd",
    "Progressive",
    "PROTOCOLS",
    "protocol_from_dict",
    "protocol_to_dict",
    "prepare_phase",
    "apply_frozen_modes",
]

#: Registry of protocol classes by name, for configs read from files.
PROTOCOLS: Registry[Any] = Registry("training protocol")


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Attributes:
        index: position in the protocol, from 0.
        loops: the network runs iterations ``0..loops`` (``exit="all"``).
        epochs: epochs of this phase.
        lr_scale: factor on the base learning rate for every parameter outside ``full_lr``.
        full_lr: top-level module names trained at the base learning rate.
        frozen: top-level module names frozen (no gradients, eval mode) for this phase.
        init_from_previous: load iteration ``loops``'s norms from iteration ``loops - 1`` at the start.
    """

    index: int
    loops: int
    epochs: int
    lr_scale: float = 1.0
    full_lr: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    init_from_previous: bool = False


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@PROTOCOLS.register("end_to_end")
@dataclass(frozen=True)
class EndToEnd:
    """Train every loop at once for ``epochs`` epochs.

    Args:
        epochs: number of epochs.
        loops: iterations ``0..loops`` run; None: the network's ``max_loops``.

    Examples:
        >>> EndToEnd(epochs=90).epochs
        90
    """

    name: ClassVar[str] = "end_to_end"
    epochs: int
    loops: int | None = None

    def __post_init__(self):
        _positive_int("EndToEnd.epochs", self.epochs)
        if self.loops is not None:
            _positive_int("EndToEnd.loops", self.loops)

    def phases(self, max_loops: int) -> list[Phase]:
        """The single phase for a network with ``max_loops``."""
        loops = max_loops if self.loops is None else self.loops
        if loops > max_loops:
            raise ValueError(f"EndToEnd.loops={loops} exceeds the network's max_loops={max_loops}")
        return [Phase(0, loops, self.epochs)]

    @property
    def total_epochs(self) -> int:
        """Epochs over all phases."""
        return self.epochs


@PROTOCOLS.register("progressive")
@dataclass(frozen=True)
class Progressive:
    """Algorithm 1: phase ``p`` trains loops ``0..p`` for ``epochs[p]`` epochs.

    Args:
        epochs: epochs per phase; ``len(epochs) - 1`` is the last phase's loop count and
            must not exceed the network's ``max_loops`` (the paper: ``(50, 20, 20, ...)``).
        lr_decay: phase ``p`` trains at ``lr * lr_decay ** p`` (cumulative).
        full_lr: modules kept at the base learning rate (the feedback decoder, AMG).
        freeze: modules frozen from phase 1 on: the extractor (FE) and the auxiliary heads
            that read its features (they would learn nothing new on a frozen extractor).

    Examples:
        >>> [(p.loops, p.epochs, round(p.lr_scale, 6)) for p in Progressive((5, 2, 2)).phases(max_loops=2)]
        [(0, 5, 1.0), (1, 2, 0.1), (2, 2, 0.01)]
    """

    name: ClassVar[str] = "progressive"
    epochs: tuple[int, ...]
    lr_decay: float = 0.1
    full_lr: tuple[str, ...] = ("feedback",)
    freeze: tuple[str, ...] = ("extractor", "auxiliary")

    def __post_init__(self):
        # Accept lists from configs; store tuples so the config stays hashable and frozen.
        object.__setattr__(self, "epochs", tuple(_positive_int("Progressive.epochs", e) for e in self.epochs))
        object.__setattr__(self, "full_lr", tuple(self.full_lr))
        object.__setattr__(self, "freeze", tuple(self.freeze))
        if not self.epochs:
            raise ValueError("Progressive.epochs needs at least one phase")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Progressive.lr_decay must be in (0, 1], got {self.lr_decay}")

    def phases(self, max_loops: int) -> list[Phase]:
        """One phase per entry of ``epochs``."""
        if len(self.epochs) - 1 > max_loops:
            raise ValueError(
                f"Progressive has {len(self.epochs)} phases (loops 0..{len(self.epochs) - 1}) but the network's "
                f"max_loops is {max_loops}; build it with max_loops >= {len(self.epochs) - 1}"
            )
        return [
            Phase(
                index=p,
                loops=p,
                epochs=e,
                lr_scale=self.lr_decay**p,
                full_lr=self.full_lr if p > 0 else (),
                frozen=self.freeze if p > 0 else (),
                init_from_previous=p > 0,
            )
            for p, e in enumerate(self.epochs)
        ]

    @property
    def total_epochs(self) -> int:
        """Epochs over all phases."""
        return sum(self.epochs)


def protocol_to_dict(protocol) -> dict[str, Any]:
    """A plain dict ``{"name": ..., **fields}`` (tuples as lists), for checkpoints and files."""
    return {"name": protocol.name, **_plain(asdict(protocol))}


def protocol_from_dict(data: Mapping[str, Any]):
    """Rebuild a protocol from :func:`protocol_to_dict`'s output.

    Raises:
        KeyError: for an unknown protocol name (listing the known ones).
        ValueError: when ``name`` is missing.
    """
    data = dict(data)
    if "name" not in data:
        raise ValueError(f"a protocol dict needs a 'name' ({PROTOCOLS.names()}), got keys {sorted(data)}")
    name = data.pop("name")
    return PROTOCOLS.get(name)(**data)


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------- applying a phase


def _in_module(param_name: str, modules: Sequence[str]) -> bool:
    return any(param_name == m or param_name.startswith(m + ".") for m in modules)


def _idle_norm_params(model: nn.Module, loops: int) -> set[int]:
    """ids of parameters in per-iteration norms of iterations after ``loops``."""
    idle: set[int] = set()
    for norm in getattr(model, "per_iteration_norms", []):
        for i, sub in enumerate(norm.norms):
            if i > loops:
                idle.update(id(p) for p in sub.parameters())
    return idle


def prepare_phase(
    model: nn.Module, phase: Phase, base_trainable: Mapping[str, bool], lr: float, *, start: bool
) -> list[dict[str, Any]]:
    """Set up ``model`` for ``phase`` and return optimizer parameter groups.

    Args:
        model: the (unwrapped) :class:`recurnet.LoopedNet`.
        phase: the phase to run.
        base_trainable: parameter name -> ``requires_grad`` before training began; a parameter
            the user froze stays frozen.
        lr: the base learning rate.
        start: True when the phase starts now (copies norms if ``init_from_previous``); False
            when it resumes from a checkpoint taken inside it (weights come from the checkpoint).

    Returns:
        Parameter groups ``[{"params": [...], "lr": ..., "name": ...}]`` with trainable parameters only.
    """
    if phase.loops > getattr(model, "max_loops", phase.loops):
        raise ValueError(f"phase {phase.index} runs {phase.loops} loops; the network has max_loops={model.max_loops}")
    if start and phase.init_from_previous and phase.loops > 0:
        with torch.no_grad():
            for norm in getattr(model, "per_iteration_norms", []):
                norm.norms[phase.loops].load_state_dict(norm.norms[phase.loops - 1].state_dict())
    idle = _idle_norm_params(model, phase.loops)
    unused = ["policy"] + (["feedback"] if phase.loops == 0 else [])
    groups: dict[str, list[nn.Parameter]] = {"scaled": [], "full": []}
    for name, p in model.named_parameters():
        trainable = (
            base_trainable.get(name, p.requires_grad)  # e.g. a gate attached after the trainer was built
            and not _in_module(name, phase.frozen)
            and not _in_module(name, unused)
            and id(p) not in idle
        )
        p.requires_grad_(trainable)
        if trainable:
            groups["full" if _in_module(name, phase.full_lr) else "scaled"].append(p)
    apply_frozen_modes(model, phase)
    out = []
    if groups["scaled"]:
        out.append({"params": groups["scaled"], "lr": lr * phase.lr_scale, "name": "scaled"})
    if groups["full"]:
        out.append({"params": groups["full"], "lr": lr, "name": "full"})
    if not out:
        raise ValueError(f"phase {phase.index} has no trainable parameters")
    return out


def apply_frozen_modes(model: nn.Module, phase: Phase) -> None:
    """Put the phase's frozen modules in eval mode (call after every ``model.train()``)."""
    for name in phase.frozen:
        module = getattr(model, name, None)
        if module is None:
            raise ValueError(f"phase {phase.index} freezes {name!r}, which the network does not have")
        module.eval()
