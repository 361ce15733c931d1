"""Keep freed megabyte buffers for reuse instead of handing them back to the kernel.

Every chunk on its way to a FIFO is a buffer of about a megabyte, made in one thread (an S3
download, an inflater, a small-file reader) and freed in another (the writer). glibc's
defaults serve such sizes with fresh mmap()s or trim them off the heap once freed, so every
4 KiB of every chunk costs a page fault and a page of zeroing (the bench's S3 case prints
the faults per MiB and the speed with glibc's defaults beside these settings). With buffers
up to 16 MiB kept on the heap and the heap trimmed only past 256 MiB free, freed chunks are
used again instead. One arena for all threads makes a buffer freed by the writer the next one
any thread gets, so what is kept stays near the peak in use, which the read-ahead bounds (the
bench's memory case).
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_buffers() -> bool:
    """Tune glibc's malloc once, at start; False where it does not apply (musl, macOS) or the
    user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ already."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1)))
