"""The default run's training step with glibc's default allocator settings and with ``tune_allocator``.

Usage::

    python benchmarks/bench_allocator.py           # the cpu preset, batch 32, 96 px, phase 0
    python benchmarks/bench_allocator.py --quick   # seconds; checks the script

The allocator settings hold for a whole process, so each variant runs in its own child
process: rounds of one child per variant, in alternating order, each timing
``--repeats`` training steps (the step of ``bench_train_step.py``: forward over the
phase's loops, the hand loss with its heatmap head, backward, clipping, Adam) after
``--warmup`` untimed ones, in the precision and memory format the default run trains in
on this CPU. Reported are the median step time over all children, the median of the
round-by-round ratios of the children's medians, and the minor page faults per step.
Writes ``benchmarks/results/allocator.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Stats, add_common_args, markdown_table, paired_ratios, setup, write_results  # noqa: E402

from recurnet.training.allocator import ALLOCATOR_ENV  # noqa: E402

__all__ = ["main", "child"]

VARIANTS = ("glibc defaults", "tune_allocator")


def child(tuned: bool, quick: bool, threads: int, batch_size: int, loops: int, warmup: int, repeats: int) -> dict:
    """Time training steps in this process; returns step times (s) and minor page faults per step."""
    import torch

    from bench_train_step import fixture, step_fn
    from recurnet.training import native_bfloat16, tune_allocator

    applied = tune_allocator() if tuned else False
    torch.set_num_threads(threads)
    name, b, size, net, images, batch, loss = fixture(quick, batch_size)
    net = net.to(memory_format=torch.channels_last)
    bf16 = native_bfloat16("cpu")
    step = step_fn(net, loss, batch, images.contiguous(memory_format=torch.channels_last), loops, bf16)

    for _ in range(warmup):
        step()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"times": times, "faults_per_step": faults / repeats, "applied": applied, "bfloat16": bf16,
            "preset": name, "batch": b, "size": size}


def _run_child(args, tuned: bool) -> dict:
    # Both children run glibc's own allocator: the user's settings or a preloaded allocator would blur the comparison.
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    spec = json.dumps({"tuned": tuned, "quick": args.quick, "threads": args.threads, "batch_size": args.batch_size,
                       "loops": args.loops, "warmup": args.warmup, "repeats": args.repeats})
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench_allocator: the child process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loops", type=int, default=0, help="loops of the phase timed (default 0, phase 0)")
    parser.add_argument("--rounds", type=int, default=7, help="child processes per variant (default 7)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_common_args(parser, warmup=5, repeats=25, timing=True)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(**json.loads(args.child))))
        return 0
    device = setup(args)
    if str(device) != "cpu":
        raise SystemExit("bench_allocator measures the CPU path; pass --device cpu")
    if args.clock != "wall":
        raise SystemExit("bench_allocator times wall clock only: the children report their own step times")
    if args.quick:
        args.rounds, args.warmup, args.repeats = 1, 1, 2
    results = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
            results[name].append(_run_child(args, tuned=name == "tune_allocator"))
            median = Stats(tuple(results[name][-1]["times"])).median
            print(f"round {r + 1}/{args.rounds}, {name}: {1e3 * median:.1f} ms", flush=True)
    info = results["tune_allocator"][0]
    medians = {name: Stats(tuple(Stats(tuple(c["times"])).median for c in runs)) for name, runs in results.items()}
    ratio = paired_ratios(medians["tune_allocator"], medians["glibc defaults"])
    rows = []
    for name, runs in results.items():
        steps = Stats(tuple(t for c in runs for t in c["times"]))
        faults = Stats(tuple(c["faults_per_step"] for c in runs))
        rows.append([name, steps.describe(scale=1e3, digits=1), f"{faults.median:.0f}",
                     "1.00" if name == "glibc defaults" else ratio.describe(digits=3)])
        print(f"{name}: {steps.describe(scale=1e3, unit=' ms', digits=1)}, {faults.median:.0f} page faults per step",
              flush=True)
    precision = "a bfloat16 forward" if info["bfloat16"] else "float32 (this CPU has no native bfloat16)"
    applied = ("" if info["applied"] else
               "\n\n`tune_allocator` did not apply here (not glibc), so both variants ran the same settings.")
    body = "\n".join([
        f"`{info['preset']}` preset, batch {info['batch']}, {info['size']} x {info['size']} px, phase with loops "
        f"0..{args.loops}, channels-last, {precision}, {args.threads} threads. {args.rounds} rounds of one child "
        f"process per variant (alternating order), each {args.warmup} untimed and {args.repeats} timed steps. "
        "Ratio: the median over rounds of the tuned child's median step over the default child's.",
        "",
        markdown_table(["allocator", "step ms (IQR over all steps)", "minor page faults per step",
                        "ratio to glibc defaults (IQR over rounds)"], rows, "lrrr"),
    ]) + applied
    path = write_results("allocator", "Training step: the host allocator's settings", body,
                         results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv, device=device,
                         script=Path(__file__).name, clock="wall")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
