"""Progressive vs end-to-end training, then the learned exit gate, on scikit-learn's digits.

Usage::

    python benchmarks/digits_protocols.py            # a few minutes on 1-2 CPU cores
    python benchmarks/digits_protocols.py --quick    # checks the script runs; numbers mean nothing

The 1,797 8x8 digit images get Gaussian pixel noise (fixed per image, so the
task is hard enough for the loops to matter), are upsampled to 32x32 and
repeated over 3 channels. A tiny looped timm model (``test_resnet`` cut after
stage 1, loops 0..2, attention feedback, one log-variance per sample for the
classifier) is trained with both protocols for the same total number of
epochs; for each we report test accuracy at every loop. The progressively
trained network (the paper's recipe) then gets learned gates: REINFORCE on
the training set's stored outputs with reward ``-lambda * CE - GMACs of the
extra loops``, one gate per ``lambda``, each swept over temperatures on the
test set (mean loops, mean GMACs, accuracy), beside fixed loop counts.

Writes ``benchmarks/results/digits_protocols.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import recurnet
from recurnet.losses import LoopLoss, LossTerm
from recurnet.training import (
    EndToEnd,
    GateConfig,
    Progressive,
    TradeoffPoint,
    TrainConfig,
    Trainer,
    collect_rollouts,
    evaluate,
    temperature_sweep,
    tradeoff_point,
    train_gate,
)

from _common import add_common_args, markdown_table, setup, write_results

__all__ = ["Digits", "build_net", "correct_per_loop", "main"]


class Digits(torch.utils.data.Dataset):
    """Noisy digits as ``{"image": (3, 32, 32) float, "label": int64}``.

    Args:
        images: ``(N, 8, 8)`` grey values 0..16.
        labels: ``(N,)`` classes 0..9.
        mean, std: standardisation (from the training images).
        noise: std of the Gaussian pixel noise on the 0..16 scale, drawn once per image.
        seed: seed of that noise.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float, noise: float, seed: int):
        x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8)
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        x = nnf.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        self.x = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()
        self.y = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


def build_net(max_loops: int, stage: int, seed: int) -> recurnet.LoopedNet:
    """``test_resnet`` looped after ``stage`` with a 10-way head and a per-sample log-variance."""
    torch.manual_seed(seed)
    return recurnet.loopify(
        "test_resnet",
        stage=stage,
        max_loops=max_loops,
        check_size=(32, 32),
        heads={"logits": lambda c: nn.Linear(c, 10)},
        uncertainty={"logits": (1,)},
        uncertainty_hidden=64,
    )


def correct_per_loop(output, batch) -> torch.Tensor:
    """``(L + 1, B)``: 1 where the loop's prediction is right."""
    return torch.stack([(it["logits"].argmax(1) == batch["label"]).float() for it in output.iterations])


def _accuracy(output, batch) -> dict[str, torch.Tensor]:
    return {f"acc/l{l}": row for l, row in enumerate(correct_per_loop(output, batch))}


