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

The variants train with :data:`RECIPE`, the recipe ablation's ``+ heatmap weight 3``
row (IR9 width 16, a squared 3D error, float32, in-plane rotations up to 30 degrees), not
the newer default of ``recurnet-hand train`` (width 32 with a bfloat16 forward, an L1 3D
error, the articulation loss, rotations up to 15 degrees): the comparisons are between
variants trained alike, and at width 32 every variant would train longer.

Accuracy is the root-relative 3D PCK AUC over 0-50 mm and the mean errors;
cost is counted multiply-adds (GMACs, the paper's "GFLOPs") and parameters.
The results (good or bad) go to ``benchmarks/results/experiments_synthetic.md``,
with ``experiments_synthetic_loops.png``: the distribution of the per-sample 3D
error after each loop, progressive against end-to-end (the paper's Figure 8).

Run (CPU; the table records each training run's minutes, about an hour in all on 2 cores)::

    python benchmarks/experiments_synthetic.py
    python benchmarks/experiments_synthetic.py --quick      # minutes; checks the script, numbers mean little
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, add_runs_args, parse_runs_args, markdown_table, setup, write_results  # noqa: E402

import recurnet  # noqa: E402
from recurnet_hand.config import RunConfig, config_to_dict, with_overrides  # noqa: E402
from recurnet_hand.train import default_cache_dir, train  # noqa: E402


#: The training recipe of every variant, pinned (see the module notes); the model preset
#: and the schedule come from the command line.
RECIPE = {"model.width": 16, "loss.kind_2d": "smooth_l1", "loss.kind_3d": "l2", "loss.weight_2d": 1.0,
          "loss.weight_articulation": 0.0, "train.precision": "float32", "train.channels_last": False,
          "data.loader_workers": 0, "data.rotation_deg": 30.0}


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
        Variant("3", "with AMG, progressive without lr decay", {"model.feedback": "attention", "train.lr_decay": 1.0},
                last),
        Variant("3", "with AMG, end-to-end + gate (tau_gate=1)",
                {"model.feedback": "attention", "train.protocol": "end-to-end"}, ("gate", "tau_gate=1")),
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
    add_runs_args(parser)
    args = parse_runs_args(parser, argv)
    if args.quick:
        args.preset, args.train_samples, args.test_samples = "tiny", 32, 16
        args.epochs, args.loop_epochs, args.max_loops = 1, 1, 2
    device = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or (Path(tmp) / "cache" if args.quick else default_cache_dir())
        runs = args.out or Path(tmp) / "runs"
        base = with_overrides(RunConfig(), {
            **(RECIPE if args.preset == "cpu" else {k: v for k, v in RECIPE.items() if k != "model.width"}),
            "model.preset": args.preset, "model.max_loops": args.max_loops, "data.train_samples": args.train_samples,
            "data.test_samples": args.test_samples, "data.root": str(cache), "data.workers": args.workers,
            "train.epochs": args.epochs, "train.loop_epochs": args.loop_epochs, "device": str(device),
            "train.lr_decay": 0.1,  # the paper's progressive protocol; one variant keeps the rate instead
        })
        table_rows, results, cache_runs, protocols = [], {}, {}, {}
        for v in variants(args.max_loops):
            run = with_overrides(base, {**v.overrides, "out_dir": str(runs / f"run{len(cache_runs)}")})
            key = (run.model, run.train)  # variants trained alike share one run (and its gate)
            if key not in cache_runs:
                cache_runs[key] = _run(run, reuse=args.reuse)
            done = cache_runs[key]
            row = next(r for r in done["rows"] if (r["policy"], r["setting"]) == v.row)
            per_loop = " / ".join(f"{a:.3f}" for a in done["auc3d_per_loop"])
            table_rows.append((v.table, v.label, f"{done['params'][v.row[0] == 'gate'] / 1e3:.0f}K",
                               f"{row['mean_gmacs']:.4f}", f"{row['mean_loops']:.2f}", f"{row['auc3d']:.3f}",
                               per_loop, f"{row['epe3d']:.1f}", f"{row['epe2d']:.2f}", f"{done['baseline_auc3d']:.3f}",
                               f"{done['seconds'] / 60:.1f}"))
            results[v.label] = {**row, "per_loop": done["auc3d_per_loop"], "baseline": done["baseline_auc3d"],
                                "params": done["params"][v.row[0] == "gate"]}
            print(" | ".join(table_rows[-1]), flush=True)
            if v.label in ("iterations with AMG", "with AMG, end-to-end"):
                protocols[run.train.protocol] = (run, Path(done["model_path"]))
        figure = _protocol_figure(protocols, Path(args.results_dir) / "experiments_synthetic_loops.png")
    headers = ["table", "variant", "params", "mean GMACs", "mean loops", "3D AUC 0-50mm", "3D AUC per loop",
               "3D EPE mm", "2D EPE px", "mean-pose AUC", "train min"]
    body = "\n".join([
        f"Synthetic hands at {base.model.crop_size} px: {args.train_samples} training and {args.test_samples} test "
        f"images; progressive training as in the paper, the learning rate divided by 10 per phase (unless "
        f"marked: end-to-end trains the same total number of epochs; 'without lr decay' keeps the rate, "
        f"as `recurnet-hand train` does by default), {args.epochs} epochs for loop 0 and {args.loop_epochs} "
        f"per later loop, max_loops="
        f"{args.max_loops}, preset `{args.preset}` at IR9 width {base.model.width} with the recipe the script pins "
        f"({base.loss.kind_3d} 3D error, 2D weight {base.loss.weight_2d:g}, no articulation loss, "
        f"{base.train.precision}; the default of `recurnet-hand train` differs, see the script's notes), one seed. "
        "Rows without a gate report the last loop; "
        "'3D AUC per loop' lists the AUC after loops 0, 1, ... of the same network. "
        "'mean-pose AUC' is the AUC of always predicting the training set's mean root-relative pose. GMACs are "
        f"counted multiply-adds per image. The gate is trained with the normalised reward (`loss_scale="
        f"{base.gate.loss_scale:g}`: a loop must lower a sample's loss by {100 / base.gate.loss_scale:g} % of the "
        "average loss).",
        "",
        markdown_table(headers, table_rows, "ll" + "r" * (len(headers) - 2)),
        "",
        "What happened (computed from the table):",
        "",
        *[f"- {line}" for line in findings(results)],
        "",
        f"Per-sample 3D error after each loop, progressive against end-to-end: `{figure.name}`.",
    ])
    return write_results("experiments_synthetic", "Synthetic-hand experiments (Tables 2 and 3 shapes)", body,
                         results_dir=args.results_dir, argv=argv, device=device, timed=False)


def _run(run: RunConfig, *, reuse: bool) -> dict:
    """Train ``run`` (or, with ``reuse``, read a finished run of the same configuration) and its record."""
    record_path = Path(run.out_dir) / "experiment.json"
    config = config_to_dict(run)
    config["data"].pop("root")  # where the synthetic cache lives does not change its images
    if reuse and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("config") == config and Path(record.get("model_path", "")).is_file():
            return record
    start = time.perf_counter()
    summary = train(run, progress=False)
    seconds = time.perf_counter() - start
    net = _load(summary.model_path)
    without_gate = recurnet.count_params(net) - recurnet.count_params(net.policy)
    record = {"config": config, "seconds": seconds, "model_path": str(summary.model_path),
              "rows": [asdict(r) for r in summary.rows], "auc3d_per_loop": summary.auc3d_per_loop,
              "baseline_auc3d": summary.baseline_auc3d,
              "params": [without_gate, recurnet.count_params(net)]}  # [network, network + gate]
    tmp = record_path.with_name(".experiment.json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    return record


def findings(results: dict) -> list[str]:
    """Plain statements about the table, each computed from its numbers."""
    out = []

    def loops(label):
        a = results[label]["per_loop"]
        return f"{a[0]:.3f} after loop 0 and {a[-1]:.3f} after loop {len(a) - 1}"

    amg, e2e = results.get("iterations with AMG"), results.get("with AMG, end-to-end")
    if amg and e2e:
        gain = {k: r["per_loop"][-1] - r["per_loop"][0] for k, r in (("p", amg), ("e", e2e))}
        out.append(f"Refinement: trained progressively, the AMG network scores {loops('iterations with AMG')} "
                   f"({gain['p']:+.3f}); trained end-to-end, {loops('with AMG, end-to-end')} ({gain['e']:+.3f}).")
    feats = results.get("iterations without AMG")
    if feats and amg:
        out.append(f"Feedback: at the last loop, attention feedback (AMG) gives {amg['auc3d']:.3f} and plain "
                   f"feature feedback {feats['auc3d']:.3f} ({loops('iterations without AMG')}).")
    for label, full in (("with AMG + gate (tau_gate=1)", amg), ("with AMG, end-to-end + gate (tau_gate=1)", e2e)):
        gate = results.get(label)
        if gate and full:
            out.append(f"Gate ({label.split(' + ')[0]}): {gate['mean_loops']:.2f} loops on average at "
                       f"{gate['mean_gmacs']:.4f} GMACs and AUC {gate['auc3d']:.3f}, against "
                       f"{full['mean_gmacs']:.4f} GMACs and {full['auc3d']:.3f} for always running every loop.")
    points = {k: r for k, r in results.items() if k.startswith("loop point")}
    if points:
        best = max(points, key=lambda k: points[k]["auc3d"])
        cheap = min(points, key=lambda k: points[k]["mean_gmacs"])
        out.append(f"Loop points: the best AUC is {best} ({points[best]['auc3d']:.3f} at "
                   f"{points[best]['mean_gmacs']:.4f} GMACs); the cheapest is {cheap} "
                   f"({points[cheap]['auc3d']:.3f} at {points[cheap]['mean_gmacs']:.4f} GMACs).")
    peer = next((r for k, r in results.items() if k.startswith("timm resnet18")), None)
    if peer:
        ours = {k: r for k, r in results.items() if not k.startswith("timm")}
        best = max(ours, key=lambda k: ours[k]["auc3d"])
        r = ours[best]
        out.append(f"Peer: resnet18 with the same head reaches {peer['auc3d']:.3f} with {peer['params'] / 1e6:.1f}M "
                   f"parameters and {peer['mean_gmacs']:.3f} GMACs; the best DIR-Net row ({best}) reaches "
                   f"{r['auc3d']:.3f} with {r['params'] / 1e6:.2f}M parameters and {r['mean_gmacs']:.4f} GMACs "
                   f"({peer['mean_gmacs'] / r['mean_gmacs']:.0f}x fewer multiply-adds).")
    if results:
        worst = min(r["auc3d"] - r["baseline"] for r in results.values())
        base = next(iter(results.values()))["baseline"]
        out.append(f"Every row is above the mean-pose baseline ({base:.3f})" if worst > 0 else
                   f"Some rows do not beat the mean-pose baseline ({base:.3f})")
        out[-1] += f"; the smallest margin is {worst:+.3f} AUC."
    return out


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
