"""Speed of the synthetic hand generator: N rendered images written to a fresh cache.

Usage::

    python benchmarks/bench_synth.py                # 10,000 images, 224 px, 2 worker processes
    python benchmarks/bench_synth.py --num 1000     # a shorter run; 10,000 is extrapolated

Prints the rate and the total time and writes ``benchmarks/results/synth.md``.
Besides wall time it records the CPU time of all processes (from ``getrusage``),
which stays meaningful when other jobs share the cores: on idle cores the wall
time for ``W`` workers is about ``CPU time / W``. The cache goes to a temporary
folder that is deleted afterwards unless ``--keep`` names a folder to keep.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from _common import add_common_args, markdown_table, setup, write_results

from recurnet_hand.data.synthetic import GENERATOR_VERSION, generate_synthetic_hands


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _folder_mib(root: Path) -> float:
    return sum(p.stat().st_size for p in root.glob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--num", type=int, default=10_000, help="images to render (default 10000)")
    parser.add_argument("--crop-size", type=int, default=224, help="image side in px (default 224)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--keep", type=Path, default=None, help="write the cache here and keep it")
    args = parser.parse_args(argv)
    setup(args)
    if args.quick:  # checks that the script runs: a few small images, rendered in this process
        args.num, args.crop_size, args.workers = 8, 64, 0

    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = args.keep if args.keep is not None else Path(tmp)
        cpu0, start = _cpu_seconds(), time.perf_counter()
        generate_synthetic_hands(out, args.num, args.crop_size, args.seed, args.workers, progress=not args.quick)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        size_mib = _folder_mib(out)

    rate = args.num / wall
    cpu_ms = 1000.0 * cpu / args.num
    procs = max(args.workers, 1)
    idle_minutes = 10_000 * cpu_ms / 1000.0 / procs / 60.0
    print(f"{args.num} images at {args.crop_size} px with {args.workers} workers: "
          f"{wall:.1f} s, {rate:.1f} images/s, cache {size_mib:.0f} MiB")
    print(f"CPU time {cpu:.1f} s = {cpu_ms:.1f} ms per image (worker start-up included); "
          f"10,000 images on {procs} idle core(s): about {idle_minutes:.1f} min")

    extrapolated = " (extrapolated)" if args.num != 10_000 else ""
    rows = [
        ["images", f"{args.num:,}"],
        ["crop size (px)", args.crop_size],
        ["worker processes", args.workers],
        ["wall time (s, worker start-up included)", f"{wall:.1f}"],
        ["images / s (wall)", f"{rate:.1f}"],
        [f"wall time for 10,000 images (min){extrapolated}", f"{10_000 / rate / 60:.1f}"],
        ["CPU time per image, all processes (ms)", f"{cpu_ms:.1f}"],
        [f"10,000 images on {procs} idle core(s), from CPU time (min)", f"{idle_minutes:.1f}"],
        ["cache size (MiB)", f"{size_mib:.0f}"],
        ["generator version", GENERATOR_VERSION],
    ]
    body = markdown_table(["quantity", "value"], rows) + (
        "\n\nWall time depends on what else runs on the machine (see the load average above); "
        "CPU time per image does much less. Workers run one torch thread each."
    )
    path = write_results("synth", "Synthetic hand generation", body, results_dir=args.results_dir, argv=argv,
                         script="bench_synth.py")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
