"""Cut a timm backbone at a stage into an extractor (run once) and a refiner (looped).

timm describes every backbone's stages in ``model.feature_info``: the module
that ends the stage, its channels and its stride. ``split_backbone(model, k)``
flattens the model into the ordered list of units it runs (plain
``nn.Sequential`` containers are opened, as timm's own feature wrapper does),
drops the classifier head, and cuts after the last unit of
``feature_info[k]["module"]``. The cut is verified numerically against timm's
own ``forward_intermediates`` and ``forward_features``; a model whose forward
is not the plain chain of its units fails that check and is refused.

Vision transformers are cut between blocks by :class:`TokenAdapter`, which
carries class/register tokens through the loop and shows the patch tokens as a
``(B, C, H, W)`` map wherever a feature map is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "SplitError",
    "StageInfo",
    "FeatureAdapter",
    "ChannelsLastAdapter",
    "MapAdapter",
    "TokenAdapter",
    "SplitBackbone",
    "split_backbone",
]

# Top-level names that start a timm classifier head; everything from the first one on is dropped.
#: ``global_pool`` settings of timm's ViTs that :class:`TokenAdapter` reproduces.
TOKEN_POOLS = ("token", "avg", "max", "avgmax", "map")

_HEAD_NAMES = frozenset({"global_pool", "fc", "classifier", "head", "head_drop", "fc_norm", "attn_pool", "flatten"})


class SplitError(ValueError):
    """Raised when a model cannot be cut at the requested stage, with the reason."""


@dataclass(frozen=True)
class StageInfo:
    """Where a backbone was cut.

    Attributes:
        index: position in ``model.feature_info``.
        module: the timm module name that ends the stage (e.g. ``"layer2"``).
        channels: channels of the extractor output.
        reduction: stride of the extractor output relative to the image.
    """

    index: int
    module: str
    channels: int
    reduction: int


class FeatureAdapter(nn.Module):
    """How the loop sees a backbone's features.

    Convolutional backbones pass ``(B, C, H, W)`` maps between stages;
    transformers pass token sequences. An adapter hides the difference:
    :meth:`to_map` shows features as a map (for feedback decoders),
    :meth:`from_map` writes a map back into the native layout, and
    :meth:`pool` turns the refiner output into one vector per sample for the heads.
    """

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """Native features -> ``(B, C, H, W)``."""
        raise NotImplementedError

    def from_map(self, x: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """Replace the spatial content of native features ``x`` with ``feature_map`` ``(B, C, H, W)``."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Native refiner output -> ``(B, C)`` pooled features."""
        raise NotImplementedError


class MapAdapter(FeatureAdapter):
    """Adapter for NCHW convolutional backbones: features already are maps; pooling is a global mean."""

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def from_map(self, x: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ChannelsLastAdapter(FeatureAdapter):
    """Adapter for backbones whose stages pass ``(B, H, W, C)`` maps (Swin, MambaOut, ...).

    ``to_map`` / ``from_map`` permute to and from NCHW; pooling is a global mean over
    ``H, W``. A norm placed in front of such a refiner normalises the last (channel) axis.
    """

    channels_last = True

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)

    def from_map(self, x: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.permute(0, 2, 3, 1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2))


