"""The default run at full size: distinct images against epochs, and single changes of the recipe.

Every row is the full ``recurnet-hand train`` pipeline (the ``cpu`` preset, progressive
training over loops 0..3, the learned gate, evaluation on the 500 held-out test hands),
seed 0, with the defaults except where the row says. The proxy of
``benchmarks/recipe_ablation.py`` chooses what is worth a full run; this table confirms
it at the size the default trains.

1. The data budget: the rows split about the same number of phase-0 training samples
   (images x epochs, about 240k) between more distinct synthetic images and more passes
   over them; the loop phases get one pass over the images each (two for the 6000-image
   row, so each row trains its loops on at least 12000 samples). Rendering a 96 px image
   costs a few times a training step's share per image, so fresh images are not free.
2. Single changes of the former default (18000 images, 13 epochs, in-plane rotations up
   to 30 degrees): a wider pose predictor, a smaller in-plane rotation augmentation, IR9
   width 48 for fewer epochs (about the same minutes) and a larger 3D weight; and the
   former default with another seed, which draws other training and test images, initial
   weights and batch order: how far two runs of the same recipe differ.
3. The rotation that scored better, with three more phase-0 epochs: the current default;
   and the same phase-0 samples spread over a third more distinct images.
4. The current default in float32 (what ``precision: auto`` trains on a CPU without
   native bfloat16), with seed 0 and seed 1: the cost of the precision and the spread
   between two runs of the same recipe.
5. The current default with seed 1 as it trains (bfloat16 where the CPU computes it
   natively): with row 8, the spread between two seeds on such a CPU.

The table goes to ``benchmarks/results/full_ablation.md``: per row, the last loop's 3D
error, AUC and 2D error, the test error minus the same model's error on 500 of its own
training images (without augmentation), and the minutes. The mean pose is printed beside
it.

Run (about 90 minutes on 2 cores; ``--out`` keeps the runs, ``--reuse`` reads finished ones,
including a ``default_run.py --out DIR/images18000`` run)::

    python benchmarks/full_ablation.py --out runs/full-ablation --reuse
    python benchmarks/full_ablation.py --quick     # a minute; checks the script, numbers mean little
    python benchmarks/full_ablation.py --out runs/full-ablation --reuse --only 8 9   # to full_ablation_selected.md
    python benchmarks/full_ablation.py --out runs/full-ablation --reuse --only 10 11 --result full_ablation_float32
    python benchmarks/full_ablation.py --out runs/full-ablation --reuse --only 8 12 --result full_ablation_seeds
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_common_args, add_runs_args, comparable_config, markdown_table, parse_runs_args,  # noqa: E402
                     read_run_json, setup, write_minutes, write_results)

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from recurnet_hand.config import RunConfig, config_to_dict, with_overrides  # noqa: E402
from recurnet_hand.evaluation import LoopSummary  # noqa: E402
from recurnet_hand.inference import load_model  # noqa: E402
from recurnet_hand.losses import add_hand_targets  # noqa: E402
from recurnet_hand.train import build_data, train  # noqa: E402

#: The default before the rows at the end: 13 epochs, in-plane rotations up to 30 degrees.
OLD = {"train.epochs": 13, "data.rotation_deg": 30.0}

#: (label, run folder name, overrides of the default run).
ROWS = [
    ("6000 images, 40 epochs, 2 per loop phase", "images6000",
     {**OLD, "data.train_samples": 6000, "train.epochs": 40, "train.loop_epochs": 2}),
    ("12000 images, 20 epochs", "images12000", {**OLD, "data.train_samples": 12000, "train.epochs": 20}),
    ("18000 images, 13 epochs (the former default)", "images18000", OLD),
    ("  pose predictor width 512", "fc512", {**OLD, "model.fc": 512}),
    ("  in-plane rotation augmentation 15 deg instead of 30", "rotation15", {**OLD, "data.rotation_deg": 15.0}),
    ("  IR9 width 48, 8 epochs", "width48", {**OLD, "model.width": 48, "train.epochs": 8}),
    ("  3D weight 3", "weight3d3", {**OLD, "loss.weight_3d": 3.0}),
    ("  seed 1 (other images, weights and order)", "seed1", {**OLD, "seed": 1}),
    ("18000 images, 16 epochs, rotation 15 deg (the default)", "default", {}),
    ("  24000 images, 12 epochs", "images24000", {"data.train_samples": 24000, "train.epochs": 12}),
    ("  float32 forward (CPUs without bfloat16 train so)", "float32", {"train.precision": "float32"}),
    ("  float32 forward, seed 1", "float32-seed1", {"train.precision": "float32", "seed": 1}),
    ("  seed 1 (other images, weights and order)", "default-seed1", {"seed": 1}),
]
QUICK_ROWS = [("64 images", "images64", {"data.train_samples": 64}),
              ("128 images", "images128", {"data.train_samples": 128})]
def _finished(run: RunConfig, folders) -> tuple[Path, dict] | None:
    """A finished run of ``run``'s configuration among ``folders``: (folder, summary with minutes)."""
    want = comparable_config(config_to_dict(run))
    for out in folders:
        config, summary = out / "config.yaml", out / "summary.json"
        if not (config.is_file() and summary.is_file()):
            continue
        if comparable_config(yaml.safe_load(config.read_text()) or {}) != want:
            continue
        record = read_run_json(summary)
        timing = out / "minutes.json"
        record["minutes"] = read_run_json(timing).get("minutes") if timing.is_file() else None
        return out, record
    return None


