"""Does batch compaction save the time it saves in multiply-adds?

A looped ResNet-18 (cut after stage 2, iterations 0..5) runs a batch twice in
inference mode:

- *all*: every sample runs every iteration (``exit="all"``);
- *compact*: a policy sends the first half of the batch out after iteration 1,
  the rest run to the end; the finished half leaves the batch (``exit="compact"``).

The counted multiply-add ratio compact/all comes from the network's cost model
(FlopCounterMode counts, cross-checked against a counted compacted run); the
time ratio is the ratio of median wall times over ``--repeats`` interleaved
runs, in both memory formats. If compaction skips the work of the finished
samples and adds nothing of its own, the two ratios agree, up to how much less
efficient the convolution kernels are on the smaller batch the survivors form;
``--profile`` measures both effects operator by operator.

Usage::

    python benchmarks/bench_compaction.py                 # batch 64 at 224 px, 2 threads
    python benchmarks/bench_compaction.py --sweep         # also batch sizes 1, 2, 4, ..., 256
    python benchmarks/bench_compaction.py --profile       # per-operator breakdown of one run per mode
    python benchmarks/bench_compaction.py --batch 16 --size 128 --repeats 3 --threads 1

Prints a table and writes ``benchmarks/results/compaction.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import recurnet
from recurnet import LoopState
from recurnet.cost import flop_counter_mode

RESULTS = Path(__file__).parent / "results" / "compaction.md"
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


class ExitFirstHalf:
    """Exit policy for the benchmark: the first half of the batch leaves after ``iteration``."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def __call__(self, state: LoopState) -> torch.Tensor:
        leave = state.index < state.batch_size // 2
        return leave & (state.iteration == self.iteration)


@dataclass(frozen=True)
class Measurement:
    """Timings of one batch size and memory format, seconds per forward call."""

    batch: int
    memory_format: str
    all_times: list[float]
    compact_times: list[float]
    mac_ratio: float

    @property
    def time_ratio(self) -> float:
        return statistics.median(self.compact_times) / statistics.median(self.all_times)

    @property
    def pair_ratios(self) -> list[float]:
        # Runs are interleaved, so each compact run is compared with the full run next to it.
        return [c / a for c, a in zip(self.compact_times, self.all_times)]

    @property
    def deviation(self) -> float:
        """Relative distance of the time ratio from the MAC ratio."""
        return self.time_ratio / self.mac_ratio - 1


def build(args) -> recurnet.LoopedNet:
    torch.manual_seed(0)
    net = recurnet.loopify(
        args.model,
        args.stage,
        max_loops=args.max_loops,
        heads={"logits": lambda c: nn.Linear(c, 1000)},
        check_size=(args.size, args.size),
    )
    net.policy = ExitFirstHalf(args.exit_after)
    return net.eval()


def mac_ratio(net: recurnet.LoopedNet, batch: int, size: int, exit_after: int) -> float:
    cost = net.cost_model((3, size, size))
    half = batch // 2
    compact = half * cost.macs_until(exit_after) + (batch - half) * cost.macs_until(net.max_loops)
    return compact / (batch * cost.macs_until(net.max_loops))


def cross_check(net: recurnet.LoopedNet, size: int) -> tuple[int, int]:
    """Counted multiply-adds of a real compacted batch of 4 and the sum of its per-sample costs."""
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        net(x[:1])  # count the cost model before the measured call
        with flop_counter_mode() as counter:
            out = net(x, exit="compact")
    return counter.get_total_flops() // 2, int(out.macs.sum())


def measure(
    net: recurnet.LoopedNet, batch: int, size: int, repeats: int, exit_after: int, memory_format: str
) -> Measurement:
    net.to(memory_format=FORMATS[memory_format])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    x = x.contiguous(memory_format=FORMATS[memory_format])
    all_times, compact_times = [], []
    with torch.no_grad():
        net(x, exit="all")  # warm-up: allocator, kernels, cost model for this shape
        net(x, exit="compact")
        for _ in range(repeats):
            for mode, times in (("all", all_times), ("compact", compact_times)):
                start = time.perf_counter()
                net(x, exit=mode)
                times.append(time.perf_counter() - start)
    return Measurement(batch, memory_format, all_times, compact_times, mac_ratio(net, batch, size, exit_after))


