"""LoopedNet over every backbone family: shapes, gradients, weight sharing, state, compaction, compile."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as nnf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import recurnet
from recurnet import FixedLoops, LearnedGate, LoopState, VarianceThreshold, count_params, loopify
from recurnet.norms import NORM_TYPES

hypothesis_settings = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _loss(out, target):
    """Cross-entropy summed over iterations plus the mean log-variance (so the uncertainty head is used)."""
    return sum(nnf.cross_entropy(o["logits"], target) for o in out.iterations) + sum(
        lv["logits"].mean() for lv in out.log_variance
    )


def _unzero_norm_scales(net):
    # ResNet-style blocks start with a zero last-norm scale, which blocks the gradient to the rest of the
    # block at initialisation; the first optimiser step moves it, so the test starts from there.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, NORM_TYPES) and getattr(m, "weight", None) is not None:
                m.weight[m.weight == 0] = 1.0


class ExitFirstHalfAt:
    """Test policy: samples in the first half of the batch exit after ``iteration``; the rest run to the end."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def __call__(self, state: LoopState) -> torch.Tensor:
        if state.iteration != self.iteration:
            return torch.zeros_like(state.index, dtype=torch.bool)
        return state.index < state.batch_size // 2


# ---------------------------------------------------------------------------- every family


def test_forward_shapes_no_nan_batch_kept(family, make_net, make_images):
    net = make_net(family, max_loops=2).train()
    out = net(make_images(3))
    assert out.num_iterations == 3
    for l in range(3):
        assert out.iterations[l]["logits"].shape == (3, 5)
        assert out.log_variance[l]["logits"].shape == (3, 5)
        assert out.features[l].shape == (3, 128)
        assert torch.isfinite(out.iterations[l]["logits"]).all()
        assert torch.isfinite(out.log_variance[l]["logits"]).all()
    assert out.exit_step.tolist() == [2, 2, 2]
    assert out.ran.shape == (3, 3) and bool(out.ran.all())
    assert out.macs.shape == (3,) and bool((out.macs > 0).all())

    net.eval()
    with torch.no_grad():
        single = net(make_images(1))
    assert single.final["logits"].shape == (1, 5)
    assert torch.isfinite(single.final["logits"]).all()


def test_every_parameter_gets_a_gradient(family, make_net, make_images):
    net = make_net(family, max_loops=2).train()
    net.policy = LearnedGate(128)  # trained separately (policy gradient): excluded here
    out = net(make_images(3))
    _loss(out, torch.tensor([0, 1, 2])).backward()
    policy = {id(p) for p in net.policy.parameters()}
    params = [(n, p) for n, p in net.named_parameters() if id(p) not in policy]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    assert all(p.grad is None for p in net.policy.parameters())

    # With no zero-initialised scale in the way, every parameter gets a non-zero gradient.
    net.zero_grad(set_to_none=True)
    _unzero_norm_scales(net)
    _loss(net(make_images(3)), torch.tensor([0, 1, 2])).backward()
    zero = [n for n, p in params if p.grad is None or not bool(p.grad.any())]
    assert not zero, f"zero gradient for {zero[:5]}"


def _norm_params_per_iteration(net) -> int:
    return sum(count_params(norm.norms[0]) for norm in net.per_iteration_norms)


def test_more_loops_add_only_per_iteration_norms(family, make_net):
    one = make_net(family, max_loops=1)
    three = make_net(family, max_loops=3)
    per_iteration = _norm_params_per_iteration(one)
    assert per_iteration > 0
    assert count_params(three) - count_params(one) == 2 * per_iteration
    # Everything outside the norms is the same set of tensors whatever the loop count.
    for name in ("extractor", "feedback", "heads", "uncertainty"):
        assert count_params(getattr(one, name)) == count_params(getattr(three, name))

    one.grow()
    one.grow()
    assert one.max_loops == 3
    assert count_params(one) == count_params(three)


