"""Synthetic rendered hands: the offline default dataset, with an on-disk cache.

Each sample is a MANO hand rendered with :mod:`.render` directly at crop size by a
pinhole camera, so the labels are exact: ``joints3d`` (mm, camera frame)
projected by ``K`` gives ``joints2d`` (crop px). Sample ``i`` depends only on
``(seed, i)`` and the MANO model, never on the number of worker processes.

The scene distribution (implemented in :mod:`._scene`):

* Pose: per-joint axis-angle within anatomical limits. Each finger joint flexes
  towards the palm about an axis derived from the model's rest geometry (MCP
  -0.3..1.6 rad, PIP 0..1.9, DIP -0.1..1.3; thumb CMC -0.4..0.9, MCP -0.2..1.0,
  IP -0.3..1.3), base joints also spread sideways (up to 0.12-0.5 rad). Finger
  curls share a grasp level (open hand .. fist) and a quarter of the fingers
  move on their own (pointing, counting).
* Shape: betas ~ N(0, 1) clipped to +-2, shrunk towards the mean if a finger
  would get thinner than 0.5x or thicker than 1.8x the mean hand's.
* Orientation: drawn from a named :class:`~._scene.Viewpoint` (:data:`VIEWPOINTS`):
  ``stb`` (the default: third-person views, palm or back towards the camera,
  tilted up to 45 degrees, fingers within +-60 degrees of upright), ``fpha``
  (first-person views along the arm, mostly the back of the hand) or ``any``
  (uniform over all rotations).
* Camera: focal length 2.2-4.5 crop sizes, principal point at the crop centre
  (as in a crop centred on the hand); distance chosen so the hand spans 50-85%
  of the crop, centred to within 6%.
* Appearance: skin albedo between two of eight tones from very light to very
  dark, lighter palms, low-frequency blotches; a forearm (85%), half of them
  in a sleeve; one directional light from the camera's side (diffuse 0.45-0.85,
  ambient 0.2-0.45, slight tint).
* Background: a gradient or noise texture with 4-20 random shapes (plain,
  noise or stripes; some skin-coloured), sometimes blurred. 30% of the samples
  get one or two occluding shapes over the hand. Soft silhouette edges, random
  brightness/contrast/gamma, sensor noise, sometimes blur.

Cache layout (one folder per dataset)::

    manifest.json           settings, MANO fingerprint, shard list; "complete" once done
    shard-00000.npz         images (n, S, S, 3) uint8, joints2d (n, 21, 2), joints3d
    shard-00001.npz         (n, 21, 3), K (n, 3, 3), rotation (n, 3, 3) float32,
    ...                     index (n,) int64

Training sets are augmented on the fly (:class:`SyntheticHands` ``augment``): a
new draw of in-plane rotation, zoom, shift and colour every epoch
(:meth:`SyntheticHands.set_epoch`), so a cache of ``N`` images serves many more
distinct training views.

Every file is written to a temporary name and renamed into place. A folder whose
manifest names other settings is refused (:class:`CacheMismatchError`) unless
``rebuild=True``; an interrupted build resumes from its finished shards. The
number of samples is not such a setting: since sample ``i`` depends only on
``(seed, i)``, a cache of ``N`` samples serves any request for ``n <= N`` (its
first ``n``), and a request for more renders only samples ``N..n-1`` into new
shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from rich.text import Text

from ._io import HandDataError
from PIL import Image

from ._scene import DEFAULT_VIEWPOINT, GENERATOR_VERSION, HandRig, Viewpoint, render_scene, viewpoint
from ._scene import VIEWPOINTS as _VIEWPOINTS
from .transforms import AugmentConfig, CropBox, HandCrop, augment_crops, crop_hand, sample_augment

__all__ = [
    "GENERATOR_VERSION",
    "VIEWPOINTS",
    "CacheMismatchError",
    "SyntheticCacheError",
    "SyntheticHands",
    "generate_synthetic_hands",
]

#: Named viewpoint distributions of the synthetic hands, name -> ``Viewpoint``: ``stb``
#: (third-person views, the default), ``fpha`` (first-person views) and ``any`` (every
#: orientation); the ranges are in the module notes above.
VIEWPOINTS: dict[str, Viewpoint] = _VIEWPOINTS

_FORMAT = "recurnet-hand-synthetic"
_MANIFEST = "manifest.json"
_TASK_SIZE = 25  # samples per worker task: small enough for a smooth progress bar
_LABELS = {"joints2d": (21, 2), "joints3d": (21, 3), "K": (3, 3), "rotation": (3, 3)}


class SyntheticCacheError(HandDataError):
    """A cache file (manifest or shard) is missing, truncated or malformed; the message names it."""


class CacheMismatchError(ValueError):
    """A cache folder holds data generated with different settings."""


# --------------------------------------------------------------------------- the MANO model


def _mano_layer(mano, side: str):
    """The layer used for rendering: finger pose as 45 axis-angle values, flat mean hand."""
    from recurnet_hand.mano import ManoLayer
    from recurnet_hand.mano.io import ManoAssets

    options = {"use_pca": False, "flat_hand_mean": True, "dtype": torch.float64}
    if mano is None:
        return ManoLayer.synthetic(side, **options), "synthetic"
    if isinstance(mano, ManoLayer):
        if mano.use_pca or not mano.flat_hand_mean:
            raise ValueError("mano: a ManoLayer for synthetic hands needs use_pca=False and flat_hand_mean=True "
                             f"(got {mano.extra_repr()}); or pass the MANO file path or ManoAssets instead")
        layer, source = mano, "ManoLayer"
    elif isinstance(mano, ManoAssets):
        layer, source = ManoLayer(mano, **options), "ManoAssets"
    elif isinstance(mano, (str, os.PathLike)):
        layer, source = ManoLayer.from_file(mano, side=side, **options), str(Path(mano).resolve())
    else:
        raise TypeError(f"mano must be None, a path, ManoAssets or a ManoLayer, got {type(mano).__name__}")
    if layer.side != side:
        raise ValueError(f"mano: the model is a {layer.side} hand but side={side!r}")
    return layer, source


def _fingerprint(layer: torch.nn.Module) -> str:
    """SHA-256 over the layer's tensors (names, dtypes, shapes, bytes), buffers included.

    ``named_buffers`` rather than ``state_dict``: smplx keeps the model arrays in
    non-persistent buffers, which ``state_dict`` leaves out.
    """
    digest = hashlib.sha256()
    items = sorted([*layer.named_parameters(), *layer.named_buffers()], key=lambda kv: kv[0])
    for name, tensor in items:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class _Renderer:
    """Renders samples with one MANO layer (picklable, so worker processes get a copy)."""

    def __init__(self, layer) -> None:
        self.layer = layer.eval()
        with torch.no_grad():
            out = self.layer(torch.zeros(1, 3), torch.zeros(1, 45), torch.zeros(1, 10))
        self.rig = HandRig.from_joints(out.vertices[0].double().numpy(), out.joints[0].double().numpy(),
                                       layer.faces.numpy(), layer.side == "right")

    def _forward(self, pose: np.ndarray, betas: np.ndarray):
        with torch.no_grad():
            out = self.layer(torch.zeros(1, 3, dtype=torch.float64),
                             torch.from_numpy(pose.reshape(1, 45)), torch.from_numpy(betas.reshape(1, 10)))
        return out.vertices[0].double().numpy(), out.joints[0].double().numpy()

    def render(self, seed: int, size: int, start: int, stop: int, view: str = DEFAULT_VIEWPOINT
               ) -> dict[str, np.ndarray]:
        """Samples ``start..stop-1`` stacked: images uint8 ``(n, S, S, 3)``, labels float32."""
        threads = torch.get_num_threads()
        # Batch-1 MANO is too small to gain from threads (and slows down badly when cores are
        # busy); one thread also makes its float rounding the same in every process.
        torch.set_num_threads(1)
        try:
            scenes = [render_scene(i, seed, size, self.rig, self._forward, view) for i in range(start, stop)]
        finally:
            torch.set_num_threads(threads)
        return {
            "images": np.stack([s.image for s in scenes]),
            "joints2d": np.stack([s.joints2d for s in scenes]).astype(np.float32),
            "joints3d": np.stack([s.joints3d for s in scenes]).astype(np.float32),
            "K": np.stack([s.K for s in scenes]).astype(np.float32),
            "rotation": np.stack([s.rotation for s in scenes]).astype(np.float32),
            "index": np.arange(start, stop, dtype=np.int64),
        }


_WORKER: _Renderer | None = None


def _worker_init(layer) -> None:
    global _WORKER
    torch.set_num_threads(1)  # one process per core; no oversubscription
    _WORKER = _Renderer(layer)


def _worker_render(seed: int, size: int, start: int, stop: int, view: str) -> dict[str, np.ndarray]:
    return _WORKER.render(seed, size, start, stop, view)


# --------------------------------------------------------------------------- files


def _write_atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda fh: fh.write(json.dumps(data, indent=2).encode()))


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def _read_manifest(root: Path) -> dict | None:
    path = root / _MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != _FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, expected {_FORMAT!r}")
        shards = manifest.get("shards")
        if not isinstance(shards, list) or not all(
                isinstance(e, dict) and isinstance(e.get("file"), str)
                and all(isinstance(e.get(k), int) and e[k] >= 0 for k in ("start", "count", "bytes"))
                for e in shards):
            raise ValueError("'shards' must be a list of {file, start, count, bytes} entries")
    except (ValueError, AttributeError) as err:
        raise SyntheticCacheError(f"{path}: not a synthetic-hands manifest ({err})") from err
    return manifest


def _npy_member(path: Path, zf: zipfile.ZipFile, name: str):
    """Byte offset, shape and dtype of an uncompressed ``.npy`` member of an ``.npz``."""
    info = zf.getinfo(name + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {name!r} is compressed")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad local header for member {name!r}")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran:
            raise ValueError(f"member {name!r} is Fortran-ordered")
        return fh.tell(), shape, dtype


class _ShardReader:
    """Labels of a complete cache in memory; images read from the shards on demand."""

    def __init__(self, root: Path, manifest: dict) -> None:
        size = manifest["crop_size"]
        labels = {k: [] for k in _LABELS}
        self.images = []  # per shard: (path, byte offset of image 0, count)
        for entry in manifest["shards"]:
            path = root / entry["file"]
            n = entry["count"]
            try:
                if not path.is_file():
                    raise FileNotFoundError("file is missing")
                if path.stat().st_size != entry["bytes"]:
                    raise ValueError(f"size {path.stat().st_size} bytes, manifest says {entry['bytes']}")
                with zipfile.ZipFile(path) as zf:
                    offset, shape, dtype = _npy_member(path, zf, "images")
                    if shape != (n, size, size, 3) or dtype != np.uint8:
                        raise ValueError(f"images are {dtype} {shape}, expected uint8 {(n, size, size, 3)}")
                with np.load(path) as data:  # reads the small label arrays with their CRC check
                    if not np.array_equal(data["index"], np.arange(entry["start"], entry["start"] + n)):
                        raise ValueError("index array does not match the manifest")
                    for key, tail in _LABELS.items():
                        if data[key].shape != (n, *tail):
                            raise ValueError(f"{key} has shape {data[key].shape}, expected {(n, *tail)}")
                        labels[key].append(data[key].astype(np.float32))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
                raise SyntheticCacheError(f"{path}: corrupt or incomplete cache shard ({err}); "
                                          "delete it (or the cache folder) to regenerate") from err
            self.images.append((path, offset, n))
        self.labels = {k: np.concatenate(v) for k, v in labels.items()}
        self.starts = np.cumsum([0] + [n for _, _, n in self.images])
        self.size = size

    def image(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        path, offset, _ = self.images[k]
        nbytes = self.size * self.size * 3
        with open(path, "rb") as fh:
            fh.seek(offset + (i - self.starts[k]) * nbytes)
            raw = fh.read(nbytes)
        if len(raw) != nbytes:
            raise SyntheticCacheError(f"{path}: truncated shard (image {i})")
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.size, self.size, 3)


# --------------------------------------------------------------------------- generation


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} img/s", style="progress.data.speed")


def _check_args(num_samples, crop_size, seed, workers, side, view=DEFAULT_VIEWPOINT) -> None:
    viewpoint(view)  # unknown names fail here, listing the known ones
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if int(crop_size) < 16:
        raise ValueError(f"crop_size must be >= 16 px, got {crop_size}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")


def _settings(num_samples, crop_size, seed, side, layer, source, view) -> dict:
    return {"format": _FORMAT, "generator_version": GENERATOR_VERSION, "seed": int(seed),
            "num_samples": int(num_samples), "crop_size": int(crop_size), "side": side, "viewpoint": view,
            "mano": {"source": source, "sha256": _fingerprint(layer)}}


def _differences(manifest: dict, settings: dict) -> list[str]:
    keys = ["generator_version", "seed", "crop_size", "side", "viewpoint"]  # any num_samples is served or extended
    out = [f"{k}: cache has {manifest.get(k)!r}, requested {settings[k]!r}"
           for k in keys if manifest.get(k) != settings[k]]
    have = (manifest.get("mano") or {}).get("sha256")
    if have != settings["mano"]["sha256"]:
        out.append(f"MANO model: cache built with {(manifest.get('mano') or {}).get('source')!r} "
                   f"(sha256 {str(have)[:12]}), requested {settings['mano']['source']!r} "
                   f"(sha256 {settings['mano']['sha256'][:12]})")
    return out


def _clear(root: Path) -> None:
    for path in list(root.glob("shard-*.npz")) + list(root.glob(".*.tmp-*")) + [root / _MANIFEST]:
        path.unlink(missing_ok=True)


def _build(root, layer, settings, workers, shard_size, progress, keep=()) -> dict:
    """Render samples ``[sum(keep counts), n)`` into new shards after the finished shards ``keep``."""
    n, seed, size, view = settings["num_samples"], settings["seed"], settings["crop_size"], settings["viewpoint"]
    first = sum(e["count"] for e in keep)
    shards = [(len(keep) + j, s, min(s + shard_size, n)) for j, s in enumerate(range(first, n, shard_size))]
    done = {}
    for k, start, stop in shards:
        entry = {"file": _shard_name(k), "start": start, "count": stop - start}
        path = root / entry["file"]
        if path.is_file():  # finished by an interrupted build with the same settings
            entry["bytes"] = path.stat().st_size
            try:
                _ShardReader(root, {"crop_size": size, "shards": [entry]})
                done[k] = entry
            except SyntheticCacheError:
                path.unlink()
    todo = [(k, s, min(s + _TASK_SIZE, stop)) for k, start, stop in shards if k not in done
            for s in range(start, stop, _TASK_SIZE)]
    pending = {k: [] for k, _, _ in todo}
    columns = (TextColumn("[bold]synthetic hands"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("render", total=len(todo) and sum(b - a for _, a, b in todo))

        def collect(k, part):
            pending[k].append(part)
            bar.advance(task, len(part["index"]))
            _, start, stop = shards[k - len(keep)]
            if sum(len(p["index"]) for p in pending[k]) == stop - start:
                parts = sorted(pending.pop(k), key=lambda p: p["index"][0])
                arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
                path = root / _shard_name(k)
                _write_atomic(path, lambda fh: np.savez(fh, **arrays))
                done[k] = {"file": path.name, "start": start, "count": stop - start, "bytes": path.stat().st_size}

        workers = min(int(workers), len(todo))
        if workers == 0:
            renderer = _Renderer(layer) if todo else None
            for k, a, b in todo:
                collect(k, renderer.render(seed, size, a, b, view))
        else:
            ctx = get_context("spawn")  # fork after torch/OpenMP start-up is not safe
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(layer,)) as pool:
                futures = {pool.submit(_worker_render, seed, size, a, b, view): k for k, a, b in todo}
                try:
                    while futures:
                        finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            collect(futures.pop(fut), fut.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return {**settings, "shard_size": shard_size, "complete": True,
            "shards": list(keep) + [done[k] for k, _, _ in shards]}


def generate_synthetic_hands(
    out_dir: str | os.PathLike,
    num_samples: int,
    crop_size: int = 224,
    seed: int = 0,
    workers: int | None = None,
    mano=None,
    *,
    side: str = "right",
    viewpoint: str = DEFAULT_VIEWPOINT,
    shard_size: int = 500,
    rebuild: bool = False,
    progress: bool = True,
) -> Path:
    """Render a synthetic hand dataset into ``out_dir`` (or reuse the one already there).

    Args:
        out_dir: cache folder (created if missing).
        num_samples: number of samples.
        crop_size: image side ``S`` (px).
        seed: dataset seed; sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
        workers: processes rendering in parallel (``spawn`` start method, so a script
            calling this needs the usual ``if __name__ == "__main__":`` guard); ``0``
            renders in this process; ``None`` uses every CPU (at most 8).
        mano: ``None`` for the bundled synthetic MANO assets, a MANO file path (``.pkl`` /
            ``.npz`` or a folder with ``MANO_RIGHT.pkl``), ``ManoAssets``, or a ``ManoLayer``
            built with ``use_pca=False, flat_hand_mean=True``.
        side: ``"right"`` or ``"left"`` hand.
        viewpoint: a :data:`VIEWPOINTS` name: how the camera sees the hands.
        shard_size: samples per ``.npz`` shard (a resumed build keeps the original value).
        rebuild: delete a cache built with other settings instead of raising.
        progress: show a progress bar while rendering.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        CacheMismatchError: ``out_dir`` holds a cache with other settings and ``rebuild`` is False.
        SyntheticCacheError: the manifest there is unreadable.
    """
    _check_args(num_samples, crop_size, seed, workers, side, viewpoint)
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    layer, source = _mano_layer(mano, side)
    settings = _settings(num_samples, crop_size, seed, side, layer, source, viewpoint)
    manifest = _read_manifest(root)
    if manifest is None and any(root.glob("shard-*.npz")):
        manifest = {}  # shards of unknown origin: treat as a mismatch
    keep: list[dict] = []  # finished shards that stay: samples 0..N-1 of a smaller cache
    if manifest is not None:
        diff = _differences(manifest, settings) if manifest else ["shard files without a manifest"]
        if diff and not rebuild:
            raise CacheMismatchError(f"{root}: cache was built with other settings; use another folder, delete it "
                                     "or pass rebuild=True:\n  " + "\n  ".join(diff))
        if diff:
            _clear(root)
            manifest = None
        else:
            keep = list(manifest["shards"])
            have = sum(e["count"] for e in keep)
            if keep:  # fails early, naming the file, if a listed shard was damaged
                _ShardReader(root, {"crop_size": settings["crop_size"], "shards": keep})
            if have >= settings["num_samples"]:
                if not manifest.get("complete"):  # an interrupted extension listed more than is needed now
                    _write_json(root / _MANIFEST, {**manifest, "num_samples": have, "complete": True})
                return root
            shard_size = int(manifest.get("shard_size", shard_size))
    for stale in root.glob(".*.tmp-*"):  # left by a killed build
        stale.unlink()
    _write_json(root / _MANIFEST, {**settings, "shard_size": int(shard_size), "complete": False, "shards": keep})
    workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    _write_json(root / _MANIFEST, _build(root, layer, settings, workers, int(shard_size), progress, keep))
    return root


# --------------------------------------------------------------------------- dataset


class SyntheticHands(torch.utils.data.Dataset):
    """Rendered MANO hands over procedural clutter, with exact 2D/3D labels.

    Without ``cache_dir`` each sample is rendered in ``__getitem__`` (use DataLoader
    workers for speed); with it, the whole set is rendered once by ``workers``
    processes into ``.npz`` shards and read from there afterwards. Either way sample
    ``i`` is the same image (uint8-quantised) with the same labels.

    Args:
        num_samples: dataset length.
        crop_size: image side ``S`` (px).
        seed: dataset seed (>= 0).
        mano: MANO model, see :func:`generate_synthetic_hands`.
        cache_dir: folder of the on-disk cache; ``None`` renders on the fly.
        workers: rendering processes when building the cache (ignored without one).
        side: ``"right"`` or ``"left"`` hand.
        viewpoint: a :data:`VIEWPOINTS` name: how the camera sees the hands.
        augment: random augmentation applied on top of the rendering (training sets):
            in-plane rotation about the optical axis (image, 2D joints, 3D joints and
            rotation together), zoom and shift about the crop centre, colour jitter. The
            draw of sample ``i`` depends on ``(seed, epoch, i)``; see :meth:`set_epoch`.
            None: samples exactly as rendered.
        rebuild: replace a cache built with other settings instead of raising.
        progress: show a progress bar while building the cache.

    Returns samples as dicts (see the sample-format notes): ``image`` float32
    ``(3, S, S)`` in ``[0, 1]``, ``joints2d`` float32 ``(21, 2)`` crop px, ``joints3d``
    float32 ``(21, 3)`` mm in the camera frame, ``K`` float32 ``(3, 3)``, ``rotation``
    float32 ``(3, 3)`` (camera from MANO hand), ``has_2d``, ``has_3d`` and ``has_rotation``
    True, ``is_right``, ``index``.
    """

    def __init__(self, num_samples: int, crop_size: int = 224, seed: int = 0, mano=None,
                 cache_dir: str | os.PathLike | None = None, workers: int | None = None, side: str = "right",
                 *, viewpoint: str = DEFAULT_VIEWPOINT, augment: AugmentConfig | None = None, rebuild: bool = False,
                 progress: bool = True) -> None:
        _check_args(num_samples, crop_size, seed, workers, side, viewpoint)
        if augment is not None and not isinstance(augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig or None, got {type(augment).__name__}")
        self.num_samples, self.crop_size, self.seed, self.side = int(num_samples), int(crop_size), int(seed), side
        self.viewpoint, self.augment, self.epoch = viewpoint, augment, 0
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._renderer = self._reader = None
        if self.cache_dir is None:
            self._renderer = _Renderer(_mano_layer(mano, side)[0])
        else:
            generate_synthetic_hands(self.cache_dir, num_samples, crop_size, seed, workers, mano, side=side,
                                     viewpoint=viewpoint, rebuild=rebuild, progress=progress)
            self._reader = _ShardReader(self.cache_dir, _read_manifest(self.cache_dir))

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of epoch ``epoch`` from now on (the trainer calls this every epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(index)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {index} out of range for SyntheticHands of length {self.num_samples}")
        if self._reader is not None:
            image = self._reader.image(i)
            labels = {k: v[i] for k, v in self._reader.labels.items()}
        else:
            part = self._renderer.render(self.seed, self.crop_size, i, i + 1, self.viewpoint)
            image, labels = part["images"][0], {k: part[k][0] for k in _LABELS}
        is_right = self.side == "right"
        if self.augment is None:
            crop = HandCrop(image=image.transpose(2, 0, 1).astype(np.float32) / 255.0, is_right=is_right, **labels)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i, 0xA4])
            centre = (self.crop_size - 1) / 2.0
            crop = crop_hand(Image.fromarray(image), labels["joints2d"], labels["joints3d"], labels["K"], is_right,
                             size=self.crop_size, params=sample_augment(self.augment, rng),
                             box=CropBox(centre, centre, float(self.crop_size)), rotation=labels["rotation"])
        return crop.to_sample(i)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """Samples ``indices`` at once (the DataLoader calls this for each batch).

        Augmented training sets warp the whole batch in one :func:`augment_crops` call: the
        same draws and labels as ``[self[i] for i in indices]``, images equal up to
        bilinear-resampling differences at the crop border, and several times faster.
        """
        if self.augment is None or self._reader is None or len(indices) < 2:
            return [self[i] for i in indices]
        index = [int(i) for i in indices]
        for i in index:
            if not 0 <= i < self.num_samples:
                raise IndexError(f"index {i} out of range for SyntheticHands of length {self.num_samples}")
        images = np.stack([self._reader.image(i) for i in index])
        labels = {k: v[index] for k, v in self._reader.labels.items()}
        params = [sample_augment(self.augment, np.random.default_rng([self.seed, self.epoch, i, 0xA4]))
                  for i in index]
        batch = augment_crops(images, labels["joints2d"], labels["joints3d"], labels["K"],
                              np.full(len(index), self.side == "right"), params, rotation=labels["rotation"])
        true = torch.tensor(True)
        return [{"image": batch["image"][b], "joints2d": batch["joints2d"][b], "joints3d": batch["joints3d"][b],
                 "K": batch["K"][b], "has_2d": true, "has_3d": true, "is_right": batch["is_right"][b],
                 "index": torch.tensor(i, dtype=torch.int64), "rotation": batch["rotation"][b],
                 "has_rotation": true} for b, i in enumerate(index)]
