"""No hidden state between or during calls: threads, copies, pickles, the cost cache, policy costs."""

from __future__ import annotations

import copy
import io
import pickle
import threading

import pytest
import torch

import recurnet
from recurnet import VarianceThreshold, loopify
from recurnet.looped import COST_CACHE_SIZE


def _net():
    torch.manual_seed(0)
    net = loopify("test_resnet", 2, max_loops=2, check_size=(64, 64), uncertainty=True,
                  heads={"logits": lambda c: torch.nn.Linear(c, 5)}).eval()
    with torch.no_grad():  # distinct per-iteration norms, so a wrong index changes the result
        for norm in net.per_iteration_norms:
            for i, copy_ in enumerate(norm.norms):
                if getattr(copy_, "weight", None) is not None:
                    copy_.weight.mul_(1.0 + 0.5 * i)
    return net


def test_threads_calling_one_network_match_sequential_calls():
    net = _net()
    inputs = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    with torch.no_grad():
        expected = [net(x, exit="all").iterations[-1]["logits"] for x in inputs]
    results, errors = [None] * len(inputs), []
    barrier = threading.Barrier(4)

    def work(k):
        try:
            barrier.wait()
            for i in range(k, len(inputs), 4):
                with torch.no_grad():
                    for _ in range(3):
                        results[i] = net(inputs[i], exit="all").iterations[-1]["logits"]
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)


def test_copies_and_pickles_get_their_own_iteration_index():
    net = _net()
    x = torch.randn(2, 3, 64, 64)
    clone = copy.deepcopy(net)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    pickled = pickle.loads(pickle.dumps(net))
    with torch.no_grad():
        want = net(x, exit="all").iterations[-1]["logits"]
        for other in (clone, loaded, pickled):
            indices = {id(n._index) for n in other.per_iteration_norms}
            assert len(indices) == 1 and indices != {id(net._index)} and id(other._index) in indices
            torch.testing.assert_close(other(x, exit="all").iterations[-1]["logits"], want)


def test_the_cost_cache_is_bounded_and_counts_are_reused():
    net = _net()
    first = net.cost_model((3, 64, 64))
    assert net.cost_model((3, 64, 64)) is first
    for size in range(64, 64 + 4 * (COST_CACHE_SIZE + 3), 4):
        net.cost_model((3, size, size))
    assert len(net._cost_cache) == COST_CACHE_SIZE
    assert net.cost_model((3, 64, 64)) is not first  # evicted long ago, counted again
    assert net.cost_model((3, 64, 64)).macs_per_sample(torch.tensor([2])) == first.macs_per_sample(torch.tensor([2]))


def test_a_policy_whose_cost_cannot_be_counted_is_an_error_not_zero():
    net = _net()

    def picky(state):
        if state.batch_size < 2:
            raise ValueError("needs two samples")
        return torch.zeros_like(state.index, dtype=torch.bool)

    net.policy = picky
    with pytest.raises(ValueError, match="needs two samples") as info:
        net(torch.randn(2, 3, 64, 64))
    if hasattr(info.value, "__notes__"):
        assert "counting the cost of exit policy function" in info.value.__notes__[0]
    out = net(torch.randn(2, 3, 64, 64), count_cost=False)  # the way out the message names
    assert out.exit_step.tolist() == [2, 2]
    net.policy = VarianceThreshold(0.5)
    assert net.cost_model((3, 64, 64)).policy.macs >= 0


def test_a_refiner_outside_its_loop_still_fails_clearly():
    net = _net()
    with pytest.raises(RuntimeError, match="outside the loop"):
        net.refiner(net.extractor(torch.randn(1, 3, 64, 64)))
    assert isinstance(net._index, recurnet.norms.IterationIndex)