def test_per_iteration_norms_are_separate(family, make_net, make_images):
    net = make_net(family, max_loops=2).train()
    _unzero_norm_scales(net)
    _loss(net(make_images(4)), torch.tensor([0, 1, 2, 3])).backward()
    norms = net.per_iteration_norms
    assert norms
    for norm in norms:
        copies = list(norm.norms)
        assert len(copies) == 3
        ids = [{id(p) for p in c.parameters()} for c in copies]
        assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    # Each iteration sees different inputs, so the copies collect different gradients ...
    first = norms[0]
    grads = [c.weight.grad for c in first.norms]
    assert not torch.equal(grads[0], grads[1]) and not torch.equal(grads[1], grads[2])
    # ... and, for batch norms, different running statistics.
    if family in ("convnext", "vit"):
        return
    stats = [n for n in norms if getattr(n.norms[0], "running_mean", None) is not None]
    assert stats
    for norm in stats:
        means = [c.running_mean for c in norm.norms]
        assert not torch.equal(means[0], means[1]) and not torch.equal(means[1], means[2])


def test_grow_copies_the_last_iteration_norms(family, make_net, make_images):
    net = make_net(family, max_loops=1).train()
    net(make_images(4))  # running statistics of iterations 0 and 1 now differ
    with torch.no_grad():
        for norm in net.per_iteration_norms:
            for p in norm.norms[-1].parameters():
                p.add_(0.5)  # make the last iteration's parameters distinguishable too
    net.grow()
    assert net.max_loops == 2
    for norm in net.per_iteration_norms:
        last, new = norm.norms[-2].state_dict(), norm.norms[-1].state_dict()
        assert last.keys() == new.keys()
        for key in last:
            assert torch.equal(last[key], new[key])
            if last[key].numel():
                assert last[key].data_ptr() != new[key].data_ptr()
    net.eval()
    with torch.no_grad():
        out = net(make_images(2), exit="all")
    assert out.num_iterations == 3


def test_eval_is_deterministic_and_stateless(family, make_net, make_images):
    net = make_net(family, max_loops=2).eval()
    net.policy = VarianceThreshold(1.0)
    x1, x2 = make_images(3, seed=1), make_images(2, seed=2)
    with torch.no_grad():
        alone = net(x2)
        net(x1)
        assert net._index.value is None
        after = net(x2)
    # Same images, same results, whatever ran in between.
    assert torch.equal(alone.exit_step, after.exit_step)
    for l in range(3):
        assert torch.equal(alone.iterations[l]["logits"], after.iterations[l]["logits"])
        assert torch.equal(alone.log_variance[l]["logits"], after.log_variance[l]["logits"])
    # The refiner cannot be called outside the loop with a stale iteration.
    with pytest.raises(RuntimeError, match="outside the loop"):
        net.refiner(net.extractor(x1))


def test_iteration_index_reset_after_an_error(make_net, make_images):
    net = make_net("resnet").eval()

    def broken(state):
        raise RuntimeError("policy failed")

    net.policy = broken
    with pytest.raises(RuntimeError, match="policy failed"):
        net(make_images(2))
    assert net._index.value is None


def _compare_compiled(net, x, modes, backend="eager", **tolerance):
    torch._dynamo.reset()
    net.policy = ExitFirstHalfAt(0)
    compiled = torch.compile(net, backend=backend)
    with torch.no_grad():
        for mode in modes:
            want, got = net(x, exit=mode), compiled(x, exit=mode)
            assert torch.equal(want.exit_step, got.exit_step)
            torch.testing.assert_close(got.final["logits"], want.final["logits"], **tolerance)
            torch.testing.assert_close(got.macs, want.macs)


def test_compile_traces_compaction(make_net, make_images):
    # Dynamo traces the loop, breaking the graph where the batch shrinks; results match eager.
    _compare_compiled(make_net("resnet", max_loops=1).eval(), make_images(4), ["compact"])


class _ExitEveryThird:
    """Test policy: at every decision, the samples at positions 0, 3, 6, ... of the running batch leave."""

    def __call__(self, state: LoopState) -> torch.Tensor:
        return torch.arange(state.index.numel(), device=state.index.device) % 3 == 0


def _counting_eager():
    calls = [0]

    def backend(gm, example_inputs):
        calls[0] += 1
        return gm.forward

    return backend, calls


