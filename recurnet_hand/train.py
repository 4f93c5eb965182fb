"""The training pipeline behind ``recurnet-hand train``.

:func:`train` goes from a :class:`~recurnet_hand.config.RunConfig` to a trained,
evaluated DIR-Net:

1. build the data (synthetic hands are rendered and cached on first use) and
   the network;
2. train it with :class:`recurnet.training.Trainer` (progressive or
   end-to-end; resumable; data-parallel under ``torchrun``);
3. train the learned exit gate by policy gradient on the frozen network;
4. evaluate every fixed loop count, a sweep of variance thresholds ``tau_var``
   and of gate temperatures ``tau_gate``, against a mean-pose baseline;
5. write ``model.pt``, ``config.yaml``, ``results.md``/``results.csv``,
   ``summary.json`` and the figures into ``out_dir``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import recurnet
from recurnet.training import (
    GateConfig,
    TrainConfig,
    Trainer,
    cleanup_distributed,
    collect_rollouts,
    evaluate,
    init_distributed,
    loss_metrics,
    main_process_first,
    save_checkpoint,
    train_gate,
)
from recurnet.training.config import native_bfloat16
from recurnet.training.distributed import current_context

from . import plots
from .config import RunConfig, config_to_dict, save_config
from .data.factory import DatasetSpec, build_dataset
from .evaluation import (
    EvalRow,
    collect,
    eval_configs,
    evaluate_policies,
    loop_summaries,
    loop_summaries_to_markdown,
    mean_pose_baseline,
    per_loop_metrics,
    predicted_sigma_mm,
    rows_to_markdown,
    variance_thresholds,
    write_rows,
)
from .losses import HandLoss, add_hand_targets
from .model import build_dirnet

__all__ = ["RunSummary", "train", "build_data", "default_cache_dir", "training_precision", "MODEL_FORMAT"]

#: ``format`` field of ``model.pt`` files.
MODEL_FORMAT = "recurnet-hand/dirnet-1"


@dataclass(frozen=True)
class RunSummary:
    """What a training run produced.

    Attributes:
        out_dir: the run folder.
        model_path: ``model.pt`` (network, gate and configuration).
        rows: evaluation rows (every policy setting).
        auc3d_per_loop: 3D AUC after each loop on the test set.
        baseline_auc3d: 3D AUC of always predicting the training set's mean pose.
        figures: figure name -> PNG path.
        loops: per-iteration summaries (errors, palm/back accuracy, variance-error rank correlation).
        baseline_epe3d: mean 3D error (mm) of the mean pose.
    """

    out_dir: Path
    model_path: Path
    rows: list[EvalRow]
    auc3d_per_loop: list[float]
    baseline_auc3d: float
    figures: dict[str, Path]
    loops: list = ()
    baseline_epe3d: float = float("nan")


def default_cache_dir() -> Path:
    """Where synthetic hands are cached: ``$RECURNET_CACHE`` or ``~/.cache/recurnet_hand``."""
    root = os.environ.get("RECURNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "recurnet_hand"
    )
    return Path(root) / "synthetic"


def _spec(run: RunConfig, split: str, progress: bool) -> DatasetSpec:
    d = run.data
    synthetic = d.dataset == "synthetic"
    root = d.root if d.root is not None or not synthetic else str(default_cache_dir())
    return DatasetSpec(
        name=d.dataset,
        root=root,
        crop_size=run.model.crop_size,
        num_samples=d.train_samples if split == "train" else d.test_samples,
        seed=run.seed,
        augment=d.augment,
        workers=d.workers,
        progress=progress,
        viewpoint=d.viewpoint,
        rotation_deg=d.rotation_deg,
    )


def build_data(run: RunConfig, *, progress: bool = True):
    """``(train, test)`` datasets of a run, mirrored to the model's hand side."""
    mix = None
    if run.data.mix is not None:
        mix = DatasetSpec(name=run.data.mix, root=run.data.mix_root, crop_size=run.model.crop_size, seed=run.seed,
                          augment=run.data.augment)
    train_set = build_dataset(_spec(run, "train", progress), "train", side=run.model.side, mix=mix)
    test_set = build_dataset(_spec(run, "test", progress), "test", side=run.model.side)
    return train_set, test_set


def _subset(data, count: int, seed: int):
    if len(data) <= count:
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return Subset(data, index.tolist())


def _eval_callback(loss, test_subset, batch_size):
    metric = loss_metrics(loss, prefix="test/")

    def callback(trainer, info):
        values = evaluate(trainer.model, test_subset, metric, batch_size=batch_size, loops=info.loops)
        return {k: v for k, v in values.items() if k == "test/loss" or "/task/" in k and k.startswith("test/3d")}

    return callback


