"""Use a trained DIR-Net: load ``model.pt``, evaluate it on a dataset, predict on images, profile it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

import recurnet
from recurnet.training.checkpoint import CheckpointError, read_state

from . import plots
from .config import ConfigError, RunConfig, config_from_dict
from .data.factory import DatasetSpec, build_dataset
from .data.transforms import CropBox, crop_affine, warp_image
from .evaluation import (
    EvalRow,
    collect,
    eval_configs,
    evaluate_policies,
    loop_summaries,
    loop_summaries_to_markdown,
    mesh_summaries,
    mesh_summaries_to_markdown,
    variance_thresholds,
    write_rows,
)
from .model import DIRNetConfig, ManoPoseHead, build_dirnet, mesh_outputs
from .train import MODEL_FORMAT, default_cache_dir

__all__ = ["ModelFileError", "load_model", "evaluate_model", "Prediction", "predict_images", "profile_model",
           "IMAGE_SUFFIXES", "parse_box", "read_boxes", "write_obj"]

#: File name endings ``predict`` reads from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ModelFileError(ValueError):
    """A ``model.pt`` file is missing parts, corrupt, or made for another configuration."""


def _read(path: Path) -> dict:
    try:
        state = read_state(path, "model file")
    except CheckpointError as err:
        raise ModelFileError(str(err)) from err
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a DIR-Net model file (expected format {MODEL_FORMAT!r}); "
                             "pass the run's model.pt, not a trainer checkpoint")
    for key in ("config", "model"):
        if key not in state:
            raise ModelFileError(f"model file {path} has no {key!r} entry")
    return state


def load_model(path: str | os.PathLike, *, preset: str | None = None, device: str | torch.device = "cpu"
               ) -> tuple[recurnet.LoopedNet, RunConfig]:
    """Rebuild the network stored in ``model.pt`` (with its learned gate, when it has one).

    Args:
        path: a run's ``model.pt``.
        preset: if given, the preset the model must have been trained with.
        device: where to put the network.

    Returns:
        ``(net in eval mode, run configuration)``.

    Raises:
        FileNotFoundError, ModelFileError: missing, corrupt or mismatching file.
    """
    path = Path(path)
    state = _read(path)
    try:
        run = config_from_dict(state["config"], source=f"{path} (config)")
    except ConfigError as err:
        raise ModelFileError(str(err)) from None
    if preset is not None and run.model.name != preset:
        raise ModelFileError(f"{path} holds a {run.model.name!r} model, not the requested preset {preset!r}")
    net = build_dirnet(run.model)
    weights = state["model"]
    if any(k.startswith("policy.") for k in weights):
        net.policy = recurnet.LearnedGate(run.model.uncertainty_hidden,
                                          hidden=weights["policy.net.0.weight"].shape[0])
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1:3]
        raise ModelFileError(f"{path} does not fit its own configuration ({run.model.name}): "
                             + " ".join(s.strip() for s in first)) from None
    return net.to(device).eval(), run


def evaluate_model(path: str | os.PathLike, *, dataset: str | None = None, root: str | None = None,
                   samples: int | None = None, preset: str | None = None, out_dir: str | os.PathLike | None = None,
                   temperatures=None, auc_range: tuple[float, float] | None = None, batch_size: int = 64,
                   device: str = "cpu", progress: bool = True) -> list[EvalRow]:
    """Evaluate ``model.pt`` on a test split for every fixed loop count and exit policy setting.

    Args:
        path: the model file.
        dataset: ``synthetic``, ``stb``, ``fpha`` or ``freihand`` (default: the run's dataset). On
            ``freihand`` a MANO model is also scored on its mesh: ``eval_mesh.md`` holds
            PA-MPJPE, PA-MPVPE, F@5/F@15 mm and the aligned AUCs per loop.
        root: data root (synthetic: cache folder).
        samples: synthetic test images (default: the run's).
        preset: expected preset (checked).
        out_dir: where to write ``eval.md``/``eval.csv`` and ``eval_tradeoff.png`` (None: nothing written);
            with 3D labels also ``eval_loops.md`` (every loop's errors, palm/back accuracy, calibration and
            feedback spread, :func:`recurnet_hand.evaluation.loop_summaries`), and for a network with
            feedback ``eval_attention.png`` (:func:`recurnet_hand.plots.plot_attention`).
        temperatures: gate temperatures to sweep (default: the run's).
        auc_range: 3D AUC threshold range in mm (default: the dataset's).
        batch_size: evaluation batch size.
        device: where to run.
        progress: show a progress bar.
    """
    net, run = load_model(path, preset=preset, device=device)
    name = dataset or run.data.dataset
    default_root = str(default_cache_dir()) if name == "synthetic" else None
    spec = DatasetSpec(name=name, root=root if root is not None else (run.data.root if name == run.data.dataset
                                                                       else None) or default_root,
                       crop_size=run.model.crop_size, num_samples=samples or run.data.test_samples, seed=run.seed,
                       augment=False, workers=run.data.workers, progress=progress, viewpoint=run.data.viewpoint)
    meshes = name == "freihand" and run.model.head == "mano"
    spec = replace(spec, vertices=meshes)
    data = build_dataset(spec, "test", side=run.model.side)
    cfg2d, cfg3d = eval_configs(name, run.model.crop_size, auc_range)
    loader = DataLoader(data, batch_size=batch_size)
    col = collect(net, loader, device=device, progress=progress, total=len(loader), vertices=meshes)
    policies = {}
    thresholds = variance_thresholds(col, run.gate.variance_thresholds)
    if thresholds:
        policies["variance"] = {f"tau_var={t:g}": recurnet.VarianceThreshold(t, outputs=["joints3d"])
                                for t in thresholds}
    if isinstance(net.policy, recurnet.LearnedGate):
        gates = {}
        for t in temperatures or run.gate.temperatures:
            gate = _copy_gate(net.policy, t)
            gates[f"tau_gate={t:g}"] = gate
        policies["gate"] = gates
    rows = evaluate_policies(col, policies, cfg2d, cfg3d, seed=run.seed)
    mesh = mesh_summaries(col) if meshes else None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_rows(rows, out / "eval.md")
        write_rows(rows, out / "eval.csv")
        if mesh is not None:
            tmp = out / ".eval_mesh.md.tmp"
            tmp.write_text("FreiHAND measures per loop (Procrustes-aligned joints and vertices):\n\n"
                           + mesh_summaries_to_markdown(mesh) + "\n")
            os.replace(tmp, out / "eval_mesh.md")
        else:  # a mesh table from an earlier evaluation would no longer describe these results
            (out / "eval_mesh.md").unlink(missing_ok=True)
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(r.policy, []).append((r.mean_gmacs, r.auc3d, r.setting.split("=")[-1]))
        plots.plot_tradeoff(series, out / "eval_tradeoff.png")
        _write_loops(col, run, cfg2d, cfg3d, out)
    return rows


def _write_loops(col, run: RunConfig, cfg2d, cfg3d, out: Path) -> None:
    # Files from an earlier evaluation that this one cannot write would no longer describe it.
    for name in ("eval_loops.md", "eval_attention.png"):
        (out / name).unlink(missing_ok=True)
    if col.has_3d.any():
        loops = loop_summaries(col, cfg2d, cfg3d, unit_3d_mm=run.loss.unit_3d_mm, crop_size=run.model.crop_size,
                               is_right=run.model.side == "right")
        tmp = out / ".eval_loops.md.tmp"
        tmp.write_text("Every sample through every loop:\n\n" + loop_summaries_to_markdown(loops) + "\n")
        os.replace(tmp, out / "eval_loops.md")
    if col.maps_by_loop():
        plots.plot_attention(col.images, col.maps_by_loop(), out / "eval_attention.png")


def _copy_gate(gate: recurnet.LearnedGate, temperature: float) -> recurnet.LearnedGate:
    copy = recurnet.LearnedGate(gate.net[0].in_features, hidden=gate.net[0].out_features, temperature=temperature,
                                mode=gate.mode)
    copy.load_state_dict(gate.state_dict())
    return copy.eval()


@dataclass(frozen=True)
class Prediction:
    """DIR-Net's answer for one hand.

    Attributes:
        file: the image file.
        joints2d: ``(21, 2)`` in the original image's pixels.
        joints3d: ``(21, 3)`` mm, root-relative, camera orientation.
        sigma2d: ``(21,)`` predicted 2D standard deviation per joint, original-image px.
        sigma3d: ``(21,)`` predicted 3D standard deviation per joint, mm.
        exit_step: loops run after the first pass.
        gmacs: giga multiply-adds spent.
        hand: index of the hand in its image (the order of its boxes).
        box: the hand box ``[x, y, w, h]`` (original px) it was cropped around; None: the whole image.
        mesh: the ``.obj`` written for this hand (MANO models), else None.
    """

    file: str
    joints2d: list
    joints3d: list
    sigma2d: list
    sigma3d: list
    exit_step: int
    gmacs: float
    hand: int = 0
    box: list | None = None
    mesh: str | None = None


def _image_files(inputs) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    if not files:
        raise FileNotFoundError("no input images given")
    return files


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return rgb


def _check_box(box, where: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a hand box is [x, y, w, h] in pixels, got {box!r}") from None
    if len(values) != 4 or not all(np.isfinite(values)) or values[2] <= 0 or values[3] <= 0:
        raise ValueError(f"{where}: a hand box is [x, y, w, h] with finite values and w, h > 0, got {box!r}")
    return values


def _box_list(value, file: Path) -> list:
    """``[None]`` (the whole image), or the image's boxes checked: one box or a list of boxes."""
    if value is None:
        return [None]
    is_one = isinstance(value, (list, tuple)) and len(value) > 0 and not isinstance(value[0], (list, tuple))
    boxes = [value] if is_one else list(value)
    if not boxes:
        raise ValueError(f"box of {file}: an empty list of boxes")
    return [_check_box(b, f"box of {file}") for b in boxes]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x,y,w,h"`` (pixels, top-left corner and size) as a tuple.

    Examples:
        >>> parse_box("10,20,64,48")
        (10.0, 20.0, 64.0, 48.0)
    """
    return _check_box(text.split(","), f"box {text!r}")


def read_boxes(path: str | os.PathLike) -> dict[str, list[tuple[float, float, float, float]]]:
    """Hand boxes per image from a JSON file: ``{"name.jpg": [x, y, w, h]}`` or ``{"name.jpg": [[x, y, w, h], ...]}``.

    Keys are matched against the image files' names (or their full paths as given).

    Raises:
        FileNotFoundError: no such file; ValueError: not JSON of that shape (the entry is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"box file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"box file {path} must hold an object mapping image names to boxes")
    boxes = {}
    for name, value in raw.items():
        entries = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
        boxes[name] = [_check_box(b, f"box file {path}, entry {name!r}") for b in entries]
    return boxes


def _crop(rgb: Image.Image, box, size: int, margin: float):
    """The model input for one hand and the affine map (original px -> crop px) it was taken with."""
    if box is None:  # the whole image is the crop: centred in a square, then resized
        w, h = rgb.size
        crop_box = CropBox((w - 1) / 2.0, (h - 1) / 2.0, float(max(w, h)))
    else:  # a square around the box, as training crops sit around the joints' box
        x, y, w, h = box
        crop_box = CropBox(x + w / 2.0 - 0.5, y + h / 2.0 - 0.5, max(w, h) * margin)
    affine = crop_affine(crop_box, size)
    return torch.from_numpy(warp_image(rgb, affine, size)), affine


def write_obj(path: str | os.PathLike, vertices, faces) -> Path:
    """Write a triangle mesh as Wavefront ``.obj`` (``v x y z`` lines, then 1-based ``f a b c``).

    Args:
        path: output file (written whole or not at all).
        vertices: ``(V, 3)`` coordinates (DIR-Net's meshes: mm, root-relative, camera orientation).
        faces: ``(F, 3)`` vertex indices, 0-based.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"write_obj needs (V, 3) vertices and (F, 3) faces, got {v.shape} and {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"write_obj: face indices must lie in [0, {len(v)}), got {f.min()}..{f.max()}")
    lines = [f"v {a:.4f} {b:.4f} {c:.4f}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _mesh_faces(net) -> torch.Tensor | None:
    for m in net.modules():
        if isinstance(m, ManoPoseHead):
            return m.mano.faces.cpu()
    return None


def predict_images(path: str | os.PathLike, inputs, out_dir: str | os.PathLike, *, device: str = "cpu",
                   overlays: bool = True, boxes=None, margin: float = 1.4, meshes: bool = True
                   ) -> list[Prediction]:
    """Predict joints (and, with a MANO head, the mesh) on images with the model's exit policy.

    Without boxes each image is taken as one hand crop (centred in a square). With boxes,
    each box is one hand: the crop is a square of ``margin`` times the box's longer side
    around its centre, as training crops sit around the joints' box.

    Writes ``predictions.json``; per hand, ``<stem>_pred.png`` (``<stem>_<k>_pred.png`` for
    hand ``k`` of an image with several boxes) with the skeleton and the predicted 2D
    uncertainty on the crop, and, for MANO models with ``meshes``, ``<stem>[_<k>].obj``.

    Args:
        path: a run's ``model.pt``.
        inputs: image files or folders.
        out_dir: output folder.
        device: torch device.
        overlays: write the overlay PNGs.
        boxes: None; one ``(x, y, w, h)`` box for every image; or a mapping from image name
            (or path) to a box or a list of boxes (see :func:`read_boxes`). Images missing from
            a mapping are taken whole.
        margin: crop side over the box's longer side.
        meshes: write ``.obj`` meshes (MANO head only).

    Raises:
        FileNotFoundError: a missing image or folder; ValueError: an unreadable image or a bad box (named).
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    net, run = load_model(path, device=device)
    files = _image_files(inputs)
    size = run.model.crop_size
    if boxes is None or isinstance(boxes, dict):
        table = {} if boxes is None else boxes
        known = {str(f) for f in files} | {f.name for f in files}
        unknown = sorted(str(k) for k in table if str(k) not in known)
        if unknown:  # a misspelt name would otherwise silently crop the whole image
            raise ValueError(f"boxes name images that are not among the inputs: {', '.join(unknown)}")
        per_file = [_box_list(table.get(str(f), table.get(f.name)), f) for f in files]
    else:
        box = _check_box(boxes, "box")
        per_file = [[box] for _ in files]
    faces = _mesh_faces(net) if meshes else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Read and crop everything first: a bad file fails before any output is written.
    crops = []
    for f, file_boxes in zip(files, per_file):
        rgb = _open_rgb(f)
        for k, box in enumerate(file_boxes):
            stem = f.stem if len(file_boxes) == 1 else f"{f.stem}_{k}"
            crops.append((f, k, box, stem, *_crop(rgb, box, size, margin)))
    results = []
    with torch.no_grad(), mesh_outputs(net, faces is not None):
        for f, k, box, stem, image, affine in crops:
            res = net(image[None].to(device))
            inv = torch.from_numpy(np.linalg.inv(affine)).float()
            scale = float(np.sqrt(abs(np.linalg.det(inv[:2, :2].numpy()))))  # original px per crop px
            j2d = res.final["joints2d"][0].cpu()
            lv2, lv3 = res.final_log_variance["joints2d"][0].cpu(), res.final_log_variance["joints3d"][0].cpu()
            mesh = None
            if faces is not None:
                mesh = str(write_obj(out / f"{stem}.obj", res.final["vertices"][0].cpu(), faces))
            results.append(Prediction(
                file=str(f),
                joints2d=(j2d @ inv[:2, :2].T + inv[:2, 2]).tolist(),
                joints3d=res.final["joints3d"][0].cpu().tolist(),
                sigma2d=(lv2.squeeze(-1).mul(0.5).exp() * scale).tolist(),
                sigma3d=lv3.squeeze(-1).mul(0.5).exp().tolist(),
                exit_step=int(res.exit_step[0]),
                gmacs=float(res.macs[0]) / 1e9,
                hand=k,
                box=None if box is None else list(box),
                mesh=mesh,
            ))
            if overlays:
                plots.plot_uncertainty(image[None], j2d[None], lv2[None], out / f"{stem}_pred.png",
                                       titles=[f"{f.name}: {int(res.exit_step[0])} loops"])
    tmp = out / ".predictions.json.tmp"
    tmp.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    os.replace(tmp, out / "predictions.json")
    return results


def profile_model(model: DIRNetConfig | str | os.PathLike, *, input_size: int | None = None) -> recurnet.CostModel:
    """Parameters and multiply-adds per component and per exit step of a preset, config or ``model.pt``."""
    if isinstance(model, DIRNetConfig):
        net = build_dirnet(model)
        size = input_size or model.crop_size
    else:
        net, run = load_model(model)
        size = input_size or run.model.crop_size
    return net.cost_model((3, size, size))


