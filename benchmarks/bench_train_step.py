"""The default run's training step: NCHW or channels-last, float32 or a bfloat16 forward, eager or compiled.

Usage::

    python benchmarks/bench_train_step.py           # the cpu preset, batch 32, 96 px, phase 0 (loop 0)
    python benchmarks/bench_train_step.py --quick   # seconds; checks the script
    python benchmarks/bench_train_step.py --compile # adds the channels-last step with a compiled forward

One step is what :class:`recurnet.Trainer` runs: forward over the phase's loops with
``exit="all"``, :class:`recurnet_hand.losses.HandLoss` (heatmap head included), backward,
gradient clipping and an Adam step, on a fixed batch of synthetic-looking labels. The four
variants run in interleaved rounds from the same initial weights; reported are the median
step times and, per variant, the median of the round-by-round ratios to the NCHW float32
step. The bfloat16 rows appear only where the CPU computes bfloat16 natively
(:func:`recurnet.training.native_bfloat16`). ``--compile`` adds the channels-last variants with
the network's forward under :func:`torch.compile` (``train.compile``; the backward is compiled
with it; the loss and the optimizer stay eager), compiled before the timed rounds, whose
cold-cache compile time is reported. Writes ``benchmarks/results/train_step.md`` (``train_step_compiled.md``
with ``--compile``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from _common import add_common_args, markdown_table, paired_ratios, setup, time_interleaved, write_results  # noqa: E402

__all__ = ["main", "fixture", "step_fn"]


def fixture(quick: bool, batch_size: int):
    """The default run's model (train mode), a fixed batch of images and labels, and its loss.

    Returns ``(preset name, batch size, crop size, net, images, batch, loss)``; ``quick``: the
    ``tiny`` preset at batch 4.
    """
    from recurnet_hand.losses import HandLoss, LossConfig
    from recurnet_hand.model import build_dirnet, preset

    name, b = ("tiny", 4) if quick else ("cpu", batch_size)
    size = preset(name).crop_size
    torch.manual_seed(0)
    net = build_dirnet(preset(name)).train()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=gen)
    batch = {"joints2d": torch.rand(b, 21, 2, generator=gen) * size,
             "joints3d": torch.randn(b, 21, 3, generator=gen) * 40.0,
             "has_2d": torch.ones(b, dtype=torch.bool), "has_3d": torch.ones(b, dtype=torch.bool)}
    return name, b, size, net, images, batch, HandLoss(LossConfig(), crop_size=size)


def step_fn(net, loss, batch, images, loops: int, bf16: bool):
    """One training step as :class:`recurnet.Trainer` runs it: forward, loss, backward, clipping, Adam."""
    from recurnet.training import OPTIMIZERS

    params = list(net.parameters())
    optimizer = OPTIMIZERS.build("adam", [{"params": params}], 1e-4, 0.0)  # the trainer's Adam (fused on CPUs)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = net(images, exit="all", loops=loops, count_cost=False)
        if bf16:
            out = out.float()
        total = loss(out, batch).total
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loops", type=int, default=0, help="loops of the phase timed (default 0, phase 0)")
    parser.add_argument("--compile", action="store_true", help="add channels-last variants with a compiled forward")
    add_common_args(parser, warmup=3, repeats=15, timing=True)
    args = parser.parse_args(argv)
    device = setup(args)
    if str(device) != "cpu":
        raise SystemExit("bench_train_step measures the CPU path; pass --device cpu")
    from recurnet.training import native_bfloat16

    name, b, size, base, images, batch, loss = fixture(args.quick, args.batch_size)
    forms = [("NCHW", False), ("channels-last", True)]  # (name, channels-last[, compiled])
    precisions = [("float32", False)] + ([("bfloat16 forward", True)] if native_bfloat16("cpu") else [])
    if args.compile:
        forms.append(("channels-last", True, True))
    fns, compile_s = {}, {}
    for form, last, *compiled in forms:
        for precision, bf16 in precisions:
            net = copy.deepcopy(base)
            x = images
            if last:
                net = net.to(memory_format=torch.channels_last)
                x = images.contiguous(memory_format=torch.channels_last)
            key = f"{form}, {precision}"
            if compiled:
                key += ", compiled"
                step = step_fn(torch.compile(net), loss, batch, x, args.loops, bf16)
                start = time.perf_counter()
                with torch._inductor.config.patch(force_disable_caches=True):  # cold, as a first run meets it
                    step()  # the compile, outside the timed rounds
                compile_s[key] = time.perf_counter() - start
                print(f"{key}: first step (the compile) {compile_s[key]:.0f} s", flush=True)
            else:
                step = step_fn(net, loss, batch, x, args.loops, bf16)
            fns[key] = step
    stats = time_interleaved(fns, warmup=args.warmup, repeats=args.repeats, clock=args.clock)
    ref = stats["NCHW, float32"]
    rows = []
    for key, s in stats.items():
        ratio = paired_ratios(s, ref)
        note = f"first step {compile_s[key]:.0f} s" if key in compile_s else ""
        rows.append([key, s.describe(scale=1e3, unit="", digits=1), ratio.describe(digits=2), note])
        print(f"{key}: {s.describe(scale=1e3, unit=' ms', digits=1)}; ratio {ratio.describe(digits=2)}", flush=True)
    body = "\n".join([
        f"`{name}` preset, batch {b}, {size} x {size} px, phase with loops 0..{args.loops}, {args.threads} threads; "
        f"{args.warmup} warm-up and {args.repeats} timed rounds, every variant once per round (alternating order).",
        "",
        markdown_table(["variant", "step ms (IQR)", "ratio to NCHW float32 (IQR of per-round ratios)", "note"], rows,
                       "lrrl"),
    ] + ([] if len(precisions) > 1 else ["", "This CPU has no native bfloat16, so the bfloat16 rows are missing."]))
    stem, title = ("train_step_compiled", "Training step: eager and compiled") if args.compile else (
        "train_step", "Training step: memory format and precision")
    path = write_results(stem, title, body,
                         results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv, device=device,
                         script=Path(__file__).name, clock=args.clock)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
