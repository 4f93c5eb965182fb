"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only::

    format, version            "recurnet-checkpoint", 1
    config                     {"train": TrainConfig as a dict, "run": the caller's run description}
    phase, epoch, global_step  position: ``epoch`` epochs of phase ``phase`` are complete
    model, optimizer, scheduler  state dicts (the model unwrapped from DDP)
    rng                        torch / CUDA / numpy / Python generator states, as tensors
    data                       the sampler's seed and epoch counter (the order of every
                               epoch is a function of these two, see the trainer)
    metrics                    the last epoch's logged metrics

Writes go to a temporary file in the same folder followed by ``os.replace``, so
a reader (or a killed writer) never sees half a file: the previous checkpoint
stays valid until the new one is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import config_differences

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "ConfigMismatchError",
    "save_checkpoint",
    "load_checkpoint",
    "read_state",
    "check_config",
    "ensure_writable",
]

CHECKPOINT_FORMAT = "recurnet-checkpoint"
_VERSION = 1
_REQUIRED = ("config", "phase", "epoch", "global_step", "model", "optimizer", "scheduler", "rng", "data")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read, or does not fit the network."""


class ConfigMismatchError(CheckpointError):
    """A checkpoint was made with a different configuration.

    Attributes:
        differences: one line per mismatching field, e.g. ``"train.lr: checkpoint 0.001, now 0.01"``.
    """

    def __init__(self, path: str | Path, differences: list[str]):
        self.differences = differences
        listed = "\n  ".join(differences)
        super().__init__(f"checkpoint {path} was made with a different configuration:\n  {listed}")


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises:
        CheckpointError: naming the folder and the reason.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CheckpointError(f"cannot write to {folder}: {e.strerror or e}") from e
    return folder


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``).

    Args:
        path: destination file.
        state: plain data: tensors, numbers, strings, None, lists, tuples and dicts.

    Returns:
        ``path``.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": _VERSION, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_state(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file.

    Args:
        path: the file.
        what: how the file is called in messages (``"checkpoint"``, ``"model file"``, ...).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # Damaged bytes fail anywhere in the unpickler (KeyError on a memo, AssertionError,
        # IndexError, ... besides the usual UnpicklingError and zip errors): all mean the same.
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({type(e).__name__}: {e})") from e


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` on the CPU, with ``weights_only=True``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file is truncated, corrupt, or not a recurnet checkpoint.
    """
    path = Path(path)
    state = read_state(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a recurnet checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if state.get("version") != _VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, this library reads {_VERSION}")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state


def check_config(path: str | Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigMismatchError` naming each field where ``saved`` and ``current`` differ.

    Both are ``{"train": ..., "run": ...}`` dicts; the trainer's runtime fields are ignored.
    """
    differences = config_differences(saved.get("train", {}), current.get("train", {}), prefix="train.")
    differences += config_differences(saved.get("run", {}), current.get("run", {}), prefix="run.")
    if differences:
        raise ConfigMismatchError(path, differences)
