"""DIR-Net: IR9 looped by :func:`recurnet.loopify` with a MANO pose predictor.

The pose predictor (paper Eq. 1-2) reads the pooled refiner output of every
iteration through two fully connected layers and predicts

- ``theta``: finger articulation (MANO PCA coefficients, or 45 axis-angle values),
- ``beta``: MANO shape (10),
- ``R``: global rotation (6D representation, Gram-Schmidt to a matrix),
- ``t``: 2D translation (crop pixels) and ``s``: scale (pixels per millimetre).

MANO poses the hand with zero global rotation; its joints are made
root-relative (wrist at the origin), rotated by ``R`` and converted to
millimetres: ``joints3d = 1000 * R @ J(theta, beta)``. The 2D joints follow the
weak-perspective camera ``joints2d = s * Pi(joints3d) + t``
(:func:`recurnet_hand.geometry.weak_perspective`). Uncertainty heads predict
one log-variance per joint for the 2D and 3D joints.

:class:`DirectPoseHead` is the alternative without MANO: it regresses the 21
root-relative 3D joints directly and projects them the same way.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as nnf
from torch import nn

import recurnet
from recurnet.heads import mlp

from . import backbones  # noqa: F401  (registers ir9 with timm)
from .backbones import DEFAULT_LOOP_POINT, loop_point_stage
from .geometry import rotation_6d_to_matrix, weak_perspective
from .joints import NUM_JOINTS
from .mano import ManoLayer

__all__ = [
    "DIRNetConfig",
    "PRESETS",
    "preset",
    "ManoPoseHead",
    "DirectPoseHead",
    "HeatmapHead",
    "LocationMapHead",
    "ImageNormalize",
    "build_dirnet",
    "mesh_outputs",
    "HEADS",
]

_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# A hand is about 0.2 m long; with this many millimetres per half crop the initial
# scale puts a hand of typical size across most of the crop.
_HALF_CROP_MM = 120.0


@dataclass(frozen=True)
class DIRNetConfig:
    """Everything that defines a DIR-Net architecture (mirrors :func:`build_dirnet`).

    Attributes:
        name: preset name, recorded in checkpoints.
        backbone: timm model name; ``ir9`` (the paper's) takes ``width``, any other timm
            ResNet-style model (e.g. ``resnet18`` as a baseline) is built at its own width.
        width: IR9 base width (32 for STB, 16 for FPHA).
        fc: width of the pose predictor's hidden layer (512 STB, 256 FPHA).
        loop_point: where the loop starts (paper Figure 9: 1..4; 3 = extractor ends at stride 8).
        max_loops: ``l_max``, iterations ``0..l_max``.
        feedback: ``"attention"`` (AMG), ``"features"`` (iterations without AMG) or ``"none"``.
        head: ``"mano"`` (pose predictor through MANO) or ``"direct"`` (21x3 regression).
        mano: MANO file or folder (``MANO_RIGHT.pkl``); None uses the synthetic assets.
        side: MANO hand side; left-hand data is mirrored to this side by the data pipeline.
        num_pca_comps: MANO pose PCA components (45 = full axis-angle pose).
        uncertainty_hidden: width of the uncertainty features (the gate's input).
        log_var_bound: soft bound on the predicted log-variances (None: unbounded).
        log_var_init: the log-variance the uncertainty heads start at (of the loss's
            normalised errors, see :class:`recurnet_hand.losses.LossConfig`).
        heatmaps: add the training-only dense 2D head (:class:`HeatmapHead`) on the extractor
            features; it is not run at inference and adds no inference cost.
        heatmap_upsample: resolution of the training-only heatmaps relative to the extractor
            features: 1 (the same grid) or 2 (one transposed convolution doubles it, so the
            target Gaussians are half as wide in pixels).
        location_maps: add the training-only dense 3D head (:class:`LocationMapHead`) on the
            extractor features; like the heatmaps, it is dropped at inference.
        norms: per-iteration norm mode (see :data:`recurnet.looped.NORM_MODES`).
        crop_size: input crop size in pixels.
    """

    name: str = "stb"
    backbone: str = "ir9"
    width: int = 32
    fc: int = 512
    loop_point: int = DEFAULT_LOOP_POINT
    max_loops: int = 5
    feedback: str = "attention"
    head: str = "mano"
    mano: str | None = None
    side: str = "right"
    num_pca_comps: int = 30
    uncertainty_hidden: int = 128
    log_var_bound: float | None = 10.0
    log_var_init: float = -2.0
    heatmaps: bool = True
    heatmap_upsample: int = 1
    location_maps: bool = False
    norms: str = "all"
    crop_size: int = 224

    def __post_init__(self) -> None:
        if self.heatmap_upsample not in (1, 2) or isinstance(self.heatmap_upsample, bool):
            raise ValueError(f"model.heatmap_upsample must be 1 or 2, got {self.heatmap_upsample!r}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (for checkpoints and YAML)."""
        return asdict(self)


#: Named configurations. ``stb`` and ``fpha`` are the paper's models. ``freihand`` is the
#: STB model for FreiHAND's 224 px images, posing MANO with all 45 joint angles (FreiHAND's
#: own MANO fits are full-pose, and its meshes are scored). ``cpu`` is IR9 at the STB
#: model's width with the FPHA model's pose predictor, on 96 px crops with 3 loops, sized to
#: train on a laptop CPU in minutes (the default of ``recurnet-hand train``; width 32 scored
#: better than 16 in ``benchmarks/results/recipe_ablation.md``);
#: ``tiny`` is a very small variant for tests and demos.
PRESETS: dict[str, DIRNetConfig] = {
    "stb": DIRNetConfig(name="stb", width=32, fc=512),
    "fpha": DIRNetConfig(name="fpha", width=16, fc=256),
    "freihand": DIRNetConfig(name="freihand", width=32, fc=512, num_pca_comps=45),
    "cpu": DIRNetConfig(name="cpu", width=32, fc=256, max_loops=3, crop_size=96),
    "tiny": DIRNetConfig(name="tiny", width=8, fc=64, max_loops=3, crop_size=96, uncertainty_hidden=32),
}


def preset(name: str, **overrides) -> DIRNetConfig:
    """A preset configuration with fields overridden.

    Examples:
        >>> preset("fpha", max_loops=2).width
        16
    """
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    return replace(base, **overrides)


class ImageNormalize(nn.Module):
    """Normalise ``(B, 3, H, W)`` images in ``[0, 1]`` with per-channel mean and std (ImageNet's by default)."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _Camera(nn.Module):
    """Turns raw scale/translation outputs into a positive scale (px/mm) and a translation (px)."""

    def __init__(self, crop_size: int):
        super().__init__()
        self.half = crop_size / 2.0
        self.base_scale = self.half / _HALF_CROP_MM

    def forward(self, raw_scale: torch.Tensor, raw_translation: torch.Tensor):
        # softplus(x + log(e - 1)) is 1 at x = 0, so a zero output means the base scale.
        scale = self.base_scale * nnf.softplus(raw_scale + math.log(math.e - 1))
        translation = self.half + self.half * raw_translation
        return scale, translation


class ManoPoseHead(nn.Module):
    """Pooled features ``(B, C)`` -> MANO parameters -> 3D and 2D joints.

    Args:
        in_features: ``C``.
        hidden: width of the first fully connected layer.
        mano: the MANO layer (its arrays are buffers that are not saved in checkpoints).
        crop_size: crop size in pixels (sets the camera's initial scale and centre).

    Returns (forward): a dict with
        ``joints3d`` ``(B, 21, 3)`` mm, root-relative, camera orientation;
        ``joints2d`` ``(B, 21, 2)`` crop px; ``pose`` ``(B, P)``; ``shape`` ``(B, 10)``;
        ``rotation`` ``(B, 3, 3)``; ``scale`` ``(B,)`` px/mm; ``translation`` ``(B, 2)`` px;
        ``articulation`` ``(B, 21, 3)`` mm, the same joints in the hand's own (MANO) frame,
        before the global rotation (``joints3d = articulation @ rotation^T``); and, when
        :attr:`vertices` is set (see :func:`mesh_outputs`), ``vertices`` ``(B, 778, 3)`` mm in
        the same root-relative camera frame as ``joints3d``.

    Attributes:
        vertices: also pose the whole mesh. Off by default: the joints-only path of
            :meth:`ManoLayer.joints` skins 21 points instead of 778, which is what
            training and timing want.
    """

    def __init__(self, in_features: int, hidden: int, mano: ManoLayer, crop_size: int):
        super().__init__()
        self.mano = mano
        self.num_pose = mano.num_pose_params
        self.fc = mlp(in_features, hidden, self.num_pose + 10 + 6 + 2 + 1)
        nn.init.zeros_(self.fc[-1].weight)  # start at the mean pose, identity rotation, base camera
        nn.init.zeros_(self.fc[-1].bias)
        self.camera = _Camera(crop_size)
        self.register_buffer("identity_6d", torch.tensor(_IDENTITY_6D), persistent=False)
        self.vertices = False

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_autocast_enabled(pooled.device.type):
            # Under mixed precision the MANO kinematics (chains of 4x4 products) stay in float32.
            with torch.autocast(pooled.device.type, enabled=False):
                return self._predict(pooled.float())
        return self._predict(pooled)

    def _predict(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.fc(pooled)
        pose, shape, rot6d, trans, raw_scale = torch.split(p, [self.num_pose, 10, 6, 2, 1], dim=1)
        rotation = rotation_6d_to_matrix(rot6d + self.identity_6d)
        orient = torch.zeros_like(p[:, :3])
        extra = {}
        if self.vertices:
            mesh = self.mano(orient, pose, shape)
            hand, root = mesh.joints, mesh.joints[:, :1]
            extra["vertices"] = ((mesh.vertices - root) * 1000.0) @ rotation.transpose(1, 2)
        else:
            hand = self.mano.joints(orient, pose, shape)
        joints = (hand - hand[:, :1]) * 1000.0  # root-relative, millimetres
        joints3d = joints @ rotation.transpose(1, 2)
        extra["articulation"] = joints
        scale, translation = self.camera(raw_scale.squeeze(1), trans)
        joints2d = weak_perspective(joints3d, scale, translation)
        return {
            "joints3d": joints3d,
            "joints2d": joints2d,
            "pose": pose,
            "shape": shape,
            "rotation": rotation,
            "scale": scale,
            "translation": translation,
            **extra,
        }


class DirectPoseHead(nn.Module):
    """Pooled features ``(B, C)`` -> 21 root-relative 3D joints (mm) by regression, 2D by weak perspective.

    For use without MANO. The wrist is fixed at the origin; the other 20 joints are
    regressed around a mean hand scale.

    Returns (forward): ``joints3d`` ``(B, 21, 3)`` mm; ``joints2d`` ``(B, 21, 2)`` px;
        ``scale`` ``(B,)``; ``translation`` ``(B, 2)``.
    """

    def __init__(self, in_features: int, hidden: int, crop_size: int, joint_scale_mm: float = 100.0):
        super().__init__()
        self.fc = mlp(in_features, hidden, (NUM_JOINTS - 1) * 3 + 3)
        self.camera = _Camera(crop_size)
        self.joint_scale_mm = joint_scale_mm

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.fc(pooled)
        rest = p[:, : (NUM_JOINTS - 1) * 3].view(-1, NUM_JOINTS - 1, 3) * self.joint_scale_mm
        joints3d = torch.cat([rest.new_zeros(rest.shape[0], 1, 3), rest], dim=1)
        scale, translation = self.camera(p[:, -3], p[:, -2:])
        return {
            "joints3d": joints3d,
            "joints2d": weak_perspective(joints3d, scale, translation),
            "scale": scale,
            "translation": translation,
        }


def _dense_head(in_channels: int, hidden: int, out_channels: int, upsample: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU (with ``upsample=2``: then a stride-2 4x4 transposed
    convolution, BatchNorm, ReLU), then a 1x1 convolution that starts at zero output."""
    layers = [nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
    if upsample == 2:
        layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU(inplace=True)]
    body = nn.Sequential(*layers, nn.Conv2d(hidden, out_channels, 1))
    nn.init.zeros_(body[-1].weight)
    nn.init.zeros_(body[-1].bias)
    return body


class HeatmapHead(nn.Module):
    """Training-only dense 2D head: extractor features ``(B, C, h, w)`` -> ``(B, 21, h, w)`` joint heatmaps.

    Supervised with a Gaussian around every labelled 2D joint
    (:func:`recurnet_hand.losses.joint_heatmaps`), it gives the early stages a dense,
    per-pixel training signal; the pose itself is still read from the pooled refiner
    output. :func:`build_dirnet` attaches it as an auxiliary head, which only runs in
    training mode.

    Args:
        in_channels: ``C``.
        hidden: width of the 3x3 convolution.
        joints: number of heatmaps.
        upsample: 1, or 2 for maps of ``(2h, 2w)`` cells (a stride-2 transposed convolution,
            BatchNorm and ReLU before the last layer).
    """

    def __init__(self, in_channels: int, hidden: int = 64, joints: int = NUM_JOINTS, upsample: int = 1):
        super().__init__()
        if upsample not in (1, 2):
            raise ValueError(f"HeatmapHead upsample must be 1 or 2, got {upsample!r}")
        # Starts at empty maps: the loss at the targets' energy.
        self.body = _dense_head(in_channels, hidden, joints, upsample=upsample)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class LocationMapHead(nn.Module):
    """Training-only dense 3D head: extractor features ``(B, C, h, w)`` -> ``(B, 21, 3, h, w)`` location maps.

    Every cell predicts the root-relative 3D position of every joint (camera orientation,
    in the loss's 3D units). The loss reads each joint's maps where its target heatmap is
    high (:class:`recurnet_hand.losses.HandLoss`), so the cells around a joint learn that
    joint's position relative to the wrist, its depth included: a dense signal for how
    the hand is turned, to the same early stages the heatmaps supervise. :func:`build_dirnet`
    attaches it as an auxiliary head, which only runs in training mode.

    Args:
        in_channels: ``C``.
        hidden: width of the 3x3 convolution.
        joints: number of joints.
    """

    def __init__(self, in_channels: int, hidden: int = 64, joints: int = NUM_JOINTS):
        super().__init__()
        self.joints = joints
        self.body = _dense_head(in_channels, hidden, 3 * joints)  # starts at every joint on the wrist

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.body(features)
        return maps.unflatten(1, (self.joints, 3))


@contextlib.contextmanager
def mesh_outputs(net: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every :class:`ManoPoseHead` of ``net`` also returns ``vertices``.

    The mesh costs a full MANO skinning per iteration, so it is off outside such a block;
    the joints are the same either way (to float rounding).

    Args:
        net: a DIR-Net (or any module holding MANO heads).
        enabled: the setting inside the block.

    Raises:
        ValueError: ``enabled`` but ``net`` has no MANO head (the ``direct`` head has no mesh).

    Examples:
        >>> net = build_dirnet(preset("tiny", max_loops=0)).eval()
        >>> with mesh_outputs(net), torch.no_grad():
        ...     out = net(torch.rand(1, 3, 96, 96))
        >>> out.final["vertices"].shape
        torch.Size([1, 778, 3])
    """
    heads = [m for m in net.modules() if isinstance(m, ManoPoseHead)]
    if enabled and not heads:
        raise ValueError("mesh_outputs: the network has no MANO head (model.head 'direct' predicts joints only)")
    before = [h.vertices for h in heads]
    for h in heads:
        h.vertices = bool(enabled)
    try:
        yield net
    finally:
        for h, b in zip(heads, before):
            h.vertices = b


def _mano_layer(config: DIRNetConfig) -> ManoLayer:
    kwargs = dict(use_pca=config.num_pca_comps < 45, num_pca_comps=min(config.num_pca_comps, 45))
    if config.mano is None:
        return ManoLayer.synthetic(config.side, **kwargs)
    return ManoLayer.from_file(config.mano, side=config.side, **kwargs)


def _mano_head(config: DIRNetConfig) -> Callable[[int], nn.Module]:
    mano = _mano_layer(config)
    return lambda c: ManoPoseHead(c, config.fc, mano, config.crop_size)


def _direct_head(config: DIRNetConfig) -> Callable[[int], nn.Module]:
    return lambda c: DirectPoseHead(c, config.fc, config.crop_size)


#: Pose predictor factories by name: ``factory(config) -> (channels -> head module)``.
HEADS: dict[str, Callable[[DIRNetConfig], Callable[[int], nn.Module]]] = {
    "mano": _mano_head,
    "direct": _direct_head,
}


def _auxiliary_heads(config: DIRNetConfig) -> dict[str, Callable[[int], nn.Module]]:
    heads = {}
    if config.heatmaps:
        heads["heatmaps"] = functools.partial(HeatmapHead, upsample=config.heatmap_upsample)
    if config.location_maps:
        heads["location_maps"] = LocationMapHead
    return heads


def build_dirnet(config: DIRNetConfig | str = "stb", *, policy=None) -> recurnet.LoopedNet:
    """Build DIR-Net: IR9 cut at the loop point, looped, with the pose predictor and uncertainty heads.

    Args:
        config: a :class:`DIRNetConfig` or a preset name.
        policy: exit policy for inference (see :mod:`recurnet.policies`).

    Returns:
        A :class:`recurnet.LoopedNet` taking ``(B, 3, S, S)`` images in ``[0, 1]`` and predicting
        ``joints3d`` (mm, root-relative) and ``joints2d`` (crop px) with per-joint log-variances.

    Examples:
        >>> net = build_dirnet(preset("tiny", max_loops=1)).eval()
        >>> out = net(torch.rand(2, 3, 96, 96))
        >>> out.final["joints3d"].shape, out.final_log_variance["joints2d"].shape
        (torch.Size([2, 21, 3]), torch.Size([2, 21, 1]))
    """
    if isinstance(config, str):
        config = preset(config)
    if config.head not in HEADS:
        raise ValueError(f"unknown pose head {config.head!r}; known: {', '.join(sorted(HEADS))}")
    backbone_kwargs = {"width": config.width} if config.backbone == "ir9" else {}
    net = recurnet.loopify(
        config.backbone,
        stage=loop_point_stage(config.loop_point),
        **backbone_kwargs,
        max_loops=config.max_loops,
        feedback=config.feedback,
        heads={"pose": HEADS[config.head](config)},
        uncertainty={"joints2d": (NUM_JOINTS, 1), "joints3d": (NUM_JOINTS, 1)},
        uncertainty_hidden=config.uncertainty_hidden,
        auxiliary=_auxiliary_heads(config) or None,
        log_var_bound=config.log_var_bound,
        log_var_init=config.log_var_init,
        norms=config.norms,
        policy=policy,
        check_size=(config.crop_size, config.crop_size),
    )
    net.extractor = nn.Sequential(OrderedDict(normalize=ImageNormalize(), body=net.extractor))
    net.config = config
    return net
