"""Shared machinery of the benchmark scripts: settings, timing, environment header, result files.

A benchmark script built on this module looks like::

    parser = argparse.ArgumentParser(...)
    add_common_args(parser)                   # --threads --device --warmup --repeats --results-dir --quick
    args = parser.parse_args(argv)
    device = setup(args)                      # thread count, device check, seed
    timings = time_interleaved({"a": f, "b": g}, warmup=args.warmup, repeats=args.repeats, device=device)
    body = markdown_table(["model", "ms"], rows)
    write_results("name", "Title", body, results_dir=args.results_dir, argv=argv, device=device,
                  script="bench_name.py")

Timings are medians over ``repeats`` calls with their spread (interquartile
range, min and max). The machines these numbers come from are often shared,
so absolute times drift with other people's load; :func:`time_interleaved`
runs the compared callables in rounds (A B, B A, A B ...) so drift hits them alike,
and :func:`paired_ratios` turns the turns into per-round ratios. Compare
ratios measured in one run, never times from different runs.

Result files are markdown, written atomically into ``benchmarks/results/``
with a header recording the torch version, threads and CPU (or GPU) model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

__all__ = [
    "RESULTS_DIR",
    "NOISE_NOTE",
    "CLOCKS",
    "Stats",
    "add_common_args",
    "setup",
    "synchronize",
    "time_call",
    "time_interleaved",
    "paired_ratios",
    "goal_verdict",
    "environment",
    "markdown_table",
    "write_results",
    "counting_backend",
]

#: Where result tables go unless ``--results-dir`` says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Printed under every result header.
NOISE_NOTE = (
    "Timings come from a machine that may be shared with other jobs, so absolute times are noisy: "
    "compare the ratios measured within one run (the compared variants were timed in turns), "
    "not times across runs or machines."
)

#: Timers by name. ``"wall"`` is elapsed time; ``"cpu"`` is the CPU time of this process (all its
#: threads), which leaves out the time the process waits while other jobs run: steadier on a
#: shared machine with one thread, but it counts threads that spin while waiting and misses GPU work.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements (seconds, ratios, bytes...): median and spread.

    Attributes:
        values: the raw measurements, in the order they were taken.

    Examples:
        >>> s = Stats((3.0, 1.0, 2.0, 4.0))
        >>> s.median, s.min, s.max
        (2.5, 1.0, 4.0)
        >>> s.describe(scale=1000, unit=" ms", digits=0)
        '2500 ms (IQR 1750-3250, n=4)'
    """

    values: tuple[float, ...]

    def __post_init__(self):
        if not self.values:
            raise ValueError("Stats needs at least one measurement")

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def q1(self) -> float:
        """First quartile (inclusive method; equals the median for one value)."""
        return self._quartiles()[0]

    @property
    def q3(self) -> float:
        """Third quartile."""
        return self._quartiles()[2]

    @property
    def min(self) -> float:
        return float(min(self.values))

    @property
    def max(self) -> float:
        return float(max(self.values))

    def _quartiles(self) -> tuple[float, float, float]:
        if len(self.values) == 1:
            v = float(self.values[0])
            return v, v, v
        q = statistics.quantiles(self.values, n=4, method="inclusive")
        return float(q[0]), float(q[1]), float(q[2])

    def describe(self, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
        """``"median (IQR q1-q3, n=N)"`` with values multiplied by ``scale``."""
        m, a, b = (scale * v for v in (self.median, self.q1, self.q3))
        return f"{m:.{digits}f}{unit} (IQR {a:.{digits}f}-{b:.{digits}f}, n={len(self.values)})"

    def spread(self, scale: float = 1.0, digits: int = 1) -> str:
        """``"q1-q3"`` (the interquartile range) multiplied by ``scale``."""
        return f"{scale * self.q1:.{digits}f}-{scale * self.q3:.{digits}f}"


def add_common_args(
    parser: argparse.ArgumentParser, *, warmup: int = 2, repeats: int = 7, timing: bool = True
) -> argparse.ArgumentParser:
    """Add the options every benchmark shares.

    ``--threads`` (default 2), ``--device`` (default ``cpu``), ``--results-dir``,
    ``--quick`` and, when ``timing``, ``--warmup``, ``--repeats`` and ``--clock``.
    """
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"folder for the markdown result (default {RESULTS_DIR})"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny models and one repeat: checks the script runs; numbers mean nothing"
    )
    if timing:
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed rounds first (default {warmup})")
        parser.add_argument("--repeats", type=int, default=repeats, help=f"timed calls per variant (default {repeats})")
        parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                            help="wall: elapsed time (default); cpu: this process's CPU time (see _common.CLOCKS)")
    return parser


