"""Figures like the paper's: PCK curves, accuracy vs compute, loss per loop, uncertainty and overlays.

Every function draws one matplotlib figure, writes it as a PNG atomically
(temporary file, then rename) and returns the path. Inputs are numpy arrays or
tensors; joints are in the project's 21-joint order
(:mod:`recurnet_hand.joints`), 2D in crop pixels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .joints import FINGERS, PARENTS  # noqa: E402

__all__ = [
    "plot_pck",
    "plot_tradeoff",
    "plot_loss_per_loop",
    "plot_uncertainty",
    "plot_overlays",
    "plot_reliability",
    "plot_attention",
    "draw_skeleton",
]

_FINGER_COLOURS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd")


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent, prefix=f".{path.stem}-")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _bone_colour(joint: int) -> str:
    return _FINGER_COLOURS[(joint - 1) // 4] if joint > 0 else "#444444"


def draw_skeleton(ax, joints2d, *, colour: str | None = None, linestyle: str = "-", label: str | None = None) -> None:
    """Draw a 21-joint hand ``(21, 2)`` in pixel coordinates on a matplotlib axis."""
    j = _np(joints2d)
    for child, parent in enumerate(PARENTS):
        if parent < 0:
            continue
        ax.plot(
            [j[parent, 0], j[child, 0]],
            [j[parent, 1], j[child, 1]],
            color=colour or _bone_colour(child),
            linestyle=linestyle,
            linewidth=1.5,
            label=label if child == 1 else None,
        )
    ax.scatter(j[:, 0], j[:, 1], s=6, color=colour or "white", edgecolors="black", linewidths=0.3, zorder=3)


def plot_pck(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    unit: str = "mm",
    title: str = "PCK",
) -> Path:
    """PCK curves (paper Figure 5).

    Args:
        curves: label -> ``(thresholds, pck)``; labels may carry the AUC, e.g. ``"ours (AUC 0.98)"``.
        path: output PNG.
        unit: threshold unit for the x label.
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (thr, pck) in curves.items():
        ax.plot(_np(thr), _np(pck), marker=".", label=label)
    ax.set(xlabel=f"error threshold ({unit})", ylabel="PCK", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_tradeoff(
    series: Mapping[str, Sequence[tuple[float, float, str]]],
    path: str | os.PathLike,
    *,
    ylabel: str = "3D AUC",
    title: str = "Accuracy vs compute",
) -> Path:
    """Accuracy against mean multiply-adds for sweeps of thresholds or temperatures (paper Figure 7).

    Args:
        series: label (e.g. ``"tau_gate"``) -> points ``(mean GMACs, accuracy, annotation)``.
        path: output PNG.
        ylabel: accuracy axis label.
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in series.items():
        if not points:
            continue
        pts = sorted(points, key=lambda p: p[0])
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(x, y, marker="o", label=label)
        for px, py, note in pts:
            if note:
                ax.annotate(note, (px, py), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set(xlabel='mean GMACs per image (the paper\'s "GFLOPs")', ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_per_loop(
    losses: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    ylabel: str = "validation loss per sample",
    title: str = "Loss after each loop",
) -> Path:
    """Distribution of per-sample losses after each loop, one box group per protocol (paper Figure 8).

    Args:
        losses: protocol name -> ``(L + 1, N)`` per-sample losses at every iteration.
        path: output PNG.
        ylabel: y label.
        title: figure title.
    """
    names = list(losses)
    loops = max(_np(v).shape[0] for v in losses.values())
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(1.2 * loops + 2, 4))
    for i, name in enumerate(names):
        data = _np(losses[name])
        pos = np.arange(data.shape[0]) + (i - (len(names) - 1) / 2) * width
        box = ax.boxplot(list(data), positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(f"C{i}")
            patch.set_alpha(0.6)
        ax.plot([], [], color=f"C{i}", linewidth=8, alpha=0.6, label=name)
    ax.set_xticks(np.arange(loops), [str(l) for l in range(loops)])
    ax.set(xlabel="loop", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _heatmap(size: int, joints2d: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    heat = np.zeros((size, size))
    for (x, y), s in zip(joints2d, sigma):
        s = max(float(s), 0.5)
        heat = np.maximum(heat, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s)))
    return heat


def plot_uncertainty(
    images,
    joints2d,
    log_variance,
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
) -> Path:
    """Heatmaps of the predicted 2D uncertainty over the images (paper Figure 4).

    Each joint is drawn as a Gaussian blob whose standard deviation is the predicted
    ``sigma = exp(alpha / 2)`` (pixels for 2D joints).

    Args:
        images: ``(N, 3, S, S)`` in ``[0, 1]``.
        joints2d: ``(N, 21, 2)`` predicted joints, px.
        log_variance: ``(N, 21)`` or ``(N, 21, 1)`` predicted ``log sigma^2`` of the 2D joints.
        path: output PNG.
        titles: one title per image (e.g. the iteration or exit step).
    """
    imgs, j2d = _np(images), _np(joints2d)
    sigma = np.exp(0.5 * _np(log_variance).reshape(j2d.shape[0], -1))
    n = imgs.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        size = imgs.shape[-1]
        ax.imshow(np.clip(imgs[i].transpose(1, 2, 0), 0, 1))
        ax.imshow(_heatmap(size, j2d[i], sigma[i]), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(titles[i] if titles else f"mean sigma {sigma[i].mean():.1f} px", fontsize=8)
    return _save(fig, path)


def plot_overlays(
    images,
    pred2d,
    path: str | os.PathLike,
    *,
    gt2d=None,
    titles: Sequence[str] | None = None,
    columns: int = 6,
) -> Path:
    """Predicted (solid) and optional ground-truth (dashed white) skeletons over the images (paper Figure 6).

    Args:
        images: ``(N, 3, S, S)`` in ``[0, 1]``.
        pred2d: ``(N, 21, 2)`` px.
        path: output PNG.
        gt2d: ``(N, 21, 2)`` px or None.
        titles: one title per image.
        columns: images per row.
    """
    imgs, pred = _np(images), _np(pred2d)
    gt = None if gt2d is None else _np(gt2d)
    n = imgs.shape[0]
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(np.clip(imgs[i].transpose(1, 2, 0), 0, 1))
        if gt is not None:
            draw_skeleton(ax, gt[i], colour="white", linestyle="--")
        draw_skeleton(ax, pred[i])
        size = imgs.shape[-1]
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)  # keep the image frame even when joints fall outside it
        if titles:
            ax.set_title(titles[i], fontsize=8)
    handles = [plt.Line2D([], [], color=c, label=f) for c, f in zip(_FINGER_COLOURS, FINGERS)]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    return _save(fig, path)


def plot_attention(
    images,
    maps: Mapping[int, object],
    path: str | os.PathLike,
    *,
    value_range: tuple[float, float] | None = None,
    rows: int = 6,
) -> Path:
    """The feedback each iteration received, next to its input image (paper Figure 3).

    One row per image: the image, then for every iteration ``l`` in ``maps`` the channel
    mean of the signal that fed it (for the attention decoder, the map in ``[0, 1]``
    multiplied onto the extractor features), stretched to the image's size, with its spatial
    standard deviation in the title. On the fixed ``[0, 1]`` scale a map that re-weights
    nothing is one flat colour.

    Args:
        images: ``(N, 3, S, S)`` in ``[0, 1]``.
        maps: iteration -> ``(N, H, W)`` channel-mean maps.
        path: output PNG.
        value_range: colour scale limits. None (the default): ``[0, 1]`` when every map lies
            in it, as attention maps always do, else the maps' own range, shared by all panels.
        rows: at most this many images.

    Raises:
        ValueError: ``maps`` is empty or its arrays do not match the images.
    """
    imgs = _np(images)
    if not maps:
        raise ValueError("plot_attention needs at least one iteration's maps (the network has no feedback)")
    arrays = {int(l): _np(m) for l, m in sorted(maps.items())}
    for l, m in arrays.items():
        if m.ndim != 3 or m.shape[0] < min(rows, imgs.shape[0]):
            raise ValueError(f"maps[{l}] must be (N, H, W) with a map per image, got shape {m.shape}")
    n = min(rows, imgs.shape[0])
    if value_range is None:
        lo = min(float(m[:n].min()) for m in arrays.values())
        hi = max(float(m[:n].max()) for m in arrays.values())
        value_range = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi if hi > lo else lo + 1e-6)
    cols = 1 + len(arrays)
    fig, axes = plt.subplots(n, cols, figsize=(2.0 * cols + 0.6, 2.0 * n), squeeze=False)
    size = imgs.shape[-1]
    shown = None
    for i in range(n):
        axes[i, 0].imshow(np.clip(imgs[i].transpose(1, 2, 0), 0, 1))
        for j, (l, m) in enumerate(arrays.items(), start=1):
            shown = axes[i, j].imshow(m[i], cmap="viridis", vmin=value_range[0], vmax=value_range[1],
                                      extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
            axes[i, j].set_title(f"into loop {l}: map std {m[i].std():.3f}", fontsize=7)
        for ax in axes[i]:
            ax.set_axis_off()
    axes[0, 0].set_title("input", fontsize=7)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.6, label="channel mean of the feedback")
    return _save(fig, path)


def plot_reliability(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                     bins: int = 10, unit: str = "mm") -> Path:
    """Reliability of predicted uncertainty: predicted error scale vs measured error, binned.

    Args:
        series: label -> ``(predicted, measured)`` per item (e.g. per joint and sample):
            the predicted RMS error and the actual error, both in ``unit``.
        path: PNG to write.
        bins: number of equally populated bins of the predicted value.
        unit: axis unit.

    A calibrated model lies on the diagonal; points above it are over-confident.
    """
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    top = 0.0
    for label, (predicted, measured) in series.items():
        p, m = _np(predicted).ravel().astype(np.float64), _np(measured).ravel().astype(np.float64)
        keep = np.isfinite(p) & np.isfinite(m)
        p, m = p[keep], m[keep]
        if p.size == 0:
            continue
        order = np.argsort(p)
        groups = [g for g in np.array_split(order, min(bins, p.size)) if g.size]
        x = np.array([p[g].mean() for g in groups])
        y = np.array([np.sqrt(np.mean(m[g] ** 2)) for g in groups])
        ax.plot(x, y, marker="o", label=label)
        top = max(top, x.max(), y.max())
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="calibrated")
    ax.set_xlabel(f"predicted RMS error ({unit})")
    ax.set_ylabel(f"measured RMS error ({unit})")
    ax.set_title("Uncertainty reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
