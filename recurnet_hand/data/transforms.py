"""Square crops around the hand and geometric/photometric augmentation.

All geometry is expressed as 3x3 affine pixel maps in the convention of the sample
format: x right, y down, the centre of pixel (0, 0) at (0.0, 0.0). The image is
resampled once (Pillow, bilinear) through the product of every map, and the same
product is folded into the intrinsics, so ``K' @ X / Z`` of the returned 3D joints
gives the returned 2D joints exactly:

1. in-plane rotation by ``angle`` about the camera's optical axis: 3D joints
   ``X -> Rz X``; image and 2D joints move by ``H = K Rz K^-1`` (without
   intrinsics, a 2D rotation about the joints' box centre);
2. square box around the (rotated) 2D joints, ``margin`` times the larger side of
   their bounding box, times the scale jitter, moved by the translation jitter;
3. crop and resize to ``size x size``: ``A``; the image is resampled through
   ``A H`` and, the 3D joints being rotated already, ``K' = A K``;
4. horizontal flip: image columns reversed, ``x -> size - 1 - x``, ``X -> -X``,
   ``K' -> F K' diag(-1, 1, 1)``, ``is_right`` toggled;
5. colour jitter (brightness, contrast, saturation) on the float image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "CropBox",
    "augment_crops",
    "HandCrop",
    "HandTransform",
    "colour_jitter",
    "crop_affine",
    "crop_hand",
    "flip_crop",
    "image_rotation",
    "sample_augment",
    "square_box",
    "warp_image",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation; every value 0 disables that augmentation.

    Attributes:
        rotation_deg: in-plane rotation drawn uniformly from ``[-r, r]`` degrees.
        scale: crop side multiplied by a factor drawn from ``[1 - s, 1 + s]``.
        translation: crop centre moved by ``U[-t, t] * side`` along each axis.
        brightness: image multiplied by a factor from ``[1 - b, 1 + b]``.
        contrast: blend with the mean grey level by a factor from ``[1 - c, 1 + c]``.
        saturation: blend with the per-pixel grey by a factor from ``[1 - s, 1 + s]``.
        flip_prob: probability of a horizontal flip (which also toggles handedness).
    """

    rotation_deg: float = 0.0
    scale: float = 0.0
    translation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "translation"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("scale", "brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"AugmentConfig.flip_prob must be in [0, 1], got {self.flip_prob}")


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation (the identity by default).

    Attributes:
        angle_deg: in-plane rotation (degrees); positive turns the picture clockwise
            as displayed (x right, y down).
        scale: crop side factor (> 1 zooms out).
        shift: crop centre offset as a fraction of the crop side, ``(dx, dy)``.
        brightness: multiplicative brightness factor.
        contrast: contrast factor.
        saturation: saturation factor.
        flip: mirror horizontally.
    """

    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    flip: bool = False


def sample_augment(config: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw :class:`AugmentParams` from ``config``; the same generator state gives the same draw.

    Every value is drawn, disabled or not, so the stream does not depend on which
    augmentations are switched on.
    """
    u = rng.uniform(-1.0, 1.0, size=7)
    flip = bool(rng.random() < config.flip_prob)
    return AugmentParams(
        angle_deg=float(u[0] * config.rotation_deg),
        scale=float(1.0 + u[1] * config.scale),
        shift=(float(u[2] * config.translation), float(u[3] * config.translation)),
        brightness=float(1.0 + u[4] * config.brightness),
        contrast=float(1.0 + u[5] * config.contrast),
        saturation=float(1.0 + u[6] * config.saturation),
        flip=flip,
    )


@dataclass(frozen=True)
class CropBox:
    """A square region of the source image.

    Attributes:
        cx: centre x (px).
        cy: centre y (px).
        side: side length (px).
    """

    cx: float
    cy: float
    side: float


@dataclass(frozen=True, eq=False)
class HandCrop:
    """A cropped, possibly augmented hand with labels consistent with the crop.

    Attributes:
        image: ``(3, S, S)`` float32 RGB in ``[0, 1]``.
        joints2d: ``(21, 2)`` float32 crop pixels.
        joints3d: ``(21, 3)`` float32 mm, camera frame (rotated/mirrored with the image).
        K: ``(3, 3)`` float32 crop intrinsics; all zeros when the source had none.
        is_right: right hand, after any flip.
        box: the square source region (after rotation) the crop was taken from.
        rotation: ``(3, 3)`` float32 camera-from-hand rotation of the hand model, when the
            source knows it (synthetic hands); rotated and mirrored with the 3D joints.
    """

    image: np.ndarray
    joints2d: np.ndarray
    joints3d: np.ndarray
    K: np.ndarray
    is_right: bool
    box: CropBox | None = field(default=None)
    rotation: np.ndarray | None = field(default=None)

    def to_sample(self, index: int, *, has_2d: bool = True, has_3d: bool = True) -> dict[str, torch.Tensor]:
        """The dataset sample dict (see the sample-format notes): tensors keyed
        ``image, joints2d, joints3d, K, has_2d, has_3d, is_right, index`` (and ``rotation``,
        ``has_rotation`` when the crop has a rotation)."""
        extra = {} if self.rotation is None else {
            "rotation": torch.from_numpy(np.ascontiguousarray(self.rotation, dtype=np.float32)),
            "has_rotation": torch.tensor(True),
        }
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self.image, dtype=np.float32)),
            "joints2d": torch.from_numpy(np.ascontiguousarray(self.joints2d, dtype=np.float32)),
            "joints3d": torch.from_numpy(np.ascontiguousarray(self.joints3d, dtype=np.float32)),
            "K": torch.from_numpy(np.ascontiguousarray(self.K, dtype=np.float32)),
            "has_2d": torch.tensor(bool(has_2d)),
            "has_3d": torch.tensor(bool(has_3d)),
            "is_right": torch.tensor(bool(self.is_right)),
            "index": torch.tensor(int(index), dtype=torch.int64),
            **extra,
        }


