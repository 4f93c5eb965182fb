"""Feedback from one iteration to the next: attention maps, direct features, none, user-registered."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from recurnet import FEEDBACK, AttentionFeedback, FeatureFeedback, Feedback, NoFeedback, loopify, register_feedback
from recurnet.feedback import build_feedback


@register_feedback("test_constant_half", overwrite=True)
class ConstantHalf(Feedback):
    """Test feedback: every later iteration refines ``F / 2``, whatever the refiner produced."""

    def __init__(self, refined_channels, feature_channels, scale):
        super().__init__()
        self.feature_channels = feature_channels

    def forward(self, refined, size):
        return torch.full((refined.shape[0], self.feature_channels, *size), 0.5)

    def combine(self, features, signal):
        return features * signal


def test_registry_lists_the_built_in_feedbacks():
    assert {"attention", "features", "none", "test_constant_half"} <= set(FEEDBACK.names())
    assert isinstance(build_feedback("attention", 64, 16, 4), AttentionFeedback)
    with pytest.raises(ValueError, match="feedback 'attention' is already registered"):
        register_feedback("attention")(AttentionFeedback)


@settings(max_examples=20, deadline=None)
@given(
    refined=st.sampled_from([3, 8, 16, 48]),
    features=st.sampled_from([1, 5, 16]),
    scale=st.sampled_from([1, 2, 3, 4, 8]),
    side=st.integers(1, 3),
)
def test_attention_map_in_unit_range_with_feature_shape(refined, features, scale, side):
    torch.manual_seed(0)
    fb = AttentionFeedback(refined, features, scale).eval()
    h = torch.randn(2, refined, side, side) * 10
    size = (side * scale, side * scale + 1)  # odd sizes end with a bilinear resize
    a = fb(h, size)
    assert a.shape == (2, features, *size)
    assert bool((a >= 0).all()) and bool((a <= 1).all())
    f = torch.randn(2, features, *size)
    torch.testing.assert_close(fb.combine(f, a), f * a)


def test_attention_decoder_layout():
    # 512 channels at 7x7 to 128 at 28x28 (ResNet-18 cut after layer2): two shuffle-conv steps, then conv1x1.
    fb = AttentionFeedback(512, 128, 4)
    convs = [m for m in fb.decoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (128, 512, (3, 3)),
        (128, 128, (3, 3)),
        (128, 128, (1, 1)),
    ]
    assert sum(isinstance(m, nn.PixelShuffle) for m in fb.decoder) == 2
    # Token models (scale 1): a conv1x1 only.
    assert [type(m) for m in AttentionFeedback(64, 64, 1).decoder] == [nn.Conv2d]


def test_feature_feedback_is_a_pixel_shuffle_when_channels_allow():
    fb = FeatureFeedback(256, 64, 4)
    assert sum(p.numel() for p in fb.parameters()) == 0
    h = torch.randn(2, 256, 7, 7)
    out = fb(h, (28, 28))
    assert out.shape == (2, 64, 28, 28)
    # One shuffle: channel 4c + 2i + j of h lands at offset (i, j) of the 2x2 cell of channel c,
    # then nearest-neighbour upsampling repeats every pixel twice in each direction.
    c, y, x = 5, 3, 6
    for i in range(2):
        for j in range(2):
            want = h[:, 4 * c + 2 * i + j, y, x]
            for dy in range(2):
                for dx in range(2):
                    torch.testing.assert_close(out[:, c, 4 * y + 2 * i + dy, 4 * x + 2 * j + dx], want)
    f = torch.randn(2, 64, 28, 28)
    torch.testing.assert_close(fb.combine(f, out), f + out)


def test_feature_feedback_projects_other_channel_counts():
    fb = FeatureFeedback(30, 16, 2)  # 30 is not divisible by 4: no shuffle, a conv1x1 30 -> 16
    assert isinstance(fb.project, nn.Conv2d) and (fb.project.in_channels, fb.project.out_channels) == (30, 16)
    assert fb(torch.randn(1, 30, 3, 3), (6, 6)).shape == (1, 16, 6, 6)


def test_no_feedback():
    fb = NoFeedback()
    assert fb(torch.randn(1, 8, 2, 2), (4, 4)) is None
    f = torch.randn(1, 3, 4, 4)
    assert fb.combine(f, None) is f


def _net(feedback, **kwargs):
    torch.manual_seed(0)
    return loopify(
        "test_resnet",
        2,
        max_loops=2,
        feedback=feedback,
        check_size=(64, 64),
        heads={"logits": lambda c: nn.Linear(c, 5)},
        **kwargs,
    ).eval()


def _iteration_by_hand(net, x_in, iteration):
    net._index.value = iteration
    try:
        return net.heads["logits"](net.adapter.pool(net.refiner(x_in)))
    finally:
        net._index.value = None


def test_attention_feeds_the_next_iteration(make_images):
    net = _net("attention")
    x = make_images(2)
    with torch.no_grad():
        out = net(x, exit="all", return_feedback=True)
        feats = net.extractor(x)
        assert out.feedback[0] is None
        for l in (1, 2):
            a = out.feedback[l]
            assert a.shape == feats.shape == (2, 48, 8, 8)
            assert bool((a >= 0).all()) and bool((a <= 1).all())
            # Iteration l refines F * A_l with its own norms.
            torch.testing.assert_close(_iteration_by_hand(net, feats * a, l), out.iterations[l]["logits"])
    assert out.feedback == [None, out.feedback[1], out.feedback[2]]
    assert net(x, exit="all").feedback == []  # not kept unless asked for


def test_feature_feedback_through_the_net(make_images):
    net = _net("features")
    with torch.no_grad():
        out = net(make_images(2), exit="all", return_feedback=True)
    # test_resnet: 96 channels at 2x2 after layer4 -> 48 channels at 8x8.
    assert out.feedback[1].shape == (2, 48, 8, 8)


def test_no_feedback_with_shared_norms_repeats_the_first_iteration(make_images):
    net = _net("none", norms="shared")
    with torch.no_grad():
        out = net(make_images(2), exit="all")
    for l in (1, 2):
        torch.testing.assert_close(out.iterations[l]["logits"], out.iterations[0]["logits"])


def test_user_registered_feedback_by_name(make_images):
    net = _net("test_constant_half")
    assert isinstance(net.feedback, ConstantHalf) and net.feedback.feature_channels == 48
    x = make_images(2)
    with torch.no_grad():
        out = net(x, exit="all")
        feats = net.extractor(x)
        torch.testing.assert_close(_iteration_by_hand(net, feats / 2, 2), out.iterations[2]["logits"])


def test_built_feedback_module_and_bad_types():
    fb = AttentionFeedback(96, 48, 4)
    assert _net(fb).feedback is fb
    with pytest.raises(TypeError, match="feedback must be a registered name or a Feedback module, got Conv2d"):
        _net(nn.Conv2d(1, 1, 1))
