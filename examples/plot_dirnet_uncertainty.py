"""
DIR-Net on synthetic hands: joints and their uncertainty, loop by loop
======================================================================

DIR-Net predicts, at every iteration of its loop, the 21 hand joints and one
log-variance ``alpha = log sigma^2`` per joint: how far off it expects each joint to
be. This example builds the small ``tiny`` preset, fits it for a few seconds on
rendered synthetic hands (no dataset or MANO licence needed), and draws each
iteration's 2D joints with a Gaussian blob of standard deviation ``sigma`` around
every joint. Finally the variances decide the exits: a
:class:`recurnet.VarianceThreshold` lets confident samples stop early.

A few seconds of training on a hundred images gives a network that has learned
where hands are and, joint by joint, how unsure it is, while its poses are still
close to an average hand: the point here is the mechanics. With longer training the
joints follow each hand's pose and, since the variances track the errors, the blobs
tighten.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import default_collate

import recurnet
import recurnet_hand
from recurnet_hand.data.synthetic import SyntheticHands
from recurnet_hand.joints import JOINT_NAMES, PARENTS

torch.manual_seed(0)

# %%
# The model and the data
# ----------------------
# ``preset("tiny")`` is IR9 at base width 8 on 96 px crops with up to three
# loops; without a MANO path it poses the procedural hand model that ships with
# the package. :class:`~recurnet_hand.data.synthetic.SyntheticHands` renders
# MANO hands in random poses over clutter, with exact 2D (crop pixels) and 3D
# (millimetres, camera frame) labels; sample ``i`` depends only on the seed.

config = recurnet_hand.preset("tiny")
net = recurnet_hand.build_dirnet(config)
print(config)

hands = SyntheticHands(num_samples=144, crop_size=config.crop_size, seed=0, progress=False)
data = default_collate([hands[i] for i in range(len(hands))])
train = {k: v[:128] for k, v in data.items()}
shown = {k: v[128:] for k, v in data.items()}
print({k: tuple(v.shape) for k, v in train.items()})

# %%
# A short fit with uncertainty-aware losses
# -----------------------------------------
# Each iteration's joints enter a Gaussian negative log-likelihood with the
# predicted per-joint variance (``sigma^2`` per coordinate): for a joint with
# squared error ``d^2`` in ``k`` dimensions, ``d^2 / (2 sigma^2) + k/2 log sigma^2``.
# The variance learns to follow the error it accompanies. 2D errors are in crop
# pixels; 3D errors are root-relative (the model predicts the hand about its
# wrist) and taken in centimetres here, so that both terms start at a similar
# size.


def gaussian_nll(pred, target, log_var):
    """Mean NLL of ``(B, 21, k)`` points under per-joint variances ``exp(log_var)`` ``(B, 21, 1)``."""
    log_var = log_var.clamp(-6.0, 14.0)  # keeps exp(-log_var) finite early in training
    sq = (pred - target).pow(2).sum(-1, keepdim=True)
    return (0.5 * torch.exp(-log_var) * sq + 0.5 * pred.shape[-1] * log_var).mean()


optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
net.train()
for epoch in range(16):
    order = torch.randperm(128)
    for start in range(0, 128, 16):
        idx = order[start : start + 16]
        target2d = train["joints2d"][idx]
        target3d_cm = (train["joints3d"][idx] - train["joints3d"][idx, :1]) / 10.0
        out = net(train["image"][idx], count_cost=False)
        loss = sum(
            gaussian_nll(y["joints2d"], target2d, a["joints2d"])
            + gaussian_nll(y["joints3d"] / 10.0, target3d_cm, a["joints3d"])
            for y, a in zip(out.iterations, out.log_variance)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if epoch % 4 == 3:
        print(f"epoch {epoch}: summed loss {loss.item():.2f}")

# %%
# Every iteration of a few unseen hands
# -------------------------------------
# Run the held-out hands with ``exit="all"`` so every iteration is computed, and
# turn each joint's log-variance into a standard deviation in pixels,
# ``sigma = exp(alpha / 2)``. The grid shows each hand's ground truth and then
# every iteration's joints, each joint under a Gaussian blob of its own
# ``sigma``: wide blobs mark the joints the network is least sure of.

net.eval()
with torch.no_grad():
    out = net(shown["image"], exit="all")
joints = torch.stack([y["joints2d"] for y in out.iterations]).numpy()  # (L + 1, B, 21, 2) px
sigma = torch.stack([a["joints2d"] for a in out.log_variance]).div(2).exp()[..., 0].numpy()  # (L + 1, B, 21) px
truth = shown["joints2d"].numpy()
for l in range(out.num_iterations):
    error = np.linalg.norm(joints[l] - truth, axis=-1).mean()
    print(f"iteration {l}: mean 2D error {error:.1f} px, mean predicted sigma {sigma[l].mean():.1f} px")


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


rows, size = 3, config.crop_size
fig, axes = plt.subplots(rows, out.num_iterations + 1, figsize=(2.2 * (out.num_iterations + 1), 2.3 * rows))
for r in range(rows):
    image = shown["image"][r].permute(1, 2, 0).numpy()
    axes[r, 0].imshow(image)
    draw_hand(axes[r, 0], truth[r], "lime")
    for l in range(out.num_iterations):
        ax = axes[r, l + 1]
        ax.imshow(image)
        ax.imshow(uncertainty_map(joints[l, r], sigma[l, r], size), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        draw_hand(ax, joints[l, r], "cyan")
for l, ax in enumerate(axes[0]):
    ax.set_title("ground truth" if l == 0 else f"iteration {l - 1}", fontsize=9)
for ax in axes.flat:
    ax.set_axis_off()
fig.suptitle("predicted joints (cyan) with sigma blobs; ground truth (green)", fontsize=10)
fig.tight_layout()
plt.show()

# %%
# Which joints is it unsure about?
# --------------------------------
# Mean predicted ``sigma`` per joint over the held-out hands, next to the mean
# actual error of that joint. For a 2D Gaussian with ``sigma^2`` per coordinate
# the expected distance is about ``1.25 sigma``, so an honest model puts the
# dots near the tops of the bars (scaled by 1.25).

errors = np.linalg.norm(joints - truth[None], axis=-1)  # (L + 1, B, 21) px
last = out.num_iterations - 1
x = np.arange(len(JOINT_NAMES))
fig, ax = plt.subplots(figsize=(10, 3.8))
ax.bar(x - 0.2, 1.25 * sigma[0].mean(axis=0), 0.4, label="1.25 sigma, iteration 0")
ax.bar(x + 0.2, 1.25 * sigma[last].mean(axis=0), 0.4, label=f"1.25 sigma, iteration {last}")
ax.plot(x - 0.2, errors[0].mean(axis=0), "k.", label="actual error, iteration 0")
ax.plot(x + 0.2, errors[last].mean(axis=0), "kx", label=f"actual error, iteration {last}")
ax.set_xticks(x, JOINT_NAMES, rotation=60, ha="right", fontsize=8)
ax.set_ylabel("pixels")
ax.legend(fontsize=8, ncol=2)
fig.tight_layout()
plt.show()

# %%
# Letting the variances decide the exits
# --------------------------------------
# With a :class:`recurnet.VarianceThreshold` on the 2D joints, a sample stops
# as soon as its mean predicted variance (px\ :sup:`2`) falls below the
# threshold. Here the threshold is the median variance after iteration 0, so
# roughly half the hands stop at once; in eval mode the run is compacted, and
# ``out.macs`` counts what each hand cost.

with torch.no_grad():
    variance0 = out.log_variance[0]["joints2d"].exp().mean(dim=(1, 2))
    net.policy = recurnet.VarianceThreshold(float(variance0.median()), outputs=["joints2d"])
    dynamic = net(shown["image"])
print("exit steps:", dynamic.exit_step.tolist())
print(f"mean loops {dynamic.mean_loops:.2f}, mean {dynamic.mean_macs / 1e6:.1f} MMACs per hand "
      f"(all iterations: {net.cost_model((3, size, size)).macs_until(net.max_loops) / 1e6:.1f} MMACs)")
