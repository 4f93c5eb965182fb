"""Peak memory of DIR-Net training and inference steps, per batch size.

Usage::

    python benchmarks/bench_memory.py                          # STB preset, L=5, batches 1 8 32 64, both modes
    python benchmarks/bench_memory.py --batch-sizes 16 --modes training --device cuda

Every setting (mode x batch size) is measured in a fresh Python process, so
no allocation of an earlier setting, no cached kernel and no allocator pool
carries over. The child builds the network, makes the input batch, records
its memory, runs one step and records the peak:

- **inference**: eval mode, ``torch.inference_mode()``, all iterations
  (``exit="all"``, ``count_cost=False``);
- **training**: train mode, ``exit="all"``, forward and backward of a loss
  summing every output of every iteration (no optimizer step).

How the peak is measured:

- CPU: the process's resident set size. The kernel's high-water mark
  (``VmHWM``) is reset right before the step by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0) and read after it; the table shows
  the peak above the resident size just before the step (the network, its
  input and the loaded libraries). Where the reset is not allowed, the
  child falls back to ``getrusage`` ``ru_maxrss`` (the peak since process
  start) and the table says so. Resident memory includes allocator slack
  and library workspaces, so it is what a machine has to provide, not what
  tensors need.
- CUDA: ``torch.cuda.max_memory_allocated`` after
  ``torch.cuda.reset_peak_memory_stats``, minus the memory allocated before
  the step (tensors only; the CUDA context and the caching allocator's
  reserve come on top).
- Training also reports the bytes autograd saves for backward (distinct
  storages seen by ``torch.autograd.graph.saved_tensors_hooks``, weights
  included): an allocator-independent count of the activation memory.

Prints the table and writes ``benchmarks/results/memory.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from _common import add_common_args, markdown_table, setup, write_results

__all__ = ["MODES", "measure_step", "main"]

#: Measured steps.
MODES = ("inference", "training")
_MIB = 2**20
_CHILD_FLAG = "--child"


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _training_loss(out) -> torch.Tensor:
    """A scalar touching every output of every iteration, so backward runs through the whole loop."""
    total = torch.zeros((), device=out.exit_step.device)
    for preds, log_var in zip(out.iterations, out.log_variance):
        for value in (*preds.values(), *log_var.values()):
            total = total + value.float().square().mean()
    return total


def measure_step(preset_name: str, loops: int, mode: str, batch: int, device: str, threads: int) -> dict:
    """Build DIR-Net, run one step and report memory (run this in a fresh process).

    Returns:
        A dict with ``method``, ``before`` and ``peak`` bytes (the peak over the step), and for
        training ``saved`` bytes (saved for backward).
    """
    from recurnet_hand.model import build_dirnet, preset

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    torch.set_num_threads(threads)
    config = preset(preset_name, max_loops=loops)
    torch.manual_seed(0)
    net = build_dirnet(config).to(device).train(mode == "training")
    x = torch.rand(batch, 3, config.crop_size, config.crop_size, device=device)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    def step() -> None:
        if mode == "inference":
            with torch.inference_mode():
                net(x, exit="all", count_cost=False)
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = net(x, exit="all", count_cost=False)
            _training_loss(out).backward()

    gc.collect()
    result: dict = {}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        result.update(method="torch.cuda.max_memory_allocated", before=before,
                      peak=torch.cuda.max_memory_allocated(device))
    elif _reset_peak_rss():
        before = _status_kib("VmRSS") * 1024
        step()
        result.update(method="VmHWM after reset", before=before, peak=_status_kib("VmHWM") * 1024)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        result.update(method="ru_maxrss (peak since start)", before=before,
                      peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if mode == "training":
        result["saved"] = sum(saved.values())
    return result


def _run_child(settings: dict, timeout: float) -> dict:
    """Measure one setting in a fresh interpreter running this file."""
    env = dict(os.environ)
    # The child must import what this process imports (the packages may not be installed).
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), _CHILD_FLAG, json.dumps(settings)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {settings} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every (mode, batch size); returns the rows (also printed and written)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stb", help="DIR-Net preset (default stb)")
    parser.add_argument("--loops", type=int, default=5, help="L (default 5)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64],
                        help="batch sizes (default 1 8 32 64)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per setting (default 600)")
    add_common_args(parser, timing=False)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.preset, args.loops, args.batch_sizes = "tiny", 1, [2]
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")

    rows = []
    for mode in args.modes:
        for batch in args.batch_sizes:
            settings = dict(preset_name=args.preset, loops=args.loops, mode=mode, batch=batch, device=str(device),
                            threads=args.threads)
            r = _run_child(settings, args.timeout)
            r.update(mode=mode, batch=batch)
            rows.append(r)
            print(f"{mode}, batch {batch}: peak {(r['peak'] - r['before']) / _MIB:.0f} MiB above "
                  f"{r['before'] / _MIB:.0f} MiB ({r['method']})", flush=True)

    on_cuda = device.type == "cuda"
    table = markdown_table(
        ["step", "batch", "peak above start of step (MiB)", "per image (MiB)",
         "peak allocated (MiB)" if on_cuda else "peak resident (MiB)", "saved for backward (MiB)", "method"],
        [[r["mode"], r["batch"], f"{(r['peak'] - r['before']) / _MIB:.0f}",
          f"{(r['peak'] - r['before']) / _MIB / r['batch']:.1f}", f"{r['peak'] / _MIB:.0f}",
          f"{r['saved'] / _MIB:.0f}" if "saved" in r else "", r["method"]] for r in rows],
        "lrrrrrl",
    )
    body = "\n".join(
        [
            f"DIR-Net `{args.preset}` preset, L = {args.loops}, every sample runs iterations 0..{args.loops} "
            f"(`exit=\"all\"`), {args.threads} CPU threads. One fresh process per row; the first step of the "
            "process is measured. Inference: eval mode under `torch.inference_mode()`. Training: train mode, "
            "forward and backward of a loss summing every output of every iteration, no optimizer step.",
            "",
            table,
            "",
            ("Peak allocated: `torch.cuda.max_memory_allocated` during the step; the column before it subtracts "
             "the memory allocated when the step began (network and input)."
             if on_cuda else
             "Peak resident: the process's resident-set high-water mark during the step (`VmHWM`, reset by "
             "writing 5 to `/proc/self/clear_refs` just before it); the column before it subtracts the resident "
             "size when the step began (network, input, libraries). Resident memory counts allocator slack and "
             "library workspaces too."),
            "Saved for backward: distinct storages autograd keeps for the backward pass (activations and weights), "
            "counted with `torch.autograd.graph.saved_tensors_hooks`; independent of the allocator.",
        ]
    )
    print()
    print(table)
    path = write_results("memory", "Peak memory: DIR-Net training and inference steps", body,
                         results_dir=args.results_dir, argv=argv, device=device, script=Path(__file__).name,
                         timed=False)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD_FLAG:
        print(json.dumps(measure_step(**json.loads(sys.argv[2]))))
    else:
        main()
