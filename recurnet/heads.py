"""Prediction heads and the uncertainty head.

Heads read the pooled refiner output ``(B, C)`` at every iteration. A head
returns either a tensor (named after the head) or a mapping of named tensors
(for heads that predict several quantities, such as a hand model returning
2D and 3D joints).

The uncertainty head is the paper's ``Psi_var = Psi_var^2(Psi_var^1(.))``: a
shared hidden layer whose activations ``f`` are exposed (the learned exit gate
reads them), then one linear projection per named output predicting the
log-variance ``alpha = log sigma^2`` of every element of that output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HeadSpec", "build_heads", "run_heads", "UncertaintyHead", "UncertaintyOutput", "mlp"]

#: A head given to :func:`recurnet.loopify`: a module, or a factory taking the pooled channel count.
HeadSpec = nn.Module | Callable[[int], nn.Module]


def mlp(in_features: int, hidden: int, out_features: int, *, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Two fully connected layers ``in -> hidden -> out`` with an activation between.

    Examples:
        >>> mlp(8, 16, 3)(torch.zeros(2, 8)).shape
        torch.Size([2, 3])
    """
    return nn.Sequential(nn.Linear(in_features, hidden), activation(), nn.Linear(hidden, out_features))


def build_heads(heads: Mapping[str, HeadSpec], in_features: int) -> nn.ModuleDict:
    """Instantiate head factories with the pooled channel count; modules are used as given."""
    built = {}
    for name, spec in heads.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"head names must be identifiers, got {name!r}")
        module = spec if isinstance(spec, nn.Module) else spec(in_features)
        if not isinstance(module, nn.Module):
            raise TypeError(f"head {name!r}: factory returned {type(module).__name__}, expected an nn.Module")
        built[name] = module
    return nn.ModuleDict(built)


def run_heads(heads: nn.ModuleDict, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """Apply every head to ``pooled`` ``(B, C)`` and merge their outputs into one name -> tensor dict."""
    out: dict[str, torch.Tensor] = {}
    for name, head in heads.items():
        y = head(pooled)
        items = y.items() if isinstance(y, Mapping) else [(name, y)]
        for key, value in items:
            if key in out:
                raise ValueError(f"head {name!r} produces output {key!r}, which another head already produced")
            if not isinstance(value, torch.Tensor) or value.shape[:1] != pooled.shape[:1]:
                raise ValueError(f"head output {key!r} must be a tensor with batch size {pooled.shape[0]} first")
            out[key] = value
    return out


@dataclass(frozen=True)
class UncertaintyOutput:
    """What the uncertainty head predicts for one iteration.

    Attributes:
        features: ``(B, hidden)`` hidden activations ``f = Psi_var^1(pooled)``, the gate's input.
        log_variance: per output name, ``alpha = log sigma^2`` with the output's shape.
    """

    features: torch.Tensor
    log_variance: dict[str, torch.Tensor]


class UncertaintyHead(nn.Module):
    """Predicts a log-variance for every element of the named outputs.

    Args:
        in_features: pooled channel count ``C``.
        shapes: output name -> per-sample shape of its log-variance (e.g. ``{"joints3d": (21, 3)}``
            or ``(21, 1)`` for one variance per joint, broadcast over coordinates).
        hidden: width of the shared hidden layer (the gate features).
        bound: soft bound on the log-variance: ``alpha = bound * tanh(raw / bound)`` keeps it
            in ``(-bound, bound)`` with an unchanged slope near 0 (finite in float16 too);
            None leaves it unbounded.
        init: the log-variance every output starts at (the bias of the projections); set it
            near the log of the expected initial squared error so the variance terms start
            balanced.

    Examples:
        >>> head = UncertaintyHead(32, {"logits": (10,)}, hidden=16)
        >>> out = head(torch.randn(4, 32))
        >>> out.features.shape, out.log_variance["logits"].shape
        (torch.Size([4, 16]), torch.Size([4, 10]))
    """

    def __init__(self, in_features: int, shapes: Mapping[str, tuple[int, ...]], hidden: int = 128, *,
                 bound: float | None = 10.0, init: float = 0.0):
        super().__init__()
        if not shapes:
            raise ValueError("UncertaintyHead needs at least one output name")
        if bound is not None and not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"UncertaintyHead: bound must be a finite number > 0 or None, got {bound}")
        if not math.isfinite(init) or (bound is not None and abs(init) >= bound):
            raise ValueError(f"UncertaintyHead: init must be finite and inside (-bound, bound), got {init}")
        self.bound = None if bound is None else float(bound)
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.project = nn.ModuleDict({name: nn.Linear(hidden, math.prod(s)) for name, s in self.shapes.items()})
        for layer in self.project.values():
            # Start at alpha = init for every input, so the variance terms start where they are told.
            nn.init.normal_(layer.weight, std=1e-3)
            raw = init if self.bound is None else self.bound * math.atanh(init / self.bound)
            nn.init.constant_(layer.bias, raw)

    def forward(self, pooled: torch.Tensor) -> UncertaintyOutput:
        f = self.hidden(pooled)
        log_var = {}
        for name, shape in self.shapes.items():
            a = self.project[name](f).view(f.shape[0], *shape)
            log_var[name] = a if self.bound is None else self.bound * torch.tanh(a / self.bound)
        return UncertaintyOutput(f, log_var)

    def extra_repr(self) -> str:
        return f"bound={self.bound}"
