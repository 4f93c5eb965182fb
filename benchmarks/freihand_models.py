"""DIR-Net's counted cost beside the published FreiHAND results of efficient hand models.

Usage::

    python benchmarks/freihand_models.py

Builds the ``freihand`` preset (and, for scale, ``fpha`` and ``cpu``) with
:func:`recurnet_hand.build_dirnet`, counts parameters and multiply-adds at the
preset's input size with ``net.cost_model`` for every exit step, and sets them
beside the PA-MPJPE / PA-MPVPE (mm) and compute that other projects publish for
FreiHAND's evaluation set, each with its source. DIR-Net's FreiHAND accuracy is
left empty until it has been measured (``recurnet-hand evaluate --dataset
freihand`` on a model trained on FreiHAND). Writes
``benchmarks/results/freihand_models.md``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, setup, write_results  # noqa: E402

import recurnet  # noqa: E402
from recurnet_hand import build_dirnet, preset  # noqa: E402


@dataclass(frozen=True)
class Published:
    """A result another project reports on FreiHAND's evaluation set."""

    model: str
    pa_mpjpe: float
    pa_mpvpe: float
    gmacs: float | None
    params_m: float | None
    source: str


#: Published FreiHAND results (mm) and, where the source states it, compute.
PUBLISHED = [
    Published("MobRecon (DenseStack)", 6.9, 7.2, 0.123, 5.0,
              "Chen et al., MobRecon, CVPR 2022 (arXiv:2112.02753): 123M multiply-adds, 5M parameters"),
    Published("simpleHand", 5.7, 6.0, None, None, "Zhou et al., A Simple Baseline for Efficient Hand Mesh "
              "Reconstruction, CVPR 2024 (arXiv:2403.01813)"),
    Published("HaMeR (ViT-H)", 6.0, 5.7, None, None, "Pavlakos et al., Reconstructing Hands in 3D with "
              "Transformers, CVPR 2024"),
]

PRESETS = ("freihand", "fpha", "cpu")


def count(name: str, *, loops: int | None = None) -> recurnet.CostModel:
    """The cost model of preset ``name`` at its own crop size (optionally with ``max_loops``)."""
    cfg = preset(name) if loops is None else replace(preset(name), max_loops=loops)
    return build_dirnet(cfg).cost_model((3, cfg.crop_size, cfg.crop_size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    args = parser.parse_args(argv)
    device = setup(args)
    rows = []
    for name in PRESETS:
        cost = count(name)
        size = preset(name).crop_size
        first, last = cost.gmacs_until(0), cost.gmacs_until(cost.max_loops)
        rows.append([f"DIR-Net `{name}` ({size} px), loop 0 .. {cost.max_loops}", f"{cost.params / 1e6:.2f}",
                     f"{first:.3f} .. {last:.3f}", "not measured", "not measured", "counted by this script"])
    for p in PUBLISHED:
        rows.append([p.model, "-" if p.params_m is None else f"{p.params_m:.1f}",
                     "-" if p.gmacs is None else f"{p.gmacs:.3f}", f"{p.pa_mpjpe:.1f}", f"{p.pa_mpvpe:.1f}",
                     p.source])
    stb = count("freihand")
    ratio = stb.gmacs_until(stb.max_loops) / PUBLISHED[0].gmacs
    body = "\n".join([
        "Parameters (millions) and multiply-adds per image (GMACs; a DIR-Net hand that exits after loop "
        "`l` costs the value at `l`) beside the FreiHAND results other projects publish "
        "(PA-MPJPE / PA-MPVPE: mean joint / vertex error after per-sample Procrustes alignment, mm, on "
        "the official evaluation set). '-': the source does not state it. DIR-Net's rows are counted "
        "here; its FreiHAND accuracy is left empty because no DIR-Net has been trained and evaluated "
        "on FreiHAND in this project yet.",
        "",
        markdown_table(["model", "params (M)", "GMACs", "PA-MPJPE (mm)", "PA-MPVPE (mm)", "source"], rows),
        "",
        f"The `freihand` preset running every loop costs {ratio:.1f}x MobRecon's published multiply-adds; "
        f"exiting after the first pass, {stb.gmacs_until(0) / PUBLISHED[0].gmacs:.1f}x.",
    ])
    path = write_results("freihand_models", "DIR-Net beside published FreiHAND models", body,
                         results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv, device=device,
                         script="freihand_models.py", timed=False)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