class TokenAdapter(FeatureAdapter):
    """Adapter for ViT-style token sequences ``(B, P + H*W, C)`` with ``P`` prefix tokens.

    Args:
        num_prefix_tokens: class, distillation and register tokens ahead of the patch tokens.
        grid_size: ``(H, W)`` of the patch grid at the size the model was built for.
        pool_type: timm's ``global_pool``: ``"token"`` (first prefix token), ``"avg"``,
            ``"max"`` or ``"avgmax"`` over the patch tokens, or ``"map"`` (the model's
            attention-pooling head, passed as ``attn_pool``).
        fc_norm: the model's norm applied after pooling (``nn.Identity`` when it has none).
        attn_pool: the attention-pooling module of ``pool_type="map"``.
        distilled: pool as distilled models do: the mean of the class and distillation tokens.
        pool_include_prefix: the attention pool also sees the prefix tokens (timm's setting).
    """

    def __init__(self, num_prefix_tokens: int, grid_size: tuple[int, int], pool_type: str, fc_norm: nn.Module,
                 *, attn_pool: nn.Module | None = None, distilled: bool = False, pool_include_prefix: bool = False):
        super().__init__()
        if pool_type not in TOKEN_POOLS:
            raise SplitError(f"token adapter supports global_pool {', '.join(map(repr, TOKEN_POOLS))}, not "
                             f"{pool_type!r} (a model without pooling has no vector to predict from)")
        if pool_type == "token" and num_prefix_tokens == 0:
            raise SplitError("global_pool='token' needs a class token, but the model has no prefix tokens")
        if (pool_type == "map") != (attn_pool is not None):
            raise SplitError("global_pool='map' needs the model's attention pool (attn_pool), and only it does")
        if distilled and num_prefix_tokens < 2:
            raise SplitError("a distilled model needs a class and a distillation token")
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = tuple(grid_size)
        self.pool_type = pool_type
        self.fc_norm = fc_norm
        self.attn_pool = attn_pool
        self.distilled = bool(distilled)
        self.pool_include_prefix = bool(pool_include_prefix)

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, self.num_prefix_tokens :]
        h, w = self.grid_size
        if patches.shape[1] != h * w:
            raise ValueError(
                f"token adapter expects {h}x{w}={h * w} patch tokens, got {patches.shape[1]}; "
                "build the model for this input size (timm's img_size argument)"
            )
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)

    def from_map(self, x: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        patches = feature_map.flatten(2).transpose(1, 2)
        return torch.cat([x[:, : self.num_prefix_tokens], patches], dim=1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.distilled:  # timm's pre-logits of distilled models: no fc_norm
            return (x[:, 0] + x[:, 1]) / 2
        if self.attn_pool is not None:
            pooled = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens :])
        elif self.pool_type == "token":
            pooled = x[:, 0]
        else:
            patches = x[:, self.num_prefix_tokens :]
            if self.pool_type == "avg":
                pooled = patches.mean(dim=1)
            elif self.pool_type == "max":
                pooled = patches.amax(dim=1)
            else:  # avgmax
                pooled = 0.5 * (patches.amax(dim=1) + patches.mean(dim=1))
        return self.fc_norm(pooled)


class _TokenStem(nn.Module):
    """The part of a ViT that turns an image into position-embedded tokens.

    The class/register tokens and the position embedding are registered here (the
    same ``nn.Parameter`` objects as in the model), so they are trained, saved,
    moved between devices and converted between dtypes with the looped network.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.patch_embed = model.patch_embed
        self.cls_token = model.cls_token
        self.reg_token = model.reg_token
        if getattr(model, "dist_token", None) is not None:  # distilled ViTs (DeiT)
            self.dist_token = model.dist_token
        self.pos_embed = model.pos_embed
        self.pos_drop = model.pos_drop
        self.patch_drop = model.patch_drop
        self.norm_pre = model.norm_pre
        # Plain settings read by timm's position-embedding routine.
        self.dynamic_img_size = model.dynamic_img_size
        self.no_embed_class = model.no_embed_class
        self.num_prefix_tokens = model.num_prefix_tokens
        self._pos_embed_impl = type(model)._pos_embed  # the model's own: distilled models add a token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        # timm's routine only reads the attributes mirrored above, so it runs on this module.
        x = self._pos_embed_impl(self, x)
        x = self.patch_drop(x)
        return self.norm_pre(x)


@dataclass
class SplitBackbone:
    """A backbone cut in two.

    Attributes:
        extractor: image ``(B, 3, H, W)`` -> native features, run once per image.
        refiner: native features -> native features, the part that is looped.
        adapter: how to see either side as a map and how to pool the refiner output.
        stage: where the cut was made.
        refiner_channels: channels of the pooled refiner output.
        scale: spatial ratio extractor-map size / refiner-map size (1 for token models).
    """

    extractor: nn.Module
    refiner: nn.Module
    adapter: FeatureAdapter
    stage: StageInfo
    refiner_channels: int
    scale: int


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _units(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules ``module`` runs in order, opening plain ``nn.Sequential`` containers."""
    units = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if _plain_sequential(child) and len(child) > 0:
            units.extend(_units(child, full + "."))
        else:
            units.append((full, child))
    return units


