"""Host memory allocator settings for CPU training.

A CPU training step allocates and frees the same large tensors every step
(activations, their gradients, the batch). With glibc's default settings, blocks
of a few megabytes are handed back to the operating system when freed, either
as separate ``mmap`` regions or by trimming the top of the heap, so the next
step page-faults the same memory in again and zero-fills it. On the ``cpu``
preset's training step that costs several percent of the step
(``benchmarks/results/allocator.md``). :func:`tune_allocator` raises glibc's
mmap and trim thresholds for this process so freed blocks stay in the heap for
reuse: the effect PyTorch's performance guide gets from preloading jemalloc or
tcmalloc, without an extra library.

The settings hold for the whole process and cannot be undone (glibc stops
adapting its mmap threshold once it is set). The trainer applies them on CPU
devices unless :attr:`recurnet.TrainConfig.tune_allocator` is off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune_allocator", "ALLOCATOR_ENV"]

#: Environment variables that say the user has chosen the allocator's behaviour already:
#: glibc's own tunables, or a preloaded allocator (jemalloc, tcmalloc, mimalloc).
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_applied: bool | None = None


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed blocks below ``mmap_threshold`` bytes in the heap (glibc only).

    The first call decides for the process; later calls return its result.

    Args:
        mmap_threshold: allocations at least this large get their own ``mmap`` region
            (glibc accepts at most 32 MiB on 64-bit systems).
        trim_threshold: free memory at the top of the heap kept before it is returned
            to the operating system.

    Returns:
        Whether glibc accepted both settings: False on other C libraries (macOS, Windows,
        musl), when an :data:`ALLOCATOR_ENV` variable is set (the user's choice wins),
        or when glibc refuses a value (the mmap threshold may then be set alone).

    Raises:
        ValueError: for a threshold that is not an integer in ``[1, 2**31)``.
    """
    global _applied
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"tune_allocator: {name} must be a number of bytes in [1, 2**31), got {value!r}")
    if _applied is not None:
        return _applied
    if any(os.environ.get(name) for name in ALLOCATOR_ENV) or platform.libc_ver()[0] != "glibc":
        _applied = False
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _applied = False
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _applied
