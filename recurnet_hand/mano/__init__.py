"""MANO hand model: chumpy-free file loading, procedural assets and an smplx-backed layer.

Examples:
    >>> import torch
    >>> from recurnet_hand.mano import ManoLayer
    >>> layer = ManoLayer.synthetic("right")
    >>> out = layer(torch.zeros(1, 3), torch.zeros(1, 6), torch.zeros(1, 10))
    >>> tuple(out.joints.shape)
    (1, 21, 3)
"""

from recurnet_hand.mano.io import ManoAssets, ManoFormatError, load_mano, save_mano
from recurnet_hand.mano.layer import ManoLayer, ManoOutput
from recurnet_hand.mano.synthetic import synthetic_mano_assets

__all__ = [
    "ManoAssets",
    "ManoFormatError",
    "ManoLayer",
    "ManoOutput",
    "load_mano",
    "save_mano",
    "synthetic_mano_assets",
]
