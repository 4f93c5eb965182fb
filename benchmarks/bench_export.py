"""Export DIR-Net with ``torch.export`` and ONNX, fixed-loop and dynamic, and check it against eager.

Usage::

    python benchmarks/bench_export.py                   # STB preset, L=5, batch 32
    python benchmarks/bench_export.py --batch-size 8 --onnx-exporter torchscript

Two deployments are exported and compared with the eager network:

1. **Fixed loops**: the whole network with ``L`` loops as one graph
   (``images -> per-iteration joints and log-variances``), through
   ``torch.export.export`` and ``torch.onnx.export``; the ONNX file runs in
   ONNX Runtime.
2. **Dynamic exits**: one graph for the extractor, one per iteration index
   (the refiner with that iteration's norms, pooling, pose head and
   uncertainty head) and one for the attention feedback. The loop runs in
   Python: after each iteration a variance threshold decides which samples
   leave, the rest continue on a smaller batch. Exit steps and final
   predictions must match the eager network's compacted run
   (``exit="compact"``) with the same :class:`recurnet.VarianceThreshold`.

All graphs are exported with a dynamic batch dimension (traced at batch 2,
checked at the benchmark batch and, in the dynamic loop, on shrinking batches).

Two small adaptations live in this script and leave the network's weights
and results untouched: while exporting, :func:`symbolic_batch` keeps the
batch size symbolic through the MANO layer's input checks (they turn it into a
Python ``int``, which fixes it to the example's size), and
:func:`exportable_copy` holds smplx's kinematic tree as a NumPy array (smplx
indexes a Python list with the tree's entries, which a tracer cannot do with
tensor entries).

The network is untrained; its uncertainty head predicts ``sigma^2 = 1`` to
within 1e-4 for every sample, which would make any threshold split the
samples on rounding noise. The head's output layers are therefore redrawn
(normal, std 0.3, fixed seed) and the threshold is put in the middle of the
widest gap between the predicted variances, so the exit decisions are robust
to export rounding.

Prints the tables and writes ``benchmarks/results/export.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import recurnet
from recurnet.heads import run_heads
from recurnet.policies import LoopState

from _common import add_common_args, markdown_table, setup, time_interleaved, write_results
from bench_loop_overhead import plain_refiner

__all__ = [
    "exportable_copy",
    "symbolic_batch",
    "FixedLoopGraph",
    "ExtractorGraph",
    "IterationGraph",
    "FeedbackGraph",
    "run_dynamic",
    "main",
]

#: Head outputs carried through the exported graphs.
PREDICTIONS = ("joints3d", "joints2d")
#: Standard deviation of the redrawn uncertainty output layers (see the module docstring).
UNCERTAINTY_STD = 0.3


def _check_shape_symbolic(name: str, value: torch.Tensor, batch, width: int):
    # The same checks as recurnet_hand.mano.layer._check_shape, returning the batch size as it is
    # (a symbolic size while tracing) instead of converting it to a Python int, which would fix it.
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[1] != width:
        raise ValueError(f"{name} must be a tensor of shape (B, {width})")
    if batch is not None and value.shape[0] != batch:
        raise ValueError(f"{name} has batch size {value.shape[0]}, expected {batch}")
    return value.shape[0]


@contextlib.contextmanager
def symbolic_batch():
    """While active, the MANO layer's input checks keep the batch size symbolic (see the module docstring)."""
    from recurnet_hand.mano import layer as mano_layer

    original = getattr(mano_layer, "_check_shape", None)
    if original is None:
        raise RuntimeError("recurnet_hand.mano.layer has no _check_shape any more; update bench_export.symbolic_batch")
    mano_layer._check_shape = _check_shape_symbolic
    try:
        yield
    finally:
        mano_layer._check_shape = original


def exportable_copy(net: recurnet.LoopedNet) -> recurnet.LoopedNet:
    """A deep copy of a DIR-Net whose MANO layers hold smplx's kinematic tree as a NumPy array.

    smplx walks the tree with ``transform_chain[parents[i]]``; with a tensor ``parents`` a
    tracer sees a data-dependent list index, with an array it sees a constant. The copy
    computes the same outputs with the same weights.
    """
    from recurnet_hand.mano import ManoLayer

    net = copy.deepcopy(net)
    for layer in [m for m in net.modules() if isinstance(m, ManoLayer)]:
        smplx_model = layer.smplx_model
        parents = smplx_model.parents.cpu().numpy().copy()
        del smplx_model._buffers["parents"]
        smplx_model.parents = parents
    return net


