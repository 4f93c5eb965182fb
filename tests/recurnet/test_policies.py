"""Exit policies: fixed loops, variance threshold, learned gate, compute budget, user policies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recurnet
from recurnet import (
    POLICIES,
    ComputeBudget,
    ExitPolicy,
    FixedLoops,
    LearnedGate,
    LoopState,
    VarianceThreshold,
    build_policy,
    register_policy,
)
from recurnet.cost import ComponentCost, CostModel


def _state(iteration=0, max_loops=3, batch=4, log_variance=None, features=None, index=None, cost=None, generator=None):
    index = torch.arange(batch) if index is None else index
    n = index.shape[0]
    return LoopState(
        iteration,
        max_loops,
        {"y": torch.zeros(n, 2)},
        log_variance or {},
        features,
        index,
        batch,
        cost,
        generator,
    )


@register_policy("test_exit_even", overwrite=True)
class ExitEven:
    """Test policy: samples at even batch positions exit after ``at``; odd ones run on."""

    def __init__(self, at: int = 0):
        self.at = at

    def __call__(self, state):
        return (state.index % 2 == 0) & (state.iteration >= self.at)


# ---------------------------------------------------------------------------- fixed loops


def test_fixed_loops_decisions():
    policy = FixedLoops(2)
    assert [bool(policy(_state(i)).all()) for i in range(3)] == [False, False, True]
    assert policy(_state(0, batch=5)).shape == (5,)
    assert isinstance(policy, ExitPolicy)


@pytest.mark.parametrize("loops, want", [(0, 0), (1, 1), (2, 2), (5, 2)])
def test_fixed_loops_in_the_net(loops, want, make_net, make_images):
    net = make_net("resnet", max_loops=2).eval()
    net.policy = FixedLoops(loops)
    with torch.no_grad():
        out = net(make_images(3))
    assert out.exit_step.tolist() == [want] * 3  # capped at max_loops
    assert out.mean_loops == want


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_fixed_loops_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match=f"loops must be a non-negative integer, got {bad}"):
        FixedLoops(bad)


# ---------------------------------------------------------------------------- variance threshold


def test_variance_threshold_hand_computed():
    log_var = {
        "joints": torch.log(torch.tensor([[0.1, 0.3], [1.0, 2.0], [0.4, 0.4]])),
        "scale": torch.log(torch.tensor([[0.2], [0.0 + 3.0], [0.4]])),
    }
    policy = VarianceThreshold(0.5)
    # Mean of every element's variance: (0.1 + 0.3 + 0.2) / 3, (1 + 2 + 3) / 3, 0.4.
    torch.testing.assert_close(policy.mean_variance(log_var), torch.tensor([0.2, 2.0, 0.4]))
    assert policy(_state(batch=3, log_variance=log_var)).tolist() == [True, False, True]
    only_joints = VarianceThreshold(0.25, outputs=["joints"])  # means 0.2, 1.5, 0.4
    assert only_joints(_state(batch=3, log_variance=log_var)).tolist() == [True, False, False]
    # The threshold is strict: a mean variance equal to it does not exit.
    assert VarianceThreshold(0.4)(_state(batch=3, log_variance=log_var)).tolist() == [True, False, False]


def test_variance_threshold_changed_after_construction(make_net, make_images):
    net = make_net("resnet", max_loops=2).eval()
    policy = VarianceThreshold(0.0)
    net.policy = policy
    with torch.no_grad():
        assert net(make_images(3)).exit_step.tolist() == [2, 2, 2]  # no variance is below 0
        policy.threshold = 1e6
        assert net(make_images(3)).exit_step.tolist() == [0, 0, 0]  # every variance is below 1e6


@pytest.mark.parametrize("bad", [float("nan"), -0.1])
def test_variance_threshold_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="threshold must be a non-negative number"):
        VarianceThreshold(bad)
    policy = VarianceThreshold(1.0)
    with pytest.raises(ValueError, match="threshold must be a non-negative number"):
        policy.threshold = bad
    assert policy.threshold == 1.0


def test_variance_threshold_needs_log_variances(make_net, make_images):
    with pytest.raises(ValueError, match="needs log-variances for at least one output.*uncertainty="):
        VarianceThreshold(1.0)(_state())
    with pytest.raises(ValueError, match=r"needs log-variances for \['pose'\]"):
        VarianceThreshold(1.0, outputs=["pose"])(_state(log_variance={"y": torch.zeros(4, 2)}))
    net = make_net("resnet", uncertainty=False).eval()
    net.policy = VarianceThreshold(1.0)
    with pytest.raises(ValueError, match="build it with uncertainty"):
        net(make_images(2))


# ---------------------------------------------------------------------------- learned gate


def _gate(**kwargs):
    torch.manual_seed(0)
    return LearnedGate(8, hidden=16, **kwargs)


@settings(max_examples=20, deadline=None)
@given(low=st.floats(0.05, 5.0), factor=st.floats(1.5, 10.0))
def test_higher_temperature_moves_probabilities_towards_one_half(low, factor):
    gate = _gate()
    features = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)) * 3
    p_low = gate.probabilities(features, temperature=low)[:, LearnedGate.EXIT]
    p_high = gate.probabilities(features, temperature=low * factor)[:, LearnedGate.EXIT]
    assert bool(((p_high - 0.5).abs() <= (p_low - 0.5).abs() + 1e-7).all())
    # Same side of one half: the temperature scales confidence, never flips the preferred action.
    assert bool(((p_high - 0.5) * (p_low - 0.5) >= 0).all())


def test_temperature_hand_computed():
    gate = _gate(temperature=2.0)
    with torch.no_grad():
        gate.net[-1].weight.zero_()
        gate.net[-1].bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # logits [0, ln 3]
    # softmax([0, ln 3] / T): T = 1 -> 3/4; T = 2 -> sqrt(3) / (1 + sqrt(3)).
    p = gate.probabilities(torch.zeros(1, 8), temperature=1.0)
    torch.testing.assert_close(p, torch.tensor([[0.25, 0.75]]))
    p2 = gate.probabilities(torch.zeros(1, 8))
    torch.testing.assert_close(p2[0, 1], torch.tensor(3**0.5 / (1 + 3**0.5)))
    gate.temperature = 1e6  # changed after construction, no rebuild
    torch.testing.assert_close(gate.probabilities(torch.zeros(1, 8)), torch.tensor([[0.5, 0.5]]), atol=1e-6, rtol=0)


def test_greedy_takes_the_likelier_action():
    gate = _gate(mode="greedy")
    features = torch.randn(32, 8, generator=torch.Generator().manual_seed(2)) * 3
    p_exit = gate.probabilities(features)[:, LearnedGate.EXIT]
    assert 0 < int((p_exit > 0.5).sum()) < 32  # both actions occur in this batch
    decision = gate(_state(batch=32, features=features))
    assert decision.dtype == torch.bool
    assert torch.equal(decision, p_exit > 0.5)


def test_sampling_is_seedable_and_follows_the_probabilities():
    gate = _gate(mode="sample")
    features = torch.randn(4000, 8, generator=torch.Generator().manual_seed(3))

    def state(seed):
        return _state(batch=4000, features=features, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        a, b, c = gate(state(7)), gate(state(7)), gate(state(8))
        p_exit = gate.probabilities(features)[:, LearnedGate.EXIT]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # 4000 Bernoulli draws: the exit rate is within 4 standard deviations of the mean probability.
    sd = float((p_exit * (1 - p_exit)).sum().sqrt()) / 4000
    assert abs(a.double().mean().item() - p_exit.mean().item()) < 4 * sd


def test_sampling_uses_the_full_batch_position():
    """A running subset gets the same draws it would get inside the full batch."""
    gate = _gate(mode="sample")
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = gate(_state(batch=6, features=features, generator=torch.Generator().manual_seed(5)))
        index = torch.tensor([1, 4, 5])
        part = gate(_state(batch=6, features=features[index], index=index, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(part, full[index])


def test_gate_in_the_net_is_seedable(make_net, make_images):
    net = make_net("resnet", max_loops=3).eval()
    torch.manual_seed(0)
    net.policy = LearnedGate(128, hidden=16, mode="sample", temperature=5.0)  # the 128 uncertainty features
    x = make_images(16)
    with torch.no_grad():
        runs = [net(x, generator=torch.Generator().manual_seed(s)).exit_step for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_gate_standardises_its_input_so_large_features_do_not_saturate_it():
    gate = _gate()
    feats = 500.0 + 200.0 * torch.randn(256, 8)  # uncertainty features can be far from unit scale
    saturated = gate.probabilities(feats).max(dim=1).values
    gate.fit_input(feats)
    torch.testing.assert_close(gate.input_mean, feats.mean(0))
    torch.testing.assert_close(gate.input_std, feats.std(0, unbiased=False))
    fitted = gate.probabilities(feats).max(dim=1).values
    assert saturated.min() > 0.999 and fitted.median() < 0.9  # undecided before training, so it can learn
    assert "input_mean" in gate.state_dict() and "input_std" in gate.state_dict()
    with pytest.raises(ValueError, match="NaN or inf"):
        gate.fit_input(torch.full((4, 8), float("nan")))
    with pytest.raises(ValueError, match="expects 8"):
        gate.fit_input(torch.zeros(4, 3))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_gate_rejects_bad_temperatures(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        LearnedGate(8, temperature=bad)
    gate = _gate()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        gate.temperature = bad


def test_gate_rejects_bad_mode_and_missing_features():
    with pytest.raises(ValueError, match="mode must be 'sample' or 'greedy', got 'argmax'"):
        LearnedGate(8, mode="argmax")
    with pytest.raises(ValueError, match="needs uncertainty features"):
        _gate()(_state())


# ---------------------------------------------------------------------------- compute budget


def _cost():
    c = ComponentCost
    # Extractor 100, iteration 10 (+2 feedback before iterations 1..3, +1 decision after 0..2).
    return CostModel((3, 8, 8), 3, c(0, 100), c(0, 10), c(0, 2), c(0, 0), c(0, 0), c(0, 1))


@pytest.mark.parametrize(
    "budget, want",
    # Cost after iteration 0, 1, 2, 3: 100 + 11, + 13, + 13, + 12 (no decision after the last).
    [(111, 0), (123.9, 0), (124, 1), (136, 1), (137, 2), (148, 2), (149, 3), (1e9, 3)],
)
def test_budget_exits_before_passing_it(budget, want):
    cost = _cost()
    assert [cost.macs_until(e) for e in range(4)] == [111, 124, 137, 149]
    policy = ComputeBudget(budget)
    exits = [bool(policy(_state(i, cost=cost)).all()) for i in range(3)]
    exit_step = exits.index(True) if True in exits else 3
    assert exit_step == want
    assert cost.macs_until(exit_step) <= budget


def test_budget_in_the_net(make_net, make_images):
    net = make_net("resnet", max_loops=3).eval()
    cost = net.cost_model((3, 64, 64))
    budget = (cost.macs_until(1) + cost.macs_until(2)) / 2
    net.policy = ComputeBudget(budget)
    with torch.no_grad():
        out = net(make_images(2), count_cost=False)  # the budget gets the cost model regardless
        assert out.exit_step.tolist() == [1, 1]
        net.policy.max_macs = cost.macs_until(3)  # changed after construction
        out = net(make_images(2))
    assert out.exit_step.tolist() == [3, 3]
    assert bool((out.macs <= cost.macs_until(3)).all())


def test_budget_rejects_bad_values():
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError, match="max_macs must be"):
            ComputeBudget(bad)
    with pytest.raises(ValueError, match=r"budget of 50 multiply-adds is below one pass of the network \(111"):
        ComputeBudget(50)(_state(cost=_cost()))
    with pytest.raises(ValueError, match="needs the network's cost model"):
        ComputeBudget(500)(_state())


# ---------------------------------------------------------------------------- user policies, registry, bad answers


def test_user_policy_registered_by_name(make_net, make_images):
    assert "test_exit_even" in POLICIES
    net = make_net("resnet", max_loops=2).eval()
    net.policy = build_policy("test_exit_even", at=1)
    with torch.no_grad():
        out = net(make_images(5))
    assert out.exit_step.tolist() == [1, 2, 1, 2, 1]


def test_registry_builds_the_shipped_policies():
    assert {"fixed", "variance", "gate", "budget"} <= set(POLICIES.names())
    assert build_policy("variance", threshold=0.3).threshold == 0.3
    assert build_policy("gate", in_features=4, temperature=2.0).temperature == 2.0
    with pytest.raises(KeyError, match="unknown exit policy 'entropy'; registered: budget, fixed, gate"):
        build_policy("entropy")


@pytest.mark.parametrize(
    "answer, error, message",
    [
        (lambda s: torch.zeros(s.index.shape[0]), TypeError, "returned dtype torch.float32, expected torch.bool"),
        (lambda s: torch.zeros(1, dtype=torch.bool), ValueError, r"returned shape \(1,\), expected \(3,\)"),
        (lambda s: torch.zeros(3, 1, dtype=torch.bool), ValueError, r"returned shape \(3, 1\), expected \(3,\)"),
        (lambda s: [False] * 3, TypeError, "returned list, expected a bool tensor of shape"),
    ],
)
@pytest.mark.parametrize("mode", ["compact", "simulate"])
def test_bad_policy_answers_fail_clearly(answer, error, message, mode, make_net, make_images):
    net = make_net("resnet").eval()
    net.policy = answer
    with pytest.raises(error, match=f"exit policy function {message}"):
        net(make_images(3), exit=mode)


def test_a_compute_budget_subclass_still_gets_the_cost_model():
    class Stricter(recurnet.ComputeBudget):
        pass

    net = recurnet.loopify("test_resnet", stage=1, max_loops=2, check_size=(32, 32),
                           heads={"y": lambda c: torch.nn.Linear(c, 1)}).eval()
    one_pass = net.cost_model((3, 32, 32)).macs_until(0)
    net.policy = Stricter(one_pass * 1.01)
    out = net(torch.randn(3, 3, 32, 32), count_cost=False)
    assert out.exit_step.tolist() == [0, 0, 0]
