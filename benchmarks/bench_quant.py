"""Int8 and bfloat16 inference against float32: batch-1 latency and accuracy on a trained model.

Usage::

    python benchmarks/bench_quant.py            # fpha and stb presets at 224 px, the shipped model at 96 px
    python benchmarks/bench_quant.py --quick    # a few minutes; checks the script, numbers mean little

Needs ``torchao`` (``pip install -e ".[quant]"``) for the int8 path, which is
:func:`recurnet_hand.quantize.quantize_int8`: PyTorch 2 export quantisation of the
unrolled fixed-loop network (static int8 convolutions and linear layers, the heads in
float32), calibrated on training images and compiled by inductor with frozen weights.

Measured, at batch 1 under ``torch.inference_mode()``, in interleaved rounds:

- float32 eager, float32 compiled (inductor, frozen weights), bfloat16 compiled (an
  autocast forward, where the CPU computes bf16 natively), int8 compiled;
- where ``onnxruntime`` is installed (``pip install -e ".[export]"``), the other int8 route:
  the fixed-loop graph exported to ONNX (``benchmarks/bench_export.py``'s exporter) and run
  by ONNX Runtime in float32 and quantised statically to int8 by
  :func:`onnxruntime.quantization.quantize_static` (QDQ, activations per tensor, weights per
  channel, convolutions and matrix products), calibrated on the same images as the torch path;
- for the ``fpha`` and ``stb`` presets at 224 px (random weights; calibrated on random
  images) and for the shipped trained model (:data:`recurnet_hand.SHIPPED_MODEL`,
  the ``cpu`` preset at 96 px), whose accuracy is also measured: 3D EPE of the first and
  the last loop on the held-out synthetic test set, per variant (int8 calibrated on
  training images).

The goal: int8 ``fpha`` batch-1 latency <= 0.6 of float32 at <= 1 mm 3D EPE change.
Writes ``benchmarks/results/quant.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from _common import add_common_args, markdown_table, setup, time_interleaved, write_results  # noqa: E402
from bench_export import FixedLoopGraph, _onnx, _session, exportable_copy  # noqa: E402

from recurnet_hand.quantize import cpu_has_vnni  # noqa: E402  (torchao is imported only when quantising)

__all__ = ["main"]


def _frozen_compile(fn):
    with torch._inductor.config.patch(freezing=True):
        return torch.compile(fn, backend="inductor")


def _call_frozen(compiled, x):
    # Freezing is read when the graph compiles, at its first call for each new input shape.
    with torch._inductor.config.patch(freezing=True), torch.inference_mode():
        return compiled(x)


class _Calibration:
    """ONNX Runtime's calibration reader over a list of image batches."""

    def __init__(self, batches):
        self._batches = iter([{"images": b.numpy()} for b in batches])

    def get_next(self):
        return next(self._batches, None)