def _stage_info(model: nn.Module, stage: int) -> StageInfo:
    info = getattr(model, "feature_info", None)
    if not info:
        raise SplitError(f"{type(model).__name__} has no timm feature_info, so its stages are unknown")
    entries = list(info) if isinstance(info, list) else [info.info[i] for i in range(len(info.info))]
    if not isinstance(stage, int) or not -len(entries) <= stage < len(entries):
        raise SplitError(
            f"stage {stage!r} is out of range for {type(model).__name__}: feature_info has "
            f"{len(entries)} stages (0..{len(entries) - 1}): "
            + ", ".join(f"{i}={e['module']}" for i, e in enumerate(entries))
        )
    stage = stage % len(entries)
    e = entries[stage]
    return StageInfo(stage, e["module"], int(e["num_chs"]), int(e["reduction"]))


def _split_sequential(model: nn.Module, stage: StageInfo) -> tuple[nn.Module, nn.Module]:
    units = _units(model)
    head_at = next((i for i, (name, _) in enumerate(units) if name.split(".")[0] in _HEAD_NAMES), len(units))
    body = units[:head_at]
    owned = [i for i, (name, _) in enumerate(body) if name == stage.module or name.startswith(stage.module + ".")]
    inside = next(((name, unit) for name, unit in body if stage.module.startswith(name + ".")), None)
    if not owned and inside is not None and isinstance(inside[1], nn.ModuleList):
        raise SplitError(
            f"cannot cut {type(model).__name__} at stage {stage.index}: its feature {stage.module!r} lies in "
            f"{inside[0]!r}, a ModuleList that the model's forward iterates itself (typically passing extra "
            "arguments, such as a shared position bias), so its blocks are not a chain of modules"
        )
    if not owned and inside is not None:
        inside = inside[0]
        raise SplitError(
            f"cannot cut {type(model).__name__} at stage {stage.index}: its feature {stage.module!r} is taken "
            f"inside the unit {inside!r}, before that unit ends, so no cut between units passes it on; "
            "choose a stage whose feature is a whole unit's output"
        )
    if not owned:
        raise SplitError(
            f"cannot cut {type(model).__name__} after {stage.module!r}: that module is not one of the units "
            "the model runs in sequence (its forward is not a plain chain there)"
        )
    cut = owned[-1] + 1
    if cut >= len(body):
        raise SplitError(
            f"stage {stage.index} ({stage.module!r}) is the last stage of {type(model).__name__}; "
            "nothing is left to loop, choose an earlier stage"
        )

    def seq(part):
        return nn.Sequential(OrderedDict((name.replace(".", "_"), m) for name, m in part))

    return seq(body[:cut]), seq(body[cut:])


def _split_tokens(model: nn.Module, stage: StageInfo) -> tuple[nn.Module, nn.Module, TokenAdapter]:
    blocks = list(model.blocks)
    k = int(stage.module.split(".")[1])
    if k + 1 >= len(blocks):
        raise SplitError(f"block {k} is the last transformer block; nothing is left to loop, choose an earlier stage")
    pool = getattr(model, "global_pool", "token")
    distilled = getattr(model, "dist_token", None) is not None
    adapter = TokenAdapter(model.num_prefix_tokens, tuple(model.patch_embed.grid_size), pool,
                           nn.Identity() if distilled else model.fc_norm,
                           attn_pool=getattr(model, "attn_pool", None) if pool == "map" else None,
                           distilled=distilled, pool_include_prefix=getattr(model, "pool_include_prefix", False))
    extractor = nn.Sequential(OrderedDict([("stem", _TokenStem(model)), ("blocks", nn.Sequential(*blocks[: k + 1]))]))
    refiner = nn.Sequential(OrderedDict([("blocks", nn.Sequential(*blocks[k + 1 :])), ("norm", model.norm)]))
    return extractor, refiner, adapter


def _is_token_model(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + want.abs().max()))


