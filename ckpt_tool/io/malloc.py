"""Make glibc hand large freed blocks back to the OS, so streaming peak memory stays about two tensors.

glibc raises its mmap threshold each time a large mmapped block is freed (up
to 32 MiB), after which tensors of a few MiB come from the heap and freed ones
stay resident as fragments. Streaming a 1.5 GB merge one tensor at a time then
peaks ~130 MiB higher than the tensors alive at any moment. A fixed threshold
(which also turns off the dynamic raise) sends every block of 1 MiB or more
through mmap/munmap: freed tensors leave at once, for a small cost in page
faults. On a C library without ``mallopt`` this does nothing.
"""

from __future__ import annotations

import ctypes
import functools

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
THRESHOLD = 1 << 20


@functools.cache
def release_large_blocks() -> bool:
    """Set a fixed 1 MiB mmap threshold for this process; True if the C library took it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into this process
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD))
