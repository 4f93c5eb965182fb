"""Per-iteration norms: one copy per iteration, selected by a shared index, growable."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d, LayerNorm2d
from torch import nn

from recurnet.norms import EntryNorm, IterationIndex, PerIterationNorm, convert_norms


def _scaled_bn(scale: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.weight.fill_(scale)
    return bn


def test_index_selects_the_copy():
    index = IterationIndex()
    norm = PerIterationNorm(_scaled_bn(1.0), num_iterations=3, index=index).eval()
    with torch.no_grad():
        for i, scale in enumerate((1.0, 2.0, -3.0)):
            norm.norms[i].weight.fill_(scale)
    x = torch.randn(2, 2, 3, 3)
    for i, scale in enumerate((1.0, 2.0, -3.0)):
        index.value = i
        # Fresh statistics (mean 0, variance 1) and zero bias: the output is weight * x / sqrt(1 + eps).
        torch.testing.assert_close(norm(x), scale * x / (1 + 1e-5) ** 0.5)


def test_copies_start_equal_and_are_independent():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.weight.fill_(2.0)
    norm = PerIterationNorm(bn, num_iterations=2, index=IterationIndex())
    for copy in norm.norms:
        assert torch.equal(copy.running_mean, bn.running_mean) and torch.equal(copy.weight, bn.weight)
        assert copy.weight is not bn.weight
    assert norm.norms[0].weight is not norm.norms[1].weight


def test_training_updates_only_the_running_iteration():
    index = IterationIndex()
    norm = PerIterationNorm(nn.BatchNorm2d(2, momentum=1.0), num_iterations=2, index=index).train()
    x = torch.zeros(4, 2, 3, 3)
    x[:, 0] = 5.0
    index.value = 1
    norm(x)
    # momentum 1: running mean becomes the batch mean, for iteration 1 only.
    assert norm.norms[1].running_mean.tolist() == [5.0, 0.0]
    assert norm.norms[0].running_mean.tolist() == [0.0, 0.0]


def test_called_outside_the_loop_fails():
    norm = PerIterationNorm(nn.BatchNorm2d(2), num_iterations=2, index=IterationIndex())
    with pytest.raises(RuntimeError, match="outside the loop"):
        norm(torch.randn(2, 2, 3, 3))


def test_needs_at_least_one_iteration():
    with pytest.raises(ValueError, match="num_iterations must be >= 1, got 0"):
        PerIterationNorm(nn.BatchNorm2d(2), num_iterations=0, index=IterationIndex())


def test_grow_copies_the_last_state():
    index = IterationIndex()
    norm = PerIterationNorm(nn.BatchNorm2d(2, momentum=1.0), num_iterations=2, index=index).train()
    index.value = 1
    norm(torch.full((4, 2, 3, 3), 7.0))
    with torch.no_grad():
        norm.norms[1].weight.fill_(3.0)
    norm.grow()
    assert len(norm.norms) == 3
    assert norm.norms[2].running_mean.tolist() == [7.0, 7.0]
    assert norm.norms[2].weight.tolist() == [3.0, 3.0]
    assert norm.norms[2].weight is not norm.norms[1].weight
    assert norm.norms[2].num_batches_tracked.item() == 1


def test_batchnorm_act_keeps_its_activation():
    index = IterationIndex()
    norm = PerIterationNorm(BatchNormAct2d(2, act_layer=nn.ReLU), num_iterations=2, index=index).eval()
    index.value = 1
    out = norm(torch.full((1, 2, 2, 2), -1.0))
    assert isinstance(norm.norms[1], BatchNormAct2d)
    assert torch.equal(out, torch.zeros_like(out))  # ReLU of a negative normalised input


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.ln = LayerNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.tokens = nn.LayerNorm(4)

    def forward(self, x):
        x = self.gn(self.ln(self.bn(self.conv(x))))
        return self.tokens(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_convert_norms_converts_every_norm_type():
    block = _Block()
    index = IterationIndex()
    names = convert_norms(block, 3, index)
    assert names == ["bn", "ln", "gn", "tokens"]
    assert all(isinstance(getattr(block, n), PerIterationNorm) for n in names)
    assert isinstance(block.conv, nn.Conv2d)
    assert isinstance(block.ln.norms[2], LayerNorm2d)
    index.value = 2
    assert block(torch.randn(2, 4, 5, 5)).shape == (2, 4, 5, 5)
    # Converting twice does not nest containers.
    assert convert_norms(block, 3, index) == []


def test_convert_only_the_first_norm():
    block = _Block()
    names = convert_norms(block, 2, IterationIndex(), only_first=True)
    assert names == ["bn"]
    assert isinstance(block.bn, PerIterationNorm) and isinstance(block.ln, LayerNorm2d)


def test_nested_norms_are_converted_with_their_parent():
    class Outer(nn.BatchNorm2d):
        def __init__(self):
            super().__init__(2)
            self.inner = nn.LayerNorm(2)

    model = nn.Sequential(Outer())
    names = convert_norms(model, 2, IterationIndex())
    assert names == ["0"]
    assert isinstance(model[0].norms[1].inner, nn.LayerNorm)


def test_entry_norm():
    maps, tokens = EntryNorm(6), EntryNorm(6, tokens=True)
    assert isinstance(maps.norm, nn.BatchNorm2d) and isinstance(tokens.norm, nn.LayerNorm)
    out = tokens(torch.randn(2, 10, 6) * 5 + 3)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
    assert maps(torch.randn(3, 6, 4, 4)).shape == (3, 6, 4, 4)