def _check(model, extractor, refiner, adapter, stage, size) -> tuple[int, int, FeatureAdapter]:
    """Compare both halves with timm's own outputs; return (refiner channels, spatial scale, adapter).

    The adapter comes back changed to :class:`ChannelsLastAdapter` when the stages turn out
    to pass ``(B, H, W, C)`` maps."""
    was_training = model.training
    model.eval()
    extractor.eval()
    refiner.eval()
    try:
        with torch.no_grad():
            x = torch.randn(2, 3, size[0], size[1], generator=torch.Generator().manual_seed(0))
            try:
                feats = extractor(x)
                out = refiner(feats)
            except Exception as err:  # a non-chain forward usually fails here with an unrelated message
                raise SplitError(
                    f"cutting {type(model).__name__} at stage {stage.index} ({stage.module!r}) gives pieces "
                    f"that do not run as a chain ({type(err).__name__}: {err}); its forward is not a plain "
                    "sequence of modules"
                ) from err
            want_feats = model.forward_intermediates(x, indices=[stage.index], intermediates_only=True)[0]
            want_out = model.forward_features(x)
            if (isinstance(adapter, MapAdapter) and feats.dim() == 4 and want_feats.dim() == 4
                    and not _close(feats, want_feats) and _close(feats.permute(0, 3, 1, 2), want_feats)):
                # Stages that pass (B, H, W, C) maps; timm's intermediates are NCHW.
                adapter = ChannelsLastAdapter()
            for what, got, want in (
                (f"extractor output (stage {stage.index}, {stage.module})", adapter.to_map(feats), want_feats),
                ("refiner output vs forward_features", out, want_out),
            ):
                if not _close(got, want):
                    detail = (
                        f"shape {tuple(got.shape)} vs {tuple(want.shape)}"
                        if got.shape != want.shape
                        else f"max abs difference {(got - want).abs().max().item():.3g}"
                    )
                    raise SplitError(
                        f"cutting {type(model).__name__} at stage {stage.index} ({stage.module!r}) does not reproduce "
                        f"timm's {what}: {detail}. Its forward is not the plain chain of its modules, so it cannot be "
                        "looped this way"
                    )
            if isinstance(adapter, TokenAdapter):  # token models: the pooled vector is timm's pre-logits too
                got, want = adapter.pool(out), model.forward_head(want_out, pre_logits=True)
                if not _close(got, want):
                    raise SplitError(
                        f"pooling the refiner output of {type(model).__name__} does not reproduce timm's pre-logits "
                        f"(global_pool={getattr(model, 'global_pool', None)!r}); this pooling is not supported"
                    )
            f_map, h_map = adapter.to_map(feats), adapter.to_map(out)
    finally:
        model.train(was_training)
        extractor.train(was_training)
        refiner.train(was_training)
    scale = max(1, round(f_map.shape[-1] / h_map.shape[-1]))
    return int(adapter.pool(out).shape[1]), scale, adapter


def split_backbone(
    model: nn.Module,
    stage: int,
    *,
    check_size: tuple[int, int] | None = None,
) -> SplitBackbone:
    """Cut a timm model after ``feature_info[stage]`` into extractor and refiner.

    The modules are shared with ``model`` (no copies). The cut is verified on a
    random ``(2, 3, H, W)`` batch in eval mode: the extractor must reproduce
    ``model.forward_intermediates(x, indices=[stage])`` and the refiner applied
    to it must reproduce ``model.forward_features(x)``.

    Args:
        model: a timm model with ``feature_info`` (built with ``pretrained=False`` or not).
        stage: index into ``model.feature_info`` (negative counts from the end).
        check_size: ``(H, W)`` of the verification input; defaults to the model's
            configured input size.

    Returns:
        The :class:`SplitBackbone`.

    Raises:
        SplitError: when the stage does not exist, is the last one, or the model's
            forward is not a chain the cut can reproduce (hrnet, levit, ...).

    Examples:
        >>> import timm
        >>> parts = split_backbone(timm.create_model("test_resnet"), stage=2, check_size=(64, 64))
        >>> parts.stage.module, parts.stage.channels, parts.scale
        ('layer2', 48, 4)
    """
    info = _stage_info(model, stage)
    if _is_token_model(model):
        extractor, refiner, adapter = _split_tokens(model, info)
    else:
        extractor, refiner = _split_sequential(model, info)
        adapter = MapAdapter()
    if check_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        check_size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    channels, scale, adapter = _check(model, extractor, refiner, adapter, info, check_size)
    return SplitBackbone(extractor, refiner, adapter, info, channels, scale)
