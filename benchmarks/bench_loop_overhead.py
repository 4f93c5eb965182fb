"""What the looping machinery costs: a ``LoopedNet`` against the same layers unrolled by hand.

Usage::

    python benchmarks/bench_loop_overhead.py        # resnet18 stage 2 and DIR-Net STB, batch 32, 224 px, L=5
    python benchmarks/bench_loop_overhead.py --models dirnet_stb --batch-sizes 1 32

For each model, the network built by :func:`recurnet.loopify` runs ``L`` fixed
loops (``exit="all"``, eval mode, ``count_cost=False``). The reference is
written here in plain PyTorch with the same modules and weights: the
extractor, then for each iteration a plain copy of the refiner in which every
per-iteration norm is replaced by that iteration's norm module (convolutions
shared), the attention decoder, the heads and the uncertainty head. Both are
timed in turns; the outputs must be equal. The goal is a time ratio
looped / unrolled of at most 1.03.

With ``--train`` the timed call is a training step instead: train mode, forward over
every iteration, the sum of every output's mean as the loss, backward (gradients
cleared each time; the optimiser update is the same for both and left out). The goal
there is a ratio of at most 1.05.

Prints the table and writes ``benchmarks/results/loop_overhead.md``
(``loop_overhead_train.md`` with ``--train``).
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import recurnet
from recurnet.norms import PerIterationNorm
from recurnet.split import MapAdapter

from _common import (
    add_common_args,
    goal_verdict,
    markdown_table,
    paired_ratios,
    setup,
    time_interleaved,
    write_results,
)

__all__ = ["UnrolledNet", "plain_refiner", "MODELS", "main"]

#: The overhead the looping machinery may add (inference, and a training step).
GOAL_RATIO = 1.03
GOAL_RATIO_TRAIN = 1.05


@dataclass(frozen=True)
class _ModelCase:
    """A benchmark model: how to build it (full and quick sizes) and its input size in px."""

    label: str
    quick_label: str
    build: Callable[[int, bool], recurnet.LoopedNet]
    size: int
    quick_size: int


def _resnet18(loops: int, quick: bool) -> recurnet.LoopedNet:
    # A 1000-way classifier plus uncertainty, so heads and uncertainty run as in a real model.
    name, size = ("test_resnet", 64) if quick else ("resnet18", 224)
    return recurnet.loopify(
        name,
        stage=2,
        max_loops=loops,
        heads={"logits": lambda c: nn.Linear(c, 1000)},
        uncertainty=True,
        check_size=(size, size),
    )


def _dirnet_stb(loops: int, quick: bool) -> recurnet.LoopedNet:
    from recurnet_hand.model import build_dirnet, preset

    return build_dirnet(preset("tiny" if quick else "stb", max_loops=loops))


#: Benchmark models by name.
MODELS: dict[str, _ModelCase] = {
    "resnet18": _ModelCase(
        "timm resnet18 cut at stage 2 (layer2)", "timm test_resnet cut at stage 2", _resnet18, 224, 64
    ),
    "dirnet_stb": _ModelCase(
        "DIR-Net STB preset (IR9 width 32, MANO head)", "DIR-Net tiny preset", _dirnet_stb, 224, 96
    ),
}


def plain_refiner(module: nn.Module, iteration: int) -> nn.Module:
    """``module`` with every :class:`PerIterationNorm` replaced by its norm for ``iteration``.

    The result runs without an iteration index: a plain module tree for one
    iteration. Subtrees without per-iteration norms are shared as they are;
    containers on the way to a norm are shallow copies, so every weight stays
    the same tensor object.
    """
    if isinstance(module, PerIterationNorm):
        return module.norms[iteration]
    if not any(isinstance(m, PerIterationNorm) for m in module.modules()):
        return module
    clone = copy.copy(module)
    clone._modules = {name: plain_refiner(child, iteration) for name, child in module._modules.items()}
    return clone


class UnrolledNet(nn.Module):
    """A looped network's layers with the loop written out by hand, for reference timings.

    Args:
        net: a :class:`recurnet.LoopedNet` with attention feedback and a map (NCHW) backbone.
        loops: ``L``; iterations ``0..L`` run.

    Shapes:
        ``(B, C, H, W)`` images -> per iteration a dict of the heads' outputs plus
        ``"log_variance/<name>"`` entries when the network has an uncertainty head.
    """

    def __init__(self, net: recurnet.LoopedNet, loops: int):
        super().__init__()
        if not isinstance(net.feedback, recurnet.AttentionFeedback):
            raise ValueError(
                f"the unrolled reference is written for attention feedback, got {type(net.feedback).__name__}"
            )
        if not isinstance(net.adapter, MapAdapter):
            raise ValueError(f"the unrolled reference is written for NCHW backbones, got {type(net.adapter).__name__}")
        self.extractor = net.extractor
        self.refiners = nn.ModuleList(plain_refiner(net.refiner, l) for l in range(loops + 1))
        self.decoder = net.feedback.decoder
        self.heads = net.heads
        self.uncertainty = net.uncertainty

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        feats = self.extractor(x)
        x_in = feats
        outputs = []
        for l, refiner in enumerate(self.refiners):
            h = refiner(x_in)
            pooled = h.mean(dim=(2, 3))
            out: dict[str, torch.Tensor] = {}
            for name, head in self.heads.items():
                y = head(pooled)
                out.update(y if isinstance(y, dict) else {name: y})
            if self.uncertainty is not None:
                hidden = self.uncertainty.hidden(pooled)
                for name, project in self.uncertainty.project.items():
                    a = project(hidden).view(x.shape[0], *self.uncertainty.shapes[name])
                    bound = self.uncertainty.bound
                    out[f"log_variance/{name}"] = a if bound is None else bound * torch.tanh(a / bound)
            outputs.append(out)
            if l + 1 < len(self.refiners):
                x_in = feats * torch.sigmoid(self.decoder(h))
        return outputs


def _train_step(net: nn.Module, forward: Callable[[], list[dict[str, torch.Tensor]]]) -> None:
    for p in net.parameters():
        p.grad = None
    outputs = forward()
    sum(v.float().mean() for out in outputs for v in out.values()).backward()


def _flatten(out: recurnet.LoopOutput) -> list[dict[str, torch.Tensor]]:
    flat = []
    for preds, log_var in zip(out.iterations, out.log_variance):
        flat.append({**preds, **{f"log_variance/{k}": v for k, v in log_var.items()}})
    return flat


def _compare(looped: list[dict], unrolled: list[dict]) -> tuple[bool, float]:
    """(bitwise equal, max abs difference) over every output of every iteration."""
    if len(looped) != len(unrolled) or any(a.keys() != b.keys() for a, b in zip(looped, unrolled)):
        raise AssertionError("the looped and unrolled networks produce different outputs (names or iterations)")
    equal, diff = True, 0.0
    for a, b in zip(looped, unrolled):
        for k in a:
            equal &= torch.equal(a[k], b[k])
            diff = max(diff, (a[k].double() - b[k].double()).abs().max().item())
    return equal, diff


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns one result row per model (also printed and written)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to time")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32], help="images per batch (default 32)")
    parser.add_argument("--loops", type=int, default=5, help="L, loops after the first pass (default 5)")
    parser.add_argument("--train", action="store_true", help="time a training step (forward + backward)")
    add_common_args(parser, warmup=2, repeats=7)
    args = parser.parse_args(argv)
    goal = GOAL_RATIO_TRAIN if args.train else GOAL_RATIO
    device = setup(args)
    batch_sizes = [2] if args.quick else args.batch_sizes
    loops = 1 if args.quick else args.loops
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"--batch-sizes must be >= 1, got {batch_sizes}")

    results = []
    for key, batch in [(k, b) for k in args.models for b in batch_sizes]:
        case = MODELS[key]
        size = case.quick_size if args.quick else case.size
        torch.manual_seed(0)
        net = case.build(loops, args.quick).to(device).train(args.train)
        unrolled = UnrolledNet(net, loops).to(device).train(args.train)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

        def looped_out():
            return _flatten(net(x, exit="all", count_cost=False, return_auxiliary=False))

        if args.train:
            calls = {"looped": lambda: _train_step(net, looped_out), "unrolled": lambda: _train_step(net,
                                                                                                 lambda: unrolled(x))}
            context = torch.enable_grad
        else:
            calls = {"looped": lambda: net(x, exit="all", count_cost=False), "unrolled": lambda: unrolled(x)}
            context = torch.inference_mode
        with context():
            equal, diff = _compare(looped_out(), unrolled(x))
            times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats, device=device,
                                     clock=args.clock)
        ratio = paired_ratios(times["looped"], times["unrolled"])
        results.append(
            dict(model=key, label=case.quick_label if args.quick else case.label, size=size, batch=batch,
                 looped=times["looped"], unrolled=times["unrolled"], ratio=ratio, equal=equal, diff=diff)
        )
        print(f"{key}, batch {batch}: looped {times['looped'].describe(1e3, ' ms')}, "
              f"unrolled {times['unrolled'].describe(1e3, ' ms')}, "
              f"ratio {ratio.describe(digits=3)}, outputs equal: {equal} (max abs diff {diff:.3g})", flush=True)

    rows = [
        [
            f"{r['model']}: {r['label']}",
            f"{r['batch']} x 3 x {r['size']} x {r['size']}",
            f"{r['looped'].median * 1e3:.1f} ({r['looped'].spread(1e3)})",
            f"{r['unrolled'].median * 1e3:.1f} ({r['unrolled'].spread(1e3)})",
            f"{r['ratio'].median:.3f} ({r['ratio'].spread(digits=3)})",
            f"{r['looped'].min / r['unrolled'].min:.3f}",
            goal_verdict(r["ratio"], goal),
            ("bitwise" if r["equal"] else "no") + f", max abs diff {r['diff']:.2g}",
        ]
        for r in results
    ]
    table = markdown_table(
        ["model", "input", "looped ms (IQR)", "unrolled ms (IQR)", "ratio looped/unrolled (IQR)",
         "ratio of fastest runs", f"ratio <= {goal}", "outputs equal"],
        rows,
        "llrrrrll",
    )
    body = "\n".join(
        [
            (f"Training step: train mode, fixed loops L = {loops} (iterations 0..{loops}), forward with "
             "`exit=\"all\"`, `count_cost=False`, `return_auxiliary=False`, loss = sum of every output's mean over "
             "every iteration, backward; gradients cleared before each step." if args.train else
             f"Fixed loops L = {loops} (iterations 0..{loops}), eval mode, `exit=\"all\"`, `count_cost=False`, "
             "`torch.inference_mode()`.")
            + f" {args.warmup} warm-up rounds, {args.repeats} timed rounds; in each round "
            "the looped and the unrolled network run once each, in alternating order. Times are medians with "
            "the interquartile range; the ratio is the median of the per-round ratios (with their IQR), next to the "
            "ratio of the fastest looped and fastest unrolled run (the least disturbed by other load). The goal "
            "counts as met when the whole IQR of the per-round ratios is at or below it.",
            "",
            table,
            "",
            "The unrolled reference runs the same modules with the same weights in plain PyTorch: the extractor, "
            "then per iteration a copy of the refiner whose per-iteration norms are replaced by that iteration's "
            "norm modules (all convolutions shared), the global mean pool, the heads, the uncertainty head and, "
            "between iterations, `F * sigmoid(decoder(h))`.",
        ]
    )
    print()
    print(table)
    name, title = (("loop_overhead_train", "Training-step overhead: LoopedNet vs the loop unrolled by hand")
                   if args.train else ("loop_overhead", "Loop overhead: LoopedNet vs the loop unrolled by hand"))
    path = write_results(name, title, body,
                         results_dir=args.results_dir, argv=argv, device=device, script=Path(__file__).name,
                         clock=args.clock)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
