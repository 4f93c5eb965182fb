"""
Writing a custom exit policy
============================

An exit policy is a plain callable. After every iteration a looped network hands it a
:class:`recurnet.LoopState` describing the samples still running, and the policy
answers with one boolean per sample: ``True`` means *stop here*. This example

1. fits a small looped timm model (``test_resnet``) on the digits dataset for a few
   seconds, so that its confidence means something;
2. writes two policies, *exit when the top-class margin is large* and *exit when the
   predicted class stops changing*, and registers them by name with
   :func:`recurnet.register_policy`;
3. runs the network in compact mode, where finished samples really leave the batch,
   and shows where samples exit, what they cost and how accurate they are.
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
# Data and a looped model
# -----------------------
# The 8x8 digit images are upsampled to 32x32 RGB, the smallest input
# ``test_resnet`` accepts (its total stride is 32).

digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
images = nnf.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
images = (images - 0.5) / 0.5
labels = torch.tensor(digits.target)
x_train, y_train = images[:1400], labels[:1400]
x_test, y_test = images[1400:], labels[1400:]

# Cut after ``layer2`` (stride 8): layer3 and layer4 form the refiner and run up to four times.
net = recurnet.loopify(
    "test_resnet",
    stage=2,
    max_loops=3,
    heads={"logits": lambda c: nn.Linear(c, 10)},
    check_size=(32, 32),
)
print(net.stage)

# %%
# A short fit
# -----------
# Training runs every sample through every iteration and sums the loss of all
# iterations, so each iteration learns to classify on its own.

optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
net.train()
for epoch in range(3):
    order = torch.randperm(len(x_train))
    for start in range(0, len(order), 100):
        batch = order[start : start + 100]
        out = net(x_train[batch], count_cost=False)
        loss = sum(nnf.cross_entropy(y["logits"], y_train[batch]) for y in out.iterations)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: summed loss {loss.item():.3f}")

net.eval()
with torch.no_grad():
    full = net(x_test, exit="all")
for l, y in enumerate(full.iterations):
    accuracy = (y["logits"].argmax(-1) == y_test).float().mean()
    print(f"after iteration {l}: test accuracy {accuracy:.3f}")


# %%
# Policy 1: exit when the network is sure
# ---------------------------------------
# The margin between the two most likely classes is a cheap confidence measure.
# The policy reads this iteration's predictions from the state and decides for
# every running sample at once. Registering it makes it available by name to
# :func:`recurnet.build_policy`, as the built-in policies are.


@recurnet.register_policy("margin")
class MarginExit:
    """Exit once the top-1 softmax probability beats the runner-up by ``margin``.

    Args:
        margin: in ``[0, 1]``.
        output: name of the logits output.
    """

    def __init__(self, margin: float = 0.5, output: str = "logits"):
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"margin must be in [0, 1], got {margin}")
        self.margin = margin
        self.output = output

    def __call__(self, state: recurnet.LoopState) -> torch.Tensor:
        probs = state.predictions[self.output].softmax(dim=-1)  # (B_active, 10)
        top2 = probs.topk(2, dim=-1).values
        return (top2[:, 0] - top2[:, 1]) > self.margin  # (B_active,) bool

    def __repr__(self) -> str:
        return f"MarginExit(margin={self.margin})"


# %%
# Policy 2: exit when the answer stops changing
# ---------------------------------------------
# This one needs the previous iteration's answer. In compact mode the state holds
# only the samples still running, in a shrinking batch, so the policy keeps a
# buffer over the *full* batch and reads and writes its rows through
# ``state.index``. It starts afresh at iteration 0, so nothing carries over from
# one forward call to the next.


@recurnet.register_policy("stable")
class StableExit:
    """Exit once the predicted class has stayed the same for ``patience`` iterations.

    Args:
        patience: consecutive iterations with an unchanged class, >= 1.
        output: name of the logits output.
    """

    def __init__(self, patience: int = 1, output: str = "logits"):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.output = output

    def __call__(self, state: recurnet.LoopState) -> torch.Tensor:
        label = state.predictions[self.output].argmax(dim=-1)
        rows = state.index
        if state.iteration == 0:  # a new forward call
            self._label = torch.full((state.batch_size,), -1, dtype=torch.long, device=label.device)
            self._streak = torch.zeros(state.batch_size, dtype=torch.long, device=label.device)
        unchanged = label == self._label[rows]
        self._streak[rows] = torch.where(unchanged, self._streak[rows] + 1, torch.zeros_like(label))
        self._label[rows] = label
        return self._streak[rows] >= self.patience

    def __repr__(self) -> str:
        return f"StableExit(patience={self.patience})"


# %%
# Running in compact mode
# -----------------------
# In eval mode the default is ``exit="compact"``: after each iteration the
# samples the policy releases leave the batch and only the rest run on. The
# output is still in input order; ``out.exit_step`` says where each sample
# stopped and ``out.macs`` what it cost, counted from the model.

policies = {
    "margin 0.5": recurnet.build_policy("margin", margin=0.5),
    "margin 0.9": recurnet.build_policy("margin", margin=0.9),
    "margin 0.99": recurnet.build_policy("margin", margin=0.99),
    "stable, patience 1": recurnet.build_policy("stable", patience=1),
    "stable, patience 2": recurnet.build_policy("stable", patience=2),
}

results = {}
with torch.no_grad():
    for name, policy in policies.items():
        net.policy = policy
        out = net(x_test)  # compact
        accuracy = float((out.final["logits"].argmax(-1) == y_test).float().mean())
        counts = torch.bincount(out.exit_step, minlength=net.max_loops + 1)
        results[name] = (out.mean_macs, accuracy, counts)
        print(f"{name:>20}: exits per iteration {counts.tolist()}, "
              f"mean {out.mean_macs / 1e6:.2f} MMACs, accuracy {accuracy:.3f}")

# %%
# The compacted run is exact: simulating the same policy on a full pass
# (``exit="simulate"``) picks the same exits and returns the same predictions.

with torch.no_grad():
    net.policy = policies["stable, patience 1"]
    compact = net(x_test, exit="compact")
    simulated = net(x_test, exit="simulate")
print("same exits:", torch.equal(compact.exit_step, simulated.exit_step))
print("same predictions:", torch.allclose(compact.final["logits"], simulated.final["logits"], atol=1e-5))

# %%
# What each iteration costs, as counted by the cost model:

cost = net.cost_model((3, 32, 32))
print(cost.to_markdown())

# %%
# Exits and the accuracy/compute trade-off
# ----------------------------------------
# Left: how many test samples stop after each iteration. Right: accuracy against
# mean multiply-adds per sample, with every sample running a fixed number of
# loops as the reference.

fixed = []
with torch.no_grad():
    for loops in range(net.max_loops + 1):
        net.policy = recurnet.FixedLoops(loops)
        out = net(x_test)
        fixed.append((out.mean_macs, float((out.final["logits"].argmax(-1) == y_test).float().mean())))

fig, (ax_exit, ax_trade) = plt.subplots(1, 2, figsize=(11, 4))
width = 0.8 / len(results)
steps = np.arange(net.max_loops + 1)
for i, (name, (_, _, counts)) in enumerate(results.items()):
    ax_exit.bar(steps + i * width - 0.4 + width / 2, counts.numpy(), width, label=name)
ax_exit.set_xticks(steps)
ax_exit.set_xlabel("exit after iteration")
ax_exit.set_ylabel("test samples")
ax_exit.legend(fontsize=8)

macs, acc = zip(*fixed)
ax_trade.plot(np.array(macs) / 1e6, acc, "k--o", label="fixed loops 0..3")
for name, (m, a, _) in results.items():
    ax_trade.plot(m / 1e6, a, "o", label=name)
ax_trade.set_xlabel("mean MMACs per sample")
ax_trade.set_ylabel("test accuracy")
ax_trade.legend(fontsize=8)
fig.tight_layout()
plt.show()
