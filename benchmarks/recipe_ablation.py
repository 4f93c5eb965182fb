"""Which training recipe makes DIR-Net learn: a proxy ablation on synthetic hands.

Every row trains a ``cpu``-preset model at loop 0 only, from the same seed on the
same synthetic data, through :func:`recurnet_hand.train.train`, and is evaluated on
the same held-out test set (``stb`` viewpoints). The rows add one change at a time to
the recipe above them, starting from the recipe this project used before (IR9 width
16, errors in px and mm^2, uncertainty terms re-weighting the task gradients, no
rotation supervision, no augmentation):

1. ``old recipe``: the former loss weights and units, unbounded log-variances;
2. ``+ augmentation``: rotation, zoom, shift and colour drawn anew every epoch;
3. ``+ normalised errors``: 3D in units of 100 mm, 2D in eighths of the crop,
   log-variances soft-bounded and started at -2;
4. ``+ detached variance``: the uncertainty terms train the variances only;
5. ``+ training-only heatmap head``: dense 2D supervision of the extractor;
6. ``+ lr 6e-3`` and ``+ heatmap weight 3``;
7. single changes of that recipe (indented rows): the rotation loss (a squared
   error of the global rotation matrix, which the synthetic data know), variance terms
   that re-weight the task gradients, augmentation without rotation, 128 px crops,
   higher learning rates, batch 64 (with and without a scaled rate), wider heatmap
   targets, IR9 width 24, the full 45-angle MANO pose instead of 30 PCA components,
   other 3D and 2D loss kinds and weights, the articulation loss (the joints in the
   hand's own frame against the labels turned by the labelled rotation, apart from
   the orientation), the memory format, the precision and a loader worker;
8. ``+ IR9 width 32, bfloat16 forward`` (the bfloat16 forward keeps the wider
   network's step near the narrow one's) and ``+ 3D loss L1, 2D weight 0.3,
   articulation loss``: the recipe ``recurnet-hand train`` uses (at the ``cpu``
   preset's 96 px crops), two other learning rates for it, and twice the images for
   half the epochs (the same steps; ``benchmarks/full_ablation.py`` asks the same of the
   full default run), weight averaging, and the training-only location maps (a dense
   root-relative 3D target around every joint, :class:`recurnet_hand.model.LocationMapHead`),
   and heatmaps on a grid twice as fine as the extractor's (``model.heatmap_upsample``), with
   targets of half or the same width in pixels;
9. batch 16 (at two rates), the 2D loss as L1 (at two weights), and the crop size: 80 and
   64 px crops at the default's 10 epochs, then with more epochs (16 and 20) against the
   96 px default with 13: lower resolutions at about the same minutes.

The mean-pose baseline on the same test set is printed beside every row. The
table goes to ``benchmarks/results/recipe_ablation.md``.

Run (one to five minutes a row on 2 cores, about an hour and a half for the whole table)::

    python benchmarks/recipe_ablation.py
    python benchmarks/recipe_ablation.py --out runs/ablation --reuse   # keep the runs; rerun only changed rows
    python benchmarks/recipe_ablation.py --quick     # a minute; checks the script, numbers mean little
    python benchmarks/recipe_ablation.py --only 31 37 38 39 40   # some rows, to recipe_ablation_selected.md
    python benchmarks/recipe_ablation.py --float32   # a CPU without native bfloat16 (every row in float32)
    python benchmarks/recipe_ablation.py --only 31 41 42 --float32 --name recipe_ablation_batch16
    python benchmarks/recipe_ablation.py --only 31 45 46 --float32 --name recipe_ablation_2d
    python benchmarks/recipe_ablation.py --only 31 43 44 47 48 49 --float32 --name recipe_ablation_crops
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_common_args, add_runs_args, markdown_table, parse_runs_args, read_run_json,  # noqa: E402
                     setup, write_results)

import yaml  # noqa: E402

from recurnet_hand.config import RunConfig, config_to_dict, with_overrides  # noqa: E402
from recurnet_hand.evaluation import LoopSummary  # noqa: E402
from recurnet_hand.train import default_cache_dir, train  # noqa: E402

OLD = {"loss.weight_2d": 0.05, "loss.weight_3d": 0.002, "loss.weight_var": 0.1, "loss.weight_rotation": 0.0,
       "loss.weight_pose": 0.01, "loss.weight_shape": 0.01, "loss.unit_3d_mm": 1.0, "loss.unit_2d": 1 / 96,
       "loss.detach_variance": False, "model.log_var_bound": None, "model.log_var_init": 0.0,
       "data.augment": False, "model.heatmaps": False, "train.lr": 1e-3, "loss.weight_heatmap": 1.0,
       "loss.kind_3d": "l2", "loss.weight_articulation": 0.0, "model.width": 16, "train.precision": "float32"}
AUGMENT = {**OLD, "data.augment": True}
NORMALISED = {**AUGMENT, "loss.weight_2d": 1.0, "loss.weight_3d": 1.0, "loss.weight_pose": 0.001,
              "loss.weight_shape": 0.001, "loss.unit_3d_mm": 100.0, "loss.unit_2d": 0.125, "model.log_var_bound": 10.0,
              "model.log_var_init": -2.0}
DETACHED = {**NORMALISED, "loss.detach_variance": True}
HEATMAPS = {**DETACHED, "model.heatmaps": True}
LR = {**HEATMAPS, "train.lr": 6e-3}
HEATMAP3 = {**LR, "loss.weight_heatmap": 3.0}
WIDE = {**HEATMAP3, "model.width": 32, "train.precision": "bfloat16"}
DEFAULT = {**WIDE, "loss.kind_3d": "l1", "loss.weight_2d": 0.3, "loss.weight_articulation": 1.0}

#: (label, overrides on top of the proxy run).
ROWS = [
    ("old recipe", OLD),
    ("+ augmentation", AUGMENT),
    ("+ normalised errors, bounded log-variance", NORMALISED),
    ("+ detached variance terms", DETACHED),
    ("+ training-only heatmap head", HEATMAPS),
    ("+ lr 6e-3 instead of 1e-3", LR),
    ("+ heatmap weight 3", HEATMAP3),
    ("  + rotation loss (weight 1)", {**HEATMAP3, "loss.weight_rotation": 1.0}),
    ("  + rotation loss (weight 5)", {**HEATMAP3, "loss.weight_rotation": 5.0}),
    ("  variance terms not detached", {**HEATMAP3, "loss.detach_variance": False}),
    ("  augmentation without rotation", {**HEATMAP3, "data.rotation_deg": 0.0}),
    ("  128 px crops", {**HEATMAP3, "model.crop_size": 128}),
    ("  lr 1e-2", {**HEATMAP3, "train.lr": 1e-2}),
    ("  lr 2e-2", {**HEATMAP3, "train.lr": 2e-2}),
    ("  batch 64", {**HEATMAP3, "train.batch_size": 64}),
    ("  batch 64, lr 1.2e-2", {**HEATMAP3, "train.batch_size": 64, "train.lr": 1.2e-2}),
    ("  heatmap sigma 2 px", {**HEATMAP3, "loss.heatmap_sigma": 2.0}),
    ("  IR9 width 24", {**HEATMAP3, "model.width": 24}),
    ("  MANO pose without PCA (45 angles)", {**HEATMAP3, "model.num_pca_comps": 45}),
    ("  3D loss L1 instead of squared", {**HEATMAP3, "loss.kind_3d": "l1"}),
    ("  3D weight 3", {**HEATMAP3, "loss.weight_3d": 3.0}),
    ("  2D weight 0.3", {**HEATMAP3, "loss.weight_2d": 0.3}),
    ("  no training-only heatmap head", {**HEATMAP3, "model.heatmaps": False}),
    ("  NCHW training instead of channels-last", {**HEATMAP3, "train.channels_last": False}),
    ("  bfloat16 forward instead of float32", {**HEATMAP3, "train.precision": "bfloat16"}),
    ("  training batches loaded by a worker process", {**HEATMAP3, "data.loader_workers": 1}),
    ("  3D loss L1 and 2D weight 0.3", {**HEATMAP3, "loss.kind_3d": "l1", "loss.weight_2d": 0.3}),
    ("  + articulation loss (weight 1)", {**HEATMAP3, "loss.weight_articulation": 1.0}),
    ("  + articulation loss (weight 5)", {**HEATMAP3, "loss.weight_articulation": 5.0}),
    ("+ IR9 width 32, bfloat16 forward", WIDE),
    ("  pose predictor width 512", {**WIDE, "model.fc": 512}),
    ("+ 3D loss L1, 2D weight 0.3, articulation loss (the default)", DEFAULT),
    ("  lr 3e-3", {**DEFAULT, "train.lr": 3e-3}),
    ("  lr 1.2e-2", {**DEFAULT, "train.lr": 1.2e-2}),
    ("  twice the images, half the epochs", {**DEFAULT, "data.train_samples": 8000, "train.epochs": 5}),
    ("  weight average (EMA decay 0.999)", {**DEFAULT, "train.ema": 0.999}),
    ("  weight average (EMA decay 0.995)", {**DEFAULT, "train.ema": 0.995}),
    ("  + training-only location maps (weight 1)", {**DEFAULT, "model.location_maps": True}),
    ("  + training-only location maps (weight 3)", {**DEFAULT, "model.location_maps": True,
                                                    "loss.weight_location": 3.0}),
    ("  heatmaps at twice the resolution (targets 4 px wide)", {**DEFAULT, "model.heatmap_upsample": 2}),
    ("  heatmaps at twice the resolution, targets 8 px wide", {**DEFAULT, "model.heatmap_upsample": 2,
                                                              "loss.heatmap_sigma": 2.0}),
    ("  batch 16", {**DEFAULT, "train.batch_size": 16}),
    ("  batch 16, lr 3e-3", {**DEFAULT, "train.batch_size": 16, "train.lr": 3e-3}),
    ("  80 px crops", {**DEFAULT, "model.crop_size": 80}),
    ("  64 px crops", {**DEFAULT, "model.crop_size": 64}),
    ("  2D loss L1 instead of smooth L1", {**DEFAULT, "loss.kind_2d": "l1"}),
    ("  2D loss L1, 2D weight 1", {**DEFAULT, "loss.kind_2d": "l1", "loss.weight_2d": 1.0}),
    # Lower resolutions with more epochs, against the default with more epochs: about the same minutes.
    ("  80 px crops, 16 epochs", {**DEFAULT, "model.crop_size": 80, "train.epochs": 16}),
    ("  64 px crops, 20 epochs", {**DEFAULT, "model.crop_size": 64, "train.epochs": 20}),
    ("  13 epochs", {**DEFAULT, "train.epochs": 13}),
]


def proxy(epochs: int, train_samples: int, test_samples: int) -> dict:
    # Every row was measured with 30-degree in-plane rotations; the default's 15 degrees
    # was chosen at full size (benchmarks/full_ablation.py), so the proxy keeps 30.
    return {"model.preset": "cpu", "model.max_loops": 0, "model.feedback": "none", "train.protocol": "end-to-end",
            "train.epochs": epochs, "train.loop_epochs": 0, "data.train_samples": train_samples,
            "data.test_samples": test_samples, "gate.enabled": False, "seed": 0, "data.rotation_deg": 30.0}


def _finished(run: RunConfig, root: Path | None = None) -> dict | None:
    """The ``summary.json`` of a finished run of ``run``'s configuration, with its training minutes.

    Looks in ``run.out_dir`` and, with ``root``, in every run folder under it (rows may have
    been renumbered); the folder name itself is not part of the comparison. Minutes run from
    the configuration's writing (data ready) to the summary's (evaluation done).
    """
    want = {**config_to_dict(run), "out_dir": None}
    folders = [Path(run.out_dir)] + (sorted(p for p in root.iterdir() if p.is_dir()) if root is not None else [])
    for out in folders:
        config, summary = out / "config.yaml", out / "summary.json"
        if not (config.is_file() and summary.is_file()):
            continue
        if {**(yaml.safe_load(config.read_text()) or {}), "out_dir": None} != want:
            continue
        record = read_run_json(summary)
        record["minutes"] = (summary.stat().st_mtime - config.stat().st_mtime) / 60
        return record
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per row (default 10)")
    parser.add_argument("--train-samples", type=int, default=4000, help="synthetic training images (default 4000)")
    parser.add_argument("--test-samples", type=int, default=500, help="synthetic test images (default 500)")
    parser.add_argument("--only", type=int, nargs="*", default=None, help="row numbers to run (default all)")
    parser.add_argument("--name", default="recipe_ablation_selected",
                        help="results file (without .md) of an --only run (default recipe_ablation_selected)")
    parser.add_argument("--float32", action="store_true",
                        help="train every row in float32: on a CPU without native bfloat16 the rows that pin a "
                             "bfloat16 forward would run it emulated, many times slower")
    parser.add_argument("--cache", type=Path, default=None,
                        help="synthetic data cache (default: recurnet-hand's cache; a temporary one with --quick)")
    add_runs_args(parser)
    args = parse_runs_args(parser, argv)
    if args.name != "recipe_ablation_selected" and args.only is None:
        parser.error("--name names the table of an --only run; the full table is always recipe_ablation.md")
    device = setup(args)
    if args.quick:
        args.epochs, args.train_samples, args.test_samples = 1, 64, 32
    base = proxy(args.epochs, args.train_samples, args.test_samples)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="recipe-ablation-"))
    out_root.mkdir(parents=True, exist_ok=True)
    cache = str(args.cache or (out_root / "cache" if args.quick else default_cache_dir()))
    lines = []
    baseline = None
    for i, (label, overrides) in enumerate(ROWS):
        if args.only is not None and i not in args.only:
            continue
        if args.float32:
            overrides = {**overrides, "train.precision": "float32"}
        run = with_overrides(RunConfig(), {**base, **overrides, "data.root": cache, "device": str(device),
                                           "out_dir": str(out_root / f"row{i}")})
        record = _finished(run, out_root) if args.reuse else None
        if record is None:
            train(run, progress=False)
            record = _finished(run)
        r = LoopSummary(**record["loops"][0])
        minutes = record["minutes"]
        baseline = (record["baseline_epe3d"], record["baseline_auc3d"])
        lines.append([label, f"{r.epe3d:.1f}", f"{r.auc3d:.3f}", f"{100 * r.epe2d_crop:.1f}",
                      f"{100 * r.palm_accuracy:.0f}%", f"{r.variance_rank_corr:.2f}", f"{minutes:.1f}"])
        print(json.dumps({"row": i, "label": label, **r.__dict__, "minutes": minutes}), flush=True)
    headers = ["recipe", "3D EPE (mm)", "3D AUC 0-50", "2D EPE (% crop)", "palm/back right",
               "rank corr(var, err)", "minutes"]
    body = (f"Proxy: `cpu` preset (96 px unless stated; IR9 width 16 in the rows above `+ IR9 width 32`, "
            f"32 from there on), loop 0 only, {args.epochs} epochs over "
            f"{args.train_samples} synthetic training images (in-plane rotations up to 30 degrees where the rows "
            f"augment), seed 0, evaluated on {args.test_samples} held-out "
            f"test images (`stb` viewpoints)"
            + ("; every row trained in float32 (`--float32`), bfloat16 rows included" if args.float32 else "")
            + ". Minutes: training and evaluation of the row (the data ready).\n\n"
            + markdown_table(headers, lines))
    if baseline is not None:
        body += f"\n\nMean-pose baseline on the same test set: 3D EPE {baseline[0]:.1f} mm, 3D AUC {baseline[1]:.3f}.\n"
    # A subset of rows (rerun side by side on one machine) goes to its own file, so the full
    # table is only ever written whole.
    name, title = (("recipe_ablation", "Training recipe ablation (synthetic hands)") if args.only is None else
                   (args.name, "Training recipe ablation: selected rows rerun together"))
    path = write_results(name, title, body, results_dir=args.results_dir,
                         argv=sys.argv[1:] if argv is None else argv, device=device, script="recipe_ablation.py",
                         timed=False)
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
