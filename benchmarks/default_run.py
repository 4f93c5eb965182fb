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
(:data:`recurnet_hand.SHIPPED_MODEL`). With ``--readme`` the README's paragraph on the
default run (between its ``default-run`` markers) is rewritten from the measured numbers.

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
from _common import RESULTS_DIR, add_common_args, markdown_table, setup, write_minutes, write_results  # noqa: E402

import recurnet_hand  # noqa: E402
from recurnet_hand.config import RunConfig, with_overrides  # noqa: E402
from recurnet_hand.evaluation import loop_summaries_to_markdown, rows_to_markdown  # noqa: E402
from recurnet_hand.train import train  # noqa: E402

FIGURES = ("overlays", "reliability", "pck3d", "tradeoff", "loss_per_loop")
README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- default-run:begin (written by benchmarks/default_run.py --readme) -->", "<!-- default-run:end -->"


def readme_paragraph(summary, minutes: float) -> str:
    """The README's account of the default run, from its measured summary."""
    first, last = summary.loops[0], summary.loops[-1]
    gates = [r for r in summary.rows if r.policy == "gate"]
    full = [r for r in summary.rows if r.policy == "fixed"][-1]
    change = 100 * (last.epe3d / first.epe3d - 1)
    text = (f"On 2 CPU cores the default run took {minutes:.0f} minutes and ended at {last.epe3d:.1f} mm mean 3D "
            f"joint error (root-relative; 3D AUC 0-50 mm {last.auc3d:.3f}; 2D error {100 * last.epe2d_crop:.1f}% "
            f"of the crop) on held-out synthetic hands, against {summary.baseline_epe3d:.1f} mm "
            f"({summary.baseline_auc3d:.3f}) for always predicting the mean pose, with the palm or back of the "
            f"hand towards the camera told right {100 * last.palm_accuracy:.0f}% of the time and a rank "
            f"correlation of {last.variance_rank_corr:.2f} between each hand's predicted variance and its error. "
            f"The last loop's 3D error is {change:+.1f}% against the first pass")
    if gates:
        # The setting that saves most at <= 0.01 AUC loss (the goal's criterion), else the most accurate.
        within = [r for r in gates if full.auc3d - r.auc3d <= 0.01]
        g = min(within, key=lambda r: r.mean_gmacs) if within else max(gates, key=lambda r: r.auc3d)
        text += (f"; the learned gate ({g.setting}) runs {g.mean_loops:.2f} loops on average, "
                 f"{100 * (1 - g.mean_gmacs / full.mean_gmacs):.0f}% fewer multiply-adds than every loop at a "
                 f"3D AUC change of {g.auc3d - full.auc3d:+.4f}")
    return text + "."


def update_readme(paragraph: str, path: Path = README) -> None:
    """Replace the text between the README's default-run markers."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no default-run markers ({BEGIN!r} ... {END!r})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    import textwrap

    path.write_text(head + BEGIN + "\n" + textwrap.fill(paragraph, 88) + "\n" + END + tail)


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
    parser.add_argument("--readme", action="store_true", help="rewrite the README's paragraph on the default run")
    parser.add_argument("--cache", type=Path, default=None,
                        help="synthetic data cache (default: recurnet-hand's cache; a temporary one with --quick)")
    args = parser.parse_args(argv)
    if args.quick and (args.ship or args.readme):
        parser.error("--ship and --readme need a full run, not --quick")
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
    # The run's wall time beside its results, where benchmarks/full_ablation.py --reuse reads it.
    write_minutes(out, minutes)
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
    if args.readme:
        update_readme(readme_paragraph(summary, minutes))
        print(f"updated {README}")
    if args.ship:
        target = Path(recurnet_hand.SHIPPED_MODEL)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary.model_path, target)
        print(f"shipped {summary.model_path} as {target}")
    return 0


if __name__ == "__main__":
    assert RESULTS_DIR  # the default results folder exists in a checkout
    raise SystemExit(main())
