"""Cutting timm backbones into extractor and refiner."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import recurnet
from recurnet import SplitError, split_backbone
from recurnet.split import MapAdapter, TokenAdapter


def _split(fam, stage=None):
    model = fam.create().eval()
    return model, split_backbone(model, fam.stage if stage is None else stage, check_size=(64, 64))


def test_cut_reproduces_timm(family, families, make_images):
    model, parts = _split(families[family])
    x = make_images(2)
    with torch.no_grad():
        feats = parts.extractor.eval()(x)
        out = parts.refiner.eval()(feats)
        want_feats = model.forward_intermediates(x, indices=[parts.stage.index], intermediates_only=True)[0]
        want_out = model.forward_features(x)
    torch.testing.assert_close(parts.adapter.to_map(feats), want_feats, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    entry = model.feature_info[parts.stage.index]
    assert (parts.stage.module, parts.stage.channels, parts.stage.reduction) == (
        entry["module"],
        entry["num_chs"],
        entry["reduction"],
    )
    assert parts.refiner_channels == parts.adapter.pool(out).shape[1]


def test_split_owns_exactly_the_feature_parameters(family, families, make_images):
    """The pieces hold the very parameters forward_features uses: shared, not copied, none missing."""
    model, parts = _split(families[family])
    model.train()
    model.forward_features(make_images(2)).sum().backward()
    used = {id(p) for p in model.parameters() if p.grad is not None}
    owned = {id(p) for p in list(parts.extractor.parameters()) + list(parts.refiner.parameters())}
    assert owned == used


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_inner_stage_of_resnet_can_be_cut(stage, families):
    model, parts = _split(families["resnet"], stage)
    assert parts.stage.index == stage
    # test_resnet strides 2, 4, 8, 16, 32; the refiner always ends at stride 32.
    assert parts.scale == 32 // parts.stage.reduction
    assert isinstance(parts.adapter, MapAdapter)


def test_negative_stage_counts_from_the_end(families):
    _, parts = _split(families["resnet"], -2)
    assert (parts.stage.index, parts.stage.module) == (3, "layer3")


def test_default_check_size_comes_from_the_model_config():
    model = timm.create_model("test_resnet")  # pretrained_cfg input size 160 px
    parts = split_backbone(model, 2)
    assert parts.scale == 4


def test_token_adapter_round_trip_and_pooling(families):
    model, parts = _split(families["vit"])
    adapter = parts.adapter
    assert isinstance(adapter, TokenAdapter)
    assert adapter.grid_size == (4, 4) and parts.scale == 1
    tokens = torch.randn(3, adapter.num_prefix_tokens + 16, 64)
    fmap = adapter.to_map(tokens)
    assert fmap.shape == (3, 64, 4, 4)
    # Patch token 5 sits at row 1, column 1 of the 4x4 grid.
    torch.testing.assert_close(fmap[:, :, 1, 1], tokens[:, adapter.num_prefix_tokens + 5])
    torch.testing.assert_close(adapter.from_map(tokens, fmap), tokens)
    replaced = adapter.from_map(tokens, torch.zeros_like(fmap))
    torch.testing.assert_close(replaced[:, : adapter.num_prefix_tokens], tokens[:, : adapter.num_prefix_tokens])
    assert replaced[:, adapter.num_prefix_tokens :].abs().sum() == 0


def test_token_adapter_pool_types():
    tokens = torch.randn(2, 1 + 4, 8)
    by_token = TokenAdapter(1, (2, 2), "token", nn.Identity())
    by_mean = TokenAdapter(1, (2, 2), "avg", nn.Identity())
    torch.testing.assert_close(by_token.pool(tokens), tokens[:, 0])
    torch.testing.assert_close(by_mean.pool(tokens), tokens[:, 1:].mean(dim=1))
    with pytest.raises(SplitError, match="class token"):
        TokenAdapter(0, (2, 2), "token", nn.Identity())
    with pytest.raises(SplitError, match="attention pool"):
        TokenAdapter(1, (2, 2), "map", nn.Identity())
    with pytest.raises(SplitError, match="not ''"):
        TokenAdapter(1, (2, 2), "", nn.Identity())
    by_max = TokenAdapter(1, (2, 2), "avgmax", nn.Identity())
    torch.testing.assert_close(by_max.pool(tokens), 0.5 * (tokens[:, 1:].amax(dim=1) + tokens[:, 1:].mean(dim=1)))
    both = TokenAdapter(2, (2, 2), "token", nn.Identity(), distilled=True)
    six = torch.randn(2, 2 + 4, 8)
    torch.testing.assert_close(both.pool(six), (six[:, 0] + six[:, 1]) / 2)


def test_token_adapter_rejects_other_grid_sizes(families):
    _, parts = _split(families["vit"])
    with pytest.raises(ValueError, match="4x4=16 patch tokens, got 9"):
        parts.adapter.to_map(torch.randn(1, parts.adapter.num_prefix_tokens + 9, 64))


def test_vit_position_embedding_moves_with_the_extractor(families):
    """The class token and position embedding belong to the extractor (dtype and device changes reach them)."""
    _, parts = _split(families["vit"])
    extractor = parts.extractor.double()
    names = {n for n, _ in extractor.named_parameters()}
    assert {"stem.cls_token", "stem.pos_embed"} <= names
    assert extractor(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64
    meta = extractor.to("meta")
    assert meta(torch.empty(1, 3, 64, 64, dtype=torch.float64, device="meta")).device.type == "meta"


# ---------------------------------------------------------------------------- bad input


def test_stage_out_of_range_lists_the_stages():
    model = timm.create_model("test_resnet")
    with pytest.raises(SplitError, match=r"stage 7 is out of range.*5 stages \(0\.\.4\).*2=layer2"):
        split_backbone(model, 7, check_size=(64, 64))
    with pytest.raises(SplitError, match="out of range"):
        split_backbone(model, -6, check_size=(64, 64))


def test_last_stage_leaves_nothing_to_loop():
    with pytest.raises(SplitError, match="last stage.*nothing is left to loop"):
        split_backbone(timm.create_model("test_resnet"), 4, check_size=(64, 64))
    with pytest.raises(SplitError, match="last transformer block"):
        split_backbone(timm.create_model("test_vit", img_size=64), 5, check_size=(64, 64))


@pytest.mark.parametrize("stage", [1, 2])
def test_non_sequential_model_is_refused(stage):
    model = timm.create_model("hrnet_w18_small")
    with pytest.raises(SplitError, match="HighResolutionNet.*(not one of the units|not a plain sequence)"):
        split_backbone(model, stage, check_size=(64, 64))


def test_model_without_feature_info_is_refused():
    with pytest.raises(SplitError, match="Sequential has no timm feature_info"):
        split_backbone(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 0)


def test_cut_that_does_not_reproduce_timm_is_refused():
    # The units run as a chain, but the model's own forward does something else: the numeric check catches it.
    with pytest.raises(SplitError, match="_TinyMismatch at stage 0 .* does not reproduce timm's refiner output"):
        split_backbone(_TinyMismatch(), 0, check_size=(8, 8))


@pytest.mark.slow
def test_vgg_is_refused():
    # VGG's pre-logits convolutions sit between the features and the classifier, outside forward_features.
    with pytest.raises(SplitError, match="VGG at stage 2 .* does not reproduce"):
        split_backbone(timm.create_model("vgg11"), 2, check_size=(64, 64))


class _TinyMismatch(nn.Module):
    """A timm-like model whose forward_features scales its last unit's output: not a plain chain."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.feature_info = [dict(module="stem", num_chs=4, reduction=1), dict(module="body", num_chs=4, reduction=1)]

    def forward_intermediates(self, x, indices, intermediates_only=True):
        return [self.stem(x)]

    def forward_features(self, x):
        return 2 * self.body(self.stem(x))