class FixedLoopGraph(nn.Module):
    """The whole network for ``L`` fixed loops as one graph with tensor outputs.

    Shapes:
        ``images (B, 3, S, S)`` -> a tuple of ``(L + 1, B, ...)`` tensors: the predictions
        named in :data:`PREDICTIONS` (``joints3d`` mm, ``joints2d`` px), then the
        log-variances of the uncertainty head's outputs, per iteration.
    """

    def __init__(self, net: recurnet.LoopedNet):
        super().__init__()
        self.net = net
        self.variance_names = tuple(net.uncertainty.shapes)

    def output_names(self) -> list[str]:
        """Names of the graph outputs, in order (used for the ONNX file)."""
        return [*PREDICTIONS, *(f"log_variance_{n}" for n in self.variance_names)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(images, exit="all", count_cost=False)
        preds = [torch.stack([it[k] for it in out.iterations]) for k in PREDICTIONS]
        log_vars = [torch.stack([lv[k] for lv in out.log_variance]) for k in self.variance_names]
        return (*preds, *log_vars)


class ExtractorGraph(nn.Module):
    """``images (B, 3, S, S)`` -> extractor features ``F (B, C_f, H_f, W_f)``, run once per image."""

    def __init__(self, net: recurnet.LoopedNet):
        super().__init__()
        self.extractor = net.extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)


