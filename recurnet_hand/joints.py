"""The 21-joint hand skeleton used throughout :mod:`recurnet_hand`.

Every dataset loader, the MANO layer and the metrics speak one joint order:
the root (wrist) first, then each finger from thumb to little finger, each
finger listed from its base (MCP, or CMC for the thumb) to its tip::

    0  wrist
    1  thumb_mcp   2  thumb_pip   3  thumb_dip   4  thumb_tip
    5  index_mcp   6  index_pip   7  index_dip   8  index_tip
    9  middle_mcp 10  middle_pip 11  middle_dip 12  middle_tip
   13  ring_mcp   14  ring_pip   15  ring_dip   16  ring_tip
   17  little_mcp 18  little_pip 19  little_dip 20  little_tip

Source orders are mapped with index arrays ``new[i] = old[idx[i]]``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "JOINT_NAMES",
    "NUM_JOINTS",
    "PARENTS",
    "FINGERS",
    "MANO_TO_HAND21",
    "STB_TO_HAND21",
    "FPHA_TO_HAND21",
    "reorder",
]

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "little")
_SEGMENTS: tuple[str, ...] = ("mcp", "pip", "dip", "tip")

JOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(f"{f}_{s}" for f in FINGERS for s in _SEGMENTS)
NUM_JOINTS: int = len(JOINT_NAMES)

#: Parent of each joint in the 21-joint order (-1 for the root); used for bones in plots.
PARENTS: tuple[int, ...] = (-1,) + tuple(
    0 if s == 0 else 1 + 4 * f + s - 1 for f in range(len(FINGERS)) for s in range(len(_SEGMENTS))
)

#: MANO's 16 kinematic joints followed by the five fingertip vertices
#: (thumb, index, middle, ring, pinky) -> project order.
MANO_TO_HAND21 = np.array([0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20])

#: STB order (palm centre, then little, ring, middle, index, thumb, each MCP -> tip) -> project order.
#: Index 0 is STB's palm centre; see :mod:`recurnet_hand.data.stb` for the palm-to-wrist option.
STB_TO_HAND21 = np.array([0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4])

#: FPHA order (wrist, five MCPs, then PIP/DIP/TIP per finger from thumb) -> project order.
FPHA_TO_HAND21 = np.array([0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20])


def reorder(joints, index: np.ndarray):
    """Reorder joints along the second-to-last axis: ``out[..., i, :] = joints[..., index[i], :]``.

    Args:
        joints: array or tensor of shape ``(..., J_src, D)``.
        index: integer array of length 21 (one of the ``*_TO_HAND21`` maps).

    Returns:
        Same type as ``joints``, shape ``(..., 21, D)``.

    Examples:
        >>> import numpy as np
        >>> stb = np.arange(21)[:, None].repeat(3, axis=1)
        >>> int(reorder(stb, STB_TO_HAND21)[1, 0])  # project thumb MCP is STB joint 17
        17
    """
    if joints.shape[-2] <= int(np.max(index)):
        raise ValueError(f"joints has {joints.shape[-2]} joints on axis -2, index needs {int(np.max(index)) + 1}")
    return joints[..., index, :]
