"""Where a trained DIR-Net's 3D error comes from: orientation or finger pose, in-plane or out of plane.

The synthetic test hands know their global rotation ``R`` (camera from the hand's own
MANO frame), so a prediction splits into an orientation (the pose predictor's
``rotation``) and an articulation (its ``articulation``: the joints in the hand's own
frame). Swapping either for the truth shows what each costs:

- *articulation error*: predicted against true joints in the hand's frame;
- *true rotation, predicted articulation* and *predicted rotation, true articulation*:
  the 3D error with one of the two made exact;
- the same with the test set's mean articulation, the trivial finger pose;
- the rotation error split into its in-plane part (about the optical axis) and its
  out-of-plane part (tilt);
- by the tilt of the palm off the optical axis: the 3D error, how often the predicted
  tilt leans the right way, and the mean predicted tilt.

Usage::

    python benchmarks/error_analysis.py                      # the shipped model
    python benchmarks/error_analysis.py --model runs/x/model.pt --cache ~/.cache/recurnet_hand/synthetic
    python benchmarks/error_analysis.py --quick               # seconds; 32 test hands

Writes ``benchmarks/results/error_analysis.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from _common import add_common_args, add_model_args, markdown_table, setup, write_results  # noqa: E402

import recurnet_hand  # noqa: E402
from recurnet_hand.data.factory import DatasetSpec, build_dataset  # noqa: E402
from recurnet_hand.inference import load_model  # noqa: E402
from recurnet_hand.losses import add_hand_targets  # noqa: E402
from recurnet_hand.train import default_cache_dir  # noqa: E402

__all__ = ["decompose", "main"]

TILT_BINS = ((0, 15), (15, 30), (30, 45), (45, 90))


def _mean_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-sample mean joint distance (mm)."""
    return (pred - true).norm(dim=-1).mean(-1)


def _palm_normal(hand: torch.Tensor) -> torch.Tensor:
    """Unit palm normal of hands ``(N, 21, 3)``: (index MCP - wrist) x (little MCP - wrist)."""
    n = torch.linalg.cross(hand[:, 5] - hand[:, 0], hand[:, 17] - hand[:, 0])
    return n / n.norm(dim=-1, keepdim=True)


