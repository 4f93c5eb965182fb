"""Which training recipe makes DIR-Net learn: a proxy ablation on synthetic hands.

Every row trains the default model (``cpu`` preset) at loop 0 only, from
the same seed on the same synthetic data, through :func:`recurnet_hand.train.train`,
and is evaluated on the same held-out test set (``stb`` viewpoints). The rows add
one change at a time to the recipe above them, starting from the recipe this
project used before (errors in px and mm^2, uncertainty terms re-weighting the task
gradients, no rotation supervision, no augmentation):

1. ``old recipe``: the former loss weights and units, unbounded log-variances;
2. ``+ augmentation``: rotation, zoom, shift and colour drawn anew every epoch;
3. ``+ normalised errors``: 3D in units of 100 mm, 2D in eighths of the crop,
   log-variances soft-bounded and started at -2;
4. ``+ detached variance``: the uncertainty terms train the variances only;
5. ``+ rotation loss``: squared error of the global rotation matrix;
6. ``+ training-only heatmap head``: dense 2D supervision of the extractor;
7. ``+ lr 6e-3`` and ``+ heatmap weight 3``: the recipe ``recurnet-hand train`` uses
   (at the ``cpu`` preset's 96 px crops; one row shows 128 px);
8. and single changes of that recipe (indented rows).

The mean-pose baseline on the same test set is printed beside every row. The
table goes to ``benchmarks/results/recipe_ablation.md``.

Run (about 35 minutes on 2 cores)::

    python benchmarks/recipe_ablation.py
    python benchmarks/recipe_ablation.py --quick     # a minute; checks the script, numbers mean little
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, setup, write_results  # noqa: E402

from recurnet_hand.config import RunConfig, with_overrides  # noqa: E402
from recurnet_hand.train import default_cache_dir, train  # noqa: E402

OLD = {"loss.weight_2d": 0.05, "loss.weight_3d": 0.002, "loss.weight_var": 0.1, "loss.weight_rotation": 0.0,
       "loss.weight_pose": 0.01, "loss.weight_shape": 0.01, "loss.unit_3d_mm": 1.0, "loss.unit_2d": 1 / 96,
       "loss.detach_variance": False, "model.log_var_bound": None, "model.log_var_init": 0.0,
       "data.augment": False, "model.heatmaps": False}
AUGMENT = {**OLD, "data.augment": True}
NORMALISED = {**AUGMENT, "loss.weight_2d": 1.0, "loss.weight_3d": 1.0, "loss.weight_pose": 0.001, "loss.weight_shape": 0.001,
              "loss.unit_3d_mm": 100.0, "loss.unit_2d": 0.125, "model.log_var_bound": 10.0,
              "model.log_var_init": -2.0}
DETACHED = {**NORMALISED, "loss.detach_variance": True}
ROTATION = {**DETACHED, "loss.weight_rotation": 1.0}
HEATMAPS = {**ROTATION, "model.heatmaps": True}

LR = {**HEATMAPS, "train.lr": 6e-3}
DEFAULT = {**LR, "loss.weight_heatmap": 3.0}

#: (label, overrides on top of the proxy run).
ROWS = [
    ("old recipe", OLD),
    ("+ augmentation", AUGMENT),
    ("+ normalised errors, bounded log-variance", NORMALISED),
    ("+ detached variance terms", DETACHED),
    ("+ rotation loss", ROTATION),
    ("+ training-only heatmap head", HEATMAPS),
    ("+ lr 6e-3 instead of 1e-3", LR),
    ("+ heatmap weight 3 (the new default)", DEFAULT),
    ("  lr 3e-3", {**DEFAULT, "train.lr": 3e-3}),
    ("  batch 64", {**DEFAULT, "train.batch_size": 64}),
    ("  rotation loss weight 5", {**DEFAULT, "loss.weight_rotation": 5.0}),
    ("  no rotation loss", {**DEFAULT, "loss.weight_rotation": 0.0}),
    ("  variance terms not detached", {**DEFAULT, "loss.detach_variance": False}),
    ("  augmentation without rotation", {**DEFAULT, "data.rotation_deg": 0.0}),
    ("  128 px crops", {**DEFAULT, "model.crop_size": 128}),
]


def proxy(epochs: int, train_samples: int, test_samples: int) -> dict:
    return {"model.preset": "cpu", "model.max_loops": 0, "model.feedback": "none", "train.protocol": "end-to-end",
            "train.epochs": epochs, "train.loop_epochs": 0, "data.train_samples": train_samples,
            "data.test_samples": test_samples, "gate.enabled": False, "seed": 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per row (default 10)")
    parser.add_argument("--train-samples", type=int, default=4000, help="synthetic training images (default 4000)")
    parser.add_argument("--test-samples", type=int, default=500, help="synthetic test images (default 500)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--only", type=int, nargs="*", default=None, help="row numbers to run (default all)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="synthetic data cache (default: recurnet-hand's cache; a temporary one with --quick)")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.epochs, args.train_samples, args.test_samples = 1, 64, 32
    base = proxy(args.epochs, args.train_samples, args.test_samples)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="recipe-ablation-"))
    cache = str(args.cache or (out_root / "cache" if args.quick else default_cache_dir()))
    lines = []
    baseline = None
    for i, (label, overrides) in enumerate(ROWS):
        if args.only is not None and i not in args.only:
            continue
        run = with_overrides(RunConfig(), {**base, **overrides, "data.root": cache, "device": str(device),
                                           "out_dir": str(out_root / f"row{i}")})
        start = time.perf_counter()
        summary = train(run, progress=False)
        minutes = (time.perf_counter() - start) / 60
        r = summary.loops[0]
        baseline = (summary.baseline_epe3d, summary.baseline_auc3d)
        lines.append([label, f"{r.epe3d:.1f}", f"{r.auc3d:.3f}", f"{100 * r.epe2d_crop:.1f}",
                      f"{100 * r.palm_accuracy:.0f}%", f"{r.variance_rank_corr:.2f}", f"{minutes:.1f}"])
        print(json.dumps({"row": i, "label": label, **r.__dict__, "minutes": minutes}), flush=True)
    headers = ["recipe", "3D EPE (mm)", "3D AUC 0-50", "2D EPE (% crop)", "palm/back right",
               "rank corr(var, err)", "minutes"]
    body = (f"Proxy: `cpu` preset (IR9 width 16, 96 px unless stated), loop 0 only, {args.epochs} epochs over "
            f"{args.train_samples} synthetic training images, seed 0, evaluated on {args.test_samples} held-out "
            f"test images (`stb` viewpoints).\n\n" + markdown_table(headers, lines))
    if baseline is not None:
        body += f"\n\nMean-pose baseline on the same test set: 3D EPE {baseline[0]:.1f} mm, 3D AUC {baseline[1]:.3f}.\n"
    if args.only is None:
        path = write_results("recipe_ablation", "Training recipe ablation (synthetic hands)", body,
                             results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv, device=device, script="recipe_ablation.py", timed=False)
        print(f"wrote {path}")
    else:
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
