"""DIR-Net: efficient 3D hand pose estimation with dynamic iterative refinement, built on :mod:`recurnet`.

Importing the package registers the IR9 backbones (``ir9``, ``ir9_16``, ``ir9_32``) with timm.
"""

from pathlib import Path

from . import backbones  # noqa: F401  (timm registration)
from .model import PRESETS, DIRNetConfig, build_dirnet, preset

#: A small DIR-Net (``cpu`` preset) trained on synthetic hands by ``benchmarks/default_run.py --ship``;
#: load it with :func:`recurnet_hand.inference.load_model`. Used by the docs' examples.
SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "dirnet_cpu_synthetic.pt"

__all__ = ["build_dirnet", "DIRNetConfig", "PRESETS", "preset", "SHIPPED_MODEL"]