def decompose(first: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict:
    """The error split of one iteration's outputs ``first`` on a labelled ``batch`` (see the module notes)."""
    targets = add_hand_targets(batch)
    true = targets["joints3d_rel"].double()
    true_rot = targets["rotation"].double()
    true_art = targets["articulation_target"].double()
    pred, rot, art = (first[k].double() for k in ("joints3d", "rotation", "articulation"))
    mean_art = true_art.mean(0, keepdim=True).expand_as(true_art)
    epe = _mean_error(pred, true)
    rows = {
        "predicted (rotation and articulation)": epe,
        "true rotation, predicted articulation": _mean_error(art @ true_rot.transpose(1, 2), true),
        "predicted rotation, true articulation": _mean_error(true_art @ rot.transpose(1, 2), true),
        "true rotation, mean articulation": _mean_error(mean_art @ true_rot.transpose(1, 2), true),
        "predicted rotation, mean articulation": _mean_error(mean_art @ rot.transpose(1, 2), true),
    }
    error = Rotation.from_matrix((true_rot @ rot.transpose(1, 2)).numpy()).as_rotvec()
    # Tilt: the palm normal's lean off the optical axis, taken on the side facing the camera.
    normal_true = _palm_normal(true)
    side = torch.where(normal_true[:, 2:] > 0, -1.0, 1.0).to(normal_true)
    lean_true = (normal_true * side)[:, :2]
    lean_pred = (_palm_normal(pred) * side)[:, :2]
    tilt_true = torch.rad2deg(torch.asin(lean_true.norm(dim=1).clamp(max=1.0)))
    tilt_pred = torch.rad2deg(torch.asin(lean_pred.norm(dim=1).clamp(max=1.0)))
    same_way = (lean_true * lean_pred).sum(1) > 0
    bins = []
    for lo, hi in TILT_BINS:
        m = (tilt_true >= lo) & (tilt_true < hi)
        if m.any():
            bins.append((f"{lo}-{hi}", int(m.sum()), float(epe[m].mean()), float(same_way[m].double().mean()),
                         float(tilt_true[m].mean()), float(tilt_pred[m].mean())))
    return {
        "rows": {k: float(v.mean()) for k, v in rows.items()},
        "articulation": float(_mean_error(art, true_art).mean()),
        "mean_articulation": float(_mean_error(mean_art, true_art).mean()),
        "rotation_deg": np.degrees(np.linalg.norm(error, axis=1)),
        "in_plane_deg": np.degrees(np.abs(error[:, 2])),
        "out_of_plane_deg": np.degrees(np.linalg.norm(error[:, :2], axis=1)),
        "tilt_bins": bins,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    add_model_args(parser, recurnet_hand.SHIPPED_MODEL)
    parser.add_argument("--samples", type=int, default=None,
                        help="test hands, at most the run's test set size (default: all of them)")
    args = parser.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    device = setup(args)
    net, run = load_model(args.model)
    if run.model.head != "mano":
        parser.error(f"{args.model} has a {run.model.head!r} pose head; the split needs the MANO head's rotation")
    samples = 32 if args.quick else (args.samples or run.data.test_samples)
    cache = args.cache or (Path(tempfile.mkdtemp(prefix="error-analysis-")) if args.quick else default_cache_dir())
    spec = DatasetSpec("synthetic", root=str(cache), crop_size=run.model.crop_size,
                       num_samples=samples if args.quick else run.data.test_samples, seed=run.seed,
                       viewpoint=run.data.viewpoint, progress=False)
    data = build_dataset(spec, "test")
    batch = torch.utils.data.default_collate([data[i] for i in range(min(samples, len(data)))])
    with torch.no_grad():
        first = net(batch["image"].to(device), exit="all").iterations[0]
    first = {k: v.cpu() for k, v in first.items()}
    result = decompose(first, batch)
    rows = [[k, f"{v:.1f}"] for k, v in result["rows"].items()]
    rows += [["articulation error in the hand's frame", f"{result['articulation']:.1f}"],
             ["mean articulation in the hand's frame", f"{result['mean_articulation']:.1f}"]]
    rot = [[name, f"{np.median(result[key]):.1f}", f"{np.mean(result[key]):.1f}"]
           for name, key in (("whole", "rotation_deg"), ("in-plane (about the optical axis)", "in_plane_deg"),
                             ("out of plane (tilt)", "out_of_plane_deg"))]
    tilt = [[b, n, f"{e:.1f}", f"{100 * w:.0f}%", f"{t:.1f}", f"{p:.1f}"] for b, n, e, w, t, p in result["tilt_bins"]]
    body = (f"Model `{args.model.name}` ({run.model.name} preset, {run.model.crop_size} px, loop 0) on "
            f"{len(first['joints3d'])} held-out synthetic test hands (`{run.data.viewpoint}` viewpoints).\n\n"
            "3D error with parts of the prediction replaced by the truth (mm, root-relative):\n\n"
            + markdown_table(["prediction", "3D EPE (mm)"], rows)
            + "\n\nRotation error (degrees):\n\n" + markdown_table(["part", "median", "mean"], rot)
            + "\n\nBy the true tilt of the palm off the optical axis (degrees; 'leans the right way': the predicted "
              "palm normal tilts to the same side as the true one):\n\n"
            + markdown_table(["true tilt", "hands", "3D EPE (mm)", "leans the right way", "mean true tilt",
                              "mean predicted tilt"], tilt) + "\n")
    path = write_results("error_analysis", "Where the 3D error comes from", body, results_dir=args.results_dir,
                         argv=sys.argv[1:] if argv is None else argv, device=device, script="error_analysis.py",
                         timed=False)
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
