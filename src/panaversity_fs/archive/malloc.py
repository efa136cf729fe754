"""Make glibc return big freed buffers to the OS at once, so streaming keeps the RSS flat.

glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB); from
then on blocks of that size come from per-thread heaps, which keep freed memory. With 16
storage threads reading 0.1-4 MB objects, a 200 MB archive grew the server's RSS by ~28 MB
that way and kept it; with the threshold pinned at 128 KiB the growth is ~12 MB and returns to
the OS when the download ends (docs/benchmarks.md, "Archives").
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3
"""`mallopt` parameter number of the mmap threshold (glibc `malloc.h`)."""

MMAP_THRESHOLD = 128 * 1024
"""Allocations from this size up are mmapped and unmapped on free (glibc's initial value)."""


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (disabling its dynamic growth); False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