def square_box(joints2d: np.ndarray, margin: float = 1.4, scale: float = 1.0,
               shift: tuple[float, float] = (0.0, 0.0), min_side: float = 8.0) -> CropBox:
    """Square box centred on the 2D joints' bounding box.

    Args:
        joints2d: ``(J, 2)`` pixel coordinates.
        margin: side = ``margin * max(width, height)`` of the joints' bounding box.
        scale: extra side factor (scale jitter).
        shift: centre offset as a fraction of the final side (translation jitter).
        min_side: lower bound on the side (px) so a degenerate pose still gives a box.

    Examples:
        >>> square_box(np.array([[10.0, 20.0], [30.0, 60.0]]), margin=1.5)
        CropBox(cx=20.0, cy=40.0, side=60.0)
    """
    joints2d = np.asarray(joints2d, dtype=np.float64)
    if joints2d.ndim != 2 or joints2d.shape[1] != 2 or not np.all(np.isfinite(joints2d)):
        raise ValueError(f"joints2d must be a finite (J, 2) array, got shape {joints2d.shape}")
    if margin <= 0 or scale <= 0:
        raise ValueError(f"margin and scale must be > 0, got {margin} and {scale}")
    lo, hi = joints2d.min(axis=0), joints2d.max(axis=0)
    side = max(float((hi - lo).max()) * margin * scale, min_side)
    centre = (lo + hi) / 2.0 + np.asarray(shift, dtype=np.float64) * side
    return CropBox(float(centre[0]), float(centre[1]), side)


