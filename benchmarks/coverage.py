"""Which timm families ``recurnet.loopify`` can cut: one small model per family, every stage.

Usage::

    python benchmarks/coverage.py

For each model below (a ``test_*`` model where timm has one, else a small member of the
family, built with ``pretrained=False``), every stage but the last is cut with
:func:`recurnet.split_backbone` at the listed input size, which verifies the cut
numerically against timm's own outputs. A stage that cuts is then looped for real
(``loopify`` with two loops and attention feedback, one forward pass). Each cell says
which feature adapter was chosen, or the first sentence of the reason it was refused.
Writes ``benchmarks/results/coverage.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import recurnet  # noqa: E402

from _common import add_common_args, markdown_table, setup, write_results  # noqa: E402

__all__ = ["MODELS", "cut_stage", "main"]

SWIN = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=64, window_size=4)
DEIT = dict(img_size=64, patch_size=16, embed_dim=48, depth=4, num_heads=2)

#: (family, timm model, constructor arguments, input side).
MODELS = [
    ("ResNet", "test_resnet", {}, 64),
    ("EfficientNet", "test_efficientnet", {}, 64),
    ("MobileNetV3", "mobilenetv3_small_050", {}, 64),
    ("RegNet", "regnetx_002", {}, 64),
    ("ConvNeXt", "test_convnext", {}, 64),
    ("ByobNet", "test_byobnet", {}, 64),
    ("NFNet", "test_nfnet", {}, 64),
    ("DenseNet", "densenet121", {}, 64),
    ("GhostNet", "ghostnet_050", {}, 64),
    ("RepViT", "repvit_m0_9", {}, 64),
    ("FastViT", "fastvit_t8", {}, 64),
    ("EdgeNeXt", "edgenext_xx_small", {}, 64),
    ("MobileViT", "mobilevit_xxs", {}, 64),
    ("ViT", "test_vit", {}, 160),
    ("ViT, register tokens", "test_vit", {"reg_tokens": 2}, 160),
    ("ViT, map pooling", "test_vit3", {}, 160),
    ("ViT, relative position", "test_vit_relpos", {}, 160),
    ("DeiT, distilled", "deit_tiny_distilled_patch16_224", DEIT, 64),
    ("Swin", "swin_tiny_patch4_window7_224", SWIN, 64),
    ("MambaOut", "test_mambaout", {}, 64),
    ("CoAtNet", "test_coatnet", {}, 160),
    ("MaxViT", "test_maxvit", {}, 160),
    ("PVT-v2", "pvt_v2_b0", {}, 64),
    ("Xception", "xception41", {}, 64),
    ("HRNet", "hrnet_w18_small", {}, 64),
    ("LeViT", "levit_128s", {}, 224),
]


def _first_sentence(text: str) -> str:
    text = " ".join(str(text).split())
    cut = text.find("; ")
    return text if cut < 0 else text[:cut]


def cut_stage(name: str, kwargs: dict, stage: int, size: int) -> str:
    """``"works (<adapter>)"`` or ``"refused: <reason>"`` for one stage of one model."""
    try:
        norms, note = "all", ""
        try:
            net = recurnet.loopify(timm.create_model(name, pretrained=False, **kwargs), stage, max_loops=2,
                                   check_size=(size, size), heads={"y": lambda c: nn.Linear(c, 2)}).eval()
        except ValueError as err:
            if "no norm layers" not in str(err):
                raise
            # Normaliser-free families: the per-iteration norm goes in front of the refiner instead.
            norms, note = "entry", ", norms='entry': the refiner has no norm layers"
            net = recurnet.loopify(timm.create_model(name, pretrained=False, **kwargs), stage, max_loops=2,
                                   check_size=(size, size), norms=norms, heads={"y": lambda c: nn.Linear(c, 2)}).eval()
        with torch.no_grad():
            out = net(torch.randn(1, 3, size, size), exit="all")
        if not torch.isfinite(out.final["y"]).all():
            return "fails: the looped network's output is not finite"
        return f"works ({type(net.adapter).__name__}{note})"
    except recurnet.SplitError as err:
        return f"refused: {_first_sentence(err)}"
    except Exception as err:  # anything else is a failure worth showing, not hiding
        return f"fails: {type(err).__name__}: {_first_sentence(err)[:160]}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, timing=False)
    args = parser.parse_args(argv)
    device = setup(args)
    models = MODELS[:2] if args.quick else MODELS
    results, rows = [], []
    for family, name, kwargs, size in models:
        stages = len(timm.create_model(name, pretrained=False, **kwargs).feature_info)
        for stage in range(stages - 1):
            verdict = cut_stage(name, kwargs, stage, size)
            results.append(dict(family=family, model=name, stage=stage, verdict=verdict))
            rows.append([family, f"`{name}`" + (" (small config)" if kwargs else ""), str(stage), verdict])
            print(f"{family} {name} stage {stage}: {verdict}", flush=True)
    counts = Counter(r["verdict"].split(" ")[0].rstrip(":") for r in results)
    families = {f for f, *_ in models}
    working = {r["family"] for r in results if r["verdict"].startswith("works")}
    body = "\n".join([
        f"{len(families)} families, {len(results)} stages: {counts.get('works', 0)} work, "
        f"{counts.get('refused', 0)} are refused with a reason, {counts.get('fails', 0)} fail otherwise. "
        f"{len(working)} of the {len(families)} families loop at one stage or more. Each stage is cut at the listed "
        "input size with the cut verified against timm, then looped twice with attention feedback for one "
        "forward pass.",
        "",
        markdown_table(["family", "timm model", "stage", "result"], rows, "llrl"),
    ])
    path = write_results("coverage", "Backbone coverage: which timm families loop", body, results_dir=args.results_dir,
                         argv=sys.argv[1:] if argv is None else argv, device=device, script=Path(__file__).name,
                         timed=False)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
