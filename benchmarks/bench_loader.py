"""Training-batch loading: augmented synthetic hands sample by sample vs one batched warp, beside a training step.

Usage::

    python benchmarks/bench_loader.py               # batch 32, 96 px (the default run's setting)

Renders a small synthetic cache into a temporary folder, then times, in alternating
rounds: assembling one augmented training batch through ``dataset[i]`` per sample
(Pillow warp and colour jitter per image) and through ``dataset.__getitems__`` (what
the DataLoader calls: one :func:`~recurnet_hand.data.transforms.augment_crops` for the
batch), both followed by the DataLoader's collation; and, for scale, one training step
(forward over loop 0, the default loss, backward, Adam) of the ``cpu`` preset on such a
batch. Writes ``benchmarks/results/loader.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from _common import add_common_args, markdown_table, paired_ratios, setup, time_interleaved, write_results  # noqa: E402

from recurnet_hand.data.factory import SYNTHETIC_AUGMENT  # noqa: E402
from recurnet_hand.data.synthetic import SyntheticHands  # noqa: E402
from recurnet_hand.losses import HandLoss, LossConfig  # noqa: E402
from recurnet_hand.model import build_dirnet, preset  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    parser.add_argument("--crop-size", type=int, default=96, help="image side in px (default 96)")
    parser.add_argument("--num", type=int, default=256, help="images in the temporary cache (default 256)")
    add_common_args(parser, warmup=3, repeats=30)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.batch_size, args.crop_size, args.num = 4, 64, 8
    with tempfile.TemporaryDirectory() as tmp:
        data = SyntheticHands(args.num, args.crop_size, seed=0, cache_dir=Path(tmp) / "cache", workers=0,
                              augment=SYNTHETIC_AUGMENT, progress=False)
        generator = torch.Generator().manual_seed(0)
        batches = [torch.randperm(args.num, generator=generator)[: args.batch_size].tolist() for _ in range(8)]
        turn = iter(range(10**9))

        def per_sample():
            return default_collate([data[i] for i in batches[next(turn) % len(batches)]])

        def batched():
            return default_collate(data.__getitems__(batches[next(turn) % len(batches)]))

        torch.manual_seed(0)
        net = build_dirnet(preset("cpu" if not args.quick else "tiny", crop_size=args.crop_size)).train()
        loss = HandLoss(LossConfig(), crop_size=args.crop_size)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        batch = batched()

        def step():
            out = net(batch["image"], exit="all", loops=0, count_cost=False)
            total = loss(out, batch).total
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

        times = time_interleaved({"per sample": per_sample, "batched": batched, "training step": step},
                                 warmup=args.warmup, repeats=args.repeats, device=device, clock=args.clock)
    ratio = paired_ratios(times["per sample"], times["batched"])
    share = {k: paired_ratios(times[k], times["training step"]) for k in ("per sample", "batched")}
    rows = [[k, f"{1e3 * times[k].median:.1f} ({times[k].spread(1e3)})",
             f"{1e3 * times[k].median / args.batch_size:.2f}",
             "" if k == "training step" else f"{share[k].median:.2f}"] for k in times]
    table = markdown_table(["work per batch", "ms (IQR)", "ms per sample", "time / training step"], rows, "lrrr")
    body = "\n".join([
        f"Batch {args.batch_size}, {args.crop_size} px, augmentation `SYNTHETIC_AUGMENT`, {args.warmup} warm-up "
        f"and {args.repeats} timed rounds (the three in alternating order). The training step is the `cpu` "
        "preset at loop 0 with the default loss (forward, backward, Adam).",
        "",
        table,
        "",
        f"Batched loading is {ratio.median:.1f}x faster than per-sample loading (median of per-round ratios, "
        f"IQR {ratio.spread(digits=1)}).",
    ])
    print(body)
    path = write_results("loader", "Loading augmented synthetic batches", body, results_dir=args.results_dir,
                         argv=sys.argv[1:] if argv is None else argv, device=device, script=Path(__file__).name,
                         clock=args.clock)
    print(f"wrote {path}")
    return {"ratio": ratio, "times": times}


if __name__ == "__main__":
    main()