class IterationGraph(nn.Module):
    """One iteration index: the refiner with that iteration's norms, pooling, heads, uncertainty head.

    Shapes:
        ``x (B, C_f, H_f, W_f)`` -> ``(h (B, C_h, H_h, W_h), *predictions, *log_variances)`` with the
        predictions of :data:`PREDICTIONS` and the uncertainty head's outputs in its order.
    """

    def __init__(self, net: recurnet.LoopedNet, iteration: int):
        super().__init__()
        self.refiner = plain_refiner(net.refiner, iteration)
        self.adapter = net.adapter
        self.heads = net.heads
        self.uncertainty = net.uncertainty
        self.variance_names = tuple(net.uncertainty.shapes)

    def output_names(self) -> list[str]:
        """Names of the graph outputs, in order (used for the ONNX file)."""
        return ["refined", *PREDICTIONS, *(f"log_variance_{n}" for n in self.variance_names)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.refiner(x)
        pooled = self.adapter.pool(h)
        preds = run_heads(self.heads, pooled)
        unc = self.uncertainty(pooled)
        return (h, *(preds[k] for k in PREDICTIONS), *(unc.log_variance[k] for k in self.variance_names))


class FeedbackGraph(nn.Module):
    """``(F (B, C_f, H_f, W_f), h (B, C_h, H_h, W_h))`` -> the next iteration's input ``(B, C_f, H_f, W_f)``."""

    def __init__(self, net: recurnet.LoopedNet):
        super().__init__()
        self.feedback = net.feedback

    def forward(self, features: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
        return self.feedback.combine(features, self.feedback(refined, tuple(features.shape[-2:])))


class _TorchGraphs:
    """The dynamic model's graphs as ``torch.export`` programs."""

    def __init__(self, programs: dict[str, torch.export.ExportedProgram]):
        self.modules = {name: ep.module() for name, ep in programs.items()}

    def __call__(self, name: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.modules[name](*inputs)
        return out if isinstance(out, tuple) else (out,)


class _OrtGraphs:
    """The dynamic model's graphs as ONNX Runtime sessions (tensors in and out on the CPU)."""

    def __init__(self, sessions: dict):
        self.sessions = sessions

    def __call__(self, name: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        session = self.sessions[name]
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
        return tuple(torch.from_numpy(a) for a in session.run(None, feed))


def run_dynamic(graphs, images: torch.Tensor, policy, loops: int, variance_names: tuple[str, ...]):
    """The exit loop in host code over exported graphs.

    Args:
        graphs: callable ``graphs(name, *tensors) -> tuple of tensors`` for the graphs
            ``"extractor"``, ``"iteration_<l>"`` and ``"feedback"``.
        images: ``(B, 3, S, S)``.
        policy: an exit policy reading log-variances (e.g. :class:`recurnet.VarianceThreshold`).
        loops: ``L``.
        variance_names: names of the log-variance outputs, in graph output order.

    Returns:
        ``(exit_step (B,) int64, final)``: ``final`` maps each prediction and
        ``log_variance_<name>`` to ``(B, ...)`` values at each sample's exit step.
    """
    (feats,) = graphs("extractor", images)
    b = feats.shape[0]
    active = torch.arange(b)
    exit_step = torch.full((b,), loops, dtype=torch.long)
    final: dict[str, torch.Tensor] = {}
    x_in, f_active = feats, feats
    for l in range(loops + 1):
        h, *rest = graphs(f"iteration_{l}", x_in)
        preds = dict(zip(PREDICTIONS, rest[: len(PREDICTIONS)]))
        log_var = dict(zip(variance_names, rest[len(PREDICTIONS):]))
        values = {**preds, **{f"log_variance_{k}": v for k, v in log_var.items()}}
        for k, v in values.items():
            v = v.cpu()
            final[k] = v if l == 0 else final[k].index_copy(0, active, v)
        if l == loops:
            break
        state = LoopState(l, loops, preds, log_var, None, active.to(h.device), b)
        leave = policy(state).cpu()
        if leave.any():
            exit_step[active[leave]] = l
            stay = ~leave
            active = active[stay]
            h, f_active = h[stay.to(h.device)], f_active[stay.to(f_active.device)]
        if active.numel() == 0:
            break
        (x_in,) = graphs("feedback", f_active, h)
    return exit_step, final


def _redraw_uncertainty(net: recurnet.LoopedNet, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.uncertainty.project.values():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * UNCERTAINTY_STD)


def _choose_threshold(out: recurnet.LoopOutput) -> tuple[float, float]:
    """A threshold in the widest gap between the middle 40% of the predicted mean variances.

    Returns:
        ``(threshold, half the gap)``: how far the variances are from the threshold at least.
    """
    measure = recurnet.VarianceThreshold(1.0)
    v = torch.stack([measure.mean_variance(lv) for lv in out.log_variance[:-1]]).flatten().double().sort().values
    n = v.numel()
    mid = v[int(0.3 * n) : max(int(0.7 * n), int(0.3 * n) + 2)]
    gaps = mid[1:] - mid[:-1]
    i = int(gaps.argmax())
    return float((mid[i] + mid[i + 1]) / 2), float(gaps[i] / 2)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with symbolic_batch():
        return torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))


def _onnx(module, program, args, input_names, output_names, path: Path, exporter: str) -> None:
    with warnings.catch_warnings(), symbolic_batch():
        # The TorchScript exporter warns about its own deprecation and about every Python shape check it traces.
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(program, args, str(path), dynamo=True, input_names=input_names,
                              output_names=output_names)
        else:
            axes = {n: {0: "batch"} for n in [*input_names, *output_names]}
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=axes, opset_version=17)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


def _pick_exporter(choice: str) -> str:
    if choice != "auto":
        return choice
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def _graph(name: str, net: recurnet.LoopedNet) -> nn.Module:
    """The dynamic model's graph ``name``: ``extractor``, ``iteration_<l>`` or ``feedback``."""
    if name == "extractor":
        return ExtractorGraph(net).eval()
    if name == "feedback":
        return FeedbackGraph(net).eval()
    return IterationGraph(net, int(name.rsplit("_", 1)[1])).eval()


def _graph_io(net: recurnet.LoopedNet, loops: int, example: torch.Tensor) -> dict[str, tuple[tuple, list, list]]:
    """Per graph name: example inputs, input names and output names."""
    with torch.no_grad():
        feats = ExtractorGraph(net)(example)
        first = IterationGraph(net, 0)
        refined = first(feats)[0]
    io = {"extractor": ((example,), ["images"], ["features"])}
    io.update({f"iteration_{l}": ((feats,), ["x"], first.output_names()) for l in range(loops + 1)})
    io["feedback"] = ((feats, refined), ["features", "refined"], ["next_input"])
    return io


def _compact(net: recurnet.LoopedNet, images: torch.Tensor, policy) -> recurnet.LoopOutput:
    """The eager compacted run under ``policy`` (the network's own policy is restored afterwards)."""
    previous = net.policy
    net.policy = policy
    try:
        return net(images, exit="compact", count_cost=False)
    finally:
        net.policy = previous


def _fixed_row(exporter: str, runtime: str, names: list[str], got, want) -> dict:
    diffs = {n: _max_diff(g, w) for n, g, w in zip(names, got, want)}
    return dict(model="fixed loops (one graph)", exporter=exporter, runtime=runtime, joints3d=diffs["joints3d"],
                joints2d=diffs["joints2d"], log_variance=max(v for k, v in diffs.items() if k.startswith("log_")),
                exits="(no exits)")


def _dynamic_row(exporter: str, runtime: str, steps, final, want_steps, want_final) -> dict:
    diffs = {k: _max_diff(final[k], want_final[k]) for k in want_final}
    equal = bool(torch.equal(steps.cpu(), want_steps.cpu()))
    return dict(model="dynamic exits (per-iteration graphs)", exporter=exporter, runtime=runtime,
                joints3d=diffs["joints3d"], joints2d=diffs["joints2d"],
                log_variance=max(v for k, v in diffs.items() if k.startswith("log_")), exits="yes" if equal else "NO")


def main(argv: list[str] | None = None) -> list[dict]:
    """Export, compare and time; returns the correctness rows (also printed and written)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stb", help="DIR-Net preset (default stb)")
    parser.add_argument("--loops", type=int, default=5, help="L (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per checked / timed batch (default 32)")
    parser.add_argument("--onnx-exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                        help="torch.onnx exporter; auto: dynamo when onnxscript is installed, else torchscript")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX (also skipped when onnxruntime is missing)")
    add_common_args(parser, warmup=1, repeats=5)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.preset, args.loops, args.batch_size = "tiny", 1, 3
    from recurnet_hand.model import build_dirnet, preset

    use_onnx = not args.no_onnx and importlib.util.find_spec("onnxruntime") is not None
    exporter = _pick_exporter(args.onnx_exporter) if use_onnx else "none"
    config = preset(args.preset, max_loops=args.loops)
    size, loops = config.crop_size, args.loops
    torch.manual_seed(0)
    net = build_dirnet(config).eval()
    _redraw_uncertainty(net, seed=1)
    net = net.to(device)
    variance_names = tuple(net.uncertainty.shapes)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    images = torch.rand(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    # Reference results come from the original network, never from the export copy.
    with torch.inference_mode():
        threshold, margin = _choose_threshold(net(images, exit="all", count_cost=False))
        policy = recurnet.VarianceThreshold(threshold)
        want_fixed = FixedLoopGraph(net)(images)
        eager_compact = _compact(net, images, policy)
    want_final = {**{k: eager_compact.final[k] for k in PREDICTIONS},
                  **{f"log_variance_{k}": eager_compact.final_log_variance[k] for k in variance_names}}

    export_net = exportable_copy(net).eval()
    fixed = FixedLoopGraph(export_net).eval()
    names = fixed.output_names()
    io = _graph_io(export_net, loops, example)
    with torch.no_grad():
        fixed_module = _export(fixed, (example,)).module()
        programs = {name: _export(_graph(name, export_net), inputs) for name, (inputs, _, _) in io.items()}
        torch_graphs = _TorchGraphs(programs)
        rows = [_fixed_row("torch.export", "ExportedProgram.module()", names, fixed_module(images), want_fixed)]
        steps, final = run_dynamic(torch_graphs, images, policy, loops, variance_names)
    rows.append(_dynamic_row("torch.export", f"{len(programs)} ExportedPrograms, loop in Python", steps, final,
                             eager_compact.exit_step, want_final))
    print(f"torch.export: the fixed-loop graph and {len(programs)} dynamic-model graphs exported", flush=True)
    timed = {
        "eager, fixed loops": lambda: net(images, exit="all", count_cost=False),
        "torch.export, fixed loops": lambda: fixed_module(images),
        "eager, compacted exits": lambda: _compact(net, images, policy),
        "torch.export graphs, exits in Python": lambda: run_dynamic(torch_graphs, images, policy, loops,
                                                                    variance_names),
    }

    onnx_bytes = 0
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        if use_onnx:
            # ONNX Runtime runs on the CPU here: export CPU copies with CPU example inputs.
            cpu_net = export_net if device.type == "cpu" else copy.deepcopy(export_net).cpu()
            sessions = {}
            for name, module, (inputs, in_names, out_names) in [
                ("fixed", FixedLoopGraph(cpu_net).eval(), ((example.cpu(),), ["images"], names)),
                *[(n, _graph(n, cpu_net), (tuple(t.cpu() for t in i), a, b)) for n, (i, a, b) in io.items()],
            ]:
                path = Path(tmp) / f"{name}.onnx"
                with torch.no_grad():
                    program = _export(module, inputs) if exporter == "dynamo" else None
                    _onnx(module, program, inputs, in_names, out_names, path, exporter)
                sessions[name] = _session(path, args.threads)
            onnx_bytes = os.path.getsize(Path(tmp) / "fixed.onnx")
            fixed_session = sessions.pop("fixed")
            feed = {"images": images.cpu().numpy()}
            got = [torch.from_numpy(a) for a in fixed_session.run(None, feed)]
            rows.append(_fixed_row(f"ONNX ({exporter} exporter)", "ONNX Runtime", names, got, want_fixed))
            ort_graphs = _OrtGraphs(sessions)
            images_cpu = images.cpu()
            steps, final = run_dynamic(ort_graphs, images_cpu, policy, loops, variance_names)
            rows.append(_dynamic_row(f"ONNX ({exporter} exporter)", f"{len(sessions)} ONNX Runtime sessions, loop in "
                                     "Python", steps, final, eager_compact.exit_step, want_final))
            print(f"ONNX: {len(sessions) + 1} files exported and loaded in ONNX Runtime", flush=True)
            timed["ONNX Runtime, fixed loops"] = lambda: fixed_session.run(None, feed)
            timed["ONNX Runtime graphs, exits in Python"] = lambda: run_dynamic(ort_graphs, images_cpu, policy, loops,
                                                                                 variance_names)
        with torch.inference_mode():
            times = time_interleaved(timed, warmup=args.warmup, repeats=args.repeats, device=device,
                                     clock=args.clock)

    exits = torch.bincount(eager_compact.exit_step.cpu(), minlength=loops + 1).tolist()
    correctness = markdown_table(
        ["model", "exported with", "run by", "max abs diff joints3d (mm)", "joints2d (px)", "log-variances",
         "exit steps equal"],
        [[r["model"], r["exporter"], r["runtime"], f"{r['joints3d']:.2g}", f"{r['joints2d']:.2g}",
          f"{r['log_variance']:.2g}", r["exits"]] for r in rows],
        "lllrrrl",
    )
    base = {"fixed": times["eager, fixed loops"].median, "exits": times["eager, compacted exits"].median}
    timing = markdown_table(
        ["variant", "ms / batch (IQR)", "time vs eager"],
        [[name, f"{t.median * 1e3:.0f} ({t.spread(1e3, 0)})",
          f"{t.median / base['fixed' if 'fixed' in name else 'exits']:.2f}"] for name, t in times.items()],
        "lrr",
    )
    onnx_note = (
        f"`torch.onnx.export` with the {exporter} exporter (opset 17), run in ONNX Runtime on the CPU"
        + (f"; the fixed-loop file is {onnx_bytes / 2**20:.1f} MiB" if onnx_bytes else "")
        if use_onnx
        else "not run"
    )
    body = "\n".join(
        [
            f"DIR-Net `{args.preset}` preset, L = {loops} (iterations 0..{loops}), untrained weights (seed 0; the "
            f"uncertainty output layers redrawn with std {UNCERTAINTY_STD}), eval mode. Graphs are traced at batch 2 "
            f"with a dynamic batch dimension and checked on a batch of {args.batch_size} images of {size} x {size} "
            f"px. ONNX: {onnx_note}.",
            "",
            "Fixed loops: every output of every iteration is compared with the eager network. Dynamic exits: the "
            "loop runs in Python over one extractor graph, one graph per iteration index and one feedback graph, "
            f"with `VarianceThreshold({threshold:.6g})` (every sample's mean predicted variance is at least "
            f"{margin:.2g} away from it at every iteration); exit steps and each sample's final outputs are compared "
            "with the eager network's compacted run (`exit=\"compact\"`). Exit steps of the eager run, iterations "
            f"0..{loops}: {exits} samples (mean {eager_compact.mean_loops:.2f} loops).",
            "",
            correctness,
            "",
            f"Time per batch of {args.batch_size}: {args.warmup} warm-up and {args.repeats} timed rounds, all "
            "variants timed in turns; ratios against the eager network in the same mode.",
            "",
            timing,
        ]
    )
    print()
    print(correctness)
    print()
    print(timing)
    path = write_results("export", "Export: torch.export and ONNX, fixed loops and dynamic exits", body,
                         results_dir=args.results_dir, argv=argv, device=device, script=Path(__file__).name,
                         clock=args.clock)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
