"""Reading and writing MANO model files without chumpy.

The official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` are Python-2 pickles whose
arrays partly live inside ``chumpy`` objects. ``chumpy`` does not import with
current NumPy, and unpickling arbitrary files runs arbitrary code, so
:func:`load_mano` reads them with a restricted unpickler: it allows a fixed
list of globals (NumPy arrays, ``set``, two chumpy classes and SciPy's CSC
matrix), replaces the chumpy and SciPy classes by inert stand-ins that only
store their pickled state, and refuses every other global before anything is
called.

:func:`save_mano` writes a plain-dict pickle that ``smplx.MANO`` reads as is
(and that :func:`load_mano` reads back), or an ``.npz`` archive.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ManoAssets", "ManoFormatError", "load_mano", "save_mano"]

NUM_VERTICES = 778
NUM_FACES = 1538
NUM_KINEMATIC_JOINTS = 16
NUM_BETAS = 10
NUM_POSE_BASIS = 9 * (NUM_KINEMATIC_JOINTS - 1)

#: Expected array shapes, in the order of the :class:`ManoAssets` fields.
_SHAPES: dict[str, tuple[int, ...]] = {
    "v_template": (NUM_VERTICES, 3),
    "shapedirs": (NUM_VERTICES, 3, NUM_BETAS),
    "posedirs": (NUM_VERTICES, 3, NUM_POSE_BASIS),
    "J_regressor": (NUM_KINEMATIC_JOINTS, NUM_VERTICES),
    "J": (NUM_KINEMATIC_JOINTS, 3),
    "weights": (NUM_VERTICES, NUM_KINEMATIC_JOINTS),
    "kintree_table": (2, NUM_KINEMATIC_JOINTS),
    "f": (NUM_FACES, 3),
    "hands_components": (3 * (NUM_KINEMATIC_JOINTS - 1), 3 * (NUM_KINEMATIC_JOINTS - 1)),
    "hands_mean": (3 * (NUM_KINEMATIC_JOINTS - 1),),
}
_INT_KEYS = frozenset({"kintree_table", "f"})
#: Keys a file may omit; ``J`` is then regressed from the template.
_OPTIONAL_KEYS = frozenset({"J"})
_SIDES = ("right", "left")


class ManoFormatError(ValueError):
    """A MANO file is malformed, incomplete, or contains a pickle global that is not allowed."""


@dataclass(frozen=True, eq=False)
class ManoAssets:
    """The arrays of one MANO hand model (right or left), as read by ``smplx.MANO``.

    All arrays are read-only NumPy arrays; floats are ``float64``, indices ``int64``.
    Lengths are in metres. ``V = 778`` vertices, ``F = 1538`` faces, 16 kinematic joints
    (wrist; index, middle, pinky, ring, thumb with three joints each).

    Attributes:
        v_template: rest-pose vertices ``(778, 3)``, metres.
        shapedirs: shape blend shapes ``(778, 3, 10)``, metres per unit of beta.
        posedirs: pose-corrective blend shapes ``(778, 3, 135)``, metres per unit of
            ``R - I`` entry (joints 1..15).
        J_regressor: dense joint regressor ``(16, 778)``; ``J = J_regressor @ v_template``.
        J: rest-pose joint positions ``(16, 3)``, metres.
        weights: linear-blend-skinning weights ``(778, 16)``.
        kintree_table: ``(2, 16)``; row 0 holds each joint's parent (-1 for the wrist),
            row 1 the joint ids.
        f: triangle vertex indices ``(1538, 3)``.
        hands_components: PCA basis of the 45 finger-pose parameters ``(45, 45)``,
            one component per row.
        hands_mean: mean finger pose ``(45,)``, axis-angle radians.
        side: ``"right"`` or ``"left"``.
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    J: np.ndarray
    weights: np.ndarray
    kintree_table: np.ndarray
    f: np.ndarray
    hands_components: np.ndarray
    hands_mean: np.ndarray
    side: str

    def __post_init__(self) -> None:
        arrays = _validated({k: getattr(self, k) for k in _SHAPES}, "ManoAssets")
        for key, value in arrays.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "side", _check_side(self.side, "ManoAssets"))

    @property
    def parents(self) -> np.ndarray:
        """Parent of each of the 16 kinematic joints, ``(16,)`` int64, -1 for the wrist."""
        return self.kintree_table[0]

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (arrays are shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- loading


def load_mano(path: str | os.PathLike, side: str | None = None) -> ManoAssets:
    """Load MANO assets from an official pickle, a plain-dict pickle, or an ``.npz`` file.

    Args:
        path: a ``.pkl`` / ``.npz`` file, or a folder holding ``MANO_RIGHT.pkl`` /
            ``MANO_LEFT.pkl`` (then ``side`` picks the file).
        side: ``"right"`` or ``"left"``. If ``None``, taken from a ``side`` entry in the
            file, else from ``RIGHT`` / ``LEFT`` in the file name.

    Returns:
        The validated :class:`ManoAssets`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ManoFormatError: the file holds a forbidden pickle global, misses a key, has an
            array of the wrong shape, or its side cannot be determined.
    """
    path = Path(path)
    if path.is_dir():
        if side is None:
            raise ManoFormatError(f"{path}: is a folder; pass side='right' or side='left' to pick the MANO file")
        path = path / f"MANO_{_check_side(side, 'side').upper()}.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"MANO file not found: {path}")

    raw = _read_npz(path) if path.suffix.lower() == ".npz" else _read_pickle(path)
    arrays = {}
    for key in _SHAPES:
        if key in raw:
            where = f"{path}: key {key!r}"
            try:
                arrays[key] = _resolve(raw[key], where)
            except ManoFormatError:
                raise
            except (IndexError, ValueError, TypeError) as err:  # e.g. Select indices out of range
                raise ManoFormatError(f"{where}: cannot rebuild the array: {err}") from err
        elif key not in _OPTIONAL_KEYS:
            raise ManoFormatError(f"{path}: missing key {key!r}")
    arrays = _validated(arrays, str(path))
    return ManoAssets(**arrays, side=_side_of(path, raw, side))


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as err:  # object arrays would need pickle: refuse them
        raise ManoFormatError(f"{path}: cannot read .npz without pickle: {err}") from err


def _side_of(path: Path, raw: dict[str, Any], side: str | None) -> str:
    if side is not None:
        return _check_side(side, "side")
    if "side" in raw:
        return _check_side(str(np.asarray(raw["side"])), f"{path}: key 'side'")
    name = path.name.upper()
    hits = [s for s in _SIDES if s.upper() in name]
    if len(hits) != 1:
        raise ManoFormatError(f"{path}: cannot tell the hand side from the file; pass side='right' or 'left'")
    return hits[0]


def _check_side(side: str, what: str) -> str:
    if side not in _SIDES:
        raise ManoFormatError(f"{what}: side must be one of {_SIDES}, got {side!r}")
    return side


def _validated(arrays: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    """Check presence, shape and index ranges; return read-only float64 / int64 copies."""
    out: dict[str, np.ndarray] = {}
    for key, expected in _SHAPES.items():
        if key not in arrays or arrays[key] is None:
            if key in _OPTIONAL_KEYS:
                continue
            raise ManoFormatError(f"{source}: missing key {key!r}")
        try:
            arr = np.asarray(arrays[key])
        except Exception as err:  # ragged lists and the like
            raise ManoFormatError(f"{source}: key {key!r} is not an array: {err}") from err
        if arr.shape != expected:
            raise ManoFormatError(f"{source}: key {key!r} has shape {arr.shape}, expected {expected}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ManoFormatError(f"{source}: key {key!r} has non-numeric dtype {arr.dtype}")
        out[key] = _as_int(arr, key, source) if key in _INT_KEYS else arr.astype(np.float64)
        if key not in _INT_KEYS and not np.all(np.isfinite(out[key])):
            raise ManoFormatError(f"{source}: key {key!r} contains NaN or infinite values")
    if "J" not in out:
        out["J"] = out["J_regressor"] @ out["v_template"]

    faces = out["f"]
    if faces.min() < 0 or faces.max() >= NUM_VERTICES:
        raise ManoFormatError(f"{source}: key 'f' indexes vertices outside [0, {NUM_VERTICES})")
    parents = out["kintree_table"][0].copy()
    parents[0] = -1
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, NUM_KINEMATIC_JOINTS)):
        raise ManoFormatError(f"{source}: key 'kintree_table' row 0 must list each joint's parent before it")
    table = out["kintree_table"].copy()
    table[0] = parents
    out["kintree_table"] = table
    for arr in out.values():
        arr.flags.writeable = False
    return out


def _as_int(arr: np.ndarray, key: str, source: str) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise ManoFormatError(f"{source}: key {key!r} must hold integers")
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        # Official files store the root's parent as uint32(-1).
        arr = arr.astype(np.int64)
        arr[arr >= 2**31] = -1
        return arr
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- restricted unpickling


class _StandIn:
    """Inert replacement for a pickled class: keeps the unpickled state, runs nothing."""

    kind = "object"
    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        # Classes with __slots__ pickle their state as (dict, slot_dict).
        if isinstance(state, tuple) and len(state) == 2:
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise ManoFormatError(f"{type(self).__name__}: pickled state is a {type(state).__name__}, expected a dict")
        self.state = state


class _ChStandIn(_StandIn):
    """Stand-in for ``chumpy.ch.Ch``; its value is ``state['x']``."""

    kind = "chumpy Ch"


class _SelectStandIn(_StandIn):
    """Stand-in for ``chumpy.reordering.Select``; value ``a.ravel()[idxs].reshape(preferred_shape)``."""

    kind = "chumpy Select"


class _CscStandIn(_StandIn):
    """Stand-in for ``scipy.sparse.csc_matrix``; its value is the dense matrix."""

    kind = "scipy csc_matrix"


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array reconstructor, whatever its module

#: Every global a MANO pickle may name, mapped to what it becomes.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("chumpy.ch", "Ch"): _ChStandIn,
    ("chumpy.reordering", "Select"): _SelectStandIn,
    ("scipy.sparse.csc", "csc_matrix"): _CscStandIn,
    ("scipy.sparse._csc", "csc_matrix"): _CscStandIn,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ManoFormatError(
                f"{self._source}: refusing to load pickle global '{module}.{name}'; "
                "a MANO file may only reference NumPy arrays, set, chumpy Ch/Select and scipy csc_matrix"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ManoFormatError(f"{self._source}: pickle uses persistent ids, which MANO files never do")


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = _RestrictedUnpickler(handle, str(path)).load()
    except ManoFormatError:
        raise
    except Exception as err:  # truncated or otherwise broken pickles
        raise ManoFormatError(f"{path}: not a readable MANO pickle: {type(err).__name__}: {err}") from err
    if not isinstance(data, dict):
        raise ManoFormatError(f"{path}: pickle holds a {type(data).__name__}, expected a dict of MANO arrays")
    return data


_MAX_DEPTH = 32


def _resolve(obj: Any, where: str, depth: int = 0) -> Any:
    """Turn stand-ins (possibly nested) into NumPy arrays; other values pass through."""
    if depth > _MAX_DEPTH:
        raise ManoFormatError(f"{where}: chumpy objects nested deeper than {_MAX_DEPTH}")
    if not isinstance(obj, _StandIn):
        return obj
    state = getattr(obj, "state", None)
    if state is None:
        raise ManoFormatError(f"{where}: {obj.kind} without state")

    def field(name: str) -> Any:
        if name not in state:
            raise ManoFormatError(f"{where}: {obj.kind} lacks field {name!r}")
        return state[name]

    if isinstance(obj, _ChStandIn):
        return np.asarray(_resolve(field("x"), where, depth + 1))
    if isinstance(obj, _SelectStandIn):
        source = np.asarray(_resolve(field("a"), where, depth + 1))
        idxs = np.asarray(_resolve(field("idxs"), where, depth + 1)).astype(np.int64)
        shape = tuple(int(n) for n in np.atleast_1d(field("preferred_shape")))
        return source.ravel()[idxs].reshape(shape)
    from scipy.sparse import csc_matrix  # imported late: only needed for official files

    shape = state.get("_shape", state.get("shape"))
    if shape is None:
        raise ManoFormatError(f"{where}: {obj.kind} lacks field '_shape'")
    matrix = csc_matrix((field("data"), field("indices"), field("indptr")), shape=tuple(shape))
    return matrix.toarray()


# --------------------------------------------------------------------------- saving


def save_mano(assets: ManoAssets, path: str | os.PathLike) -> Path:
    """Write MANO assets so that ``smplx.MANO`` and :func:`load_mano` read them unchanged.

    The file is written to a temporary name beside the target and moved into place, so a
    crash never leaves a half-written model.

    Args:
        assets: the model to write.
        path: an existing folder (the file becomes ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``
            inside it, the names ``smplx.MANO(model_path=folder, is_rhand=...)`` looks for),
            a ``.pkl`` file (plain dict of NumPy arrays and strings, pickle protocol 4),
            or a ``.npz`` file.

    Returns:
        The path of the written file.

    Raises:
        ValueError: ``path`` has a suffix other than ``.pkl`` / ``.npz`` and is not a folder.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"MANO_{assets.side.upper()}.pkl"
    suffix = path.suffix.lower()
    if suffix not in (".pkl", ".npz"):
        raise ValueError(f"save_mano: path must be a folder, a .pkl or a .npz file, got {path}")
    payload: dict[str, Any] = {k: np.array(getattr(assets, k)) for k in _SHAPES}
    payload["side"] = assets.side
    # Keys the official files carry; smplx ignores them, other MANO readers expect them.
    payload["bs_style"] = "lbs"
    payload["bs_type"] = "lrotmin"

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            if suffix == ".npz":
                np.savez(handle, **payload)
            else:
                # Protocol 4: raw bytes for array data (protocol 2 would need `_codecs.encode`).
                pickle.dump(payload, handle, protocol=4)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path
