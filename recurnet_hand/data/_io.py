"""Image reading and the error/warning types shared by the hand dataset loaders.

Each label format is parsed in the module of its dataset (``.mat`` in :mod:`.stb`,
``skeleton.txt`` and the split file in :mod:`.fpha`, JSON in :mod:`.panoptic`);
every image of every dataset is decoded here, so a missing or corrupt image fails
with the same message wherever it comes from.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["HandDataError", "HandDataWarning", "load_rgb", "warn_skipped"]


class HandDataError(ValueError):
    """A dataset file exists but its content is malformed; the message names the file."""


class HandDataWarning(UserWarning):
    """Frames were skipped while reading labels (empty files, NaN labels, unlabelled joints)."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully and return it in RGB mode.

    Args:
        path: image file (PNG, JPEG, anything Pillow reads).

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message names it).
        HandDataError: if the file cannot be decoded (truncated, not an image).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            # load() forces the decode here, so a truncated file fails now and not
            # later inside a transform with a message that no longer names the file.
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise HandDataError(f"{path}: cannot decode image ({err})") from err


def warn_skipped(count: int, what: str, source: str | Path) -> None:
    """Emit one :class:`HandDataWarning` saying how many frames were skipped and why.

    Args:
        count: number of skipped frames; nothing is emitted when it is 0.
        what: the reason, e.g. ``"frames with non-finite labels"``.
        source: file or dataset root the frames came from.
    """
    if count:
        warnings.warn(f"{source}: skipped {count} {what}", HandDataWarning, stacklevel=3)