def _onnx_variants(net, example: torch.Tensor, calibration, threads: int, folder: Path) -> dict:
    """float32 and static int8 (QDQ, weights per channel) ONNX Runtime sessions of the fixed-loop graph.

    Each variant maps images to the graph's outputs as torch tensors (``joints3d`` first). On
    a CPU without VNNI the weights are quantised to 7 bits (ONNX Runtime's ``reduce_range``),
    its remedy for the 16-bit saturation of those CPUs' int8 products.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = FixedLoopGraph(exportable_copy(net)).eval()
    fp32, pre, int8 = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
    # Traced at batch 2, as bench_export does: at batch 1 the tracer bakes the batch into some reshapes.
    _onnx(graph, None, (example[:1].expand(2, -1, -1, -1).contiguous(),), ["images"], graph.output_names(), fp32,
          "torchscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(int8), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], reduce_range=not cpu_has_vnni())
    out = {}
    for name, path in (("float32 ONNX Runtime", fp32), ("int8 ONNX Runtime", int8)):
        session = _session(path, threads)

        def run(x, session=session):
            return tuple(torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()}))

        out[name] = run
    return out


def _variants(net, example: torch.Tensor, calibration, bf16: bool, int8: bool, onnx: Path | None = None,
              threads: int = 2) -> dict:
    graph = FixedLoopGraph(net).eval()
    out = {"float32 eager": lambda x: graph(x)}
    fp32 = _frozen_compile(graph)
    out["float32 compiled"] = lambda x: _call_frozen(fp32, x)
    if bf16:
        def autocast_graph(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return tuple(t.float() for t in graph(x))

        bf = _frozen_compile(autocast_graph)
        out["bfloat16 compiled"] = lambda x: _call_frozen(bf, x)
    if int8:
        from recurnet_hand.quantize import quantize_int8

        q = quantize_int8(net, calibration)
        out["int8 compiled"] = lambda x: (torch.stack([it["joints3d"] for it in q(x).iterations]),)
    if onnx is not None:
        out.update(_onnx_variants(net, example, calibration, threads, onnx))
    with torch.inference_mode():
        for fn in out.values():  # compile now, outside the timed rounds
            fn(example)
    return out


def _latency(label: str, variants: dict, x: torch.Tensor, warmup: int, repeats: int) -> list[list[str]]:
    with torch.inference_mode():
        stats = time_interleaved({k: (lambda f=f: f(x)) for k, f in variants.items()}, warmup=warmup,
                                 repeats=repeats)
    base = stats["float32 eager"].median
    base_c = stats["float32 compiled"].median
    base_o = stats["float32 ONNX Runtime"].median if "float32 ONNX Runtime" in stats else None
    rows = []
    for name, s in stats.items():
        rows.append([label, name, f"{1e3 * s.median:.2f}", f"{s.median / base:.2f}", f"{s.median / base_c:.2f}"]
                    + ([f"{s.median / base_o:.2f}"] if base_o is not None else []))
        print(f"{label} {name}: {1e3 * s.median:.2f} ms ({s.median / base:.2f} of float32 eager, "
              f"{s.median / base_c:.2f} of float32 compiled)", flush=True)
    return rows


def _epe(variant, images: torch.Tensor, gt3d: torch.Tensor, batch: int = 50) -> tuple[float, float]:
    first, last = [], []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch):
            joints3d = variant(images[i : i + batch])[0].float()
            gt = gt3d[i : i + batch]
            first.append((joints3d[0] - gt).norm(dim=-1).mean(dim=-1))
            last.append((joints3d[-1] - gt).norm(dim=-1).mean(dim=-1))
    return float(torch.cat(first).mean()), float(torch.cat(last).mean())


def _synthetic(split: str, samples: int, size: int, root: Path):
    """The default run's synthetic train or test set (the same seeds and cache layout)."""
    from recurnet_hand.data.synthetic import SyntheticHands

    seed = 0 if split == "train" else 1000003
    return SyntheticHands(samples, size, seed=seed, cache_dir=root / f"{split}-{size}px-seed{seed}-stb",
                          progress=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["fpha", "stb"], help="presets timed at 224 px")
    parser.add_argument("--calibration", type=int, default=8, help="calibration batches of 32 images (default 8)")
    parser.add_argument("--test-samples", type=int, default=500, help="test images for the accuracy (default 500)")
    add_common_args(parser, warmup=5, repeats=40, timing=True)
    args = parser.parse_args(argv)
    device = setup(args)
    if str(device) != "cpu":
        raise SystemExit("bench_quant measures the CPU path; pass --device cpu")
    from recurnet.training.config import native_bfloat16
    from recurnet_hand import SHIPPED_MODEL
    from recurnet_hand.inference import load_model
    from recurnet_hand.model import build_dirnet, preset
    from recurnet_hand.train import default_cache_dir

    int8 = importlib.util.find_spec("torchao") is not None
    ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    # The ONNX files; TemporaryDirectory also removes them if the run fails or is interrupted.
    scratch = tempfile.TemporaryDirectory(prefix="bench-quant-onnx-")

    def onnx_dir(label: str) -> Path | None:
        if not ort:
            return None
        folder = Path(scratch.name) / label
        folder.mkdir()
        return folder

    bf16 = native_bfloat16("cpu")
    presets, size, test_samples, calib = args.presets, 224, args.test_samples, args.calibration
    if args.quick:
        presets, size, test_samples, calib = ["tiny"], 96, 50, 1
    rows = []
    for name in presets:
        torch.manual_seed(0)
        net = build_dirnet(preset(name)).eval()
        gen = torch.Generator().manual_seed(1)
        calibration = [torch.rand(32, 3, size, size, generator=gen) for _ in range(calib)]
        x = torch.rand(1, 3, size, size, generator=gen)
        variants = _variants(net, x, calibration, bf16, int8, onnx_dir(name), args.threads)
        rows += _latency(f"`{name}`, {size} px, random weights", variants, x, args.warmup, args.repeats)

    net, run = load_model(SHIPPED_MODEL)
    crop = run.model.crop_size
    root = Path(default_cache_dir())
    # Only the calibration images: a cache serves its first n samples, so a missing one is not
    # rendered whole (and a later request for more renders only the rest).
    train_samples, test_total = 32 * calib, run.data.test_samples
    if args.quick:  # a small cache of its own, rendered in seconds
        root, test_total = Path(tempfile.mkdtemp(prefix="bench-quant-")), test_samples
    train_set = _synthetic("train", train_samples, crop, root)
    test_set = _synthetic("test", test_total, crop, root)
    n = min(test_samples, len(test_set))
    test = [test_set[i] for i in range(n)]
    images = torch.stack([s["image"] for s in test])
    gt3d = torch.stack([s["joints3d"] - s["joints3d"][:1] for s in test])
    calibration = [torch.stack([train_set[i]["image"] for i in range(32 * b, 32 * b + 32)]) for b in range(calib)]
    shipped = _variants(net, images[:1], calibration, bf16, int8, onnx_dir("shipped"), args.threads)
    rows += _latency(f"shipped `{run.model.name}` model, {crop} px", shipped, images[:1], args.warmup, args.repeats)
    accuracy, reference = [], None
    for name, variant in shipped.items():
        first, last = _epe(variant, images, gt3d)
        reference = reference or (first, last)
        accuracy.append([name, f"{first:.2f}", f"{last:.2f}", f"{last - reference[1]:+.2f}"])
        print(f"accuracy {name}: loop 0 {first:.2f} mm, last loop {last:.2f} mm", flush=True)

    notes = []
    if not cpu_has_vnni():
        notes.append("This CPU has no VNNI, so the int8 paths quantise one side of each product to 7 bits "
                     "(`quantize_int8`'s default `reduce_range`: activations; ONNX Runtime's `reduce_range`: "
                     "weights): at full range its 16-bit int8 sums saturate and the error grows.")
    if not int8:
        notes.append("torchao is not installed here, so the int8 rows are missing (`pip install -e \".[quant]\"`).")
    if not ort:
        notes.append("onnxruntime is not installed here, so the ONNX Runtime rows are missing "
                     "(`pip install -e \".[export]\"`).")
    if not bf16:
        notes.append("This CPU has no native bfloat16 (AVX-512 bf16 or AMX), so the bfloat16 rows are missing.")
    body = "\n".join([
        f"Batch 1, {args.threads} threads, `torch.inference_mode()`; {args.warmup} warm-up and {args.repeats} timed "
        "rounds, every variant once per round (alternating order); medians. Every variant runs all loops "
        "(the fixed-loop graph). Ratios are against float32 eager and float32 compiled in the same run.",
        "",
        markdown_table(["model", "variant", "ms", "/ float32 eager", "/ float32 compiled"]
                       + (["/ float32 ONNX Runtime"] if ort else []), rows, "llrrr" + ("r" if ort else "")),
        "",
        f"## Accuracy of the shipped model ({n} held-out synthetic test images, {crop} px)",
        "",
        f"int8 calibrated on {32 * calib} training images. 3D EPE is root-relative, in mm.",
        "",
        markdown_table(["variant", "3D EPE loop 0", "3D EPE last loop", "change, last loop"], accuracy, "lrrr"),
        *(["", *notes] if notes else []),
    ])
    path = write_results("quant", "Int8 and bfloat16 inference against float32", body, results_dir=args.results_dir,
                         argv=sys.argv[1:] if argv is None else argv, device=device, script=Path(__file__).name,
                         clock=args.clock)
    scratch.cleanup()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
