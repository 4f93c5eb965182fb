"""The Typer application behind ``recurnet-hand``."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="recurnet-hand",
    help="DIR-Net: dynamic iterative refinement for efficient 3D hand pose estimation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_console = Console()
_errors = Console(stderr=True)
_state = {"debug": False}

# Errors that mean "bad input": shown as one line, not a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, KeyError, PermissionError, NotADirectoryError, RuntimeError)


def _friendly(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except _USER_ERRORS as err:
            if _state["debug"]:
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            _errors.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


# ---------------------------------------------------------------- shared options
Preset = Annotated[Optional[str],
                   typer.Option(help="Model preset: stb, fpha, freihand, cpu (default for train), tiny.")]
Dataset = Annotated[Optional[str], typer.Option(help="Dataset: synthetic (default), stb, fpha or freihand.")]
DataRoot = Annotated[Optional[Path], typer.Option(help="Data root of a real dataset; synthetic: cache folder.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
OutDir = Annotated[Optional[Path], typer.Option(help="Output folder.")]


def _table(title: str, rows) -> Table:
    # Short headers and light borders keep every value whole in an 80-column log.
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="loops, GMACs: means per image; EPE: 2D in crop px, 3D in mm (root-relative); "
                          "PA: 3D after Procrustes alignment")
    for col in ("policy", "setting", "loops", "GMACs", "2D EPE", "3D EPE", "PA", "2D AUC", "3D AUC"):
        table.add_column(col, justify="right" if col not in ("policy", "setting") else "left", no_wrap=True)
    for r in rows:
        table.add_row(r.policy, r.setting, f"{r.mean_loops:.2f}", f"{r.mean_gmacs:.4f}", f"{r.epe2d:.2f}",
                      f"{r.epe3d:.2f}", f"{r.pa_mpjpe:.2f}", f"{r.auc2d:.3f}", f"{r.auc3d:.3f}")
    return table


# ---------------------------------------------------------------- commands
@app.command()
@_friendly
def train(
    config: Annotated[Optional[Path], typer.Option(help="YAML run configuration; options below override it.")] = None,
    preset: Preset = None,
    dataset: Dataset = None,
    data_root: DataRoot = None,
    mix: Annotated[Optional[str], typer.Option(help="2D-only dataset mixed into training (panoptic).")] = None,
    mix_root: Annotated[Optional[Path], typer.Option(help="Data root of the mixed-in dataset.")] = None,
    mano: Annotated[Optional[Path], typer.Option(help="MANO file or folder (default: synthetic assets).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="progressive (default) or end-to-end.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of phase 0 (progressive).")] = None,
    loop_epochs: Annotated[Optional[int], typer.Option(help="Epochs of every later phase.")] = None,
    max_loops: Annotated[Optional[int], typer.Option(help="Maximum loops l_max.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size per process.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Base learning rate.")] = None,
    gate: Annotated[Optional[bool], typer.Option("--gate/--no-gate", help="Train the learned exit gate.")] = None,
    gate_epochs: Annotated[Optional[int], typer.Option(help="Policy-gradient epochs of the gate.")] = None,
    gate_lambda: Annotated[Optional[float], typer.Option(
        help="lambda of the gate's reward: a loop is worth it when it lowers a sample's loss by more than "
             "1/lambda of the average loss (default 50).")] = None,
    train_samples: Annotated[Optional[int], typer.Option(help="Synthetic training images.")] = None,
    test_samples: Annotated[Optional[int], typer.Option(help="Synthetic test images.")] = None,
    viewpoint: Annotated[Optional[str], typer.Option(
        help="Synthetic hands' viewpoints: stb (third-person, default), fpha (first-person) or any.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Rendering / loading processes.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Device = None,
    out_dir: OutDir = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from <out-dir>/checkpoints/last.pt.")] = None,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bars.")] = None,
) -> None:
    """Train DIR-Net (progressively, then its exit gate), evaluate it and write checkpoints, tables and plots.

    With no options: synthetic hands, the ``cpu`` preset, progressive training and a gate, into runs/dirnet.
    Runs data-parallel under torchrun: ``torchrun --nproc_per_node 2 -m recurnet_hand.cli train ...``.
    """
    from recurnet_hand.config import RunConfig, load_config, with_overrides
    from recurnet_hand.train import train as run_training

    run = load_config(config) if config is not None else RunConfig()
    run = with_overrides(run, {
        "model.preset": preset, "model.mano": None if mano is None else str(mano), "model.max_loops": max_loops,
        "data.dataset": dataset, "data.root": None if data_root is None else str(data_root), "data.mix": mix,
        "data.mix_root": None if mix_root is None else str(mix_root), "data.train_samples": train_samples,
        "data.test_samples": test_samples, "data.viewpoint": viewpoint, "data.workers": workers,
        "train.protocol": protocol,
        "train.epochs": epochs, "train.loop_epochs": loop_epochs, "train.batch_size": batch_size, "train.lr": lr,
        "gate.enabled": gate, "gate.epochs": gate_epochs, "gate.loss_scale": gate_lambda, "seed": seed,
        "device": device,
        "out_dir": None if out_dir is None else str(out_dir),
    })
    summary = run_training(run, resume=resume, progress=progress)
    if summary is None:
        return
    _console.print(_table(f"DIR-Net ({run.model.name}) on {run.data.dataset} test data", summary.rows))
    per_loop = ", ".join(f"{a:.3f}" for a in summary.auc3d_per_loop)
    _console.print(f"3D AUC per loop: {per_loop}; mean-pose baseline: {summary.baseline_auc3d:.3f}")
    for r in summary.loops:
        spread = "" if math.isnan(r.feedback_spread) else f", feedback spread {r.feedback_spread:.3f}"
        _console.print(f"loop {r.loop}: 3D EPE {r.epe3d:.1f} mm, 2D EPE {100 * r.epe2d_crop:.1f}% of the crop, "
                       f"palm/back {100 * r.palm_accuracy:.0f}% right, rank corr(variance, error) "
                       f"{r.variance_rank_corr:.2f}{spread}")
    _console.print(f"mean-pose baseline: 3D EPE {summary.baseline_epe3d:.1f} mm")
    _console.print(f"wrote {summary.model_path} and results, figures in {summary.out_dir}")


@app.command()
@_friendly
def evaluate(
    model: Annotated[Path, typer.Argument(help="A run's model.pt.")],
    dataset: Dataset = None,
    data_root: DataRoot = None,
    samples: Annotated[Optional[int], typer.Option(help="Synthetic test images.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Fail unless the model was trained with this preset.")] = None,
    temperature: Annotated[Optional[list[float]], typer.Option(help="Gate temperature to sweep (repeatable).")] = None,
    auc_range: Annotated[Optional[str], typer.Option(help="3D AUC range in mm, 'lo,hi' (default per dataset).")] = None,
    device: Device = None,
    out_dir: OutDir = None,
) -> None:
    """Evaluate a model on a test split: 2D/3D EPE and AUC, mean loops and GMACs per exit policy setting."""
    from recurnet_hand.inference import evaluate_model

    rng = None
    if auc_range is not None:
        try:
            lo, hi = (float(v) for v in auc_range.split(","))
        except ValueError:
            raise ValueError(f"--auc-range must be 'lo,hi' in mm, got {auc_range!r}") from None
        rng = (lo, hi)
    rows = evaluate_model(model, dataset=dataset, root=None if data_root is None else str(data_root), samples=samples,
                          preset=preset, out_dir=out_dir or model.parent, temperatures=temperature, auc_range=rng,
                          device=device or "cpu")
    _console.print(_table(f"{model}", rows))
    folder = Path(out_dir or model.parent)
    mesh = folder / "eval_mesh.md"
    if mesh.is_file():  # written by this evaluation (FreiHAND, MANO head), removed otherwise
        _console.print(mesh.read_text(), markup=False)
    if (folder / "eval_loops.md").is_file():
        _console.print((folder / "eval_loops.md").read_text(), markup=False)
    written = [name for name in ("eval.md", "eval.csv", "eval_loops.md", "eval_mesh.md", "eval_tradeoff.png",
                                 "eval_attention.png") if (folder / name).is_file()]
    _console.print(f"wrote {', '.join(written[:-1])} and {written[-1]} to {folder}")


@app.command()
@_friendly
def predict(
    model: Annotated[Path, typer.Argument(help="A run's model.pt.")],
    images: Annotated[list[Path], typer.Argument(help="Hand images (crops) or folders of them.")],
    out_dir: Annotated[Path, typer.Option(help="Output folder.")] = Path("predictions"),
    box: Annotated[Optional[str], typer.Option(
        help="Hand box 'x,y,w,h' (px) in every image; default: each image is one hand crop.")] = None,
    boxes: Annotated[Optional[Path], typer.Option(
        help='JSON of boxes per image: {"name.jpg": [x, y, w, h] or [[x, y, w, h], ...]}.')] = None,
    margin: Annotated[float, typer.Option(help="Crop side over the box's longer side.")] = 1.4,
    meshes: Annotated[bool, typer.Option(help="Write each hand's MANO mesh as .obj (MANO models).")] = True,
    device: Device = None,
) -> None:
    """Predict 2D/3D joints with uncertainty (and the hand mesh); write predictions.json, overlays and .obj files."""
    from recurnet_hand.inference import parse_box, predict_images, read_boxes

    if box is not None and boxes is not None:
        raise ValueError("give --box or --boxes, not both")
    chosen = parse_box(box) if box is not None else read_boxes(boxes) if boxes is not None else None
    results = predict_images(model, images, out_dir, device=device or "cpu", boxes=chosen, margin=margin,
                             meshes=meshes)
    for r in results:
        hand = f" hand {r.hand}" if r.box is not None else ""
        mesh = f", mesh {Path(r.mesh).name}" if r.mesh else ""
        _console.print(f"{r.file}{hand}: {r.exit_step} loops, {r.gmacs:.4f} GMACs, "
                       f"mean 3D sigma {sum(r.sigma3d) / len(r.sigma3d):.1f} mm{mesh}")
    _console.print(f"wrote {out_dir / 'predictions.json'}")


@app.command()
@_friendly
def profile(
    preset: Preset = None,
    model: Annotated[Optional[Path], typer.Option(help="Profile a model.pt instead of a preset.")] = None,
    max_loops: Annotated[Optional[int], typer.Option(help="Override the preset's maximum loops.")] = None,
    feedback: Annotated[Optional[str], typer.Option(help="attention, features or none.")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="Input side in px (default: the crop size).")] = None,
) -> None:
    """Parameters and multiply-adds per component and per loop (GMACs, the paper's "GFLOPs")."""
    from dataclasses import replace

    from recurnet_hand.inference import profile_model
    from recurnet_hand.model import preset as get_preset

    if model is not None:
        cost = profile_model(model, input_size=input_size)
    else:
        cfg = get_preset(preset or "stb")
        overrides = {k: v for k, v in {"max_loops": max_loops, "feedback": feedback}.items() if v is not None}
        cost = profile_model(replace(cfg, **overrides), input_size=input_size)
    table = Table(title=f"cost at {cost.input_shape[1]} px (MACs = multiply-adds per image)")
    table.add_column("component")
    table.add_column("params", justify="right")
    table.add_column("MACs per call", justify="right")
    for name, params, macs in cost.rows():
        table.add_row(name, f"{params:,}", f"{macs:,}")
    table.add_row("total", f"{cost.params:,}", "")
    _console.print(table)
    loops = Table(title="cost of a sample that exits after each loop")
    loops.add_column("loops", justify="right")
    loops.add_column("GMACs", justify="right")
    for e in range(cost.max_loops + 1):
        loops.add_row(str(e), f"{cost.gmacs_until(e):.4f}")
    _console.print(loops)


@app.command()
@_friendly
def synth(
    out_dir: Annotated[Path, typer.Option(help="Cache folder to write.")] = Path("data/synthetic"),
    num: Annotated[int, typer.Option(help="Number of images.")] = 10000,
    crop_size: Annotated[int, typer.Option(help="Image side in px.")] = 224,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Rendering processes (default: all cores).")] = None,
    mano: Annotated[Optional[Path], typer.Option(help="MANO file or folder (default: synthetic assets).")] = None,
    viewpoint: Annotated[str, typer.Option(help="Viewpoints: stb (third-person), fpha (first-person) or any.")] = "stb",
) -> None:
    """Render a synthetic hand dataset (images with exact 2D/3D labels) into a cache folder."""
    from recurnet_hand.data.synthetic import generate_synthetic_hands

    path = generate_synthetic_hands(out_dir, num, crop_size, seed, workers, None if mano is None else str(mano),
                                    viewpoint=viewpoint)
    _console.print(f"wrote {num} images to {path}")


def main() -> None:
    """Console entry point."""
    app(prog_name="recurnet-hand")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