@pytest.mark.slow
def test_full_size_models_cut(full_family, make_images):
    model = full_family.create().eval()
    parts = split_backbone(model, full_family.stage, check_size=(64, 64))
    with torch.no_grad():
        out = parts.refiner.eval()(parts.extractor.eval()(make_images(2)))
        torch.testing.assert_close(out, model.forward_features(make_images(2)), rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("name,kwargs,prefix", [
    ("deit_tiny_distilled_patch16_224", {}, 2),  # class + distillation token
    ("test_vit", {"reg_tokens": 2}, 3),  # class + two register tokens
    ("test_vit3", {}, None),  # global_pool='map': an attention-pooling head
    ("test_vit", {"global_pool": "avgmax"}, None),
])
def test_vit_variants_cut_loop_and_pool_like_timm(name, kwargs, prefix):
    size = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2) if name.startswith("deit") else {}
    model = timm.create_model(name, pretrained=False, **size, **kwargs).eval()
    hw = tuple(model.patch_embed.img_size)
    parts = split_backbone(model, 1, check_size=hw)  # verified against timm, pooling included
    if prefix is not None:
        assert parts.adapter.num_prefix_tokens == prefix
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(parts.adapter.pool(parts.refiner(parts.extractor(x))), want, rtol=1e-4, atol=1e-4)
    # loopify converts the model's norms in place, so it comes last.
    net = recurnet.loopify(model, 1, max_loops=1, check_size=hw, heads={"y": lambda c: nn.Linear(c, 3)}).eval()
    with torch.no_grad():
        out = net(x, exit="all")
    assert out.iterations[1]["y"].shape == (2, 3) and torch.isfinite(out.iterations[1]["y"]).all()