def crop_affine(box: CropBox, size: int) -> np.ndarray:
    """Affine ``(3, 3)`` map from source pixels to ``size x size`` crop pixels.

    The box's continuous extent ``[c - side/2, c + side/2]`` maps onto the crop's
    ``[-0.5, size - 0.5]`` (outer edges of its first and last pixels).
    """
    s = size / box.side
    return np.array([
        [s, 0.0, -(box.cx - box.side / 2.0) * s - 0.5],
        [0.0, s, -(box.cy - box.side / 2.0) * s - 0.5],
        [0.0, 0.0, 1.0],
    ])


def _rotation_z(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _has_intrinsics(K: np.ndarray) -> bool:
    return bool(np.any(K != 0))


def image_rotation(angle_deg: float, K: np.ndarray | None = None, pivot=(0.0, 0.0)) -> np.ndarray:
    """Pixel map ``(3, 3)`` of an in-plane rotation.

    With intrinsics this is the image motion of turning the camera frame about its
    optical axis, ``K Rz K^-1`` (exactly what projecting ``Rz X`` gives); without
    (``K`` None or all zeros), a plain rotation about ``pivot``.
    """
    rz = _rotation_z(angle_deg)
    if K is not None and _has_intrinsics(np.asarray(K)):
        K = np.asarray(K, dtype=np.float64)
        return K @ rz @ np.linalg.inv(K)
    px, py = pivot
    to_origin = np.array([[1.0, 0.0, -px], [0.0, 1.0, -py], [0.0, 0.0, 1.0]])
    return np.linalg.inv(to_origin) @ rz @ to_origin


def warp_image(image: Image.Image, affine: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` through ``affine`` (source px -> crop px) into a ``size x size`` crop.

    Regions outside the source are black. When the crop shrinks the source by 2x or
    more, the source is first box-reduced by that integer factor, since the affine
    resampler itself does not low-pass.

    Returns:
        ``(3, size, size)`` float32 RGB in ``[0, 1]``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    inv = np.linalg.inv(affine)
    # Source pixels per crop pixel; reduce by its integer part to avoid aliasing.
    factor = int(np.sqrt(abs(np.linalg.det(inv[:2, :2]))))
    if factor >= 2:
        image = image.reduce(factor)
    # Pillow samples at pixel corners (pixel i spans [i, i + 1]): shift by 0.5 on both
    # sides, then divide by the reduction factor.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unhalf = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    shrink = np.diag([1.0 / max(factor, 1), 1.0 / max(factor, 1), 1.0])
    m = shrink @ half @ inv @ unhalf
    out = image.transform((size, size), Image.Transform.AFFINE, tuple(m[:2].ravel()),
                          resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32).transpose(2, 0, 1) / 255.0


def colour_jitter(image: np.ndarray, brightness: float = 1.0, contrast: float = 1.0,
                  saturation: float = 1.0) -> np.ndarray:
    """Brightness, then contrast, then saturation on a ``(3, H, W)`` float image in ``[0, 1]``.

    Factors of 1 leave the image unchanged; the result is clipped to ``[0, 1]``.
    """
    out = image * brightness
    grey = 0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]
    out = (out - grey.mean()) * contrast + grey.mean()
    grey = 0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]
    out = (out - grey) * saturation + grey
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def flip_crop(crop: HandCrop) -> HandCrop:
    """Mirror a crop horizontally, keeping ``K' X / Z == joints2d``.

    ``x -> S - 1 - x`` in the image and 2D joints, ``X -> -X`` in 3D, and
    ``K' -> F K' diag(-1, 1, 1)`` with ``F`` the pixel flip; handedness toggles.
    Flipping twice returns the original crop.
    """
    size = crop.image.shape[-1]
    f = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mirror = np.diag([-1.0, 1.0, 1.0])
    joints2d = crop.joints2d.astype(np.float64).copy()
    joints2d[:, 0] = size - 1.0 - joints2d[:, 0]
    rotation = None if crop.rotation is None else (mirror @ crop.rotation.astype(np.float64) @ mirror)
    return replace(
        crop,
        image=np.ascontiguousarray(crop.image[..., ::-1]),
        joints2d=joints2d.astype(np.float32),
        joints3d=(crop.joints3d.astype(np.float64) @ mirror).astype(np.float32),
        K=(f @ crop.K.astype(np.float64) @ mirror).astype(np.float32),
        is_right=not crop.is_right,
        rotation=None if rotation is None else rotation.astype(np.float32),
    )


def crop_hand(image: Image.Image, joints2d: np.ndarray, joints3d: np.ndarray, K: np.ndarray, is_right: bool,
              size: int = 224, margin: float = 1.4, params: AugmentParams | None = None, *,
              box: CropBox | None = None, rotation: np.ndarray | None = None) -> HandCrop:
    """Crop a square around the hand, resize to ``size`` and apply one augmentation draw.

    Args:
        image: full source image (RGB).
        joints2d: ``(21, 2)`` source pixels.
        joints3d: ``(21, 3)`` mm in the camera frame (zeros for 2D-only data).
        K: ``(3, 3)`` source intrinsics, or all zeros when undefined (2D-only data).
        is_right: source handedness.
        size: crop side S (px).
        margin: crop side over the joints' bounding-box side (before scale jitter).
        params: augmentation draw; None for a plain crop.
        box: crop this square (source px, after the rotation) instead of the joints' box;
            the draw's scale and shift still apply to it. A source that is already a crop
            centred on the hand passes its own extent.
        rotation: ``(3, 3)`` camera-from-hand rotation, rotated with the 3D joints.

    Returns:
        :class:`HandCrop` whose ``K @ joints3d / Z`` equals ``joints2d`` when ``K`` is defined.
    """
    params = params if params is not None else AugmentParams()
    joints2d = np.asarray(joints2d, dtype=np.float64)
    joints3d = np.asarray(joints3d, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if joints2d.shape != (21, 2) or joints3d.shape != (21, 3) or K.shape != (3, 3):
        raise ValueError(f"expected joints2d (21, 2), joints3d (21, 3), K (3, 3); got {joints2d.shape}, "
                         f"{joints3d.shape}, {K.shape}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    centre = (joints2d.min(axis=0) + joints2d.max(axis=0)) / 2.0
    rot2d = image_rotation(params.angle_deg, K, pivot=centre)
    joints2d = joints2d @ rot2d[:2, :2].T + rot2d[:2, 2]
    joints3d = joints3d @ _rotation_z(params.angle_deg).T
    if rotation is not None:
        rotation = _rotation_z(params.angle_deg) @ np.asarray(rotation, dtype=np.float64)
    if box is None:
        box = square_box(joints2d, margin=margin, scale=params.scale, shift=params.shift)
    else:
        side = box.side * params.scale
        box = CropBox(box.cx + params.shift[0] * side, box.cy + params.shift[1] * side, side)
    to_crop = crop_affine(box, size)
    affine = to_crop @ rot2d  # source pixels -> crop pixels
    crop = HandCrop(
        image=warp_image(image, affine, size),
        joints2d=(joints2d @ to_crop[:2, :2].T + to_crop[:2, 2]).astype(np.float32),
        joints3d=joints3d.astype(np.float32),
        # The 3D joints are already rotated, so only the crop map goes into K.
        K=(to_crop @ K).astype(np.float32),
        is_right=bool(is_right),
        box=box,
        rotation=None if rotation is None else rotation.astype(np.float32),
    )
    if params.flip:
        crop = flip_crop(crop)
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        crop = replace(crop, image=colour_jitter(crop.image, params.brightness, params.contrast, params.saturation))
    return crop


class HandTransform:
    """Callable that crops (and, if configured, augments) one hand sample.

    Args:
        size: crop side S (px).
        margin: crop side over the joints' bounding-box side.
        augment: random augmentation ranges; None for deterministic crops.

    Examples:
        >>> t = HandTransform(size=32)
        >>> img = Image.new("RGB", (64, 48))
        >>> j2d = np.stack([np.linspace(10, 30, 21), np.linspace(10, 20, 21)], axis=1)
        >>> t(img, j2d, np.zeros((21, 3)), np.zeros((3, 3)), True).image.shape
        (3, 32, 32)
    """

    def __init__(self, size: int = 224, margin: float = 1.4, augment: AugmentConfig | None = None) -> None:
        if size < 1 or margin <= 0:
            raise ValueError(f"size must be >= 1 and margin > 0, got {size} and {margin}")
        self.size = int(size)
        self.margin = float(margin)
        self.augment = augment

    def __call__(self, image: Image.Image, joints2d: np.ndarray, joints3d: np.ndarray, K: np.ndarray,
                 is_right: bool, rng: np.random.Generator | None = None) -> HandCrop:
        """Crop one sample; ``rng`` is required when augmentation is configured."""
        params = None
        if self.augment is not None:
            if rng is None:
                raise ValueError("HandTransform with augment needs a numpy Generator (rng=...)")
            params = sample_augment(self.augment, rng)
        return crop_hand(image, joints2d, joints3d, K, is_right, size=self.size, margin=self.margin, params=params)

    def __repr__(self) -> str:
        return f"HandTransform(size={self.size}, margin={self.margin}, augment={self.augment})"


_LUMA = torch.tensor([0.299, 0.587, 0.114])


def augment_crops(images: np.ndarray, joints2d: np.ndarray, joints3d: np.ndarray, K: np.ndarray,
                  is_right: np.ndarray, params: list[AugmentParams], *,
                  rotation: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """:func:`crop_hand` of a whole batch of centred crops in a few tensor operations.

    Each source is already a ``S x S`` crop centred on the hand (``box`` = the whole
    image, as for synthetic hands) with intrinsics; the draw ``params[b]`` is applied to
    sample ``b`` exactly as :func:`crop_hand` would (same labels to float precision; the
    image is resampled bilinearly by :func:`torch.nn.functional.grid_sample` instead of
    Pillow; the two differ only along the edge of the source, where a rotation or a
    zoom-out brings black in). This is the fast path for training data: a batch costs
    a fraction of as many :func:`crop_hand` calls.

    Args:
        images: ``(B, S, S, 3)`` uint8 RGB.
        joints2d: ``(B, 21, 2)`` px; joints3d: ``(B, 21, 3)`` mm; K: ``(B, 3, 3)`` (defined).
        is_right: ``(B,)`` bool handedness of the sources.
        params: ``B`` augmentation draws; the box scale must stay below 2 (no low-pass
            reduction is applied).
        rotation: optional ``(B, 3, 3)`` camera-from-hand rotations.

    Returns:
        Batched tensors ``image`` ``(B, 3, S, S)`` float32 in ``[0, 1]``, ``joints2d``,
        ``joints3d``, ``K``, ``is_right`` (and ``rotation``), as :meth:`HandCrop.to_sample`
        stacks them.
    """
    images = np.asarray(images)
    b, size = images.shape[0], images.shape[1]
    if images.shape != (b, size, size, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (B, S, S, 3), got {images.dtype} {images.shape}")
    if len(params) != b:
        raise ValueError(f"got {len(params)} augmentation draws for {b} images")
    joints2d, joints3d, K = (np.asarray(a, dtype=np.float64) for a in (joints2d, joints3d, K))
    if joints2d.shape != (b, 21, 2) or joints3d.shape != (b, 21, 3) or K.shape != (b, 3, 3):
        raise ValueError(f"expected joints2d (B, 21, 2), joints3d (B, 21, 3), K (B, 3, 3) with B={b}; got "
                         f"{joints2d.shape}, {joints3d.shape}, {K.shape}")
    scale = np.array([p.scale for p in params])
    if not np.all((scale > 0) & (scale < 2)):
        raise ValueError(f"augment_crops needs box scales in (0, 2), got {scale.min():g}..{scale.max():g}")
    a = np.deg2rad([p.angle_deg for p in params])
    rz = np.zeros((b, 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    rz[:, 2, 2] = 1.0
    rot2d = K @ rz @ np.linalg.inv(K)  # image motion of the camera turning about its axis
    shift = np.array([p.shift for p in params], dtype=np.float64)
    side = size * scale
    centre = (size - 1) / 2.0 + shift * side[:, None]
    s = size / side
    to_crop = np.zeros((b, 3, 3))
    to_crop[:, 0, 0] = to_crop[:, 1, 1] = s
    to_crop[:, :2, 2] = -(centre - side[:, None] / 2.0) * s[:, None] - 0.5
    to_crop[:, 2, 2] = 1.0
    affine = to_crop @ rot2d  # source px -> crop px
    j2d = joints2d @ np.swapaxes(affine[:, :2, :2], 1, 2) + affine[:, None, :2, 2]
    # K Rz K^-1 is affine (its last row is (0, 0, 1) because K's is), so the composed map
    # moves the 2D joints exactly as crop_hand's two steps do.
    j3d = joints3d @ np.swapaxes(rz, 1, 2)
    k_out = to_crop @ K
    rot = None if rotation is None else rz @ np.asarray(rotation, dtype=np.float64)
    # Image: for every crop pixel, the source pixel inv(affine) @ (u, v, 1), sampled bilinearly
    # with pixel centres at integers (align_corners=True in normalised coordinates).
    inv = np.linalg.inv(affine)
    grid_theta = np.zeros((b, 2, 3))
    n = (size - 1) / 2.0  # normalised = (px - n) / n on both sides
    grid_theta[:, :, :2] = inv[:, :2, :2]
    grid_theta[:, :, 2] = (inv[:, :2, :2] @ np.array([n, n]) + inv[:, :2, 2] - n) / n
    src = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    theta = torch.from_numpy(grid_theta).float()
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=True)
    image = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    flip = np.array([p.flip for p in params], dtype=bool)
    right = np.asarray(is_right, dtype=bool).reshape(b)
    if flip.any():
        mirror = np.diag([-1.0, 1.0, 1.0])
        f = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        j2d[flip, :, 0] = size - 1.0 - j2d[flip, :, 0]
        j3d[flip] = j3d[flip] @ mirror
        k_out[flip] = f @ k_out[flip] @ mirror
        if rot is not None:
            rot[flip] = mirror @ rot[flip] @ mirror
        right = right ^ flip
        index = torch.from_numpy(flip)
        image[index] = image[index].flip(-1)
    factors = torch.tensor([[p.brightness, p.contrast, p.saturation] for p in params], dtype=torch.float32)
    if not torch.all(factors == 1.0):
        # Brightness x -> b x, contrast x -> c (x - m) + m (m: the mean grey), saturation
        # x -> s (x - g) + g (g: the pixel's grey) are affine, and so is grey itself, so the
        # three compose to A x + B g0 + C with g0 the grey of x: one pass over the pixels.
        bright, contrast, sat = (factors[:, i].view(b, 1, 1, 1) for i in range(3))
        grey = torch.einsum("bchw,c->bhw", image, _LUMA).unsqueeze(1)
        mean = bright * grey.mean((2, 3), keepdim=True)
        gain = contrast * bright
        image = torch.addcmul((1.0 - contrast) * mean, image, sat * gain)
        image = image.addcmul_(grey, (1.0 - sat) * gain).clamp_(0.0, 1.0)
    out = {
        "image": image.contiguous(),
        "joints2d": torch.from_numpy(j2d.astype(np.float32)),
        "joints3d": torch.from_numpy(j3d.astype(np.float32)),
        "K": torch.from_numpy(k_out.astype(np.float32)),
        "is_right": torch.from_numpy(right.copy()),
    }
    if rot is not None:
        out["rotation"] = torch.from_numpy(rot.astype(np.float32))
    return out
