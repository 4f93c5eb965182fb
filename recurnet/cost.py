"""Parameters and multiply-adds, counted from the model.

Multiply-adds (MACs) are counted with :class:`torch.utils.flop_counter.FlopCounterMode`,
which intercepts every matmul, convolution and attention op with its real
shapes (it reports FLOPs = 2 x MACs; we halve). Element-wise ops (norms,
activations, the attention multiply) are not counted, as is customary. The
paper's "GFLOPs" follow the convention in which ResNet-18 at 224 px costs 1.8
"GFLOPs", i.e. they are giga multiply-adds: :attr:`CostModel.gmacs_until`
reports that unit.

A looped network's cost is linear in the exits: a sample that exits after
iteration ``e`` pays the extractor once, ``e + 1`` refiner passes with their
heads, ``e`` feedback passes and one policy decision per iteration before the
last.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ComponentCost", "CostModel", "count_macs", "count_params", "flop_counter_mode"]


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _missing_formulas() -> dict:
    """Formulas for ops that some torch releases' counter lacks.

    Scaled dot-product attention on the CPU dispatches to
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which the counter of some
    releases (2.14, for one) does not know: attention would count as zero on real CPU
    tensors while the same model counts it on the meta device. The formula is the
    counter's own for the other attention kernels.
    """
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return {}
    return {op: _cpu_flash_attention_flops}


_EXTRA_FORMULAS = _missing_formulas()


def flop_counter_mode() -> FlopCounterMode:
    """A :class:`~torch.utils.flop_counter.FlopCounterMode` that also counts the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FORMULAS))


def count_params(*modules: nn.Module | None) -> int:
    """Number of distinct parameters in the given modules (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen[id(p)] = p.numel()
    return sum(seen.values())


def count_macs(fn, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` and count its multiply-adds.

    Returns:
        ``(macs, result)``.

    Examples:
        >>> macs, _ = count_macs(nn.Linear(8, 4, bias=False), torch.zeros(2, 8))
        >>> macs
        64
    """
    with flop_counter_mode() as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops() // 2, result


@dataclass(frozen=True)
class ComponentCost:
    """One component's size and per-sample, per-call compute.

    Attributes:
        params: number of parameters.
        macs: multiply-adds for one sample and one call.
    """

    params: int
    macs: int


@dataclass(frozen=True)
class CostModel:
    """Per-component costs of a looped network for one input size.

    Attributes:
        input_shape: ``(C, H, W)`` the costs were counted for.
        max_loops: last iteration index ``L`` (iterations ``0..L``).
        extractor: run once per sample.
        refiner: one refiner pass, pooling included; ``params`` counts every iteration's norms.
        feedback: one feedback pass (before iterations ``1..L``).
        heads: the prediction heads, once per iteration.
        uncertainty: the uncertainty head, once per iteration.
        policy: one exit decision (after iterations ``0..L-1``).

    Examples:
        >>> c = ComponentCost
        >>> m = CostModel((3, 8, 8), 2, c(10, 100), c(5, 50), c(1, 10), c(1, 1), c(1, 1), c(0, 0))
        >>> m.macs_until(0), m.macs_until(2)
        (152, 276)
    """

    input_shape: tuple[int, ...]
    max_loops: int
    extractor: ComponentCost
    refiner: ComponentCost
    feedback: ComponentCost
    heads: ComponentCost
    uncertainty: ComponentCost
    policy: ComponentCost

    def iteration_macs(self, iteration: int) -> int:
        """Multiply-adds of iteration ``iteration`` alone (its feedback, refiner, heads and decision)."""
        if not 0 <= iteration <= self.max_loops:
            raise ValueError(f"iteration must be in 0..{self.max_loops}, got {iteration}")
        macs = self.refiner.macs + self.heads.macs + self.uncertainty.macs
        if iteration > 0:
            macs += self.feedback.macs
        if iteration < self.max_loops:
            macs += self.policy.macs
        return macs

    def macs_until(self, exit_step: int) -> int:
        """Multiply-adds for one sample that exits after iteration ``exit_step``."""
        return self.extractor.macs + sum(self.iteration_macs(i) for i in range(exit_step + 1))

    def gmacs_until(self, exit_step: int) -> float:
        """:meth:`macs_until` in giga multiply-adds (the paper's "GFLOPs")."""
        return self.macs_until(exit_step) / 1e9

    def macs_per_sample(self, exit_step: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 multiply-adds for samples exiting at ``exit_step`` ``(B,)``."""
        table = torch.tensor([self.macs_until(e) for e in range(self.max_loops + 1)], dtype=torch.float64)
        return table.to(exit_step.device)[exit_step.long()]

    @property
    def params(self) -> int:
        """Total parameters of all components."""
        parts = (getattr(self, f.name) for f in fields(self))
        return sum(part.params for part in parts if isinstance(part, ComponentCost))

    def rows(self) -> list[tuple[str, int, int]]:
        """``(component, params, MACs per call)`` for each component, for tables."""
        return [
            (f.name, getattr(self, f.name).params, getattr(self, f.name).macs)
            for f in fields(self)
            if isinstance(getattr(self, f.name), ComponentCost)
        ]

    def to_markdown(self) -> str:
        """A markdown table of parameters and multiply-adds per component and per exit step."""
        lines = [
            f"Input {tuple(self.input_shape)}, iterations 0..{self.max_loops}. MACs = multiply-adds per sample "
            "(reported as the paper's \"GFLOPs\").",
            "",
            "| component | params | MACs per call |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {p:,} | {m:,} |" for name, p, m in self.rows()]
        lines += ["", "| exit after iteration | GMACs per sample |", "|---:|---:|"]
        lines += [f"| {e} | {self.gmacs_until(e):.4f} |" for e in range(self.max_loops + 1)]
        return "\n".join(lines)