def test_compiled_steps_match_eager_and_never_recompile_as_the_batch_shrinks(make_net, make_images):
    net = make_net("resnet", max_loops=3).eval()
    net.policy = _ExitEveryThird()
    reference = copy.deepcopy(net)
    backend, graphs = _counting_eager()
    assert net.compile_steps((3, 64, 64), backend=backend) is net
    warm = graphs[0]
    # every step has graphs for batch 1 and larger batches: the extractor with iteration 0, then 3 more
    assert warm >= 2 * (1 + 3)
    images = make_images(40)
    with torch.inference_mode():
        for b in (1, 2, 3, 7, 16, 17, 40):
            got, want = net(images[:b]), reference(images[:b])
            assert torch.equal(got.exit_step, want.exit_step)
            torch.testing.assert_close(got.final["logits"], want.final["logits"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.macs, want.macs)
    assert graphs[0] == warm  # batch sizes 1..40, shrinking at every exit: no recompilation


def test_compiled_steps_are_not_state_and_training_stays_eager(make_net, make_images):
    net = make_net("resnet", max_loops=1)
    backend, graphs = _counting_eager()
    net.compile_steps(backend=backend)  # no warm-up: compiled on first use
    assert graphs[0] == 0
    clone = copy.deepcopy(net)
    assert "_steps" not in clone.__dict__ and "_steps" in net.__dict__
    net.train()
    _loss(net(make_images(2)), torch.tensor([0, 1])).backward()
    assert graphs[0] == 0  # training mode ran the eager steps
    net.eval()
    with torch.inference_mode():
        net(make_images(2))
    assert graphs[0] > 0
    assert net.eager_steps() is net and "_steps" not in net.__dict__
    assert set(net.state_dict()) == set(clone.state_dict())


@pytest.mark.slow
def test_compile_traces_every_family(family, make_net, make_images):
    _compare_compiled(make_net(family, max_loops=2).eval(), make_images(4), ["all", "compact", "simulate"])


@pytest.mark.slow
def test_compile_inductor(make_net, make_images):
    net = make_net("resnet", max_loops=2).eval()
    _compare_compiled(net, make_images(4), ["all", "compact"], backend="inductor", rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_size_models_loop(full_family, make_net, make_images):
    net = make_net(full_family, max_loops=2).train()
    out = net(make_images(2))
    _loss(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert out.final["logits"].shape == (2, 5)


# ---------------------------------------------------------------------------- norm modes and options


def test_norm_modes(make_net):
    shared = make_net("resnet", max_loops=1, norms="shared")
    assert not shared.per_iteration_norms
    assert count_params(make_net("resnet", max_loops=3, norms="shared")) == count_params(shared)

    first = make_net("resnet", max_loops=1, norms="first")
    assert len(first.per_iteration_norms) == 1

    entry = make_net("resnet", max_loops=1, norms="entry")
    (norm,) = entry.per_iteration_norms
    # An added BatchNorm2d over the 48 extractor channels: weight and bias per iteration.
    assert count_params(entry) - count_params(shared) == 2 * (2 * 48)
    assert isinstance(norm.norms[0].norm, nn.BatchNorm2d)


def test_loops_argument_runs_fewer_iterations(make_net, make_images):
    net = make_net("resnet", max_loops=3).eval()
    with torch.no_grad():
        full, short = net(make_images(2), exit="all"), net(make_images(2), exit="all", loops=1)
    assert short.num_iterations == 2 and short.exit_step.tolist() == [1, 1]
    torch.testing.assert_close(short.iterations[1]["logits"], full.iterations[1]["logits"])
    assert bool((short.macs < full.macs).all())


def test_default_head_returns_pooled_features(make_images):
    torch.manual_seed(0)
    net = loopify("test_resnet", 2, max_loops=1, check_size=(64, 64)).eval()
    with torch.no_grad():
        out = net(make_images(2))
    # test_resnet's last stage has 96 channels.
    assert out.final["features"].shape == (2, 96)
    assert out.log_variance[0] == {} and out.features[0] is None


def test_head_returning_several_outputs(make_images):
    class TwoOutputs(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = nn.Linear(c, 2), nn.Linear(c, 6)

        def forward(self, x):
            return {"joints2d": self.a(x), "joints3d": self.b(x).view(-1, 2, 3)}

    net = loopify(
        "test_resnet", 2, max_loops=1, check_size=(64, 64), heads={"pose": TwoOutputs}, uncertainty=["joints3d"]
    )
    out = net.eval()(make_images(2))
    assert out.final["joints2d"].shape == (2, 2) and out.final["joints3d"].shape == (2, 2, 3)
    assert set(out.final_log_variance) == {"joints3d"}
    assert out.final_log_variance["joints3d"].shape == (2, 2, 3)


# ---------------------------------------------------------------------------- properties


@hypothesis_settings
@given(
    stage=st.integers(0, 3),
    loops=st.integers(0, 3),
    batch=st.integers(1, 4),
    size=st.integers(32, 80),
    threshold=st.floats(0.0, 2.0),
)
def test_shapes_and_exit_steps_property(make_net, make_images, families, stage, loops, batch, size, threshold):
    net = make_net(dataclasses.replace(families["resnet"], stage=stage), max_loops=loops).eval()
    net.policy = VarianceThreshold(threshold)
    with torch.no_grad():
        out = net(make_images(batch, size))
    assert out.num_iterations == loops + 1
    assert all(it["logits"].shape == (batch, 5) for it in out.iterations)
    assert out.exit_step.shape == (batch,) and out.exit_step.dtype == torch.long
    assert bool((out.exit_step >= 0).all()) and bool((out.exit_step <= loops).all())
    # ran[l] is True exactly up to the exit step; the last iteration holds each sample's exit prediction.
    steps = torch.arange(loops + 1)[:, None]
    assert torch.equal(out.ran, steps <= out.exit_step[None])
    for b, e in enumerate(out.exit_step.tolist()):
        assert torch.equal(out.final["logits"][b], out.iterations[e]["logits"][b])
    assert out.mean_loops == pytest.approx(out.exit_step.double().mean().item())


# ---------------------------------------------------------------------------- compaction


@pytest.fixture(scope="module")
def net64():
    """A float64 looped test_resnet: compaction must then agree with the full run to rounding."""
    torch.manual_seed(0)
    net = loopify(
        "test_resnet",
        2,
        max_loops=3,
        check_size=(64, 64),
        heads={"logits": lambda c: nn.Linear(c, 5)},
        uncertainty=True,
        uncertainty_hidden=16,
    )
    # Spread the predicted variances so that thresholds split the batch.
    with torch.no_grad():
        for layer in net.uncertainty.project.values():
            layer.weight.normal_(std=0.3)
    return net.double().eval()


def _policy(kind: str, value: float, seed: int, full) -> object:
    """Policy ``kind`` calibrated on the all-iterations run ``full`` so that ``value`` in [0, 1) splits the batch."""
    if kind == "fixed":
        return FixedLoops(int(value * 4))
    if kind == "half":
        return ExitFirstHalfAt(int(value * 3))
    if kind == "variance":
        policy = VarianceThreshold(0.0)
        variances = torch.cat([policy.mean_variance(lv) for lv in full.log_variance[:-1]])
        policy.threshold = torch.quantile(variances, value).item()
        return policy
    torch.manual_seed(seed)
    gate = LearnedGate(16, temperature=0.2 + 4 * value, mode="sample" if kind == "gate_sample" else "greedy").double()
    if kind == "gate_greedy":
        # Shift the exit logit so that a fraction ``value`` of the (sample, iteration) pairs says "exit".
        with torch.no_grad():
            logits = gate.logits(torch.cat(full.features[:-1]))
            gate.net[-1].bias[gate.EXIT] -= torch.quantile(logits[:, 1] - logits[:, 0], 1 - value)
    return gate


@settings(hypothesis_settings, max_examples=25)
@given(
    batch=st.integers(1, 9),
    kind=st.sampled_from(["fixed", "variance", "gate_sample", "gate_greedy", "half"]),
    value=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_compacted_equals_simulated(net64, make_images, batch, kind, value, seed):
    x = make_images(batch, seed=seed, dtype=torch.float64)
    with torch.no_grad():
        net64.policy = _policy(kind, value, seed, net64(x, exit="all"))
        compact = net64(x, exit="compact", generator=torch.Generator().manual_seed(seed), return_feedback=True)
        simulated = net64(x, exit="simulate", generator=torch.Generator().manual_seed(seed), return_feedback=True)
    assert torch.equal(compact.exit_step, simulated.exit_step)
    assert torch.equal(compact.ran, simulated.ran)
    assert torch.equal(compact.macs, simulated.macs)
    tight = dict(rtol=1e-12, atol=1e-12)
    for l in range(4):
        torch.testing.assert_close(compact.iterations[l]["logits"], simulated.iterations[l]["logits"], **tight)
        torch.testing.assert_close(compact.log_variance[l]["logits"], simulated.log_variance[l]["logits"], **tight)
        torch.testing.assert_close(compact.features[l], simulated.features[l], **tight)
        if simulated.feedback[l] is None:
            assert compact.feedback[l] is None
        else:
            torch.testing.assert_close(compact.feedback[l], simulated.feedback[l], **tight)


def test_compaction_output_fields(net64, make_images):
    net64.policy = ExitFirstHalfAt(1)
    x = make_images(4, dtype=torch.float64)
    with torch.no_grad():
        out = net64(x)  # eval mode: compacts by default
        full = net64(x, exit="all")
    assert out.exit_step.tolist() == [1, 1, 3, 3]
    assert out.ran.tolist() == [[True] * 4, [True] * 4, [False, False, True, True], [False, False, True, True]]
    assert out.mean_loops == 2.0
    cost = net64.cost_model((3, 64, 64))
    assert out.macs.tolist() == [cost.macs_until(1)] * 2 + [cost.macs_until(3)] * 2
    assert out.mean_macs == (cost.macs_until(1) + cost.macs_until(3)) / 2
    # Exited samples carry their iteration-1 prediction forward; the others hold their own.
    for l in (2, 3):
        torch.testing.assert_close(out.iterations[l]["logits"][:2], full.iterations[1]["logits"][:2])
        torch.testing.assert_close(out.iterations[l]["logits"][2:], full.iterations[l]["logits"][2:])


def test_everyone_exits_at_once(net64, make_images):
    net64.policy = FixedLoops(0)
    with torch.no_grad():
        out = net64(make_images(3, dtype=torch.float64), return_feedback=True)
    assert out.exit_step.tolist() == [0, 0, 0]
    assert out.num_iterations == 4
    assert out.feedback == [None] * 4
    assert all(torch.equal(it["logits"], out.iterations[0]["logits"]) for it in out.iterations)


def test_compaction_skips_compute(net64, make_images):
    from torch.utils.flop_counter import FlopCounterMode

    x = make_images(8, dtype=torch.float64)
    net64.policy = ExitFirstHalfAt(0)
    net64(x[:1])  # count the cost model outside the measured runs

    def counted(mode):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net64(x, exit=mode)
        return counter.get_total_flops() // 2

    compact, simulate = counted("compact"), counted("simulate")
    cost = net64.cost_model((3, 64, 64))
    # Half the batch skips iterations 1..3 altogether.
    assert compact == 4 * cost.macs_until(0) + 4 * cost.macs_until(3)
    assert simulate == 8 * cost.macs_until(3)
    assert compact < simulate


# ---------------------------------------------------------------------------- bad input


def test_bad_images_fail_clearly(make_net):
    net = make_net("resnet").eval()
    with pytest.raises(ValueError, match="input has 1 channels, the backbone expects 3"):
        net(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"input of \(16, 64\) px is too small.*at least 32 px"):
        net(torch.randn(2, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) image tensor, got \(3, 64, 64\)"):
        net(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) image tensor, got list"):
        net([[0.0]])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) image tensor, got ndarray"):
        net(torch.randn(1, 3, 64, 64).numpy())


def test_token_model_at_another_size_fails_clearly(make_net, make_images):
    net = make_net("vit").eval()  # built for 64 px: a 4x4 grid of 16 px patches
    with pytest.raises(ValueError, match=r"expects 4x4=16 patch tokens, got 9; build the model for this input size"):
        net(make_images(2, size=48))
    assert net._index.value is None


def test_bad_call_arguments_fail_clearly(make_net, make_images):
    net = make_net("resnet", max_loops=2)
    with pytest.raises(ValueError, match=r"exit must be one of \('all', 'compact', 'simulate'\), got 'fast'"):
        net(make_images(2), exit="fast")
    with pytest.raises(ValueError, match=r"loops must be in 0..2, got 3"):
        net(make_images(2), loops=3)
    with pytest.raises(TypeError, match=r"build_policy\('variance', ...\)"):
        net.policy = "variance"
    with pytest.raises(TypeError, match="policy must be callable"):
        net.policy = 0.5


def test_bad_loopify_arguments_fail_clearly():
    with pytest.raises(ValueError, match="max_loops must be a non-negative integer, got -1"):
        loopify("test_resnet", 2, max_loops=-1, check_size=(64, 64))
    with pytest.raises(ValueError, match="norms must be one of"):
        loopify("test_resnet", 2, norms="every", check_size=(64, 64))
    with pytest.raises(KeyError, match="unknown feedback 'amg'; registered: attention, features, none"):
        loopify("test_resnet", 2, feedback="amg", check_size=(64, 64))
    with pytest.raises(recurnet.SplitError, match="stage 9 is out of range"):
        loopify("test_resnet", 9, check_size=(64, 64))
    with pytest.raises(ValueError, match=r"uncertainty asked for outputs \['pose'\]"):
        loopify("test_resnet", 2, uncertainty=["pose"], check_size=(64, 64))
    with pytest.raises(TypeError, match="need a model name"):
        loopify(nn.Sequential(), 2, img_size=64)
    with pytest.raises(TypeError, match="backbone must be a timm model name or nn.Module, got int"):
        loopify(3, 2)
    with pytest.raises(ValueError, match="head names must be identifiers"):
        loopify("test_resnet", 2, heads={"my head": nn.Identity()}, check_size=(64, 64))


def test_auxiliary_heads_run_in_training_only_and_cost_nothing():
    aux = {"dense": lambda c: nn.Conv2d(c, 2, 1)}
    net = loopify("test_resnet", stage=1, max_loops=1, check_size=(32, 32), auxiliary=aux,
                  heads={"y": lambda c: nn.Linear(c, 1)})
    plain = loopify("test_resnet", stage=1, max_loops=1, check_size=(32, 32), heads={"y": lambda c: nn.Linear(c, 1)})
    x = torch.randn(2, 3, 32, 32)
    out = net.train()(x)
    feats = net.extractor(x)
    assert out.auxiliary["dense"].shape == (2, 2, *feats.shape[-2:])
    assert net.eval()(x).auxiliary == {}
    assert net(x, return_auxiliary=True).auxiliary["dense"].shape[1] == 2
    # The cost model (and so out.macs) leaves the training-only heads out.
    assert net.cost_model((3, 32, 32)) == plain.cost_model((3, 32, 32))


def test_a_looped_net_built_from_parts_runs():
    from recurnet.feedback import FEEDBACK
    from recurnet.heads import build_heads
    from recurnet.split import split_backbone

    parts = split_backbone(timm.create_model("test_resnet", pretrained=False), 1, check_size=(32, 32))
    feedback = FEEDBACK.build("attention", parts.refiner_channels, parts.stage.channels, parts.scale)
    heads = build_heads({"y": lambda c: nn.Linear(c, 2)}, parts.refiner_channels)
    net = recurnet.LoopedNet(parts, 1, feedback, heads)
    assert net.in_chans == 3
    out = net.eval()(torch.randn(2, 3, 32, 32))
    assert out.final["y"].shape == (2, 2) and out.macs.shape == (2,)


def test_compaction_is_refused_in_training_mode():
    net = loopify("test_resnet", stage=1, max_loops=1, check_size=(32, 32), heads={"y": lambda c: nn.Linear(c, 1)},
                  policy=FixedLoops(0))
    with pytest.raises(ValueError, match="compact.*eval mode"):
        net.train()(torch.randn(2, 3, 32, 32), exit="compact")
    assert net(torch.randn(2, 3, 32, 32), exit="simulate").exit_step.tolist() == [0, 0]
