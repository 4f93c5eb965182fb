"""Metrics to CSV (and TensorBoard), and the progress bar.

``metrics.csv`` is in long format, one value per row::

    phase,epoch,step,name,value
    0,1,10,train/loss,0.8123

so that runs whose set of metrics changes between phases (progressive training
adds loops) still share one header. ``pandas.read_csv(...).pivot_table(index=
"step", columns="name", values="value")`` gives the wide table.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MetricLogger", "make_progress", "check_tensorboard"]

_HEADER = ["phase", "epoch", "step", "name", "value"]


class MetricLogger:
    """Appends scalars to ``<out_dir>/metrics.csv`` and optionally to TensorBoard.

    Args:
        out_dir: folder to write into; None disables writing (e.g. on ranks other than 0).
        tensorboard: also write ``<out_dir>/tensorboard`` event files.

    Raises:
        ImportError: if ``tensorboard`` is requested but the package is not installed.
    """

    def __init__(self, out_dir: str | Path | None, *, tensorboard: bool = False):
        self.path = None if out_dir is None else Path(out_dir) / "metrics.csv"
        self._writer = None
        if self.path is not None and tensorboard:
            self._writer = check_tensorboard()(log_dir=str(Path(out_dir) / "tensorboard"))

    def log(self, values: Mapping[str, float], *, step: int, phase: int, epoch: int) -> None:
        """Write ``name -> value`` rows for one step."""
        if self.path is None or not values:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(_HEADER)
            for name, value in values.items():
                w.writerow([phase, epoch, step, name, repr(float(value))])
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats the steps after its checkpoint)."""
        if self.path is None or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != _HEADER:
            raise ValueError(f"{self.path} is not a metrics file written by MetricLogger (header {rows[:1]})")
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(_HEADER) and int(r[2]) <= step]
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".metrics.", suffix=".tmp")
        with os.fdopen(fd, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Flush and close TensorBoard files."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def check_tensorboard():
    """Return TensorBoard's ``SummaryWriter`` class.

    Raises:
        ImportError: naming the missing package, when ``tensorboard`` is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("tensorboard=True needs the 'tensorboard' package (pip install tensorboard)") from e
    return SummaryWriter


class _NoProgress:
    """Stands in for a rich progress bar when it is off."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        return None

    def remove_task(self, *args, **kwargs) -> None:
        return None


def make_progress(enabled: bool | None):
    """A rich progress bar showing loss and throughput; a no-op object when disabled.

    Args:
        enabled: True / False, or None for "only when stderr is a terminal".
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[rate]:.0f} samples/s"),
    )
