"""What the loops of a trained DIR-Net do, and what retraining its first loop phase changes.

Part 1, the trained model (default: the shipped one), on its held-out synthetic test hands:

- per loop, the 3D error as trained; with every attention map flattened to its spatial
  mean per channel (each sample's map keeps its level per channel but no longer points
  anywhere); and with every map replaced by one constant, the batch's mean (nothing left
  that differs between positions, channels or samples; the level is kept because the
  iteration's norms were trained on it);
- the feedback spread per loop (:func:`recurnet_hand.evaluation.feedback_spread`: 0 is a
  flat map);
- a figure of the maps that fed each loop (:func:`recurnet_hand.plots.plot_attention`).

Part 2 (``--retrain``): the loop phase trained again. The model's weights are loaded into a
network with one loop, the attention decoder starts afresh, and phase 1 of the progressive
protocol (loops 0 and 1, extractor frozen) trains for ``--epochs`` epochs on the run's
training images, once per variant: the default settings, the decoder at ten times the
rate of the rest, more epochs, feature feedback instead of attention, no feedback at all,
the loss on loop 1 weighted ten times that on loop 0, and the attention maps supervised
towards the labels' joints (``loss.weight_attention``: 21 channels as joint heatmaps, or
the channel mean as a map of the hand). Each row reports loop 0 and loop 1 on the test
hands.

Usage::

    python benchmarks/loop_analysis.py                          # part 1 on the shipped model (seconds)
    python benchmarks/loop_analysis.py --retrain --cache DIR    # and part 2 (about 1.5 min a row on 2 cores)
    python benchmarks/loop_analysis.py --quick                  # the tiny preset untrained; numbers mean nothing

``--cache`` is the synthetic data cache (default: recurnet-hand's); part 2 renders the
run's training images into it if they are missing. Writes
``benchmarks/results/loop_analysis.md`` and ``loop_analysis_attention.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _common import add_common_args, add_model_args, markdown_table, setup, write_results  # noqa: E402

import recurnet  # noqa: E402
import recurnet_hand  # noqa: E402
from recurnet.training import Progressive, TrainConfig, Trainer  # noqa: E402
from recurnet_hand import plots  # noqa: E402
from recurnet_hand.config import RunConfig  # noqa: E402
from recurnet_hand.evaluation import collect, eval_configs, loop_summaries  # noqa: E402
from recurnet_hand.inference import load_model  # noqa: E402
from recurnet_hand.losses import HandLoss  # noqa: E402
from recurnet_hand.model import build_dirnet, preset  # noqa: E402
from recurnet_hand.train import build_data, default_cache_dir, training_precision  # noqa: E402

__all__ = ["Intervention", "VARIANTS", "main"]


class Intervention(recurnet.Feedback):
    """Wraps a feedback decoder and replaces its signal: ``mean`` (each channel's spatial mean) or ``constant``.

    ``constant`` is one number for the whole batch, the signal's mean.
    """

    def __init__(self, inner: recurnet.Feedback, mode: str):
        super().__init__()
        if mode not in ("mean", "constant"):
            raise ValueError(f"intervention mode must be 'mean' or 'constant', got {mode!r}")
        self.inner, self.mode = inner, mode

    def forward(self, refined, size):
        signal = self.inner(refined, size)
        if self.mode == "constant":
            return signal.mean().expand_as(signal)
        return signal.mean(dim=(2, 3), keepdim=True).expand_as(signal)

    def combine(self, features, signal):
        return self.inner.combine(features, signal)


#: Part 2's rows: (label, overrides). ``lr_scale``: the rate of everything but the decoder,
#: relative to the decoder's; ``epochs``; ``feedback``; ``loop_weights``; ``loss``: overrides of
#: :class:`recurnet_hand.losses.LossConfig`.
VARIANTS = [
    ("the default (every part at the base rate, 1 epoch)", {}),
    ("decoder at 10x the rate of the rest", {"lr_scale": 0.1, "decoder_lr_factor": 10.0}),
    ("3 epochs", {"epochs": 3}),
    ("feature feedback instead of attention", {"feedback": "features"}),
    ("no feedback (loops differ by their norms only)", {"feedback": "none"}),
    ("loss on loop 1 weighted 10x that on loop 0", {"loop_weights": (0.1, 1.0)}),
    ("attention supervised: 21 channels show the joints", {"loss": {"weight_attention": 1.0}}),
    ("attention supervised: the channel mean shows the hand",
     {"loss": {"weight_attention": 1.0, "attention_target": "hand"}}),
    ("attention supervised: hand, weight 0.1", {"loss": {"weight_attention": 0.1, "attention_target": "hand"}}),
    ("attention supervised: hand, weight 0.3, sigma 2",
     {"loss": {"weight_attention": 0.3, "attention_target": "hand", "attention_sigma": 2.0}}),
]


def _per_loop(net, test, run: RunConfig, device) -> list:
    loader = DataLoader(test, batch_size=64, num_workers=0)
    col = collect(net, loader, device=device, progress=False)
    cfg2d, cfg3d = eval_configs(run.data.dataset, run.model.crop_size)
    return col, loop_summaries(col, cfg2d, cfg3d, unit_3d_mm=run.loss.unit_3d_mm, crop_size=run.model.crop_size,
                               is_right=run.model.side == "right")


def _spread(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def inspect(net, run: RunConfig, test, device, figure: Path | None):
    """Part 1: rows ``[loop, as trained, flattened maps, one constant map, spread]`` and the figure's path."""
    col, trained = _per_loop(net, test, run, device)
    errors = {}
    inner = net.feedback
    for mode in ("mean", "constant"):
        net.feedback = Intervention(inner, mode)
        try:
            errors[mode] = [r.epe3d for r in _per_loop(net, test, run, device)[1]]
        finally:
            net.feedback = inner
    rows = [[r.loop, f"{r.epe3d:.2f}", "-" if r.loop == 0 else f"{errors['mean'][r.loop]:.2f}",
             "-" if r.loop == 0 else f"{errors['constant'][r.loop]:.2f}", _spread(r.feedback_spread)]
            for r in trained]
    path = None
    if figure is not None and col.maps_by_loop():
        path = plots.plot_attention(col.images, col.maps_by_loop(), figure)
    return rows, path


def retrain(state: dict, run: RunConfig, train_set, test, device, overrides: dict, epochs: int) -> dict:
    """Part 2, one row: phase 1 from ``state`` (decoder and later norms dropped) with ``overrides``."""
    feedback = overrides.get("feedback", run.model.feedback)
    config = replace(run.model, max_loops=1, feedback=feedback)
    torch.manual_seed(run.seed)
    net = build_dirnet(config)
    own = net.state_dict()
    keep = {k: v for k, v in state.items() if k in own and not k.startswith(("feedback.", "policy."))
            and own[k].shape == v.shape}
    net.load_state_dict(keep, strict=False)
    factor = overrides.get("decoder_lr_factor", 1.0)
    protocol = Progressive((0, overrides.get("epochs", epochs)), lr_decay=overrides.get("lr_scale", 1.0))
    loss = HandLoss(replace(run.loss, **overrides.get("loss", {})), mano_regularisers=config.head == "mano",
                    crop_size=config.crop_size, loop_weights=overrides.get("loop_weights"))
    with tempfile.TemporaryDirectory(prefix="loop-analysis-") as out:
        train_config = TrainConfig(protocol=protocol, batch_size=run.train.batch_size, lr=run.train.lr * factor,
                                   weight_decay=run.train.weight_decay, schedule=run.train.schedule,
                                   grad_clip=run.train.grad_clip, channels_last=run.train.channels_last,
                                   precision=training_precision(run), seed=run.seed, out_dir=out,
                                   device=str(device), progress=False)
        start = time.perf_counter()
        trainer = Trainer(net, loss, train_set, train_config)
        trainer.fit()
        minutes = (time.perf_counter() - start) / 60
    _, loops = _per_loop(trainer.model, test, replace(run, model=config), device)
    return {"loop0": loops[0].epe3d, "loop1": loops[1].epe3d, "spread": loops[1].feedback_spread,
            "minutes": minutes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, timing=False)
    add_model_args(parser, recurnet_hand.SHIPPED_MODEL)
    parser.add_argument("--retrain", action="store_true", help="also retrain the loop phase once per variant")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the retrained loop phase (default 1)")
    parser.add_argument("--only", type=int, nargs="+", default=None, metavar="ROW",
                        help="with --retrain: only these variant rows (1-based)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.only is not None and any(not 1 <= i <= len(VARIANTS) for i in args.only):
        parser.error(f"--only takes rows 1..{len(VARIANTS)}, got {args.only}")
    device = setup(args)
    cache = args.cache or (Path(tempfile.mkdtemp(prefix="loop-analysis-")) if args.quick else default_cache_dir())
    if args.quick:
        run = RunConfig(model=preset("tiny", max_loops=2))
        run = replace(run, data=replace(run.data, train_samples=16, test_samples=8, workers=0),
                      train=replace(run.train, batch_size=4))
        net = build_dirnet(run.model)
        source = "the tiny preset, untrained"
    else:
        net, run = load_model(args.model, device=device)
        source = f"model `{args.model.name}` ({run.model.name} preset, {run.model.crop_size} px)"
    run = replace(run, data=replace(run.data, root=str(cache)), device=str(device))
    train_set, test = build_data(run, progress=False)
    figure = Path(args.results_dir) / "loop_analysis_attention.png"
    rows, path = inspect(net.to(device), run, test, device, None if args.quick else figure)
    body = (f"{source}, {len(test)} held-out synthetic test hands (`{run.data.viewpoint}` viewpoints). 3D EPE "
            "(mm, root-relative) of each loop as trained, with every attention map replaced by its spatial mean per "
            "channel and sample ('flattened': the same level, pointing nowhere), and with every map replaced by "
            "one number, the batch's mean ('one constant'). Feedback spread: the spatial standard deviation "
            "of the map that fed the loop, averaged over channels and samples (0: flat).\n\n"
            + markdown_table(["loop", "as trained", "maps flattened", "one constant", "feedback spread"], rows))
    if path is not None:
        body += (f"\n\nThe maps that fed each loop, channel means on a fixed 0-1 scale: `{path.name}`.")
    if args.retrain:
        state = {k: v.cpu() for k, v in net.state_dict().items()}
        chosen = args.only or range(1, len(VARIANTS) + 1)
        table = []
        for i in chosen:
            label, overrides = VARIANTS[i - 1]
            r = retrain(state, run, train_set, test, device, overrides, args.epochs)
            change = 100 * (r["loop1"] / r["loop0"] - 1)
            table.append([label, f"{r['loop0']:.2f}", f"{r['loop1']:.2f}", f"{change:+.1f}%", _spread(r["spread"]),
                          f"{r['minutes']:.1f}"])
            print(table[-1], flush=True)
        body += ("\n\n## The loop phase trained again\n\n"
                 f"Phase 1 of the progressive protocol (loops 0 and 1, the extractor frozen) trained from the "
                 f"weights above for {args.epochs} epoch(s) unless the row says, on the run's {len(train_set)} "
                 "training images, the attention decoder started afresh, seed "
                 f"{run.seed}; precision {training_precision(run)}. 3D EPE (mm) of both loops on the same test "
                 "hands.\n\n"
                 + markdown_table(["variant", "loop 0", "loop 1", "loop 1 vs loop 0", "feedback spread into loop 1",
                                   "minutes"], table))
    body += "\n"
    out = write_results("loop_analysis", "What the loops do", body, results_dir=args.results_dir,
                        argv=sys.argv[1:] if argv is None else argv, device=device, script="loop_analysis.py",
                        timed=False)
    print(body)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
