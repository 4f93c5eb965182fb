"""
Loop a tiny backbone on handwritten digits
==========================================

:func:`recurnet.loopify` cuts a timm backbone after one of its stages: the
stages up to the cut form the *extractor*, run once per image; the stages
after it form the *refiner*, which runs again and again with shared weights.
Between iterations an attention map computed from the refiner's output
re-weights the extractor features, and every iteration keeps its own
normalisation layers.

This example loops timm's tiny ``test_resnet`` on scikit-learn's 8x8 digits,
trains it briefly on the CPU with the cross-entropy summed over iterations,
and reports the held-out accuracy and the counted compute of every iteration.
"""

# %%
# The data
# --------
# The 1,797 digits are 8x8 grey images with values 0..16. The backbone wants
# three-channel images of at least 32 px (its stride), so the digits are
# scaled to [0, 1], upsampled to 32x32 and repeated over three channels.

import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import recurnet

torch.manual_seed(0)
torch.set_num_threads(1)  # a model this small runs best on one thread

digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
images = nnf.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
images = (images - images.mean()) / images.std()
labels = torch.tensor(digits.target)

train_idx, test_idx = train_test_split(
    torch.arange(len(labels)).numpy(), test_size=0.3, stratify=labels.numpy(), random_state=0
)
x_train, y_train = images[train_idx], labels[train_idx]
x_test, y_test = images[test_idx], labels[test_idx]
print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}")

# %%
# The looped network
# ------------------
# Cut after stage 2 (``layer2``: 48 channels at stride 8, a 4x4 map for 32 px
# inputs); ``layer3`` and ``layer4`` form the refiner, run for iterations
# 0..3. A linear classifier reads the pooled refiner output at every
# iteration.

net = recurnet.loopify(
    "test_resnet",
    stage=2,
    max_loops=3,
    heads={"logits": lambda channels: nn.Linear(channels, 10)},
    check_size=(32, 32),
)
cost = net.cost_model((3, 32, 32))
print(f"cut after {net.stage.module!r}: {cost.params:,} parameters")

# %%
# Training
# --------
# Every sample runs every iteration during training, and the loss is the
# cross-entropy of each iteration's prediction, summed over iterations, so
# early iterations learn to be useful on their own.

optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
epochs, batch_size = 12, 64
schedule = torch.optim.lr_scheduler.OneCycleLR(
    optimizer, max_lr=3e-3, total_steps=epochs * ((len(x_train) + batch_size - 1) // batch_size)
)
start = time.perf_counter()
for epoch in range(epochs):
    net.train()
    order = torch.randperm(len(x_train))
    total = 0.0
    for i in range(0, len(order), batch_size):
        batch = order[i : i + batch_size]
        if len(batch) < 2:  # batch norm needs two samples to estimate its statistics
            continue
        out = net(x_train[batch])
        loss = sum(nnf.cross_entropy(o["logits"], y_train[batch]) for o in out.iterations)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item() * len(batch)
    if epoch % 3 == 2 or epoch == epochs - 1:
        print(f"epoch {epoch + 1:2d}: summed loss {total / len(x_train):.3f}")
print(f"trained in {time.perf_counter() - start:.1f} s")

# %%
# Accuracy per iteration
# ----------------------
# In evaluation mode ``exit="all"`` runs every test image through every
# iteration, so one pass gives the accuracy after each of them. The cost
# column is counted from the network (multiply-adds per image, the unit the
# literature calls "GFLOPs"), for an image that stops after that iteration.

net.eval()
with torch.no_grad():
    out = net(x_test, exit="all")
accuracy = [(o["logits"].argmax(1) == y_test).float().mean().item() for o in out.iterations]

print("| iteration | test accuracy | MMACs per image |")
print("|---:|---:|---:|")
for l, acc in enumerate(accuracy):
    print(f"| {l} | {100 * acc:.1f}% | {cost.macs_until(l) / 1e6:.2f} |")

# %%
# The same numbers as a bar plot. Every extra iteration costs one more pass of
# the refiner and the feedback decoder; whether it pays off depends on how hard
# the inputs are, which is why exit policies (:class:`recurnet.VarianceThreshold`,
# :class:`recurnet.LearnedGate`, :class:`recurnet.ComputeBudget`) decide per
# image when to stop.

fig, ax = plt.subplots(figsize=(5, 3.2))
bars = ax.bar([str(l) for l in range(len(accuracy))], [100 * a for a in accuracy], color="tab:blue")
ax.bar_label(bars, fmt="%.1f%%")
ax.set_xlabel("iteration")
ax.set_ylabel("test accuracy (%)")
ax.set_ylim(min(100 * a for a in accuracy) - 5, 102)  # headroom for the bar labels
ax.set_title("Looped test_resnet on 8x8 digits", pad=10)
fig.tight_layout()
plt.show()
