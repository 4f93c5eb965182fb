"""The typed result of a looped forward pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

__all__ = ["LoopOutput"]


@dataclass
class LoopOutput:
    """Everything a :class:`recurnet.LoopedNet` forward pass produces.

    Iteration lists are indexed by iteration ``l = 0..L``. Every tensor keeps the
    full batch in input order. A sample that exited after iteration ``e`` did not
    run iterations ``l > e``; its rows there repeat its values at ``e`` (so
    ``iterations[-1]`` holds every sample's final prediction) and ``ran[l]`` is
    False for it.

    Attributes:
        iterations: per iteration, output name -> ``(B, ...)`` predictions.
        log_variance: per iteration, output name -> ``(B, ...)`` predicted ``log sigma^2``
            (empty dicts without an uncertainty head).
        features: per iteration, ``(B, hidden)`` uncertainty features (None without an uncertainty head).
        exit_step: ``(B,)`` int64, the iteration after which each sample stopped.
        ran: ``(L + 1, B)`` bool, whether each sample computed each iteration.
        macs: ``(B,)`` float64 multiply-adds each sample cost (None if cost accounting was off).
        feedback: per iteration, the feedback signal (e.g. attention map ``(B, C, H, W)``) that fed
            iteration ``l`` (None for ``l = 0`` and for iterations no sample ran; the list is empty
            unless requested with ``return_feedback=True``; rows of samples that did not run are zero).
        auxiliary: name -> output of the network's auxiliary heads on the extractor features
            (training-only heads such as dense 2D heatmaps); empty unless they ran (training mode
            or ``return_auxiliary=True``).
    """

    iterations: list[dict[str, torch.Tensor]]
    log_variance: list[dict[str, torch.Tensor]]
    features: list[torch.Tensor | None]
    exit_step: torch.Tensor
    ran: torch.Tensor
    macs: torch.Tensor | None = None
    feedback: list[torch.Tensor | None] = field(default_factory=list)
    auxiliary: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_iterations(self) -> int:
        """``L + 1``."""
        return len(self.iterations)

    @property
    def final(self) -> dict[str, torch.Tensor]:
        """Each sample's predictions at its exit step."""
        return self.iterations[-1]

    @property
    def final_log_variance(self) -> dict[str, torch.Tensor]:
        """Each sample's log-variances at its exit step."""
        return self.log_variance[-1]

    @property
    def mean_loops(self) -> float:
        """Mean number of loops after the first pass (mean exit step), the paper's "average of loops"."""
        return float(self.exit_step.double().mean())

    @property
    def mean_macs(self) -> float:
        """Mean multiply-adds per sample."""
        if self.macs is None:
            raise ValueError("this output carries no cost; run the network with count_cost=True")
        return float(self.macs.mean())

    def float(self) -> "LoopOutput":
        """A copy whose floating-point tensors (predictions, log-variances, features, feedback,
        auxiliary outputs) are float32, e.g. to compute a loss on a mixed-precision forward.
        Tensors that already are float32 are shared, not copied; autograd flows through the casts.

        Examples:
            >>> half = LoopOutput([{"y": torch.ones(2, 1, dtype=torch.bfloat16)}], [{}], [None],
            ...                   torch.zeros(2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
            >>> half.float().final["y"].dtype
            torch.float32
        """

        def cast(t):
            return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        def cast_dicts(items):
            return [{k: cast(v) for k, v in d.items()} for d in items]

        return dataclasses.replace(
            self,
            iterations=cast_dicts(self.iterations),
            log_variance=cast_dicts(self.log_variance),
            features=[cast(f) for f in self.features],
            feedback=[cast(f) for f in self.feedback],
            auxiliary={k: cast(v) for k, v in self.auxiliary.items()},
        )

    @classmethod
    def concat(cls, parts: "list[LoopOutput]") -> "LoopOutput":
        """Join outputs of consecutive batches along the batch axis (feedback and costs are dropped).

        Examples:
            >>> one = LoopOutput([{"y": torch.ones(2, 1)}], [{}], [None], torch.zeros(2, dtype=torch.long),
            ...                  torch.ones(1, 2, dtype=torch.bool))
            >>> LoopOutput.concat([one, one]).iterations[0]["y"].shape
            torch.Size([4, 1])
        """
        if not parts:
            raise ValueError("LoopOutput.concat needs at least one output")
        n = parts[0].num_iterations
        if any(p.num_iterations != n for p in parts):
            raise ValueError("LoopOutput.concat needs outputs with the same number of iterations")

        def cat_dicts(key):
            return [{k: torch.cat([getattr(p, key)[l][k] for p in parts]) for k in getattr(parts[0], key)[l]}
                    for l in range(n)]

        features = [None if parts[0].features[l] is None else torch.cat([p.features[l] for p in parts])
                    for l in range(n)]
        return cls(cat_dicts("iterations"), cat_dicts("log_variance"), features,
                   torch.cat([p.exit_step for p in parts]), torch.cat([p.ran for p in parts], dim=1))

