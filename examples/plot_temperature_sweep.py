"""
Accuracy against compute: threshold and temperature sweeps
==========================================================

How much accuracy does a looped network give up when samples may stop early, and
how much compute does that save? Exits change only *when* a sample stops, never what
an iteration predicts, so one forward pass with ``exit="all"`` holds everything needed
to replay any number of exit policies with :func:`recurnet.simulate_exits`.

This example fits a small looped ConvNeXt with an uncertainty head on noisy digits,
fits a :class:`recurnet.LearnedGate` on its uncertainty features by a simple
supervised proxy, and then, from a single pass over the test set, traces

- the variance threshold ``tau_var`` of :class:`recurnet.VarianceThreshold`, and
- the temperature ``tau_gate`` of the learned gate,

as curves of mean multiply-adds per sample against test accuracy.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits
from torch import nn

import recurnet

torch.manual_seed(0)

# %%
# Noisy digits and a looped ConvNeXt that knows how unsure it is
# ---------------------------------------------------------------
# Each image gets its own amount of pixel noise, so some samples are easy and
# some are hopeless: the uncertainty head has something to learn. The digits are
# split three ways: the network trains on the first part (with fresh noise in
# every batch), the gate on the second, and the sweeps are measured on the third,
# with four noisy copies of every test digit.

digits = load_digits()
clean = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
clean = nnf.interpolate(clean, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
clean = (clean - 0.5) / 0.5
labels = torch.tensor(digits.target)


def noisy(images, copies=1, generator=None):
    """``copies`` noisy versions of ``images``, each with a noise level drawn from U(0, 2)."""
    images = images.repeat(copies, 1, 1, 1)
    level = 2.0 * torch.rand(len(images), 1, 1, 1, generator=generator)
    return images + level * torch.randn(images.shape, generator=generator)


x_train, y_train = clean[:1000], labels[:1000]
x_val, y_val = noisy(clean[1000:1400], 2, torch.Generator().manual_seed(1)), labels[1000:1400].repeat(2)
x_test, y_test = noisy(clean[1400:], 4, torch.Generator().manual_seed(2)), labels[1400:].repeat(4)

# %%
# ``test_convnext`` is a tiny ConvNeXt from timm. Cutting after its first stage
# loops the other three; their LayerNorms become per-iteration norms. The
# uncertainty head predicts one log-variance ``alpha`` per sample for the logits,
# and its hidden features are what the gate will read.

net = recurnet.loopify(
    "test_convnext",
    stage=0,
    max_loops=3,
    heads={"logits": lambda c: nn.Linear(c, 10)},
    uncertainty={"logits": (1,)},
    uncertainty_hidden=32,
    check_size=(32, 32),
)

# %%
# Training: the loss of every iteration, each made uncertainty-aware. With
# ``L_var = exp(-alpha) * CE + alpha / 2`` a sample can lower the weight of a
# large cross-entropy by predicting a large variance, at the price of
# ``alpha / 2``; the optimum is ``exp(alpha) = 2 CE``, so the predicted variance
# tracks how wrong the iteration expects to be. ``alpha`` is clamped in the loss
# to keep ``exp(-alpha)`` finite early on; the uncertainty head gets a larger
# learning rate, since its signal is weak in so short a fit.

uncertainty_params = set(net.uncertainty.parameters())
optimizer = torch.optim.Adam(
    [
        {"params": [p for p in net.parameters() if p not in uncertainty_params]},
        {"params": list(uncertainty_params), "lr": 2e-2},
    ],
    lr=2e-3,
)
net.train()
for epoch in range(4):
    order = torch.randperm(len(x_train))
    for start in range(0, len(order), 100):
        batch = order[start : start + 100]
        out = net(noisy(x_train[batch]), count_cost=False)
        loss = 0.0
        for y, log_var in zip(out.iterations, out.log_variance):
            ce = nnf.cross_entropy(y["logits"], y_train[batch], reduction="none")
            alpha = log_var["logits"][:, 0].clamp(-6.0, 6.0)
            loss = loss + (torch.exp(-alpha) * ce + 0.5 * alpha).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: summed loss {loss.item():.3f}")

# %%
# One full pass over each set
# ---------------------------
# Every sample runs every iteration; predictions, log-variances and gate
# features of all iterations are kept.

net.eval()
with torch.no_grad():
    val_all = net(x_val, exit="all", count_cost=False)
    test_all = net(x_test, exit="all")
cost = net.cost_model((3, 32, 32))


def correct_at(out, steps, target):
    """Whether each sample is classified right at its exit step, ``(B,)`` bool."""
    logits = torch.stack([y["logits"] for y in out.iterations])  # (L + 1, B, 10)
    chosen = logits[steps, torch.arange(len(steps))]
    return chosen.argmax(-1) == target


for l in range(test_all.num_iterations):
    right = correct_at(test_all, torch.full((len(y_test),), l), y_test)
    variance = test_all.log_variance[l]["logits"][:, 0].exp()
    print(f"after iteration {l}: accuracy {right.float().mean():.3f}, {cost.macs_until(l) / 1e6:.2f} MMACs each; "
          f"mean predicted variance {variance[right].mean():.2f} when right, {variance[~right].mean():.2f} when wrong")

# %%
# Fitting the gate by a supervised proxy
# --------------------------------------
# The paper trains the gate by policy gradient. A quicker stand-in suffices
# here: after iteration ``l`` the *right* action is to exit if the sample is
# already classified right, or if even the last iteration gets it wrong (more
# loops would not help). The gate, two linear layers on the uncertainty
# features, learns that label with a cross-entropy loss on the frozen network's
# features of the held-out validation part (on the training part nearly every
# sample is right, which would teach the gate nothing).

last = net.max_loops
right_last = correct_at(val_all, torch.full((len(y_val),), last), y_val)
features, targets = [], []
for l in range(last):
    right_now = correct_at(val_all, torch.full((len(y_val),), l), y_val)
    features.append(val_all.features[l])
    targets.append((right_now | ~right_last).long())
features, targets = torch.cat(features), torch.cat(targets)
print(f"gate examples: {len(targets)}, of which 'exit' {targets.float().mean():.2f}")

gate = recurnet.LearnedGate(in_features=features.shape[1], hidden=32, mode="sample")
gate_opt = torch.optim.Adam(gate.parameters(), lr=1e-2)
for step in range(300):
    gate_loss = nnf.cross_entropy(gate.logits(features), targets)
    gate_opt.zero_grad()
    gate_loss.backward()
    gate_opt.step()
print(f"gate loss {gate_loss.item():.3f}")
gate.eval()

# %%
# Sweeping from one pass
# ----------------------
# For the variance threshold, the thresholds are spread over the range of
# variances the network actually predicts on the test set. For the gate, the
# temperature divides its logits before the softmax: low temperatures follow the
# gate's preference almost surely, high ones flatten every decision towards a
# coin flip. Sampling uses a seeded generator, so each point is reproducible.


def trade_off(steps):
    """(mean MMACs per sample, accuracy) of one set of exit steps."""
    macs = cost.macs_per_sample(steps).mean().item() / 1e6
    return macs, correct_at(test_all, steps, y_test).float().mean().item()


variances = torch.cat([lv["logits"].exp().flatten() for lv in test_all.log_variance[:last]])
thresholds = torch.quantile(variances, torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])).tolist()
variance_curve = []
for tau in thresholds:
    steps = recurnet.simulate_exits(test_all, recurnet.VarianceThreshold(tau), cost=cost)
    variance_curve.append(trade_off(steps))
    print(f"tau_var {tau:8.4f}: mean exit step {steps.double().mean():.2f}, "
          f"{variance_curve[-1][0]:.2f} MMACs, accuracy {variance_curve[-1][1]:.3f}")

temperatures = [0.1, 0.3, 1.0, 3.0, 10.0]
gate_curve = []
for temperature in temperatures:
    gate.temperature = temperature
    steps = recurnet.simulate_exits(test_all, gate, cost=cost, generator=torch.Generator().manual_seed(0))
    gate_curve.append(trade_off(steps))
    print(f"tau_gate {temperature:5.1f}: mean exit step {steps.double().mean():.2f}, "
          f"{gate_curve[-1][0]:.2f} MMACs, accuracy {gate_curve[-1][1]:.3f}")

gate.mode = "greedy"
greedy = trade_off(recurnet.simulate_exits(test_all, gate, cost=cost))
fixed = [trade_off(torch.full((len(y_test),), l)) for l in range(last + 1)]

# %%
# The same numbers from a compacted run: assigning the policy and running in
# eval mode lets samples really leave the batch, and gives the same exits as the
# simulation.

gate.mode, gate.temperature = "sample", 1.0
net.policy = gate
with torch.no_grad():
    compact = net(x_test, generator=torch.Generator().manual_seed(0))
simulated = recurnet.simulate_exits(test_all, gate, cost=cost, generator=torch.Generator().manual_seed(0))
print("compact run exits as simulated:", torch.equal(compact.exit_step, simulated))

# %%
# The trade-off
# -------------
# Each point is one policy setting evaluated on the same pass; the dashed line
# runs every sample for a fixed number of loops. The variance threshold spends
# loops on the samples the network is unsure of, so at equal mean cost it can
# do better than giving every sample the same number of loops. How the gate
# behaves follows from its training labels: when extra loops rarely change an
# answer, as after a fit this short, it learns to exit almost everything at
# once, and a higher temperature mostly adds random extra loops. A gate trained
# by policy gradient with a compute penalty (the paper's Eq. 10-11) trades the
# two off explicitly.

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.plot(*zip(*fixed), "k--o", label="fixed loops 0..3")
ax.plot(*zip(*variance_curve), "-s", label="variance threshold")
for (m, a), tau in zip(variance_curve, thresholds):
    ax.annotate(f"{tau:.2g}", (m, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
ax.plot(*zip(*gate_curve), "-^", label="learned gate, sampled")
labels_at = {}  # temperatures that land on the same point share one label
for point, temperature in zip(gate_curve, temperatures):
    labels_at.setdefault(point, []).append(f"{temperature:g}")
for (m, a), names in labels_at.items():
    ax.annotate("T=" + ", ".join(names), (m, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
ax.plot(*greedy, "*", markersize=12, label="learned gate, greedy")
ax.set_xlabel("mean MMACs per sample")
ax.set_ylabel("test accuracy")
ax.set_title("one exit='all' pass, many exit policies")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
