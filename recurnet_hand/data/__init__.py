"""Hand-pose datasets (synthetic rendered hands, STB, FPHA, FreiHAND, CMU Panoptic), crops and augmentation.

Every dataset returns the same sample dict (``image, joints2d, joints3d, K, has_2d,
has_3d, is_right, index``; see :class:`~.transforms.HandCrop.to_sample`) with joints
in the project order of :mod:`recurnet_hand.joints`.
"""

from ._io import HandDataError, HandDataWarning
from .fpha import FPHADataset
from .freihand import FreiHANDDataset
from .panoptic import PanopticDataset
from .stb import STBDataset
from .synthetic import CacheMismatchError, SyntheticCacheError, SyntheticHands, generate_synthetic_hands
from .transforms import AugmentConfig, HandCrop, HandTransform

__all__ = [
    "AugmentConfig",
    "FPHADataset",
    "FreiHANDDataset",
    "HandCrop",
    "HandDataError",
    "HandDataWarning",
    "HandTransform",
    "PanopticDataset",
    "STBDataset",
    "SyntheticHands",
    "generate_synthetic_hands",
    "SyntheticCacheError",
    "CacheMismatchError",
]
