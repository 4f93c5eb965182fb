"""Time the synthetic hand generator: N rendered images written to a fresh cache.

Usage::

    python benchmarks/bench_synth.py                # 10,000 images, 224 px, 2 workers
    python benchmarks/bench_synth.py --num 1000     # a shorter run; 10,000 is extrapolated

Prints the rate and the total time and writes ``benchmarks/results/synth.md``.
The cache goes to a temporary folder that is deleted afterwards unless ``--keep``
names a folder to keep it in.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from recurnet_hand.data.synthetic import GENERATOR_VERSION, generate_synthetic_hands

RESULTS = Path(__file__).resolve().parent / "results" / "synth.md"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10_000, help="images to render (default 10000)")
    parser.add_argument("--crop-size", type=int, default=224, help="image side in px (default 224)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the cache here and keep it")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"markdown table (default {RESULTS})")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = args.keep if args.keep is not None else Path(tmp)
        start = time.perf_counter()
        generate_synthetic_hands(out, args.num, args.crop_size, args.seed, args.workers)
        total = time.perf_counter() - start
        size_mb = _folder_bytes(out) / 2**20

    rate = args.num / total
    print(f"{args.num} images at {args.crop_size} px with {args.workers} workers: "
          f"{total:.1f} s total, {rate:.1f} images/s, cache {size_mb:.0f} MiB")
    if args.num != 10_000:
        print(f"extrapolated to 10,000 images: {10_000 / rate / 60:.1f} min")

    rows = [
        ("images", f"{args.num:,}"),
        ("crop size (px)", str(args.crop_size)),
        ("worker processes", str(args.workers)),
        ("total time (s, incl. worker start-up)", f"{total:.1f}"),
        ("images / s", f"{rate:.1f}"),
        ("ms per image per worker", f"{1000 * args.workers / rate:.1f}"),
        ("time for 10,000 images (min)" + (" (extrapolated)" if args.num != 10_000 else ""),
         f"{10_000 / rate / 60:.1f}"),
        ("cache size (MiB)", f"{size_mb:.0f}"),
        ("generator version", GENERATOR_VERSION),
        ("CPU", f"{_cpu_name()} ({os.cpu_count()} logical cores visible)"),
        ("software", f"Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__}"),
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    args.results.write_text("# Synthetic hand generation\n\nWritten by `benchmarks/bench_synth.py`.\n\n"
                            f"| quantity | value |\n|---|---|\n{table}\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
