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
The report also gives phase 0's median training rate (images a second, from the run's
``metrics.csv``): the minutes depend on the machine, and the rate says how fast this one was.
With ``--reuse`` a finished default run in ``--out`` (one this script trained, so its
``minutes.json`` holds the wall time) is reported again without training.

Run (15-30 minutes on 2 cores, depending on the machine)::

    python benchmarks/default_run.py --ship
    python benchmarks/default_run.py --out runs/default --reuse --readme   # report a finished run again
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS_DIR, add_common_args, comparable_config, markdown_table, read_run_json,  # noqa: E402
                     setup, write_minutes, write_results)

import yaml  # noqa: E402

import recurnet_hand  # noqa: E402
from recurnet_hand.config import RunConfig, config_to_dict, with_overrides  # noqa: E402
from recurnet_hand.evaluation import EvalRow, LoopSummary, loop_summaries_to_markdown, rows_to_markdown  # noqa: E402
from recurnet_hand.train import RunSummary, train  # noqa: E402

FIGURES = ("overlays", "reliability", "pck3d", "tradeoff", "loss_per_loop")
README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- default-run:begin (written by benchmarks/default_run.py --readme) -->", "<!-- default-run:end -->"


def training_rate(folder: Path) -> float | None:
    """Phase 0's median training rate (images a second over its epochs) from ``folder/metrics.csv``."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rates = [float(r["value"]) for r in csv.DictReader(f)
                 if r["name"] == "train/samples_per_s" and r["phase"] == "0"]
    return statistics.median(rates) if rates else None


def finished_run(run: RunConfig, folder: Path) -> tuple[RunSummary, float]:
    """The summary and minutes of the finished run of ``run``'s configuration in ``folder``.

    Raises:
        SystemExit: the folder holds no finished run (naming the missing file) or one of
            another configuration.
    """
    files = {name: folder / name for name in ("config.yaml", "summary.json", "minutes.json", "model.pt")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"--reuse: {folder} holds no finished default run (missing {', '.join(missing)})")
    if comparable_config(yaml.safe_load(files["config.yaml"].read_text()) or {}) != comparable_config(
            config_to_dict(run)):
        raise SystemExit(f"--reuse: {files['config.yaml']} is not the default configuration; train it again "
                         "into another --out")
    record = read_run_json(files["summary.json"])
    summary = RunSummary(folder, files["model.pt"], [EvalRow(**r) for r in record["policies"]],
                         record["auc3d_per_loop"], record["baseline_auc3d"],
                         {k: Path(v) for k, v in record["figures"].items()},
                         [LoopSummary(**r) for r in record["loops"]], record["baseline_epe3d"])
    return summary, read_run_json(files["minutes.json"])["minutes"]


def readme_paragraph(summary, minutes: float, rate: float | None = None) -> str:
    """The README's account of the default run, from its measured summary."""
    first, last = summary.loops[0], summary.loops[-1]
    gates = [r for r in summary.rows if r.policy == "gate"]
    full = [r for r in summary.rows if r.policy == "fixed"][-1]
    change = 100 * (last.epe3d / first.epe3d - 1)
    speed = "" if rate is None else f" (its first phase training {rate:.0f} images a second)"
    text = (f"On 2 CPU cores the default run took {minutes:.0f} minutes{speed} and ended at {last.epe3d:.2f} mm "
            "mean 3D "
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
            saved = 100 * (1 - r.mean_gmacs / full.mean_gmacs)
            out.append([r.policy, r.setting, f"{r.mean_loops:.2f}", f"{saved:.1f}%",
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
    parser.add_argument("--reuse", action="store_true",
                        help="with --out: report the finished default run there instead of training")
    args = parser.parse_args(argv)
    if args.quick and (args.ship or args.readme):
        parser.error("--ship and --readme need a full run, not --quick")
    if args.reuse and args.out is None:
        parser.error("--reuse needs --out (the folder of the finished run)")
    device = setup(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="default-run-"))
    overrides = {"out_dir": str(out), "device": str(device)}
    if args.cache is not None or args.quick:
        overrides["data.root"] = str(args.cache or out / "cache")
    if args.quick:
        overrides.update({"train.epochs": 1, "train.loop_epochs": 1, "data.train_samples": 64,
                          "data.test_samples": 32, "gate.epochs": 2})
    run = with_overrides(RunConfig(), overrides)
    if args.reuse:
        summary, minutes = finished_run(run, out)
    else:
        start = time.perf_counter()
        summary = train(run, progress=False)
        minutes = (time.perf_counter() - start) / 60
        # The run's wall time beside its results, where --reuse and benchmarks/full_ablation.py --reuse read it.
        write_minutes(out, minutes)
    rate = training_rate(out)
    speed = "" if rate is None else f" (phase 0 trained at a median {rate:.0f} images a second over its epochs)"
    first, last = summary.loops[0], summary.loops[-1]
    body = [
        f"`recurnet-hand train` with its defaults ({run.model.name} preset, {run.model.crop_size} px, "
        f"{run.train.protocol} training, {run.data.train_samples} synthetic training images with `"
        f"{run.data.viewpoint}` viewpoints, {run.train.epochs} epochs then {run.train.loop_epochs} per loop "
        f"phase, seed {run.seed}): {minutes:.1f} minutes here{speed}, rendering, training, "
        f"the gate and evaluation included. Evaluated on {run.data.test_samples} held-out test images. "
        "The minutes depend on the machine: compare the rate with the samples/s of the progress bars.",
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
    if not args.quick:
        Path(args.results_dir).mkdir(parents=True, exist_ok=True)
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
        update_readme(readme_paragraph(summary, minutes, rate))
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
