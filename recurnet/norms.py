"""Per-iteration normalisation.

Attention feedback changes the statistics of the refiner's input at every
iteration, so each iteration gets its own copy of the refiner's norms while all
other weights are shared. :class:`PerIterationNorm` holds one norm per
iteration; which one runs is chosen by an :class:`IterationIndex` that the
looped network sets before each pass of the refiner. Any norm type works
(``BatchNorm2d``, timm's ``BatchNormAct2d`` with its fused activation,
``LayerNorm2d``, ``LayerNorm``, ``GroupNorm``) because the copies are deep
copies of the original module.
"""

from __future__ import annotations

import copy
import threading

import torch
from torch import nn

__all__ = ["IterationIndex", "PerIterationNorm", "NORM_TYPES", "convert_norms", "EntryNorm"]

#: Module types treated as norms. timm's BatchNormAct2d and LayerNorm2d subclass these.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.normalization.RMSNorm,
)


class IterationIndex(threading.local):
    """The iteration the refiner is running, shared by all :class:`PerIterationNorm` of one network.

    It is set by :class:`recurnet.LoopedNet` right before each refiner pass and
    reset to ``None`` when the forward call ends, so a stale value never leaks
    into the next call and a refiner called outside the loop fails clearly.

    The value is per thread (a :class:`threading.local`): several threads may run one
    network at once, each seeing only its own iteration. A deep copy or an unpickled
    copy of a network gets a fresh index, shared by the copy's norms alone.
    """

    def __init__(self) -> None:
        self.value: int | None = None

    def __deepcopy__(self, memo) -> IterationIndex:
        return IterationIndex()

    def __reduce__(self):
        return (IterationIndex, ())


class PerIterationNorm(nn.Module):
    """One copy of a norm per iteration.

    Args:
        norm: the norm to copy (its weights and running statistics are copied).
        num_iterations: how many copies to make.
        index: the shared :class:`IterationIndex` that selects the copy.

    Examples:
        >>> index = IterationIndex()
        >>> norm = PerIterationNorm(nn.BatchNorm2d(4), num_iterations=3, index=index)
        >>> len(norm.norms)
        3
        >>> index.value = 2
        >>> norm(torch.randn(2, 4, 5, 5)).shape
        torch.Size([2, 4, 5, 5])
    """

    def __init__(self, norm: nn.Module, num_iterations: int, index: IterationIndex):
        super().__init__()
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.norms = nn.ModuleList(copy.deepcopy(norm) for _ in range(num_iterations))
        self._index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = self._index.value
        if i is None:
            raise RuntimeError(
                "a per-iteration norm was called outside the loop; run the refiner through its LoopedNet"
            )
        return self.norms[i](x)

    def grow(self) -> None:
        """Append a norm for one more iteration, initialised from the last one's state."""
        self.norms.append(copy.deepcopy(self.norms[-1]))


class EntryNorm(nn.Module):
    """A norm placed in front of the refiner (the paper's per-iteration BatchNorm at the refiner input).

    Args:
        channels: channels of the refiner input.
        tokens: True for token sequences ``(B, N, C)`` (LayerNorm), False for maps (BatchNorm2d).
    """

    def __init__(self, channels: int, tokens: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(channels) if tokens else nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert_norms(
    refiner: nn.Module, num_iterations: int, index: IterationIndex, *, only_first: bool = False
) -> list[str]:
    """Replace norms inside ``refiner`` in place by :class:`PerIterationNorm` copies.

    Args:
        refiner: the looped module.
        num_iterations: copies per norm (``max_loops + 1``).
        index: the shared iteration selector.
        only_first: convert only the first norm in module order (cheaper; the rest stay shared).

    Returns:
        Names of the converted modules inside ``refiner``.
    """
    # Norms already inside a PerIterationNorm are its copies: converting them again would nest containers.
    done = [name for name, m in refiner.named_modules() if isinstance(m, PerIterationNorm)]
    names = [
        name
        for name, m in refiner.named_modules()
        if name and isinstance(m, NORM_TYPES) and not any(name.startswith(d + ".") for d in done)
    ]
    # A norm nested inside another norm (rare) is converted together with its parent.
    names = [n for n in names if not any(n.startswith(p + ".") for p in names if p != n)]
    if only_first:
        names = names[:1]
    for name in names:
        _replace(refiner, name, PerIterationNorm(refiner.get_submodule(name), num_iterations, index))
    return names