def add_model_args(parser: argparse.ArgumentParser, default_model: Path) -> argparse.ArgumentParser:
    """Add ``--model`` (a run's ``model.pt``, default ``default_model``) and ``--cache`` (the synthetic data cache)."""
    parser.add_argument("--model", type=Path, default=default_model,
                        help="a run's model.pt (default: the shipped model)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="synthetic data cache (default: recurnet-hand's; a temporary one with --quick)")
    return parser


def add_runs_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--out`` (a folder for the training runs) and ``--reuse`` (read finished runs back)."""
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --out: read rows whose run folder holds a finished run of the same configuration")
    return parser


def parse_runs_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv``, refusing ``--reuse`` without ``--out``."""
    args = parser.parse_args(argv)
    if args.reuse and args.out is None:
        parser.error("--reuse needs --out (the folder whose finished runs are reused)")
    return args


def write_minutes(folder: Path, minutes: float) -> Path:
    """Write a run's wall time to ``folder/minutes.json`` (atomically: a killed write leaves no file)."""
    path = Path(folder) / "minutes.json"
    tmp = path.with_name(".minutes.json.tmp")
    tmp.write_text(json.dumps({"minutes": float(minutes)}))
    os.replace(tmp, path)
    return path


#: Run settings that do not change what is trained: where the run lives, its device, the cache folder.
_RUN_LOCATION = ("out_dir", "device")
_DATA_LOCATION = ("root", "workers")


def comparable_config(config: Mapping) -> dict:
    """A run configuration dict (``config.yaml``) without the settings that do not change what is trained."""
    config = {k: v for k, v in config.items() if k not in _RUN_LOCATION}
    config["data"] = {k: v for k, v in config.get("data", {}).items() if k not in _DATA_LOCATION}
    return config


def read_run_json(path: Path) -> dict:
    """A run's JSON file (``summary.json``, ``minutes.json``); a damaged one raises naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable run file ({err}); delete the run folder to train it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def setup(args: argparse.Namespace, seed: int = 0) -> torch.device:
    """Apply ``--threads`` and ``--device``, seed torch, and check the timing counts.

    With ``--quick`` the timing counts drop to no warm-up and one repeat.

    Raises:
        ValueError: a bad thread or repeat count, an unavailable device, or ``--clock cpu`` off the CPU.
    """
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device on this machine")
    if hasattr(args, "repeats"):
        if args.quick:
            args.warmup, args.repeats = 0, 1
        if args.repeats < 1 or args.warmup < 0:
            raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
        if getattr(args, "clock", "wall") == "cpu" and device.type != "cpu":
            raise ValueError(f"--clock cpu measures host CPU time and cannot time work on {device}; use --clock wall")
    torch.manual_seed(seed)
    return device


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU), so a timer sees finished work."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    repeats: int = 7,
    device: torch.device | str | None = None,
    clock: str = "wall",
) -> Stats:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Examples:
        >>> time_call(lambda: sum(range(100)), warmup=0, repeats=3).values.__len__()
        3
    """
    return time_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, device=device, clock=clock)["fn"]


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    repeats: int = 7,
    device: torch.device | str | None = None,
    clock: str = "wall",
) -> dict[str, Stats]:
    """Seconds per call of each callable, timed in rounds (``a b c``, ``c b a``, ``a b c`` ...).

    Running the compared variants in rounds rather than one after the other
    means a change in the machine's load during the measurement hits every
    variant alike; :func:`paired_ratios` then compares them round by round.
    Every other round runs in reverse order, so no variant always follows
    the same one (and inherits its caches or its garbage).

    Args:
        fns: name -> callable taking no arguments.
        warmup: untimed rounds first (first calls allocate memory, pick kernels, compile).
        repeats: timed rounds.
        device: synchronised around every call when it is a CUDA device.
        clock: a name from :data:`CLOCKS`.

    Returns:
        name -> :class:`Stats` of seconds, one value per round.
    """
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    timer = CLOCKS[clock]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            fn = fns[name]
            synchronize(device)
            start = timer()
            fn()
            synchronize(device)
            samples[name].append(timer() - start)
    return {name: Stats(tuple(v)) for name, v in samples.items()}


def paired_ratios(numerator: Stats, denominator: Stats) -> Stats:
    """Round-by-round ratios of two :func:`time_interleaved` results.

    Examples:
        >>> paired_ratios(Stats((2.0, 4.0)), Stats((1.0, 2.0))).median
        2.0
    """
    if len(numerator.values) != len(denominator.values):
        raise ValueError(
            f"paired ratios need the same number of rounds, got {len(numerator.values)} and {len(denominator.values)}"
        )
    return Stats(tuple(a / b for a, b in zip(numerator.values, denominator.values)))