def _mean_rel3d(data, limit: int = 2000) -> torch.Tensor:
    rel = []
    for batch in DataLoader(_subset(data, limit, 0), batch_size=256):
        has = batch["has_3d"].bool()
        rel.append(add_hand_targets(batch)["joints3d_rel"][has])
    return torch.cat(rel)


def _gate(net, run: RunConfig, train_set, loss, shape, progress: bool):
    gate = recurnet.LearnedGate(run.model.uncertainty_hidden, hidden=run.gate.hidden)
    rollouts = collect_rollouts(net, _subset(train_set, 2000, run.seed + 1), loss, batch_size=64)
    config = GateConfig(epochs=run.gate.epochs, loss_scale=run.gate.loss_scale, seed=run.seed,
                        normalize_reward=run.gate.normalize_reward, sample_baseline=True)
    result = train_gate(gate, rollouts, config, cost=net.cost_model(shape))
    return gate, result


def _policies(col, run: RunConfig, gate) -> dict[str, dict[str, object]]:
    policies: dict[str, dict[str, object]] = {}
    thresholds = variance_thresholds(col, run.gate.variance_thresholds)
    if thresholds:
        policies["variance"] = {f"tau_var={t:g}": recurnet.VarianceThreshold(t, outputs=["joints3d"])
                                for t in thresholds}
    if gate is not None:
        settings = {}
        for t in run.gate.temperatures:
            g = copy.deepcopy(gate).eval()
            g.temperature = t
            settings[f"tau_gate={t:g}"] = g
        policies["gate"] = settings
    return policies


def _figures(out: Path, col, rows, cfg2d, cfg3d, baseline, loss, unit_3d_mm: float) -> dict[str, Path]:
    m2d, m3d = per_loop_metrics(col, cfg2d, cfg3d)
    last = col.output.num_iterations - 1
    figures = {
        "pck3d": plots.plot_pck(
            {**{f"loop {l} (AUC {m.auc:.3f})": (m.thresholds, m.pck) for l, m in enumerate(m3d.per_loop)},
             f"mean pose (AUC {baseline.auc:.3f})": (baseline.thresholds, baseline.pck)},
            out / "pck3d.png", unit="mm", title="3D PCK (root-relative)"),
        "pck2d": plots.plot_pck(
            {f"loop {l} (AUC {m.auc:.3f})": (m.thresholds, m.pck) for l, m in enumerate(m2d.per_loop)},
            out / "pck2d.png", unit="px", title="2D PCK"),
    }
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault({"fixed": "fixed loops", "variance": "tau_var", "gate": "tau_gate"}.get(r.policy, r.policy),
                          []).append((r.mean_gmacs, r.auc3d, r.setting.split("=")[-1]))
    figures["tradeoff"] = plots.plot_tradeoff(series, out / "tradeoff.png")
    n = min(6, col.images.shape[0])
    final = col.output.iterations[last]
    figures["uncertainty"] = plots.plot_uncertainty(
        col.images[:n], final["joints2d"][:n], col.output.log_variance[last]["joints2d"][:n], out / "uncertainty.png")
    shown = col.images.shape[0]
    figures["overlays"] = plots.plot_overlays(col.images, final["joints2d"][:shown], out / "overlays.png",
                                              gt2d=col.gt2d[:shown])
    per_sample = torch.stack([
        (it["joints3d"] - col.gt3d).norm(dim=-1).mean(dim=-1) for it in col.output.iterations])
    figures["loss_per_loop"] = plots.plot_loss_per_loop({"this run": per_sample}, out / "error_per_loop.png",
                                                         ylabel="mean 3D joint error (mm)")
    has = col.has_3d
    reliability = {}
    for l in sorted({0, last}):
        sigma = predicted_sigma_mm(col.output.log_variance[l]["joints3d"][has], unit_3d_mm)
        error = (col.output.iterations[l]["joints3d"][has] - col.gt3d[has]).norm(dim=-1)
        reliability[f"loop {l}"] = (sigma, error)
    figures["reliability"] = plots.plot_reliability(reliability, out / "reliability.png")
    if col.maps_by_loop():
        figures["attention"] = plots.plot_attention(col.images, col.maps_by_loop(), out / "attention.png")
    return figures


def training_precision(run: RunConfig) -> str:
    """``run.train.precision`` with ``auto`` resolved for the device the run trains on."""
    if run.train.precision != "auto":
        return run.train.precision
    device = run.device if run.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return "bfloat16" if native_bfloat16(device) else "float32"