def _point_row(label: str, p: TradeoffPoint) -> list[str]:
    return [label, f"{p.mean_loops:.2f}", f"{p.mean_gmacs:.5f}", f"{p.score:.4f}", str(list(p.exit_counts))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, timing=False)
    parser.add_argument("--phase-epochs", type=int, nargs="+", default=[4, 2, 2], help="progressive epochs per phase")
    parser.add_argument("--stage", type=int, default=1, help="cut test_resnet after this stage (default 1)")
    parser.add_argument("--noise", type=float, default=4.0, help="pixel noise std on the 0..16 scale (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--loss-scales", type=float, nargs="+", default=[0.01, 0.03, 0.1], help="gate reward lambdas (Eq. 11)"
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--gate-epochs", type=int, default=60)
    args = parser.parse_args(argv)
    device = setup(args, seed=args.seed)
    if args.quick:
        args.phase_epochs, args.gate_epochs = [1, 1], 2

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    if args.quick:
        x_tr, y_tr, x_te, y_te = x_tr[:64], y_tr[:64], x_te[:32], y_te[:32]
    mean, std = float(x_tr.mean()), float(x_tr.std())
    train = Digits(x_tr, y_tr, mean, std, args.noise, seed=1)
    test = Digits(x_te, y_te, mean, std, args.noise, seed=2)
    max_loops = len(args.phase_epochs) - 1
    loss = LoopLoss([LossTerm("logits", "label", "cross_entropy", variance_weight=0.1)])
    common = dict(batch_size=32, lr=1e-3, schedule="cosine", seed=args.seed, progress=False, device=str(device))
    protocols = {
        "progressive": Progressive(tuple(args.phase_epochs)),
        "end-to-end": EndToEnd(sum(args.phase_epochs)),
    }

    nets, accuracy, seconds = {}, {}, {}
    for name, protocol in protocols.items():
        net = build_net(max_loops, args.stage, args.seed)
        start = time.perf_counter()
        Trainer(net, loss, train, TrainConfig(protocol, **common)).fit()
        seconds[name] = time.perf_counter() - start
        accuracy[name] = evaluate(net, test, _accuracy, batch_size=256)
        nets[name] = net
        print(f"{name}: {seconds[name]:.0f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy[name].items()))

    # Learned gates on the progressively trained network, one per lambda.
    net = nets["progressive"]
    hidden = net.uncertainty.hidden[0].out_features
    net.policy = recurnet.LearnedGate(hidden, hidden=32)  # attached so the cost model counts its decisions
    cost = net.cost_model(tuple(train[0]["image"].shape))
    train_rollouts = collect_rollouts(net, train, loss, score=correct_per_loop, batch_size=256)
    test_rollouts = collect_rollouts(net, test, loss, score=correct_per_loop, batch_size=256)
    fixed = [tradeoff_point(test_rollouts, recurnet.FixedLoops(l), cost, setting=l) for l in range(max_loops + 1)]
    sweeps, gate_seconds = {}, 0.0
    for scale in args.loss_scales:
        torch.manual_seed(args.seed)
        gate = recurnet.LearnedGate(hidden, hidden=32).to(device)
        config = GateConfig(epochs=args.gate_epochs, batch_size=128, lr=3e-3, loss_scale=scale, seed=args.seed)
        start = time.perf_counter()
        train_gate(gate, train_rollouts, config, cost=cost)
        gate_seconds += time.perf_counter() - start
        sweeps[scale] = temperature_sweep(gate.cpu(), test_rollouts, args.temperatures, cost, seed=args.seed)

    loops = range(max_loops + 1)
    protocol_rows = [
        [name, *(f"{accuracy[name][f'acc/l{l}']:.4f}" for l in loops), f"{seconds[name]:.0f}"] for name in protocols
    ]
    gate_rows = [_point_row(f"fixed, {int(p.setting)} loops", p) for p in fixed]
    gate_rows += [
        _point_row(f"gate, lambda = {scale:g}, tau = {p.setting:g}", p)
        for scale, sweep in sweeps.items()
        for p in sweep
    ]
    body = "\n".join(
        [
            f"Data: scikit-learn digits with Gaussian pixel noise (std {args.noise:g} on the 0..16 scale, fixed per "
            f"image), upsampled to 32x32 x 3 channels; {len(train)} training / {len(test)} test images (stratified "
            f"split, seed {args.seed}). Network: timm `test_resnet` cut after stage {args.stage}, loops "
            f"0..{max_loops}, attention feedback, per-iteration norms; loss: cross-entropy summed over loops + 0.1 x "
            "its uncertainty term (one log-variance per image).",
            "",
            f"Both protocols train {sum(args.phase_epochs)} epochs in all (Adam, lr 1e-3, cosine schedule per phase, "
            f"batch 32). Progressive phases {tuple(args.phase_epochs)}: loops 0..p in phase p, extractor frozen "
            "after phase 0, lr x 0.1^p except the feedback decoder, new norms copied from the previous iteration. "
            "Train times are single runs on a possibly shared machine: indicative only.",
            "",
            "## Test accuracy per loop",
            "",
            markdown_table(["protocol", *(f"loop {l}" for l in loops), "train time (s)"], protocol_rows),
            "",
            "## Learned gate on the progressive network, test set",
            "",
            f"Gate: two linear layers on the {hidden} uncertainty features, REINFORCE with a running-mean "
            f"baseline, {args.gate_epochs} epochs on the stored training-set outputs ({gate_seconds:.1f} s for all "
            f"gates); reward -lambda x CE - GMACs of loops 1..l (one loop = {cost.iteration_macs(1) / 1e9:.5f} "
            "GMACs, counted). Exits are sampled from the temperature softmax (fixed seed). GMACs are giga "
            "multiply-adds per image (the paper's \"GFLOPs\"), counted with the gate attached (one decision per "
            "loop before the last), also for the fixed rows.",
            "",
            markdown_table(
                ["policy", "mean loops", "mean GMACs", "accuracy", f"exits after loop {', '.join(map(str, loops))}"],
                gate_rows,
                "lrrrl",
            ),
        ]
    )
    print(body)
    path = write_results(
        "digits_protocols",
        "Digits: progressive vs end-to-end training, learned exit gate",
        body,
        results_dir=args.results_dir,
        argv=argv,
        device=device,
        timed=False,
    )
    print(f"wrote {path}")
    return {"accuracy": accuracy, "fixed": fixed, "sweeps": sweeps, "path": path}


if __name__ == "__main__":
    main()
