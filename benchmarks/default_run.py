"""The README's main job, measured: ``recurnet-hand train`` with its built-in defaults.

Runs the default configuration (synthetic hands with ``stb`` viewpoints, the
``cpu`` preset, progressive training, the learned gate) exactly as
``recurnet-hand train`` does, times it, and writes
``benchmarks/results/default_run.md``: the per-loop table (errors, palm/back
accuracy, the rank correlation between predicted variance and error), the
mean-pose baseline, every exit policy's accuracy and cost, and the gate's saving
against running every loop. The run's figures are copied next to it
(``default_run_*.png``). With ``--ship`` the trained ``model.pt`` also becomes the
small model that ships with the package for the docs' examples
(:data:`recurnet_hand.SHIPPED_MODEL`).

Run (about 15 minutes on 2 cores)::

    python benchmarks/default_run.py --ship
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, add_common_args, markdown_table, setup, write_results  # noqa: E402

import recurnet_hand  # noqa: E402
from recurnet_hand.config import RunConfig, with_overrides  # noqa: E402
from recurnet_hand.evaluation import loop_summaries_to_markdown, rows_to_markdown  # noqa: E402
from recurnet_hand.train import train  # noqa: E402

FIGURES = ("overlays", "reliability", "pck3d", "tradeoff", "loss_per_loop")


def gate_saving(rows) -> list[list[str]]:
    """Each gate setting against running every loop: MACs saved and AUC change."""
    fixed = [r for r in rows if r.policy == "fixed"]
    full = fixed[-1]
    out = []
    for r in rows:
        if r.policy in ("gate", "variance"):
            out.append([r.policy, r.setting, f"{r.mean_loops:.2f}", f"{100 * (1 - r.mean_gmacs / full.mean_gmacs):.1f}%",
                        f"{r.auc3d - full.auc3d:+.4f}", f"{r.epe3d - full.epe3d:+.2f}"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--ship", action="store_true", help="copy model.pt to the package's shipped model")
    parser.add_argument("--cache", type=Path, default=None,
                        help="synthetic data cache (default: recurnet-hand's cache; a temporary one with --quick)")
    args = parser.parse_args(argv)
    if args.quick and args.ship:
        parser.error("--ship needs a full run, not --quick")
    device = setup(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="default-run-"))
    overrides = {"out_dir": str(out), "device": str(device)}
    if args.cache is not None or args.quick:
        overrides["data.root"] = str(args.cache or out / "cache")
    if args.quick:
        overrides.update({"train.epochs": 1, "train.loop_epochs": 1, "data.train_samples": 64,
                          "data.test_samples": 32, "gate.epochs": 2})
    run = with_overrides(RunConfig(), overrides)
    start = time.perf_counter()
    summary = train(run, progress=False)
    minutes = (time.perf_counter() - start) / 60
    first, last = summary.loops[0], summary.loops[-1]
    body = [
        f"`recurnet-hand train` with its defaults ({run.model.name} preset, {run.model.crop_size} px, "
        f"{run.train.protocol} training, {run.data.train_samples} synthetic training images with `"
        f"{run.data.viewpoint}` viewpoints, seed {run.seed}): {minutes:.1f} minutes here, rendering, training, "
        f"the gate and evaluation included. Evaluated on {run.data.test_samples} held-out test images.",
        "",
        "## Per loop",
        "",
        loop_summaries_to_markdown(summary.loops),
        "",
        f"Mean-pose baseline on the same test set: 3D EPE {summary.baseline_epe3d:.2f} mm, "
        f"3D AUC {summary.baseline_auc3d:.3f}.",
        "",
        f"Last loop against loop 0: 3D EPE {100 * (last.epe3d / first.epe3d - 1):+.1f}%.",
        "",
        "## Exit policies against every loop",
        "",
        markdown_table(["policy", "setting", "mean loops", "MACs saved", "3D AUC change", "3D EPE change (mm)"],
                       gate_saving(summary.rows)),
        "",
        "## Every policy setting",
        "",
        rows_to_markdown(summary.rows),
    ]
    for name in FIGURES:
        source = summary.figures.get(name)
        if source is not None and not args.quick:
            shutil.copyfile(source, Path(args.results_dir) / f"default_run_{name}.png")
    if not args.quick:
        path = write_results("default_run", "The default training run", "\n".join(body),
                             results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv,
                             device=device, script="default_run.py", timed=False)
        print(f"wrote {path}")
    else:
        print("\n".join(body))
    if args.ship:
        target = Path(recurnet_hand.SHIPPED_MODEL)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary.model_path, target)
        print(f"shipped {summary.model_path} as {target}")
    return 0


if __name__ == "__main__":
    assert RESULTS_DIR  # the default results folder exists in a checkout
    raise SystemExit(main())
