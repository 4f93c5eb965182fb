"""Experiments on synthetic hands: the shapes of the paper's Tables 2 and 3, and a ResNet-18 peer.

Every variant is trained from scratch with the same data, schedule and seed
through :func:`recurnet_hand.train.train`, then evaluated on the same synthetic
test set:

- Table 3 shape: no iteration (``max_loops=0``), iterations without AMG
  (``feedback="features"``), iterations with AMG (``"attention"``), the same
  AMG model with its learned gate (``tau_gate = 1``), and the AMG model trained
  end-to-end instead of progressively;
- Table 2 shape: the four loop points of Figure 9, with AMG, at the last loop;
- the peer: a plain timm ``resnet18`` with the same MANO pose head and no loop.

Accuracy is the root-relative 3D PCK AUC over 0-50 mm and the mean errors;
cost is counted multiply-adds (GMACs, the paper's "GFLOPs") and parameters.
The results (good or bad) go to ``benchmarks/results/experiments_synthetic.md``,
with ``experiments_synthetic_loops.png``: the distribution of the per-sample 3D
error after each loop, progressive against end-to-end (the paper's Figure 8).

Run (CPU, about 45 minutes at the defaults on 2 cores)::

    python benchmarks/experiments_synthetic.py
    python benchmarks/experiments_synthetic.py --quick      # minutes; checks the script, numbers mean little
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, setup, write_results  # noqa: E402

import recurnet  # noqa: E402
from recurnet_hand.config import RunConfig, with_overrides  # noqa: E402
from recurnet_hand.train import default_cache_dir, train  # noqa: E402


@dataclass(frozen=True)
class Variant:
    table: str
    label: str
    overrides: dict
    row: tuple[str, str] | None = None  # (policy, setting) to report; default: the last fixed loop


def variants(max_loops: int) -> list[Variant]:
    last = ("fixed", f"loops={max_loops}")
    out = [
        Variant("3", "no iteration", {"model.feedback": "none", "model.max_loops": 0}, ("fixed", "loops=0")),
        Variant("3", "iterations without AMG", {"model.feedback": "features"}, last),
        Variant("3", "iterations with AMG", {"model.feedback": "attention"}, last),
        Variant("3", "with AMG + gate (tau_gate=1)", {"model.feedback": "attention"}, ("gate", "tau_gate=1")),
        Variant("3", "with AMG, end-to-end", {"model.feedback": "attention", "train.protocol": "end-to-end"}, last),
    ]
    out += [Variant("2", f"loop point ({p})", {"model.loop_point": p}, last) for p in (1, 2, 3, 4)]
    out.append(Variant("peer", "timm resnet18, same head", {"model.backbone": "resnet18", "model.feedback": "none",
                                                             "model.max_loops": 0}, ("fixed", "loops=0")))
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--preset", default="cpu", help="model preset of the DIR-Net variants (default cpu)")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=12, help="phase-0 epochs (later phases: --loop-epochs)")
    parser.add_argument("--loop-epochs", type=int, default=3)
    parser.add_argument("--max-loops", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None,
                        help="synthetic data cache (default: recurnet-hand's cache; a temp folder with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.train_samples, args.test_samples = "tiny", 32, 16
        args.epochs, args.loop_epochs, args.max_loops = 1, 1, 2
    device = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or (Path(tmp) / "cache" if args.quick else default_cache_dir())
        runs = args.out or Path(tmp) / "runs"
        base = with_overrides(RunConfig(), {
            "model.preset": args.preset, "model.max_loops": args.max_loops, "data.train_samples": args.train_samples,
            "data.test_samples": args.test_samples, "data.root": str(cache), "data.workers": args.workers,
            "train.epochs": args.epochs, "train.loop_epochs": args.loop_epochs, "device": str(device),
        })
        table_rows, cache_runs, protocols = [], {}, {}
        for v in variants(args.max_loops):
            run = with_overrides(base, {**v.overrides, "out_dir": str(runs / f"run{len(cache_runs)}")})
            key = (run.model, run.train)  # variants trained alike share one run (and its gate)
            if key in cache_runs:
                summary, seconds = cache_runs[key]
            else:
                start = time.perf_counter()
                summary = train(run, progress=False)
                seconds = time.perf_counter() - start
                cache_runs[key] = (summary, seconds)
            row = next(r for r in summary.rows if (r.policy, r.setting) == v.row)
            net = _load(summary.model_path)
            net_params = recurnet.count_params(net) - recurnet.count_params(net.policy if v.row[0] != "gate" else None)
            table_rows.append((v.table, v.label, f"{net_params / 1e3:.0f}K", f"{row.mean_gmacs:.4f}",
                               f"{row.mean_loops:.2f}", f"{row.auc3d:.3f}", f"{row.epe3d:.1f}", f"{row.epe2d:.2f}",
                               f"{summary.baseline_auc3d:.3f}", f"{seconds / 60:.1f}"))
            print(" | ".join(table_rows[-1]), flush=True)
            if v.label in ("iterations with AMG", "with AMG, end-to-end"):
                protocols[run.train.protocol] = (run, summary.model_path)
        figure = _protocol_figure(protocols, Path(args.results_dir) / "experiments_synthetic_loops.png")
    headers = ["table", "variant", "params", "mean GMACs", "mean loops", "3D AUC 0-50mm", "3D EPE mm", "2D EPE px",
               "mean-pose AUC", "train min"]
    body = "\n".join([
        f"Synthetic hands at {base.model.crop_size} px: {args.train_samples} training and {args.test_samples} test "
        f"images; progressive training (unless marked end-to-end, which trains the same total number of "
        f"epochs), {args.epochs} epochs for loop 0 and {args.loop_epochs} per later loop, max_loops="
        f"{args.max_loops}, preset `{args.preset}`, one seed. Rows without a gate report the last loop. "
        "'mean-pose AUC' is the AUC of always predicting the training set's mean root-relative pose. GMACs are "
        "counted multiply-adds per image. The gate is trained with the normalised reward (`loss_scale=20`: a "
        "loop must lower a sample's loss by 5 % of the average loss).",
        "",
        markdown_table(headers, table_rows, "ll" + "r" * (len(headers) - 2)),
        "",
        f"Per-sample 3D error after each loop, progressive against end-to-end: `{figure.name}`.",
    ])
    return write_results("experiments_synthetic", "Synthetic-hand experiments (Tables 2 and 3 shapes)", body,
                         results_dir=args.results_dir, argv=argv, device=device, timed=False)


def _protocol_figure(protocols: dict, path: Path) -> Path:
    """Figure 8's shape: per-sample 3D error (mm) after each loop for each training protocol."""
    from torch.utils.data import DataLoader

    from recurnet_hand.evaluation import collect
    from recurnet_hand.plots import plot_loss_per_loop
    from recurnet_hand.train import build_data

    errors = {}
    for protocol, (run, model_path) in sorted(protocols.items(), key=lambda kv: kv[0] != "progressive"):
        test = build_data(run, progress=False)[1]
        col = collect(_load(model_path), DataLoader(test, batch_size=64), progress=False)
        errors[protocol] = torch.stack([(it["joints3d"] - col.gt3d).norm(dim=-1).mean(dim=-1)
                                        for it in col.output.iterations])
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_loss_per_loop(errors, path, ylabel="mean 3D joint error per sample (mm)",
                              title="3D error after each loop (synthetic test set)")


def _load(model_path: Path) -> torch.nn.Module:
    from recurnet_hand.inference import load_model

    return load_model(model_path)[0]


if __name__ == "__main__":
    print(main())
