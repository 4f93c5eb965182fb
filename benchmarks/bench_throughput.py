"""Inference throughput of DIR-Net next to timm's resnet18, the practical ceiling on the same machine.

Usage::

    python benchmarks/bench_throughput.py          # batch 32, eager and compiled, NCHW and channels-last
    python benchmarks/bench_throughput.py --batch-sizes 1 8 32 --no-compile

Both models run in the same process and are timed in turns, for every
combination of ``torch.compile`` (off / on) and memory format (contiguous
NCHW / channels-last). DIR-Net (STB preset, ``max_loops=5``) runs every
iteration ``0..5`` for every sample (``exit="all"``, eval mode,
``count_cost=False``).

Achieved GFLOP/s = 2 x (multiply-adds per image, counted with
``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls only)
x images/s / 1e9. DIR-Net's multiply-adds come from its own cost model
(``net.cost_model((3, 224, 224)).macs_until(5)``). The goals: DIR-Net reaches
at least 50% of resnet18's achieved rate eager, and 90% compiled (each against
resnet18 run the same way). With the inductor backend the compiled variants also
run with frozen weights.

Prints the table and writes ``benchmarks/results/throughput.md``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from recurnet.cost import count_macs

from _common import (
    Stats,
    add_common_args,
    counting_backend,
    goal_verdict,
    markdown_table,
    paired_ratios,
    setup,
    synchronize,
    time_interleaved,
    write_results,
)

__all__ = ["main"]

#: Fraction of resnet18's achieved FLOP rate DIR-Net should reach, eager and compiled (each
#: against resnet18 run the same way).
GOAL_FRACTION = 0.5
COMPILED_GOAL_FRACTION = 0.9
_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass
class _Runner:
    """One model in one variant: the callable to time and its cost per image."""

    name: str
    fn: Callable[[], object]
    macs_per_image: int
    first_call_s: float = 0.0
    max_abs_diff: float = 0.0
    graphs: int | None = None


def _dirnet(preset_name: str, loops: int) -> tuple[nn.Module, int]:
    from recurnet_hand.model import build_dirnet, preset

    config = preset(preset_name, max_loops=loops)
    return build_dirnet(config), config.crop_size


def _output(model: nn.Module, x: torch.Tensor, looped: bool) -> torch.Tensor:
    if looped:
        return model(x, exit="all", count_cost=False).final["joints3d"]
    return model(x)


def _prepare(
    name: str, model: nn.Module, looped: bool, macs: int, x: torch.Tensor, compile_backend: str | None,
    memory_format: torch.memory_format, reference: torch.Tensor, device: torch.device, frozen: bool = False,
) -> _Runner:
    model = copy.deepcopy(model).to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    run, graphs = model, None
    if compile_backend:
        backend, graphs = counting_backend(compile_backend)
        run = torch.compile(model, backend=backend)
    start = time.perf_counter()
    # The first call compiles; timed apart from the steady state. Freezing folds the weights into
    # the graph as constants, so inductor can pre-pack them for oneDNN.
    with torch._inductor.config.patch(freezing=frozen):
        out = _output(run, x, looped)
    synchronize(device)
    first = time.perf_counter() - start
    diff = (out.double() - reference.double()).abs().max().item()
    return _Runner(name, lambda: _output(run, x, looped), macs, first, diff, None if graphs is None else graphs[0])


def _fraction(value: Stats | None, goal: float) -> str:
    if value is None:
        return ""
    verdict = goal_verdict(value, goal, higher_is_better=True)
    return (f"{100 * value.median:.0f}% ({100 * value.q1:.0f}-{100 * value.q3:.0f}%), goal {100 * goal:.0f}% met: "
            f"{verdict}")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns one row per (batch size, variant, model)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32], help="batch sizes (default 32)")
    parser.add_argument("--preset", default="stb", help="DIR-Net preset (default stb)")
    parser.add_argument("--loops", type=int, default=5, help="DIR-Net loops L (default 5)")
    parser.add_argument("--ceiling", default="resnet18", help="timm model used as the ceiling (default resnet18)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--memory-formats", nargs="+", default=list(_FORMATS), choices=list(_FORMATS))
    add_common_args(parser, warmup=1, repeats=5)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        # Dynamo tracing without code generation: checks the compiled path runs, in seconds.
        args.preset, args.loops, args.ceiling, args.batch_sizes = "tiny", 1, "test_resnet", [2]
        args.compile_backend = "eager"
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")

    torch.manual_seed(0)
    dirnet, size = _dirnet(args.preset, args.loops)
    dirnet = dirnet.to(device).eval()
    dirnet_macs = dirnet.cost_model((3, size, size)).macs_until(args.loops)
    ceiling = timm.create_model(args.ceiling, pretrained=False).to(device).eval()
    with torch.no_grad():
        ceiling_macs, _ = count_macs(ceiling, torch.zeros(1, 3, size, size, device=device))
    dirnet_name, ceiling_name = f"DIR-Net {args.preset} (L={args.loops})", args.ceiling

    variants = [(None, fmt, False) for fmt in args.memory_formats]
    if not args.no_compile:
        variants += [(args.compile_backend, fmt, False) for fmt in args.memory_formats]
        if args.compile_backend == "inductor":
            variants += [(args.compile_backend, fmt, True) for fmt in args.memory_formats]
    if args.quick:  # one eager and one compiled variant cover every code path
        variants = [v for v in variants if (v[0] is None) == (v[1] == "contiguous")]

    results = []
    for batch in args.batch_sizes:
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.inference_mode():
            ref_dirnet = _output(dirnet, x, True)
            ref_ceiling = _output(ceiling, x, False)
        for backend, fmt, frozen in variants:
            variant = ("compiled" if backend else "eager") + f", {fmt}" + (", frozen weights" if frozen else "")
            if backend:
                torch._dynamo.reset()  # earlier variants' compiled code would count against dynamo's recompile limit
            with torch.inference_mode():
                runners = [
                    _prepare(dirnet_name, dirnet, True, dirnet_macs, x, backend, _FORMATS[fmt], ref_dirnet,
                             device, frozen),
                    _prepare(ceiling_name, ceiling, False, ceiling_macs, x, backend, _FORMATS[fmt], ref_ceiling,
                             device, frozen),
                ]
                times = time_interleaved({r.name: r.fn for r in runners}, warmup=args.warmup, repeats=args.repeats,
                                         device=device, clock=args.clock)
            ratio = paired_ratios(times[ceiling_name], times[dirnet_name])  # = dirnet images/s over resnet18's
            # Per round: DIR-Net's achieved FLOP rate as a fraction of the ceiling's.
            flop_ratio = Stats(tuple(v * dirnet_macs / ceiling_macs for v in ratio.values))
            for r in runners:
                t = times[r.name]
                row = dict(batch=batch, variant=variant, model=r.name, time=t, images_per_s=batch / t.median,
                           gflops=2 * r.macs_per_image * batch / t.median / 1e9, gmacs=r.macs_per_image / 1e9,
                           first_call_s=r.first_call_s, diff=r.max_abs_diff, graphs=r.graphs,
                           fraction=flop_ratio if r.name == dirnet_name else None,
                           goal=COMPILED_GOAL_FRACTION if backend else GOAL_FRACTION)
                results.append(row)
                print(f"batch {batch}, {variant}, {r.name}: {t.describe(1e3, ' ms')}, {row['images_per_s']:.1f} img/s, "
                      f"{row['gflops']:.1f} GFLOP/s, first call {r.first_call_s:.1f} s", flush=True)

    rows = [
        [
            r["batch"],
            r["variant"],
            r["model"],
            f"{r['time'].median * 1e3:.0f} ({r['time'].spread(1e3, 0)})",
            f"{r['images_per_s']:.1f}",
            f"{r['gmacs']:.3f}",
            f"{r['gflops']:.1f}",
            _fraction(r["fraction"], r["goal"]),
            f"{r['first_call_s']:.1f}" + ("" if r["graphs"] is None else f" ({r['graphs']} graphs)"),
            f"{r['diff']:.1g}",
        ]
        for r in results
    ]
    table = markdown_table(
        ["batch", "variant", "model", "ms / batch (IQR)", "images / s", "GMACs / image", "achieved GFLOP/s",
         f"DIR-Net FLOP rate vs {ceiling_name} (IQR)", "first call s (compiled graphs)", "max abs diff vs eager"],
        rows,
        "rllrrrrrrr",
    )
    backend_note = (
        ""
        if args.no_compile
        else f" Compiled variants use `torch.compile(model, backend=\"{args.compile_backend}\")`; "
        "their first call (compilation included) is shown apart and excluded from the timed rounds, with the "
        "number of graphs dynamo compiled (more than one means graph breaks)."
    )
    body = "\n".join(
        [
            f"Input {size} x {size} px, {args.warmup} warm-up and {args.repeats} timed rounds per variant; in each "
            f"round both models run once. DIR-Net runs iterations 0..{args.loops} for every sample "
            "(`exit=\"all\"`, `count_cost=False`), eval mode, `torch.inference_mode()`." + backend_note
            + (" 'Frozen weights': compiled with inductor's `freezing`, which folds the weights into the graph "
               "as constants and pre-packs them for oneDNN's convolutions." if not args.no_compile else ""),
            "",
            "Achieved GFLOP/s = 2 x counted multiply-adds per image x images/s (FLOP = 2 x MAC; only "
            "convolutions and matmuls are counted, by `FlopCounterMode`). The DIR-Net column compares its "
            f"achieved rate with {ceiling_name}'s run the same way, from the per-round time ratios (median and "
            f"IQR); the goal is >= {100 * GOAL_FRACTION:.0f}% eager and >= {100 * COMPILED_GOAL_FRACTION:.0f}% "
            "compiled, and counts as met when the whole IQR is at or above it. The last "
            "column is the largest difference of the output (DIR-Net: final 3D joints in mm; the ceiling: logits) "
            "from the eager, contiguous model.",
            "",
            table,
        ]
    )
    print()
    print(table)
    path = write_results("throughput", "Inference throughput: DIR-Net and the resnet18 ceiling", body,
                         results_dir=args.results_dir, argv=argv, device=device, script=Path(__file__).name,
                         clock=args.clock)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
