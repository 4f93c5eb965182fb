"""DIR-Net: efficient 3D hand pose estimation with dynamic iterative refinement, built on :mod:`recurnet`.

Importing the package registers the IR9 backbones (``ir9``, ``ir9_16``, ``ir9_32``) with timm.
"""

from . import backbones  # noqa: F401  (timm registration)
from .model import PRESETS, DIRNetConfig, build_dirnet, preset

__all__ = ["build_dirnet", "DIRNetConfig", "PRESETS", "preset"]
