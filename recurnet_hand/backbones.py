"""IR9 ("ResNet9"), the paper's backbone, registered with timm.

IR9 is ResNet-18's layout with one basic block per stage instead of two and a
configurable base width: a 7x7/2 stem and 3x3/2 max-pool, then four stages of
``width * (1, 2, 4, 8)`` channels at strides 4, 8, 16, 32 (56, 28, 14 and 7 px
for a 224 px crop). Importing :mod:`recurnet_hand` registers:

- ``ir9_32``: base width 32 (the paper's STB model),
- ``ir9_16``: base width 16 (the paper's FPHA model),
- ``ir9``: any width through ``timm.create_model("ir9", width=24)``.

The paper's Figure 9 marks four loop points: the refiner can start after the
stem (1), after stage 1 (2), after stage 2 (3, the default: the extractor
ends at 28x28 for 224 px crops) or after stage 3 (4). :func:`loop_point_stage`
turns a loop point into the ``feature_info`` index that :func:`recurnet.loopify`
expects.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from torch import nn
from timm.models._builder import build_model_with_cfg
from timm.models.resnet import BasicBlock, ResNet

__all__ = ["ir9", "ir9_16", "ir9_32", "LOOP_POINTS", "DEFAULT_LOOP_POINT", "loop_point_stage"]

#: Loop point (paper Figure 9) -> index into the model's ``feature_info`` where the extractor ends.
LOOP_POINTS: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3}
#: The paper's best trade-off: the extractor ends at 28x28 (stride 8).
DEFAULT_LOOP_POINT = 3


def loop_point_stage(loop_point: int) -> int:
    """The ``feature_info`` stage index for a loop point of the paper's Figure 9.

    Examples:
        >>> loop_point_stage(3)
        2
    """
    try:
        return LOOP_POINTS[loop_point]
    except KeyError:
        raise ValueError(f"loop point must be one of {sorted(LOOP_POINTS)}, got {loop_point!r}") from None


def _cfg() -> dict:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "conv1",
        "classifier": "fc",
    }


# timm looks the default config up by module attribute name when the entrypoints register.
default_cfgs = generate_default_cfgs({"ir9.untrained": _cfg(), "ir9_32.untrained": _cfg(), "ir9_16.untrained": _cfg()})


def _create_ir9(variant: str, width: int, pretrained: bool = False, **kwargs) -> ResNet:
    if pretrained:
        raise ValueError("IR9 has no pretrained weights; build it with pretrained=False")
    if int(width) != width or width < 1:
        raise ValueError(f"IR9 width must be a positive integer, got {width!r}")
    w = int(width)
    channels = (w, 2 * w, 4 * w, 8 * w)
    model = build_model_with_cfg(ResNet, variant, pretrained=False, block=BasicBlock, layers=(1, 1, 1, 1),
                                 channels=channels, **kwargs)
    # timm's plain ResNet stem always has 64 channels; IR9's first layer has ``width`` channels
    # (the paper's "base channels"), so the stem and the first block are rebuilt at that width.
    in_chans = model.conv1.in_channels
    model.conv1 = nn.Conv2d(in_chans, w, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = type(model.bn1)(w)
    model.layer1[0] = BasicBlock(w, w, act_layer=type(model.act1), norm_layer=type(model.bn1))
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    for m in model.layer1[0].modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    model.layer1[0].zero_init_last()
    model.feature_info[0]["num_chs"] = w
    return model


@register_model
def ir9(pretrained: bool = False, width: int = 32, **kwargs) -> ResNet:
    """IR9 with any base ``width`` (channels ``width * (1, 2, 4, 8)``)."""
    return _create_ir9("ir9", width, pretrained, **kwargs)


@register_model
def ir9_32(pretrained: bool = False, **kwargs) -> ResNet:
    """IR9 with base width 32 (the paper's STB backbone)."""
    return _create_ir9("ir9_32", 32, pretrained, **kwargs)


@register_model
def ir9_16(pretrained: bool = False, **kwargs) -> ResNet:
    """IR9 with base width 16 (the paper's FPHA backbone)."""
    return _create_ir9("ir9_16", 16, pretrained, **kwargs)
