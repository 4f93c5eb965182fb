"""sphinx-gallery hooks: the order of the examples and a clean random state for each one."""

from __future__ import annotations

from pathlib import Path

#: Gallery order: a first loop, then exit policies, trade-offs, and the hand model.
#: Examples not listed follow, sorted by file name.
ORDER = (
    "plot_digits_loopify.py",
    "plot_custom_exit_policy.py",
    "plot_temperature_sweep.py",
    "plot_dirnet_uncertainty.py",
)


def sort_key(filename: str) -> tuple[int, str]:
    """Sort key for ``within_subsection_order``."""
    name = Path(filename).name
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def reset_torch(gallery_conf: dict, fname: str) -> None:
    """Seed torch and NumPy before every example so each runs the same, whatever ran before it.

    The examples' tensors are small, so extra threads gain little, while on a shared
    machine they compete with other processes and can slow a build several-fold; one
    thread keeps the build time steady.
    """
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