def goal_verdict(stats: Stats, goal: float, *, higher_is_better: bool = False) -> str:
    """Whether repeated measurements meet a goal, taking their spread into account.

    ``"yes"`` when the whole interquartile range is on the good side of ``goal``,
    ``"no"`` when it is all on the bad side, otherwise ``"unresolved (IQR spans the goal)"``:
    on a noisy machine a median that happens to fall on one side proves little.

    Examples:
        >>> goal_verdict(Stats((1.00, 1.01, 1.02)), 1.03)
        'yes'
        >>> goal_verdict(Stats((0.9, 1.0, 1.2)), 1.03)
        'unresolved (IQR spans the goal)'
        >>> goal_verdict(Stats((0.4, 0.45)), 0.5, higher_is_better=True)
        'no'
    """
    good_q, bad_q = (stats.q1, stats.q3) if higher_is_better else (stats.q3, stats.q1)
    meets = (lambda v: v >= goal) if higher_is_better else (lambda v: v <= goal)
    if meets(good_q) and meets(bad_q):
        return "yes"
    if not meets(good_q) and not meets(bad_q):
        return "no"
    return "unresolved (IQR spans the goal)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict[str, str]:
    """What the numbers were measured with: software versions, threads, CPU / GPU model, load.

    Returns:
        An ordered label -> value mapping for the result header.
    """
    device = torch.device(device)
    env = {
        "date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # a benchmark that does not need timm still gets its header
        pass
    env["Python"] = platform.python_version()
    env["device"] = str(device)
    if device.type == "cuda":
        env["GPU"] = torch.cuda.get_device_name(device)
    env["CPU"] = f"{_cpu_model()} ({os.cpu_count()} logical cores visible)"
    env["torch threads"] = f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"
    if hasattr(os, "getloadavg"):
        env["load average when written (1/5/15 min)"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return env


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right).

    Examples:
        >>> print(markdown_table(["model", "ms"], [["a", 1.5]]))
        | model | ms |
        |---|---:|
        | a | 1.5 |
    """
    n = len(headers)
    align = align or "l" + "r" * (n - 1)
    if len(align) != n or set(align) - {"l", "r"}:
        raise ValueError(f"align must have one 'l' or 'r' per column ({n}), got {align!r}")
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells, the table has {n} columns: {row!r}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str,
    title: str,
    body: str,
    *,
    results_dir: Path | str = RESULTS_DIR,
    argv: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    script: str | None = None,
    timed: bool = True,
    clock: str | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.md``: title, the command, the environment header, then ``body``.

    The file is written to a temporary name in the same folder and moved into
    place, so a crash never leaves a half-written table.

    Args:
        name: file stem (letters, digits, ``_ . -``).
        title: markdown heading.
        body: markdown content (tables and notes).
        results_dir: target folder, created if missing.
        argv: the script's arguments, recorded with the command (default ``sys.argv[1:]``).
        device: the device measured on (for the header).
        script: the script's file name (default: the running script's).
        timed: add the note on noisy timings.
        clock: the :data:`CLOCKS` name the timings used, recorded in the header.

    Returns:
        The path written.
    """
    if not _NAME.match(name):
        raise ValueError(f"result name must be letters, digits, '_', '.' or '-', got {name!r}")
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    script = script or Path(sys.argv[0]).name
    args = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python", f"benchmarks/{script}", *args])
    env = environment(device)
    if clock is not None:
        env["clock"] = {"wall": "wall (elapsed, time.perf_counter)", "cpu": "cpu (process CPU time, all threads)"}.get(
            clock, clock
        )
    parts = [f"# {title}", "", f"Written by `{command}`.", ""]
    parts += [markdown_table(["setting", "value"], list(env.items()), "ll"), ""]
    if timed:
        parts += [NOISE_NOTE, ""]
    parts += [body.rstrip(), ""]
    target = folder / f"{name}.md"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(parts))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def counting_backend(name: str):
    """The ``torch.compile`` backend ``name``, counting the graphs dynamo hands it.

    Returns ``(backend, calls)``; ``calls[0]`` is the number of graphs compiled so far (one
    more per graph break).
    """
    inner = torch._dynamo.lookup_backend(name)
    calls = [0]

    def backend(gm, example_inputs):
        calls[0] += 1
        return inner(gm, example_inputs)

    return backend, calls
