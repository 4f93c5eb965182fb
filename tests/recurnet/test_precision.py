"""Low precision: the loop, the losses and compaction under CPU bfloat16 autocast (and float16 losses).

Documented tolerance: under ``torch.autocast("cpu", dtype=torch.bfloat16)`` the looped
network's outputs stay within 5% (relative to their largest magnitude) of the float32
run; exits are decided on the autocast outputs themselves, so compaction and the
simulated run agree on every exit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from recurnet import LoopLoss, LossTerm, VarianceThreshold, loopify

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return loopify("test_resnet", 2, max_loops=3, check_size=(64, 64), uncertainty=True,
                   heads={"logits": lambda c: nn.Linear(c, 5)}).eval()


def _images(batch, seed=0):
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_bf16_inference_stays_close_to_float32(net):
    x = _images(6)
    with torch.no_grad():
        ref = net(x, exit="all")
        with torch.autocast(**BF16):
            low = net(x, exit="all")
    for a, b in zip(ref.iterations, low.iterations):
        assert b["logits"].dtype == torch.bfloat16
        scale = a["logits"].abs().max()
        assert (b["logits"].float() - a["logits"]).abs().max() <= 0.05 * scale
    for a, b in zip(ref.log_variance, low.log_variance):
        assert torch.isfinite(b["logits"].float()).all()
        assert (b["logits"].float() - a["logits"]).abs().max() <= 0.05 * a["logits"].abs().max() + 0.05


@pytest.mark.parametrize("seed", range(4))
def test_bf16_compaction_decides_the_same_exits_as_the_simulated_run(net, seed):
    x = _images(8, seed)
    with torch.no_grad(), torch.autocast(**BF16):
        var = torch.stack([v["logits"].float().exp().mean(dim=1) for v in net(x, exit="all").log_variance[:-1]])
        # A threshold in the widest gap between the middle half of the variances, so some samples exit
        # early, some run on, and none sits so close to it that rounding could flip its decision.
        v = var.flatten().sort().values
        lo, hi = len(v) // 4, 3 * len(v) // 4
        i = lo + int((v[lo + 1:hi + 1] - v[lo:hi]).argmax())
        net.policy = VarianceThreshold(float(v[i] + v[i + 1]) / 2)
        try:
            compact = net(x, exit="compact")
            simulated = net(x, exit="simulate")
        finally:
            net.policy = None
    assert torch.equal(compact.exit_step, simulated.exit_step)
    assert torch.equal(compact.macs, simulated.macs)
    # Eval-mode layers are batch-independent, so each sample's answer at its exit agrees to
    # bfloat16 rounding (the compacted batches may take other kernel blockings).
    torch.testing.assert_close(compact.final["logits"].float(), simulated.final["logits"].float(),
                               rtol=0.02, atol=0.02)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_training_step_under_autocast_has_finite_losses_and_gradients(dtype):
    torch.manual_seed(0)
    model = loopify("test_resnet", 2, max_loops=2, check_size=(64, 64), uncertainty=True,
                    heads={"y": lambda c: nn.Linear(c, 3)}).train()
    loss = LoopLoss([LossTerm("y", "target", kind="l2", variance_weight=0.5, scale=0.1)])
    x, target = _images(4), torch.randn(4, 3)
    if dtype == torch.float16:  # CPU float16 autocast: run the step on float16 outputs of a float32 model
        out = model(x, exit="all")
        for it in out.iterations:
            it["y"] = it["y"].half()
        for lv in out.log_variance:
            lv["y"] = (lv["y"] * 0 + 30.0).half()  # far beyond float16's exp range
    else:
        with torch.autocast(**BF16):
            out = model(x, exit="all")
    result = loss(out, {"target": target})
    assert result.total.dtype == torch.float32 and torch.isfinite(result.total)
    result.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_bf16_cross_entropy_path(net):
    with torch.no_grad(), torch.autocast(**BF16):
        out = net(_images(3), exit="all")
    ce = nnf.cross_entropy(out.final["logits"].float(), torch.tensor([0, 1, 2]))
    assert torch.isfinite(ce)


@pytest.mark.parametrize("native", [False, True])
def test_the_trainer_warns_when_bfloat16_would_be_emulated(monkeypatch, native):
    from recurnet.training import EndToEnd, TrainConfig, Trainer
    from recurnet.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bfloat16", lambda device: native)
    net = loopify("test_resnet", 2, max_loops=1, check_size=(32, 32), heads={"y": lambda c: nn.Linear(c, 1)})
    data = [{"image": torch.randn(3, 32, 32), "y": torch.zeros(1)} for _ in range(4)]
    config = TrainConfig(EndToEnd(epochs=1), batch_size=2, precision="bfloat16", progress=False)
    loss = LoopLoss([LossTerm("y", "y")])
    if native:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            Trainer(net, loss, data, config)
    else:
        with pytest.warns(RuntimeWarning, match="not compute bfloat16 natively.*float32"):
            Trainer(net, loss, data, config)