def _results_markdown(loops, rows, baseline) -> str:
    return ("## Per loop (every sample runs the same number of loops)\n\n" + loop_summaries_to_markdown(loops)
            + f"\n\nMean-pose baseline: 3D EPE {baseline.epe_mean:.2f} mm, 3D AUC {baseline.auc:.3f}.\n\n"
            "## Exit policies\n\n" + rows_to_markdown(rows) + "\n")


def train(run: RunConfig, *, resume: str | os.PathLike | None = None, progress: bool | None = None,
          max_epochs: int | None = None) -> RunSummary | None:
    """Train, gate, evaluate and write everything for ``run``.

    Args:
        run: the run configuration.
        resume: a trainer checkpoint (``<out_dir>/checkpoints/last.pt``) to continue from.
        progress: show progress bars (None: when attached to a terminal).
        max_epochs: stop training after this many epochs (resume later); skips gate and evaluation.

    Returns:
        The :class:`RunSummary` on the main process; None on other DDP ranks or when stopped early.
    """
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        init_distributed()
    try:
        return _train(run, resume, progress, max_epochs)
    finally:
        if distributed:
            cleanup_distributed()


def _train(run, resume, progress, max_epochs):
    context = current_context()
    out = Path(run.out_dir)
    show = bool(progress) if progress is not None else None
    torch.manual_seed(run.seed)
    net = build_dirnet(run.model)
    with main_process_first():  # rank 0 renders the synthetic cache; the others then read it
        train_set, test_set = build_data(run, progress=show is not False and context.is_main)
    if context.is_main:  # only once the model and data are known to be valid
        save_config(run, out / "config.yaml")
    loss = HandLoss(run.loss, mano_regularisers=run.model.head == "mano", crop_size=run.model.crop_size)
    config = TrainConfig(
        protocol=run.train.build(run.model.max_loops),
        batch_size=run.train.batch_size,
        lr=run.train.lr,
        weight_decay=run.train.weight_decay,
        schedule=run.train.schedule,
        grad_clip=run.train.grad_clip,
        ema=run.train.ema,
        channels_last=run.train.channels_last,
        compile=run.train.compile,
        precision=training_precision(run),
        num_workers=run.data.loader_workers,
        seed=run.seed,
        out_dir=str(out),
        device=run.device,
        progress=show,
    )
    test_subset = _subset(test_set, 256, run.seed)
    trainer = Trainer(net, loss, train_set, config, callbacks=[_eval_callback(loss, test_subset, 64)],
                      run_config=config_to_dict(replace(run, out_dir="", device="")))
    result = trainer.fit(resume=resume, max_epochs=max_epochs)
    if not context.is_main or not result.finished:
        return None
    net = trainer.model
    shape = (3, run.model.crop_size, run.model.crop_size)
    gate = None
    if run.gate.enabled and run.model.max_loops > 0:
        gate, _ = _gate(net, run, train_set, loss, shape, show is not False)
        net.policy = gate
    model_path = save_checkpoint(out / "model.pt", {
        "format": MODEL_FORMAT, "config": config_to_dict(run), "model": net.state_dict()})
    cfg2d, cfg3d = eval_configs(run.data.dataset, run.model.crop_size)
    loader = DataLoader(test_set, batch_size=64, num_workers=0)
    col = collect(net, loader, device=trainer.device, progress=show is not False, total=len(loader))
    rows = evaluate_policies(col, _policies(col, run, gate), cfg2d, cfg3d, seed=run.seed)
    baseline = mean_pose_baseline(_mean_rel3d(train_set), col, cfg3d)
    loops = loop_summaries(col, cfg2d, cfg3d, unit_3d_mm=run.loss.unit_3d_mm, crop_size=run.model.crop_size,
                           is_right=run.model.side == "right")
    tmp = out / ".results.md.tmp"
    tmp.write_text(_results_markdown(loops, rows, baseline))
    os.replace(tmp, out / "results.md")
    write_rows(rows, out / "results.csv")
    figures = _figures(out, col, rows, cfg2d, cfg3d, baseline, loss, run.loss.unit_3d_mm)
    per_loop = [r.auc3d for r in rows if r.policy == "fixed"]
    summary = {"precision": trainer.config.precision, "auc3d_per_loop": per_loop, "baseline_auc3d": baseline.auc,
               "baseline_epe3d": baseline.epe_mean,
               "auc3d_range_mm": list(cfg3d.threshold_range), "loops": [asdict(r) for r in loops],
               "policies": [asdict(r) for r in rows], "figures": {k: str(v) for k, v in figures.items()}}
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    return RunSummary(out, model_path, rows, per_loop, baseline.auc, figures, loops, baseline.epe_mean)
