"""Process-level settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS after every large tensor.

    By default glibc serves allocations above ~128 KiB-32 MiB with ``mmap`` and unmaps them on free, so every
    training step page-faults (and zero-fills) its activations again; on a 2-core machine that doubled the step
    time of a small C8 model (1.59 s -> 0.78 s per batch of 64, measured).  No-op off glibc or with
    ``EPDO_NO_MALLOC_TUNING=1``.  Returns whether the settings were applied.
    """
    if os.environ.get("EPDO_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 1 << 30) and mallopt(_M_TOP_PAD, 1 << 28)
    )