def profile_breakdown(net: recurnet.LoopedNet, batch: int, size: int, memory_format: str) -> list[str]:
    """Where the time of a compacted run goes, from one profiled run per mode.

    Compares each convolution's time per sample at the full batch (``all``) and
    at the halved batch the survivors form (``compact``), and measures the time
    of the operations compaction itself adds (row selection and copies).
    """
    from torch.profiler import profile

    net.to(memory_format=FORMATS[memory_format])
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=FORMATS[memory_format])
    per_shape, totals, moving = {}, {}, {}
    with torch.no_grad():
        for mode in ("all", "compact"):
            net(x, exit=mode)  # warm-up
            with profile(record_shapes=True) as prof:
                net(x, exit=mode)
            events = prof.key_averages(group_by_input_shape=True)
            totals[mode] = sum(e.self_cpu_time_total for e in events) / 1e6
            moving[mode] = sum(e.self_cpu_time_total for e in events if e.key in _COMPACTION_OPS) / 1e6
            for e in events:
                if e.key == "aten::mkldnn_convolution" or e.key == "aten::convolution_overrideable":
                    shapes = e.input_shapes
                    per_shape[(mode, tuple(shapes[0]), tuple(shapes[1]))] = (e.self_cpu_time_total / 1e6, e.count)
    survivors = batch - batch // 2
    lines = [
        f"Profiled at batch {batch} ({memory_format}): total operator time {totals['all']:.2f} s (all) and "
        f"{totals['compact']:.2f} s (compact). Row selection and copies ({', '.join(sorted(_COMPACTION_OPS))}) "
        f"take {1e3 * moving['compact']:.1f} ms in the compacted run "
        f"({100 * moving['compact'] / totals['compact']:.2f}% of it) and {1e3 * moving['all']:.1f} ms in the full run.",
        "",
        f"| convolution input | weight | ms per sample at batch {batch} | ms per sample at batch {survivors} | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    rows = []
    for (mode, inp, weight), (t, n) in per_shape.items():
        if mode != "all" or not inp or inp[0] != batch:
            continue
        small = per_shape.get(("compact", (survivors, *inp[1:]), weight))
        if small is None:
            continue
        full_ms, small_ms = 1e3 * t / n / batch, 1e3 * small[0] / small[1] / survivors
        row = f"| {list(inp[1:])} | {list(weight)} | {full_ms:.3f} | {small_ms:.3f} | {small_ms / full_ms:.2f} |"
        rows.append((t, row))
    lines += [row for _, row in sorted(rows, reverse=True)]
    return lines


#: Operators a compacted run adds to select the surviving rows and write results back.
_COMPACTION_OPS = frozenset({"aten::index", "aten::index_copy", "aten::index_put_", "aten::copy_", "aten::nonzero"})


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def table(rows: list[Measurement]) -> list[str]:
    lines = [
        "| batch | memory format | all: median s (min-max) | compact: median s (min-max) | time ratio "
        "| paired ratios: median (min-max) | MAC ratio | time / MAC - 1 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        pairs = m.pair_ratios
        lines.append(
            f"| {m.batch} | {m.memory_format} | {_spread(m.all_times)} | {_spread(m.compact_times)} "
            f"| {m.time_ratio:.3f} "
            f"| {statistics.median(pairs):.3f} ({min(pairs):.3f}-{max(pairs):.3f}) | {m.mac_ratio:.3f} "
            f"| {100 * m.deviation:+.1f}% |"
        )
    return lines


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="timm model name")
    parser.add_argument("--stage", type=int, default=2, help="cut after feature_info[stage]")
    parser.add_argument("--max-loops", type=int, default=5, help="last iteration index L")
    parser.add_argument("--exit-after", type=int, default=1, help="iteration after which the first half exits")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="image side in px")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (medians are reported)")
    parser.add_argument("--sweep", action="store_true", help="also time batch sizes 1, 2, 4, ..., 256")
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument("--sweep-size", type=int, default=None, help="image side for the sweep (default: --size)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--formats",
        default="contiguous,channels_last",
        help="comma-separated memory formats to time (contiguous, channels_last)",
    )
    parser.add_argument("--sweep-format", default="contiguous", choices=sorted(FORMATS))
    parser.add_argument("--profile", action="store_true", help="also break the compacted run's time down by operator")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 0 <= args.exit_after < args.max_loops:
        parser.error(f"--exit-after must be in 0..{args.max_loops - 1}")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        parser.error(f"--formats: unknown {unknown}; choose from {sorted(FORMATS)}")

    torch.set_num_threads(args.threads)
    net = build(args)
    cost = net.cost_model((3, args.size, args.size))
    counted, summed = cross_check(net, args.size)

    rows = []
    for fmt in formats:
        rows.append(measure(net, args.batch, args.size, args.repeats, args.exit_after, fmt))
        print(f"  batch {args.batch}, {fmt}: time ratio {rows[-1].time_ratio:.3f}, MAC ratio {rows[-1].mac_ratio:.3f}")
    sweep = []
    if args.sweep:
        sweep_size = args.sweep_size or args.size
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            sweep.append(measure(net, b, sweep_size, args.sweep_repeats, args.exit_after, args.sweep_format))
            m = sweep[-1]
            print(f"  batch {b}: time ratio {m.time_ratio:.3f}, MAC ratio {m.mac_ratio:.3f}", flush=True)

    setup = (
        f"{args.model} cut after stage {args.stage} ({net.stage.module}), iterations 0..{args.max_loops}, "
        f"{args.size}x{args.size} px, CPU ({platform.processor() or platform.machine()}), "
        f"torch.set_num_threads({args.threads}), torch {torch.__version__}, float32, inference (no_grad)."
    )
    lines = [
        "# Batch compaction: time saved vs multiply-adds saved",
        "",
        "Generated by `benchmarks/bench_compaction.py`; do not edit by hand.",
        "",
        setup,
        "",
        f"*all*: every sample runs iterations 0..{args.max_loops}. *compact*: the first half of the batch "
        f"exits after iteration {args.exit_after}, the rest run to {args.max_loops}; finished samples leave the batch.",
        f"Per sample: {cost.gmacs_until(args.exit_after):.3f} GMACs exiting after iteration {args.exit_after}, "
        f"{cost.gmacs_until(args.max_loops):.3f} GMACs running to the end.",
        f"Cost cross-check (batch of 4, compacted): FlopCounterMode counts {counted:,} multiply-adds; the sum of the "
        f"per-sample costs is {summed:,} ({'equal' if counted == summed else 'DIFFERENT'}).",
        "",
        f"## Batch {args.batch}, {args.repeats} interleaved runs per mode",
        "",
        *table(rows),
    ]
    if sweep:
        lines += [
            "",
            f"## Batch-size sweep at {args.sweep_size or args.size} px, {args.sweep_repeats} runs per mode",
            "",
            "With one sample nobody is in the first half, so both runs do the same work.",
            "",
            *table(sweep),
        ]
    if args.profile:
        lines += ["", "## Where the time goes", "", *profile_breakdown(net, args.batch, args.size, formats[-1])]
    lines += ["", "## Cost model", "", cost.to_markdown(), ""]
    text = "\n".join(lines)
    print(text)
    write_atomic(args.output, text)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
