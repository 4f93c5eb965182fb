"""Evaluate DIR-Net: per-loop accuracy, and accuracy vs compute for any number of exit policies.

The network runs once over the data with every sample through every
iteration (``exit="all"``); each policy's exits are then simulated on the stored
outputs (:func:`recurnet.simulate_exits`), which gives exactly the exits and
predictions of a compacted run. A sweep of thresholds or temperatures thus
costs one pass.

3D errors are root-relative (mm); 2D errors are in crop pixels.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields

import torch
from rich.progress import Progress

import recurnet
from recurnet.output import LoopOutput

from .losses import add_hand_targets
from .metrics import EvalConfig, PoseEvaluator, evaluate_loops

__all__ = [
    "AUC_RANGES_3D",
    "eval_configs",
    "Collected",
    "collect",
    "feedback_spread",
    "EvalRow",
    "evaluate_policies",
    "variance_thresholds",
    "rows_to_markdown",
    "write_rows",
    "per_loop_metrics",
    "mean_pose_baseline",
    "palm_facing",
    "LoopSummary",
    "loop_summaries",
    "loop_summaries_to_markdown",
    "mesh_summaries",
    "mesh_summaries_to_markdown",
    "predicted_sigma_mm",
]

#: 3D PCK threshold ranges (mm) of the papers' AUC per dataset.
AUC_RANGES_3D: dict[str, tuple[float, float]] = {"stb": (20.0, 50.0), "fpha": (0.0, 50.0), "synthetic": (0.0, 50.0),
                                                 "freihand": (0.0, 50.0)}


def eval_configs(dataset: str, crop_size: int, range_3d: tuple[float, float] | None = None
                 ) -> tuple[EvalConfig, EvalConfig]:
    """``(2D, 3D)`` evaluation settings: 3D root-relative over the dataset's AUC range (mm),
    2D over 0-30 px at 224 px crops (scaled with the crop)."""
    lo_hi = range_3d or AUC_RANGES_3D.get(dataset, (0.0, 50.0))
    cfg3d = EvalConfig(threshold_range=tuple(lo_hi), steps=20, root_relative=True, unit="mm")
    cfg2d = EvalConfig(threshold_range=(0.0, 30.0 * crop_size / 224.0), steps=20, unit="px")
    return cfg2d, cfg3d


@dataclass
class Collected:
    """Everything one ``exit="all"`` pass produced, on the CPU.

    Attributes:
        output: the concatenated :class:`recurnet.LoopOutput` over the whole set.
        gt2d: ``(N, 21, 2)`` px. gt3d: ``(N, 21, 3)`` mm root-relative.
        has_2d: ``(N,)`` bool. has_3d: ``(N,)`` bool.
        images: the first few images ``(n, 3, S, S)`` (for figures).
        cost: the network's cost model for this input size.
        gt_vertices: ``(N, 778, 3)`` mm, relative to the true wrist, when collected with
            ``vertices=True`` (the iterations then hold predicted ``vertices`` too).
        feedback_spread: per iteration, ``(N,)``: how much the feedback signal that fed the
            iteration varies over the feature map (:func:`feedback_spread`); None where no
            signal fed it (iteration 0, or a network without feedback).
        feedback_maps: per iteration, ``(n, H, W)``: the channel mean of that signal for the
            kept images (what :func:`recurnet_hand.plots.plot_attention` draws); None likewise.
    """

    output: LoopOutput
    gt2d: torch.Tensor
    gt3d: torch.Tensor
    has_2d: torch.Tensor
    has_3d: torch.Tensor
    images: torch.Tensor
    cost: recurnet.CostModel
    gt_vertices: torch.Tensor | None = None
    feedback_spread: list[torch.Tensor | None] = field(default_factory=list)
    feedback_maps: list[torch.Tensor | None] = field(default_factory=list)

    def maps_by_loop(self) -> dict[int, torch.Tensor]:
        """``{iteration: (n, H, W)}`` for the iterations a feedback signal fed (empty without feedback)."""
        return {l: m for l, m in enumerate(self.feedback_maps) if m is not None}

    def predictions(self, name: str) -> torch.Tensor:
        """``(L + 1, N, ...)`` predictions of output ``name`` at every iteration."""
        return torch.stack([it[name] for it in self.output.iterations])


_KEEP = ("joints2d", "joints3d")


def feedback_spread(signal: torch.Tensor) -> torch.Tensor:
    """``(B,)``: each sample's spatial standard deviation of a feedback signal, averaged over channels.

    For the attention decoder (maps in ``[0, 1]`` multiplied onto the extractor features), 0
    means a uniform map: after the iteration's own normalisation it re-weights nothing, and the
    iteration sees what iteration 0 saw.

    Args:
        signal: ``(B, C, H, W)`` (any trailing spatial dims).
    """
    flat = signal.float().flatten(2)
    if flat.shape[-1] < 2:
        return flat.new_zeros(flat.shape[0])
    return flat.std(dim=2).mean(dim=1)


def _cat_or_none(parts: list) -> torch.Tensor | None:
    return None if not parts or parts[0] is None else torch.cat(parts)


@torch.no_grad()
def collect(net: recurnet.LoopedNet, batches: Iterable[Mapping[str, torch.Tensor]], *,
            device: str | torch.device = "cpu", keep_images: int = 12, progress: bool = True, total: int | None = None,
            vertices: bool = False) -> Collected:
    """Run ``net`` in eval mode with every sample through every iteration and gather outputs and labels.

    Args:
        net: DIR-Net (outputs ``joints2d``, ``joints3d`` and their log-variances).
        batches: sample-dict batches (a DataLoader).
        device: where to run.
        keep_images: how many images to keep for figures.
        progress: show a progress bar.
        total: number of batches, for the progress bar.
        vertices: also predict and keep the MANO mesh (:func:`recurnet_hand.model.mesh_outputs`)
            and the samples' true ``vertices`` (which the data must then provide).
    """
    from .model import mesh_outputs

    was_training = net.training
    net.eval()
    parts, gt2d, gt3d, has2d, has3d, images, gt_verts = [], [], [], [], [], [], []
    spreads: list[list] = []  # per batch, per iteration
    maps: list[list] = []
    keep = _KEEP + (("vertices",) if vertices else ())
    cost = None
    try:
        with Progress(transient=True, disable=not progress) as bar, mesh_outputs(net, vertices):
            task = bar.add_task("evaluating", total=total)
            for batch in batches:
                if vertices and "vertices" not in batch:
                    raise ValueError("collect(vertices=True) needs samples with true 'vertices' (e.g. FreiHAND "
                                     "with vertices=True)")
                x = batch["image"].to(device)
                out = net(x, exit="all", count_cost=False, return_feedback=True)
                signals = list(out.feedback) or [None] * out.num_iterations
                spreads.append([None if s is None else feedback_spread(s).cpu() for s in signals])
                cost = cost or net.cost_model(tuple(x.shape[1:]))
                iterations = [{k: v.float().cpu() for k, v in it.items() if k in keep} for it in out.iterations]
                if vertices:
                    gt_verts.append((batch["vertices"] - batch["joints3d"][:, :1]).float())
                log_var = [{k: v.float().cpu() for k, v in lv.items()} for lv in out.log_variance]
                features = [None if f is None else f.float().cpu() for f in out.features]
                parts.append(LoopOutput(iterations, log_var, features, out.exit_step.cpu(), out.ran.cpu()))
                targets = add_hand_targets(batch)
                gt2d.append(batch["joints2d"].float())
                gt3d.append(targets["joints3d_rel"].float())
                has2d.append(batch["has_2d"].bool())
                has3d.append(batch["has_3d"].bool())
                if sum(len(i) for i in images) < keep_images:
                    take = keep_images - sum(len(i) for i in images)
                    images.append(batch["image"][:take])
                    maps.append([None if s is None else s[:take].float().mean(dim=1).cpu() for s in signals])
                bar.advance(task)
    finally:
        net.train(was_training)
    if not parts:
        raise ValueError("evaluation data is empty")
    spread = [_cat_or_none([b[l] for b in spreads]) for l in range(len(spreads[0]))]
    kept = [_cat_or_none([b[l] for b in maps]) for l in range(len(maps[0]))] if maps else [None] * len(spread)
    return Collected(LoopOutput.concat(parts), torch.cat(gt2d), torch.cat(gt3d), torch.cat(has2d), torch.cat(has3d),
                     torch.cat(images), cost, torch.cat(gt_verts) if vertices else None, spread, kept)


@dataclass(frozen=True)
class EvalRow:
    """One line of the results table: a policy setting and what it achieved.

    Attributes:
        policy: policy family (``fixed``, ``variance``, ``gate``, ...).
        setting: its parameter, e.g. ``"loops=3"``, ``"tau_var=0.02"``, ``"tau_gate=1.0"``.
        mean_loops: mean exit step.
        mean_gmacs: mean multiply-adds per image, in G (the paper's "GFLOPs").
        epe2d: mean 2D end-point error, px. epe3d: mean root-relative 3D error, mm.
        auc2d: 2D PCK AUC. auc3d: 3D PCK AUC over the dataset's range.
        pa_mpjpe: mean 3D joint error after per-sample Procrustes alignment (scale, rotation,
            translation; :func:`recurnet_hand.procrustes.pa_mpjpe`), mm.
    """

    policy: str
    setting: str
    mean_loops: float
    mean_gmacs: float
    epe2d: float
    epe3d: float
    auc2d: float
    auc3d: float
    pa_mpjpe: float = float("nan")


def _at_exit(stacked: torch.Tensor, exit_step: torch.Tensor) -> torch.Tensor:
    """``(N, ...)``: each sample's entry of ``(L + 1, N, ...)`` at its exit step."""
    return stacked[exit_step.long(), torch.arange(stacked.shape[1])]


def _pa_mpjpe(pred3d: torch.Tensor, gt3d: torch.Tensor) -> float:
    from .procrustes import pa_mpjpe

    return pa_mpjpe(pred3d.double().numpy(), gt3d.double().numpy()) if len(gt3d) else float("nan")


def _row(policy, setting, col: Collected, exit_step, cfg2d, cfg3d) -> EvalRow:
    preds2d, preds3d = col.predictions("joints2d"), col.predictions("joints3d")
    m2 = evaluate_loops(preds2d, col.gt2d, exit_step, col.has_2d, cfg2d).at_exit
    m3 = evaluate_loops(preds3d, col.gt3d, exit_step, col.has_3d, cfg3d).at_exit if col.has_3d.any() else None
    macs = col.cost.macs_per_sample(exit_step)
    has = col.has_3d
    pa = _pa_mpjpe(_at_exit(preds3d, exit_step)[has], col.gt3d[has])
    return EvalRow(policy, setting, float(exit_step.double().mean()), float(macs.mean()) / 1e9, m2.epe_mean,
                   m3.epe_mean if m3 else float("nan"), m2.auc, m3.auc if m3 else float("nan"), pa)


def variance_thresholds(col: Collected, count: int = 6, outputs=("joints3d",)) -> list[float]:
    """Thresholds ``tau_var`` spread over the observed mean predicted variances (quantiles of loop 0..L-1)."""
    policy = recurnet.VarianceThreshold(0.0, outputs=outputs)
    values = torch.cat([policy.mean_variance(lv) for lv in col.output.log_variance[:-1]]) if \
        col.output.num_iterations > 1 else torch.zeros(0)
    if values.numel() == 0:
        return []
    qs = torch.linspace(0.1, 0.9, count, dtype=torch.float64)
    return sorted({float(f"{v:.3g}") for v in torch.quantile(values.double(), qs).tolist()})


def evaluate_policies(col: Collected, policies: Mapping[str, Mapping[str, recurnet.ExitPolicy]],
                      cfg2d: EvalConfig, cfg3d: EvalConfig, *, seed: int = 0) -> list[EvalRow]:
    """Rows for every fixed loop count and every given policy setting.

    Args:
        col: the collected pass.
        policies: family -> setting label -> policy, e.g. ``{"gate": {"tau_gate=1": gate}}``.
        cfg2d: 2D evaluation settings. cfg3d: 3D evaluation settings.
        seed: seed of the generator handed to stochastic policies (one per setting).
    """
    n = col.gt2d.shape[0]
    rows = [_row("fixed", f"loops={l}", col, torch.full((n,), l, dtype=torch.long), cfg2d, cfg3d)
            for l in range(col.output.num_iterations)]
    for family, settings in policies.items():
        for label, policy in settings.items():
            gen = torch.Generator().manual_seed(seed)
            steps = recurnet.simulate_exits(col.output, policy, cost=col.cost, generator=gen)
            rows.append(_row(family, label, col, steps, cfg2d, cfg3d))
    return rows


_HEADERS = {
    "policy": "policy", "setting": "setting", "mean_loops": "mean loops", "mean_gmacs": "mean GMACs",
    "epe2d": "2D EPE (px)", "epe3d": "3D EPE (mm)", "auc2d": "2D AUC", "auc3d": "3D AUC",
    "pa_mpjpe": "PA-MPJPE (mm)",
}


def rows_to_markdown(rows: Iterable[EvalRow]) -> str:
    """A markdown table of :class:`EvalRow` (GMACs = giga multiply-adds, the paper's "GFLOPs")."""
    names = [f.name for f in fields(EvalRow)]
    lines = ["| " + " | ".join(_HEADERS[n] for n in names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in (getattr(r, n) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_rows(rows: Iterable[EvalRow], path: str | os.PathLike) -> None:
    """Write rows as CSV (``.csv``) or markdown (anything else), atomically."""
    rows = list(rows)
    path = os.fspath(path)
    if path.endswith(".csv"):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(EvalRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
        text = buf.getvalue()
    else:
        text = rows_to_markdown(rows) + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def per_loop_metrics(col: Collected, cfg2d: EvalConfig, cfg3d: EvalConfig):
    """``(2D, 3D)`` :class:`recurnet_hand.metrics.LoopMetrics` of every iteration."""
    return (evaluate_loops(col.predictions("joints2d"), col.gt2d, None, col.has_2d, cfg2d),
            evaluate_loops(col.predictions("joints3d"), col.gt3d, None, col.has_3d, cfg3d))


def mean_pose_baseline(train_rel3d: torch.Tensor, col: Collected, cfg3d: EvalConfig):
    """3D metrics of predicting the training set's mean root-relative pose for every test sample."""
    mean = train_rel3d.mean(dim=0, keepdim=True).expand_as(col.gt3d)
    ev = PoseEvaluator(cfg3d)
    ev.update(mean, col.gt3d, col.has_3d)
    return ev.compute()



def palm_facing(joints3d: torch.Tensor, is_right: bool = True) -> torch.Tensor:
    """``(N,)`` bool: whether the palm of each hand ``(N, 21, 3)`` (camera frame) faces the camera.

    The palm normal is ``(index MCP - wrist) x (little MCP - wrist)`` for a right hand
    (negated for a left one); the camera looks along +Z, so a palm facing it has a
    normal with negative Z.
    """
    normal = torch.cross(joints3d[:, 5] - joints3d[:, 0], joints3d[:, 17] - joints3d[:, 0], dim=-1)
    return (normal[:, 2] < 0) if is_right else (normal[:, 2] > 0)


def predicted_sigma_mm(log_var: torch.Tensor, unit_mm: float) -> torch.Tensor:
    """``(N, 21)`` predicted per-joint 3D error scale (mm): ``sqrt(3) * unit * exp(a / 2)``.

    The 3D log-variance ``a`` is of one normalised coordinate (broadcast over x, y, z),
    so the expected Euclidean joint error has RMS ``sqrt(3) sigma``.
    """
    a = log_var.reshape(log_var.shape[0], -1).double()
    return math.sqrt(3.0) * unit_mm * torch.exp(a / 2)


@dataclass(frozen=True)
class LoopSummary:
    """What one fixed loop count achieves on the test set.

    Attributes:
        loop: the iteration (``0..L``).
        epe3d: mean root-relative 3D joint error (mm).
        auc3d: 3D PCK AUC over the dataset's range.
        epe2d: mean 2D joint error (px). epe2d_crop: the same as a fraction of the crop side.
        palm_accuracy: fraction of samples whose palm-or-back-towards-the-camera matches the label.
        variance_rank_corr: Spearman rank correlation between a sample's mean predicted 3D
            variance and its actual mean 3D error (1: the variance orders samples by error).
        sigma_mm: mean predicted per-joint 3D error scale (mm, see :func:`predicted_sigma_mm`).
        pa_mpjpe: mean 3D joint error after per-sample Procrustes alignment (mm).
        feedback_spread: mean :func:`feedback_spread` of the signal that fed this iteration
            (NaN for iteration 0 and without feedback). Attention maps near 0 re-weight nothing.
    """

    loop: int
    epe3d: float
    auc3d: float
    epe2d: float
    epe2d_crop: float
    palm_accuracy: float
    variance_rank_corr: float
    sigma_mm: float
    pa_mpjpe: float = float("nan")
    feedback_spread: float = float("nan")


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    if x.numel() < 3:
        return float("nan")
    return float(spearmanr(x.numpy(), y.numpy()).statistic)


def _mean_spread(col: Collected, loop: int) -> float:
    spread = col.feedback_spread[loop] if loop < len(col.feedback_spread) else None
    return float("nan") if spread is None else float(spread.double().mean())


def loop_summaries(col: Collected, cfg2d: EvalConfig, cfg3d: EvalConfig, *, unit_3d_mm: float,
                   crop_size: int, is_right: bool = True) -> list[LoopSummary]:
    """One :class:`LoopSummary` per iteration of the collected pass (3D-labelled samples)."""
    m2d, m3d = per_loop_metrics(col, cfg2d, cfg3d)
    has = col.has_3d
    gt = col.gt3d[has]
    out = []
    for l, it in enumerate(col.output.iterations):
        pred = it["joints3d"][has]
        err = (pred - gt).norm(dim=-1).mean(dim=-1).double()
        sigma = predicted_sigma_mm(col.output.log_variance[l]["joints3d"][has], unit_3d_mm)
        palm = (palm_facing(pred, is_right) == palm_facing(gt, is_right)).double().mean()
        out.append(LoopSummary(l, m3d.per_loop[l].epe_mean, m3d.per_loop[l].auc, m2d.per_loop[l].epe_mean,
                               m2d.per_loop[l].epe_mean / crop_size, float(palm),
                               _spearman(sigma.square().mean(dim=1), err), float(sigma.mean()),
                               _pa_mpjpe(pred, gt), _mean_spread(col, l)))
    return out


def loop_summaries_to_markdown(rows: Iterable[LoopSummary]) -> str:
    """A markdown table of :class:`LoopSummary` rows."""
    lines = ["| loop | 3D EPE (mm) | 3D AUC | PA-MPJPE (mm) | 2D EPE (px) | 2D EPE (% crop) | palm/back right | "
             "rank corr(var, err) | mean sigma (mm) | feedback spread |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = "-" if math.isnan(r.feedback_spread) else f"{r.feedback_spread:.4f}"
        lines.append(f"| {r.loop} | {r.epe3d:.2f} | {r.auc3d:.3f} | {r.pa_mpjpe:.2f} | {r.epe2d:.2f} | "
                     f"{100 * r.epe2d_crop:.1f} | {100 * r.palm_accuracy:.1f}% | {r.variance_rank_corr:.3f} | "
                     f"{r.sigma_mm:.1f} | {spread} |")
    return "\n".join(lines)


def mesh_summaries(col: Collected) -> list:
    """FreiHAND's measures per loop (:class:`recurnet_hand.procrustes.FreiHANDMetrics`), from a
    pass collected with ``vertices=True``."""
    from .procrustes import freihand_metrics

    if col.gt_vertices is None:
        raise ValueError("mesh_summaries needs a pass collected with vertices=True")
    has = col.has_3d
    gt_j, gt_v = col.gt3d[has].double().numpy(), col.gt_vertices[has].double().numpy()
    return [freihand_metrics(it["joints3d"][has].double().numpy(), gt_j, it["vertices"][has].double().numpy(), gt_v)
            for it in col.output.iterations]


def mesh_summaries_to_markdown(rows) -> str:
    """A markdown table of :func:`mesh_summaries` (one row per loop)."""
    lines = ["| loop | PA-MPJPE (mm) | PA-MPVPE (mm) | F@5 mm | F@15 mm | AUC joints | AUC vertices |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for l, m in enumerate(rows):
        lines.append(f"| {l} | {m.pa_mpjpe:.2f} | {m.pa_mpvpe:.2f} | {m.f_5:.3f} | {m.f_15:.3f} | "
                     f"{m.auc_joints:.3f} | {m.auc_vertices:.3f} |")
    return "\n".join(lines)
