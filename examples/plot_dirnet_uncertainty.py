"""
DIR-Net on synthetic hands: joints and their uncertainty, loop by loop
======================================================================

DIR-Net predicts, at every iteration of its loop, the 21 hand joints and one
log-variance ``alpha = log sigma^2`` per joint: how far off it expects each joint to
be. This example loads the small DIR-Net that ships with the package (the ``cpu``
preset, trained on synthetic hands by ``benchmarks/default_run.py --ship``, the
same job as ``recurnet-hand train``), runs it on held-out rendered hands, draws every
iteration's joints with a blob of its predicted ``sigma`` around each joint, checks
that the predicted variances track the actual errors, shows the attention maps that
feed the later iterations, and lets the variances decide the exits.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import default_collate

import recurnet
import recurnet_hand
from recurnet_hand.data.synthetic import SyntheticHands
from recurnet_hand.evaluation import predicted_sigma_mm
from recurnet_hand.inference import load_model
from recurnet_hand.joints import PARENTS

# %%
# The model and some unseen hands
# -------------------------------
# :func:`~recurnet_hand.inference.load_model` rebuilds the network from its
# ``model.pt`` (configuration, weights and learned gate). The test hands come from
# a seed the model never saw in training, with the same ``stb`` viewpoints
# (third-person views, palm or back towards the camera).

net, run = load_model(recurnet_hand.SHIPPED_MODEL)
size = run.model.crop_size
print(run.model)
hands = SyntheticHands(num_samples=64, crop_size=size, seed=4242, viewpoint=run.data.viewpoint)
data = default_collate([hands[i] for i in range(len(hands))])
truth2d = data["joints2d"].numpy()
truth3d = (data["joints3d"] - data["joints3d"][:, :1]).numpy()

# %%
# Every iteration at once
# -----------------------
# ``exit="all"`` computes every iteration for every hand. The 3D joints are in
# millimetres, root-relative; the 2D joints in crop pixels. The log-variances are of
# the training loss's normalised errors: per coordinate, ``sigma = unit * exp(alpha / 2)``
# with the unit 100 mm in 3D and an eighth of the crop in 2D.

with torch.no_grad():
    out = net(data["image"], exit="all")
joints2d = torch.stack([y["joints2d"] for y in out.iterations]).numpy()  # (L + 1, B, 21, 2) px
joints3d = torch.stack([y["joints3d"] for y in out.iterations]).numpy()  # (L + 1, B, 21, 3) mm
unit_2d = run.loss.unit_2d * size
sigma2d = torch.stack([a["joints2d"] for a in out.log_variance]).div(2).exp()[..., 0].numpy() * unit_2d
for l in range(out.num_iterations):
    e3 = np.linalg.norm(joints3d[l] - truth3d, axis=-1).mean()
    e2 = np.linalg.norm(joints2d[l] - truth2d, axis=-1).mean()
    print(f"iteration {l}: mean 3D error {e3:.1f} mm, 2D error {e2:.1f} px, "
          f"predicted 2D sigma {sigma2d[l].mean():.1f} px")


def uncertainty_map(points, stds, size):
    """Max over joints of unit-height Gaussian blobs, ``(size, size)``."""
    grid = np.arange(size, dtype=np.float64)
    dx = grid[None, None, :] - points[:, 0, None, None]
    dy = grid[None, :, None] - points[:, 1, None, None]
    blobs = np.exp(-(dx**2 + dy**2) / (2.0 * stds[:, None, None] ** 2))
    return blobs.max(axis=0)


def draw_hand(ax, points, colour):
    for child, parent in enumerate(PARENTS):
        if parent >= 0:
            ax.plot(*points[[parent, child]].T, color=colour, linewidth=1.2)
    ax.scatter(*points.T, s=6, color=colour, zorder=3)


rows = 4
fig, axes = plt.subplots(rows, out.num_iterations + 1, figsize=(2.2 * (out.num_iterations + 1), 2.3 * rows))
for r in range(rows):
    image = data["image"][r].permute(1, 2, 0).numpy()
    axes[r, 0].imshow(image)
    draw_hand(axes[r, 0], truth2d[r], "lime")
    for l in range(out.num_iterations):
        ax = axes[r, l + 1]
        ax.imshow(image)
        ax.imshow(uncertainty_map(joints2d[l, r], sigma2d[l, r], size), cmap="inferno", alpha=0.45, vmin=0, vmax=1)
        draw_hand(ax, joints2d[l, r], "cyan")
for l, ax in enumerate(axes[0]):
    ax.set_title("ground truth" if l == 0 else f"iteration {l - 1}", fontsize=9)
for ax in axes.flat:
    ax.set_axis_off()
fig.suptitle("predicted joints (cyan) with sigma blobs; ground truth (green)", fontsize=10)
fig.tight_layout()
plt.show()

# %%
# Do the variances mean something?
# --------------------------------
# Sort the hands by their predicted 3D uncertainty and compare with their actual
# 3D errors. :func:`~recurnet_hand.evaluation.predicted_sigma_mm` turns the 3D
# log-variances into the expected RMS joint error in millimetres; a calibrated model
# lies on the diagonal, and a useful one at least orders hands by error (rank
# correlation well above 0), which is what the variance threshold and the gate rely on.

last = out.num_iterations - 1
sigma3d = predicted_sigma_mm(out.log_variance[last]["joints3d"], run.loss.unit_3d_mm).numpy()  # (B, 21) mm
error3d = np.linalg.norm(joints3d[last] - truth3d, axis=-1)  # (B, 21) mm
rank = np.corrcoef(np.argsort(np.argsort(sigma3d.mean(1))), np.argsort(np.argsort(error3d.mean(1))))[0, 1]
fig, ax = plt.subplots(figsize=(4.6, 4.2))
ax.scatter(np.sqrt((sigma3d**2).mean(1)), np.sqrt((error3d**2).mean(1)), s=12)
top = max(ax.get_xlim()[1], ax.get_ylim()[1])
ax.plot([0, top], [0, top], "--", color="grey", linewidth=1)
ax.set_xlabel("predicted RMS joint error (mm)")
ax.set_ylabel("actual RMS joint error (mm)")
ax.set_title(f"one dot per hand; rank correlation {rank:.2f}", fontsize=9)
fig.tight_layout()
plt.show()

# %%
# What the loops see
# ------------------
# Each later iteration re-reads the extractor's features multiplied by an attention
# map that the previous iteration drew (``return_feedback=True`` keeps them).
# :func:`~recurnet_hand.evaluation.feedback_spread` measures how much a map varies
# over the feature map; :func:`~recurnet_hand.plots.plot_attention` draws the maps on a
# fixed 0-1 scale. On this model they are nearly flat, which is why the iterations
# above score alike (``benchmarks/loop_analysis.py`` measures it).

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

from recurnet_hand import plots  # noqa: E402
from recurnet_hand.evaluation import feedback_spread  # noqa: E402

with torch.no_grad():
    fed = net(data["image"][:4], exit="all", return_feedback=True).feedback
for l in range(1, len(fed)):
    print(f"map into iteration {l}: mean {fed[l].mean():.3f}, spread {feedback_spread(fed[l]).mean():.4f}")
maps = {l: fed[l].mean(dim=1) for l in range(1, len(fed))}
path = plots.plot_attention(data["image"][:4], maps, Path(tempfile.mkdtemp()) / "attention.png", rows=4)
fig, ax = plt.subplots(figsize=(7, 6))
ax.imshow(Image.open(path))
ax.set_axis_off()
plt.show()

# %%
# Letting the variances decide the exits
# --------------------------------------
# With a :class:`recurnet.VarianceThreshold` on the 3D joints, a hand stops as soon
# as its mean predicted variance falls below the threshold. Here the threshold is
# the median variance after iteration 0, so about half the hands stop at once; in
# eval mode the run is compacted, and ``out.macs`` counts what each hand cost.

with torch.no_grad():
    variance0 = out.log_variance[0]["joints3d"].exp().mean(dim=(1, 2))
    net.policy = recurnet.VarianceThreshold(float(variance0.median()), outputs=["joints3d"])
    dynamic = net(data["image"])
error = np.linalg.norm(dynamic.final["joints3d"].numpy() - truth3d, axis=-1).mean()
print("exit steps:", dynamic.exit_step.tolist())
print(f"mean loops {dynamic.mean_loops:.2f}, mean {dynamic.mean_macs / 1e6:.1f} MMACs per hand "
      f"(all iterations: {net.cost_model((3, size, size)).macs_until(net.max_loops) / 1e6:.1f} MMACs), "
      f"mean 3D error {error:.1f} mm")