@torch.no_grad()
def train_error(model_path: Path, run: RunConfig, count: int = 500) -> float:
    """Mean root-relative 3D error (mm) at the last loop on the first ``count`` training images, unaugmented."""
    net, _ = load_model(model_path)
    plain = with_overrides(run, {"data.augment": False})
    train_set, _ = build_data(plain, progress=False)
    errors = []
    for batch in DataLoader(Subset(train_set, range(min(count, len(train_set)))), batch_size=100):
        batch = add_hand_targets(batch)
        pred = net(batch["image"], exit="all").iterations[-1]["joints3d"]
        errors.append((pred - pred[:, :1] - batch["joints3d_rel"]).norm(dim=-1).mean(dim=-1))
    return float(torch.cat(errors).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--only", type=int, nargs="*", default=None,
                        help="row numbers to run (default all); the table goes to full_ablation_selected.md")
    parser.add_argument("--result", default=None,
                        help="file name (without .md) of the table, in place of full_ablation(_selected)")
    add_runs_args(parser)
    args = parse_runs_args(parser, argv)
    if args.result is not None and (not args.result or Path(args.result).name != args.result):
        parser.error(f"--result takes a file name without folders, got {args.result!r}")
    device = setup(args)
    rows = QUICK_ROWS if args.quick else ROWS
    out_root = args.out or Path(tempfile.mkdtemp(prefix="full-ablation-"))
    out_root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (label, name, changes) in enumerate(rows):
        if args.only is not None and i not in args.only:
            continue
        overrides = {**changes, "device": str(device), "out_dir": str(out_root / name)}
        if args.quick:
            overrides.update({"train.epochs": 1, "train.loop_epochs": 1, "data.test_samples": 32, "gate.epochs": 1})
        run = with_overrides(RunConfig(), overrides)
        found = _finished(run, sorted(p for p in out_root.iterdir() if p.is_dir())) if args.reuse else None
        if found is None:
            folder = Path(run.out_dir)
            cache = folder / "cache"  # empty, so the minutes include rendering
            shutil.rmtree(cache, ignore_errors=True)
            run = with_overrides(run, {"data.root": str(cache)})
            start = time.perf_counter()
            train(run, progress=False)
            write_minutes(folder, (time.perf_counter() - start) / 60)
            found = _finished(run, [folder])
        folder, record = found
        run = with_overrides(run, {"data.root": yaml.safe_load((folder / "config.yaml").read_text())["data"]["root"]})
        last = LoopSummary(**record["loops"][-1])
        gap = last.epe3d - train_error(folder / "model.pt", run)
        minutes = "-" if record["minutes"] is None else f"{record['minutes']:.1f}"
        lines.append([label, f"{run.data.train_samples * run.train.epochs:,}", f"{last.epe3d:.1f}",
                      f"{last.auc3d:.3f}", f"{100 * last.epe2d_crop:.1f}", f"{100 * last.palm_accuracy:.0f}%",
                      f"{gap:.1f}", f"{record['baseline_epe3d']:.1f}", minutes])
        print(json.dumps({"row": label, "epe3d": last.epe3d, "auc3d": last.auc3d, "gap": gap,
                          "minutes": record["minutes"]}), flush=True)
    headers = ["run", "phase-0 samples", "3D EPE (mm)", "3D AUC 0-50", "2D EPE (% crop)", "palm/back right",
               "test - train 3D EPE (mm)", "mean pose 3D EPE (mm)", "minutes"]
    body = (f"The default run (`recurnet-hand train`) with its other defaults, last loop, {run.data.test_samples} "
            "held-out test hands "
            "(`stb` viewpoints), seed 0 unless the row says, next to the mean pose on the same test set. "
            "Test - train: the 3D error on the test set minus that on 500 of the "
            "run's own training images (no augmentation). Minutes: the whole run, rendering into an empty cache "
            "included (`-`: a run reused from a folder without its timing, such as a run that found part of its "
            "images cached).\n\n"
            + markdown_table(headers, lines, "lrrrrrrrr"))
    # A subset of rows goes to its own file, so the full table is only ever written whole.
    result_name, title = (("full_ablation", "The default run at full size: data budget and single changes")
                          if args.only is None else
                          ("full_ablation_selected", "The default run at full size: selected rows rerun together"))
    path = write_results(args.result or result_name, title, body,
                         results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv, device=device,
                         script=Path(__file__).name, timed=False)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
