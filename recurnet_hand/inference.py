"""Use a trained DIR-Net: load ``model.pt``, evaluate it on a dataset, predict on images, profile it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
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
from .evaluation import EvalRow, collect, eval_configs, evaluate_policies, variance_thresholds, write_rows
from .model import DIRNetConfig, build_dirnet
from .train import MODEL_FORMAT, default_cache_dir

__all__ = ["ModelFileError", "load_model", "evaluate_model", "Prediction", "predict_images", "profile_model",
           "IMAGE_SUFFIXES"]

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
        dataset: ``synthetic``, ``stb`` or ``fpha`` (default: the run's dataset).
        root: data root (synthetic: cache folder).
        samples: synthetic test images (default: the run's).
        preset: expected preset (checked).
        out_dir: where to write ``eval.md``/``eval.csv`` and ``eval_tradeoff.png`` (None: nothing written).
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
    data = build_dataset(spec, "test", side=run.model.side)
    cfg2d, cfg3d = eval_configs(name, run.model.crop_size, auc_range)
    loader = DataLoader(data, batch_size=batch_size)
    col = collect(net, loader, device=device, progress=progress, total=len(loader))
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
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_rows(rows, out / "eval.md")
        write_rows(rows, out / "eval.csv")
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(r.policy, []).append((r.mean_gmacs, r.auc3d, r.setting.split("=")[-1]))
        plots.plot_tradeoff(series, out / "eval_tradeoff.png")
    return rows


def _copy_gate(gate: recurnet.LearnedGate, temperature: float) -> recurnet.LearnedGate:
    copy = recurnet.LearnedGate(gate.net[0].in_features, hidden=gate.net[0].out_features, temperature=temperature,
                                mode=gate.mode)
    copy.load_state_dict(gate.state_dict())
    return copy.eval()


@dataclass(frozen=True)
class Prediction:
    """DIR-Net's answer for one image.

    Attributes:
        file: the image file.
        joints2d: ``(21, 2)`` in the original image's pixels.
        joints3d: ``(21, 3)`` mm, root-relative, camera orientation.
        sigma2d: ``(21,)`` predicted 2D standard deviation per joint, original-image px.
        sigma3d: ``(21,)`` predicted 3D standard deviation per joint, mm.
        exit_step: loops run after the first pass.
        gmacs: giga multiply-adds spent.
    """

    file: str
    joints2d: list
    joints3d: list
    sigma2d: list
    sigma3d: list
    exit_step: int
    gmacs: float


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


def _load_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    w, h = rgb.size
    # The whole image is taken as the hand crop: pad to a square, then resize.
    side = max(w, h)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(rgb, ((side - w) // 2, (side - h) // 2))
    arr = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1), (w, h)


def predict_images(path: str | os.PathLike, inputs, out_dir: str | os.PathLike, *, device: str = "cpu",
                   overlays: bool = True) -> list[Prediction]:
    """Predict joints on hand images (each image is taken as a hand crop) with the model's exit policy.

    Writes ``predictions.json`` and, per image, ``<stem>_pred.png`` with the skeleton and the
    predicted 2D uncertainty into ``out_dir``.

    Raises:
        FileNotFoundError: a missing image or folder; ValueError: an unreadable image (named).
    """
    net, run = load_model(path, device=device)
    files = _image_files(inputs)
    size = run.model.crop_size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [_load_image(f, size) for f in files]  # read everything first: a bad file fails before any output
    results = []
    with torch.no_grad():
        for f, (image, (w, h)) in zip(files, loaded):
            res = net(image[None].to(device))
            side = max(w, h)
            scale = side / size
            offset = torch.tensor([(side - w) / 2, (side - h) / 2])
            j2d = res.final["joints2d"][0].cpu()
            lv2, lv3 = res.final_log_variance["joints2d"][0].cpu(), res.final_log_variance["joints3d"][0].cpu()
            results.append(Prediction(
                file=str(f),
                joints2d=(j2d * scale - offset).tolist(),
                joints3d=res.final["joints3d"][0].cpu().tolist(),
                sigma2d=(lv2.squeeze(-1).mul(0.5).exp() * scale).tolist(),
                sigma3d=lv3.squeeze(-1).mul(0.5).exp().tolist(),
                exit_step=int(res.exit_step[0]),
                gmacs=float(res.macs[0]) / 1e9,
            ))
            if overlays:
                plots.plot_uncertainty(image[None], j2d[None], lv2[None], out / f"{f.stem}_pred.png",
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


