"""Batch-1 latency: DIR-Net one frame at a time, per exit step and with an exit policy, beside timm models.

Usage::

    python benchmarks/bench_latency.py                    # stb and fpha presets, 224 px, 2 threads
    python benchmarks/bench_latency.py --no-compile --calls 100

The case the paper argues for is a hand tracker that sees one frame at a time. For
the ``stb`` and ``fpha`` presets (random weights: latency does not depend on them)
this times, at batch 1 in eval mode under ``torch.inference_mode()``:

- every exit step ``l = 0..L``: ``net(x, loops=l, exit="all", count_cost=False)``, the
  cost of a frame that stops after loop ``l``;
- the dynamic network with a real exit policy (a variance threshold), on a stream of
  distinct frames: the steady per-frame latency a tracker sees, with the policy,
  heads and bookkeeping included (``count_cost=False``; the cost model is counted once
  beforehand and cached). With random weights every frame predicts about the same
  variance (the heads start at ``log_var_init``); the default threshold lies below it,
  so every frame runs every loop and the row shows what the exit decisions cost against
  "exit after loop L";
- the fixed-loop network in channels-last memory format (input and weights);
- the fixed-loop network compiled with ``torch.compile`` (unless ``--no-compile``),
  with the number of graphs dynamo produced (1 = no graph breaks); with inductor also
  with frozen weights, and with frozen weights and inductor's C++ wrapper (``cpp_wrapper``:
  the kernels are launched from generated C++, not Python), for resnet18 too;
- the dynamic network with :meth:`recurnet.LoopedNet.compile_steps` (its default,
  dynamo's automatic dynamic shapes: only the batch dimension becomes dynamic) and, with
  ``--compare-dynamic``, with ``dynamic=True`` (every dimension symbolic), with the
  seconds the steps took to compile;
- timm ``resnet18`` and ``mobilenetv3_small_100`` in the same rounds.

Every variant runs once per round, in rounds that alternate their order, so a change in
the machine's load hits all alike. Reported: p50 / p90 / p99 latency over the calls,
counted GMACs and achieved GMAC/s (multiply-adds per second), and each DIR-Net
variant's GMAC/s as a fraction of resnet18's (the goals: ``stb`` >= 0.9,
``fpha`` >= 0.7 at all loops). Writes ``benchmarks/results/latency.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import recurnet  # noqa: E402
from recurnet.cost import count_macs  # noqa: E402

from _common import add_common_args, counting_backend, markdown_table, setup, write_results  # noqa: E402

__all__ = ["main", "percentile", "recompile_sweep"]

CEILINGS = ("resnet18", "mobilenetv3_small_100")
#: Batch sizes of the recompilation sweep (``recompile_sweep``).
SWEEP_BATCHES = (1, 2, 3, 5, 8, 13, 16, 21, 34, 55, 64, 89, 128, 144, 200, 233, 256)


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated (numpy's default)."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    return float(np.percentile(values, q))


@dataclass
class _Variant:
    name: str
    fn: object
    macs: float  # multiply-adds per frame (mean over the stream for the policy variant)
    note: str = ""


def _dirnet_variants(name: str, size: int, frames: list[torch.Tensor], compile_backend: str | None,
                     tau: float, compare_dynamic: bool = False) -> list[_Variant]:
    from recurnet_hand.model import build_dirnet, preset

    torch.manual_seed(0)
    net = build_dirnet(preset(name)).eval()
    cost = net.cost_model((3, size, size))
    x = frames[0]
    label = f"DIR-Net `{name}`"
    out = [_Variant(f"{label}, exit after loop {l}", (lambda l=l: net(x, loops=l, exit="all", count_cost=False)),
                    cost.macs_until(l)) for l in range(net.max_loops + 1)]
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    out.append(_Variant(f"{label}, all {net.max_loops} loops, channels-last",
                        lambda: last(x_last, exit="all", count_cost=False), cost.macs_until(net.max_loops)))
    dynamic = copy.deepcopy(net)
    dynamic.policy = recurnet.VarianceThreshold(tau, outputs=["joints3d"])
    dynamic.cost_model((3, size, size))  # counted once, as a deployed model would have it
    with torch.inference_mode():
        steps = [int(dynamic(f, count_cost=False).exit_step[0]) for f in frames]
    stream = iter(range(10**9))
    out.append(_Variant(f"{label}, variance policy (tau {tau:g}), stream of frames",
                        lambda: dynamic(frames[next(stream) % len(frames)], count_cost=False),
                        statistics.fmean(cost.macs_until(s) for s in steps),
                        f"mean exit step {statistics.fmean(steps):.2f}"))
    if compile_backend:
        backend, graphs = counting_backend(compile_backend)
        fixed = torch.compile(lambda t: net(t, exit="all", count_cost=False), backend=backend)
        start = time.perf_counter()
        with torch.inference_mode():
            fixed(x)
        first = time.perf_counter() - start
        out.append(_Variant(f"{label}, all {net.max_loops} loops, compiled", lambda: fixed(x),
                            cost.macs_until(net.max_loops), f"{graphs[0]} graph(s), first call {first:.0f} s"))
        if compile_backend == "inductor":
            for cpp in (False, True):
                frozen, graphs_f, first = _frozen(copy.deepcopy(net), x, compile_backend, cpp_wrapper=cpp)
                out.append(_Variant(f"{label}, all {net.max_loops} loops, compiled, frozen weights"
                                    + (", C++ wrapper" if cpp else ""), (lambda f=frozen: f(x)),
                                    cost.macs_until(net.max_loops), f"{graphs_f} graph(s), first call {first:.0f} s"))
        for extra in ({}, {"dynamic": True}) if compare_dynamic else ({},):
            backend_s, graphs_s = counting_backend(compile_backend)
            start = time.perf_counter()
            stepped = copy.deepcopy(dynamic).compile_steps((3, size, size), backend=backend_s, **extra)
            seconds = time.perf_counter() - start
            stepped.cost_model((3, size, size))
            stream_s = iter(range(10**9))
            how = ", dynamic=True" if extra else ""
            out.append(_Variant(f"{label}, variance policy (tau {tau:g}), compiled steps{how}, stream of frames",
                                (lambda m=stepped, it=stream_s: m(frames[next(it) % len(frames)], count_cost=False)),
                                statistics.fmean(cost.macs_until(s) for s in steps),
                                f"{graphs_s[0]} graph(s), compiled in {seconds:.0f} s"))
    return out


def _frozen(model, x: torch.Tensor, compile_backend: str, *, cpp_wrapper: bool):
    """``model`` compiled by inductor with frozen weights (folded into the graph as constants and
    pre-packed for oneDNN's convolutions) and, with ``cpp_wrapper``, the C++ wrapper: the kernels
    are launched from generated C++ instead of Python, without per-kernel host overhead.
    A :class:`recurnet.LoopedNet` runs every loop. Returns (callable, graphs, seconds of the first call)."""
    backend, graphs = counting_backend(compile_backend)
    is_looped = isinstance(model, recurnet.LoopedNet)
    with torch._inductor.config.patch(freezing=True, cpp_wrapper=cpp_wrapper), torch.no_grad():
        fn = torch.compile((lambda t: model(t, exit="all", count_cost=False)) if is_looped else model,
                           backend=backend)
        start = time.perf_counter()
        fn(x)
        first = time.perf_counter() - start
    return fn, graphs[0], first


def recompile_sweep(name: str, size: int, compile_backend: str, batches) -> dict:
    """Graphs compiled by :meth:`recurnet.LoopedNet.compile_steps` over a sweep of batch sizes.

    The network runs with ``exit="compact"`` and a variance threshold at the median predicted
    variance of loop 0, so every call shrinks its batch at each exit decision to sizes no
    warm-up saw. Returns the graphs after the warm-up, the new graphs during the sweep, the
    distinct batch sizes the iterations ran at, and the mean exit step.
    """
    from recurnet_hand.model import build_dirnet, preset

    torch.manual_seed(0)
    net = build_dirnet(preset(name)).eval()
    images = torch.rand(max(batches), 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        probe = net(images[:64], exit="all", count_cost=False)
    tau = float(probe.log_variance[0]["joints3d"].exp().mean(dim=(1, 2)).median())
    net.policy = recurnet.VarianceThreshold(tau, outputs=["joints3d"])
    backend, graphs = counting_backend(compile_backend)
    net.compile_steps((3, size, size), backend=backend)
    warm = graphs[0]
    sizes, steps = set(), []
    with torch.inference_mode():
        for b in batches:
            out = net(images[:b], count_cost=False)
            steps += out.exit_step.tolist()
            ran = out.ran.sum(dim=1).tolist()
            sizes.update(int(r) for r in ran if r > 0)
    return {"preset": name, "warm": warm, "new": graphs[0] - warm, "sizes": len(sizes),
            "largest": max(sizes), "smallest": min(sizes), "mean_exit": statistics.fmean(steps), "tau": tau}


def _timm_variants(size: int, x: torch.Tensor, compile_backend: str | None, names) -> list[_Variant]:
    out = []
    for name in names:
        model = timm.create_model(name, pretrained=False).eval()
        with torch.no_grad():
            macs, _ = count_macs(model, torch.zeros(1, 3, size, size))
        out.append(_Variant(f"timm {name}", lambda m=model: m(x), macs))
        if compile_backend and name == names[0]:
            backend, graphs = counting_backend(compile_backend)
            compiled = torch.compile(model, backend=backend)
            with torch.inference_mode():
                compiled(x)
            out.append(_Variant(f"timm {name}, compiled", lambda: compiled(x), macs, f"{graphs[0]} graph(s)"))
            if compile_backend == "inductor":
                wrapped, graphs_w, first = _frozen(copy.deepcopy(model), x, compile_backend, cpp_wrapper=True)
                out.append(_Variant(f"timm {name}, compiled, frozen weights, C++ wrapper", lambda: wrapped(x), macs,
                                    f"{graphs_w} graph(s), first call {first:.0f} s"))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["stb", "fpha"], help="DIR-Net presets (default stb fpha)")
    parser.add_argument("--calls", type=int, default=60, help="timed calls per variant (default 60)")
    parser.add_argument("--frames", type=int, default=16, help="distinct frames in the policy stream (default 16)")
    parser.add_argument("--tau", type=float, default=0.05,
                        help="variance threshold of the policy variant (default 0.05: with random weights every "
                             "frame keeps running, so the row shows the exit decisions' overhead)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--compare-dynamic", action="store_true",
                        help="also time compile_steps(dynamic=True) (every dimension symbolic; minutes to compile)")
    add_common_args(parser, warmup=3, repeats=60, timing=True)
    args = parser.parse_args(argv)
    device = setup(args)
    if str(device) != "cpu":
        raise SystemExit("bench_latency measures the CPU path; pass --device cpu")
    size, presets, ceilings, backend = 224, args.presets, CEILINGS, None if args.no_compile else args.compile_backend
    calls = args.calls
    if args.quick:
        size, presets, ceilings, calls, backend = 96, ["tiny"], ("test_resnet",), 3, (None if args.no_compile
                                                                                       else "eager")
    frames = [torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(args.frames)]
    variants: list[_Variant] = []
    for name in presets:
        variants += _dirnet_variants(name, size, frames, backend, args.tau, args.compare_dynamic)
    variants += _timm_variants(size, frames[0], backend, ceilings)
    times = {v.name: [] for v in variants}
    with torch.inference_mode():
        for r in range(args.warmup + calls):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                start = time.perf_counter()
                v.fn()
                elapsed = time.perf_counter() - start
                if r >= args.warmup:
                    times[v.name].append(elapsed)
    ref = next(v for v in variants if v.name == f"timm {ceilings[0]}")
    ref_rate = ref.macs / statistics.median(times[ref.name])
    rows, results = [], []
    for v in variants:
        t = times[v.name]
        p50, p90, p99 = (percentile(t, q) for q in (50, 90, 99))
        rate = v.macs / p50
        results.append(dict(name=v.name, p50=p50, p90=p90, p99=p99, gmacs=v.macs / 1e9, rate=rate / 1e9,
                            fraction=rate / ref_rate))
        rows.append([v.name, f"{v.macs / 1e9:.3f}", f"{1e3 * p50:.1f}", f"{1e3 * p90:.1f}", f"{1e3 * p99:.1f}",
                     f"{rate / 1e9:.1f}", f"{rate / ref_rate:.2f}", v.note])
        print(f"{v.name}: p50 {1e3 * p50:.1f} ms, p90 {1e3 * p90:.1f}, p99 {1e3 * p99:.1f}, "
              f"{rate / 1e9:.1f} GMAC/s ({rate / ref_rate:.2f} of {ceilings[0]}) {v.note}", flush=True)
    table = markdown_table(["variant", "GMACs", "p50 ms", "p90 ms", "p99 ms", "GMAC/s", f"rate / {ceilings[0]}",
                            "note"], rows, "lrrrrrrl")
    sweep_text = []
    if backend:
        batches = SWEEP_BATCHES if not args.quick else (1, 2, 5, 16, 17)
        sweep_rows = []
        for name in presets:
            r = recompile_sweep(name, size, backend, batches)
            print(f"recompiles {name}: {r}", flush=True)
            sweep_rows.append([f"`{name}`", f"{r['tau']:.4g}", f"{r['mean_exit']:.2f}",
                               f"{r['sizes']} ({r['smallest']}..{r['largest']})", str(r["warm"]), str(r["new"])])
        sweep_text = [
            "",
            "## Dynamic exits, compiled steps: recompilation over batch sizes",
            "",
            f"`net.compile_steps((3, {size}, {size}))` ({backend}) warms its graphs up at batch sizes "
            f"{', '.join(map(str, recurnet.WARM_UP_BATCHES))}; then the network runs `exit=\"compact\"` with a "
            "variance threshold at the median predicted variance of loop 0 on batches of "
            f"{', '.join(map(str, batches))} images, so every exit decision shrinks the batch. New graphs "
            "during that sweep are recompilations (the target: 0).",
            "",
            markdown_table(["preset", "tau_var", "mean exit step", "distinct batch sizes run", "graphs after warm-up",
                            "new graphs in the sweep"], sweep_rows, "lrrrrr"),
        ]
    body = "\n".join([
        f"Batch 1, {size} x {size} px, {args.threads} threads, eval mode, `torch.inference_mode()`; "
        f"{args.warmup} warm-up rounds and {calls} timed rounds, every variant once per round (alternating "
        "order). Latency percentiles over the timed calls; GMAC/s = counted multiply-adds per frame / p50 "
        f"latency, and its ratio to {ceilings[0]}'s. The exit-step rows run a fixed number of loops "
        "(`loops=l`); the policy row runs the dynamic network on a stream of distinct frames, so its "
        "latency includes the policy and the bookkeeping of every exit decision.",
        "",
        table,
        *sweep_text,
    ])
    path = write_results("latency", "Batch-1 latency: DIR-Net per exit step, beside timm models", body,
                         results_dir=args.results_dir, argv=sys.argv[1:] if argv is None else argv, device=device,
                         script=Path(__file__).name, clock=args.clock)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
