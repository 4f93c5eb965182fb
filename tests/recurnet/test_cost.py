"""Counted parameters and multiply-adds, and their agreement with what a run really computes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from recurnet import ComponentCost, CostModel, LearnedGate, LoopState, count_macs, count_params, loopify
from recurnet.cost import flop_counter_mode


def _counted_run(net, x, **kwargs):
    """Multiply-adds FlopCounterMode sees in one real forward call."""
    with torch.no_grad(), flop_counter_mode() as counter:
        out = net(x, **kwargs)
    return counter.get_total_flops() // 2, out


class ExitFirstHalfAt:
    def __init__(self, iteration):
        self.iteration = iteration

    def __call__(self, state: LoopState) -> torch.Tensor:
        leave = state.index < state.batch_size // 2
        return leave & (state.iteration == self.iteration)


# ---------------------------------------------------------------------------- counting primitives


def test_conv_macs_hand_computed():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    macs, out = count_macs(conv, torch.zeros(2, 3, 16, 16))
    # Per output element: 3 input channels x 3 x 3 taps; 2 x 8 x 16 x 16 output elements.
    assert macs == 2 * 8 * 16 * 16 * 3 * 3 * 3 == 110592
    assert out.shape == (2, 8, 16, 16)
    strided, _ = count_macs(nn.Conv2d(4, 6, 1, stride=2, groups=2), torch.zeros(1, 4, 10, 10))
    assert strided == 6 * 5 * 5 * 2  # grouped: each output sees 4 / 2 input channels
    linear, _ = count_macs(nn.Linear(10, 3), torch.zeros(5, 10))
    assert linear == 5 * 10 * 3


def test_count_params_counts_shared_tensors_once():
    shared = nn.Linear(4, 4)  # 20 parameters
    assert count_params(shared, nn.Sequential(shared), None) == 20
    assert count_params(shared, nn.Linear(2, 1)) == 23


def test_resnet18_at_224_matches_timm():
    """Extractor plus one refiner pass is exactly the plain model's forward_features: 1.8136 GMACs."""
    net = loopify("resnet18", 2, max_loops=0, norms="shared", feedback="none")
    cost = net.cost_model((3, 224, 224))
    plain = timm.create_model("resnet18").to("meta")
    want, _ = count_macs(plain.forward_features, torch.empty(1, 3, 224, 224, device="meta"))
    assert cost.extractor.macs + cost.refiner.macs == want == 1_813_561_344
    assert round(cost.gmacs_until(0), 4) == 1.8136
    # ResNet-18 has 11.69 M parameters, 0.51 M of them in its 1000-way classifier.
    assert cost.extractor.params + cost.refiner.params == count_params(plain) - 513_000


def test_extractor_and_refiner_add_up_to_forward_features(family, families, make_net):
    fam = families[family]
    net = make_net(family, max_loops=1)
    cost = net.cost_model((3, 64, 64))
    plain = fam.create().to("meta")
    want, _ = count_macs(plain.forward_features, torch.empty(1, 3, 64, 64, device="meta"))
    assert cost.extractor.macs + cost.refiner.macs == want
    assert cost.extractor.macs > 0 and cost.refiner.macs > 0 and cost.feedback.macs > 0


# ---------------------------------------------------------------------------- the cost model


def _model(max_loops=2):
    c = ComponentCost
    return CostModel((3, 8, 8), max_loops, c(10, 100), c(5, 50), c(1, 10), c(1, 1), c(2, 3), c(4, 7))


def test_cost_model_arithmetic():
    m = _model()
    # Iteration 0: refiner + heads + uncertainty + decision; middle ones add feedback; the last has no decision.
    assert [m.iteration_macs(i) for i in range(3)] == [50 + 1 + 3 + 7, 50 + 1 + 3 + 10 + 7, 50 + 1 + 3 + 10]
    assert [m.macs_until(e) for e in range(3)] == [161, 232, 296]
    assert m.gmacs_until(2) == pytest.approx(296e-9)
    per_sample = m.macs_per_sample(torch.tensor([2, 0, 1, 0]))
    assert per_sample.dtype == torch.float64 and per_sample.tolist() == [296, 161, 232, 161]
    assert m.params == 10 + 5 + 1 + 1 + 2 + 4
    assert m.rows()[0] == ("extractor", 10, 100) and [r[0] for r in m.rows()][-1] == "policy"
    with pytest.raises(ValueError, match=r"iteration must be in 0..2, got 3"):
        m.iteration_macs(3)


def test_cost_model_markdown():
    text = _model().to_markdown()
    assert "| extractor | 10 | 100 |" in text
    assert "| 2 | 0.0000 |" in text  # 296 MACs in GMACs
    assert "iterations 0..2" in text


def test_cost_model_of_a_looped_net(make_net):
    net = make_net("resnet", max_loops=3)
    net.policy = LearnedGate(128, hidden=8)
    cost = net.cost_model((3, 64, 64))
    assert cost.params == count_params(net)
    # The refiner's parameters include one set of norms per iteration.
    assert cost.refiner.params == count_params(net.refiner)
    # The gate: Linear(128, 8) and Linear(8, 2) once per decision.
    assert cost.policy == ComponentCost(128 * 8 + 8 + 8 * 2 + 2, 128 * 8 + 8 * 2)
    assert cost.heads.macs == 96 * 5  # Linear(96, 5) on test_resnet's pooled features
    assert net.cost_model((3, 64, 64)) is cost  # cached
    net.policy = None
    assert net.cost_model((3, 64, 64)).policy == ComponentCost(0, 0)
    assert net.cost_model((3, 64, 64), loops=1).max_loops == 1
    # Counting runs on a copy of the network: its own weights, statistics and mode are untouched.
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.cost_model((3, 96, 96))
    assert net.training
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in net.state_dict().items())


def test_larger_inputs_cost_more(make_net):
    net = make_net("resnet", max_loops=1)
    small, large = net.cost_model((3, 64, 64)), net.cost_model((3, 128, 128))
    # Every counted op here is a convolution or a per-pixel-free linear layer on pooled features.
    assert large.extractor.macs == 4 * small.extractor.macs
    assert large.refiner.macs == 4 * small.refiner.macs
    assert large.heads.macs == small.heads.macs


# ---------------------------------------------------------------------------- counted runs vs the cost model


def test_counted_compact_run_equals_the_per_sample_costs(family, make_net, make_images):
    """The cost cross-check: what FlopCounterMode sees in a compacted run is the sum of ``out.macs``."""
    net = make_net(family, max_loops=3).eval()
    net.policy = ExitFirstHalfAt(1)
    x = make_images(4)
    net(x[:1])  # build the cost model outside the counted run
    counted, out = _counted_run(net, x)
    assert out.exit_step.tolist() == [1, 1, 3, 3]
    assert counted == int(out.macs.sum())
    full, _ = _counted_run(net, x, exit="all")
    assert counted < full


def test_counted_run_with_a_learned_gate(make_net, make_images):
    net = make_net("resnet", max_loops=3).eval()
    torch.manual_seed(0)
    net.policy = LearnedGate(128, hidden=8, temperature=3.0)
    x = make_images(8)
    net(x[:1])
    counted, out = _counted_run(net, x, generator=torch.Generator().manual_seed(0))
    assert len(set(out.exit_step.tolist())) > 1  # a mixed batch, so compaction happened
    assert counted == int(out.macs.sum())