SWIN_TINY = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=64, window_size=4)


@pytest.mark.parametrize("name,kwargs", [("test_mambaout", {}), ("swin_tiny_patch4_window7_224", SWIN_TINY)])
@pytest.mark.parametrize("norms", ["all", "entry"])
def test_channels_last_backbones_loop(name, kwargs, norms):
    from recurnet.split import ChannelsLastAdapter

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    net = recurnet.loopify(model, 1, max_loops=2, check_size=(64, 64), norms=norms, uncertainty=True,
                           heads={"y": lambda c: nn.Linear(c, 3)})
    assert isinstance(net.adapter, ChannelsLastAdapter)
    x = torch.randn(3, 3, 64, 64)
    out = net.train()(x, exit="all")
    sum(it["y"].sum() for it in out.iterations).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.eval().policy = recurnet.FixedLoops(1)
    with torch.no_grad():
        compact, simulated = net(x, exit="compact"), net(x, exit="simulate")
    torch.testing.assert_close(compact.final["y"], simulated.final["y"])
    assert compact.exit_step.tolist() == [1, 1, 1]


def test_channels_last_adapter_round_trips():
    from recurnet.split import ChannelsLastAdapter

    a = ChannelsLastAdapter()
    x = torch.randn(2, 5, 6, 7)  # (B, H, W, C)
    assert a.to_map(x).shape == (2, 7, 5, 6)
    torch.testing.assert_close(a.from_map(x, a.to_map(x)), x)
    torch.testing.assert_close(a.pool(x), x.mean(dim=(1, 2)))


def test_a_feature_taken_inside_a_unit_is_refused_with_that_reason():
    model = timm.create_model("xception41", pretrained=False)  # features at blocks.k.stack.act3
    with pytest.raises(SplitError, match=r"'blocks.1.stack.act3' is taken inside the unit 'blocks.1'"):
        split_backbone(model, 1, check_size=(64, 64))


def test_blocks_iterated_by_the_model_itself_are_refused_with_that_reason():
    model = timm.create_model("test_vit_relpos", pretrained=False)  # blocks get a shared position bias
    with pytest.raises(SplitError, match="a ModuleList that the model's forward iterates itself"):
        split_backbone(model, 2)
