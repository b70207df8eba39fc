"""The training process's CPU settings: torch's thread count and the C allocator's handling of large blocks.

An update allocates and frees the same large tensors every time (the heads' (N, 255) bins of every imagined state
are 16 MB at N = 16,384). glibc serves blocks above its mmap threshold by mmap and returns them to the system on
free, and returns the top of its heap above the trim threshold, so the next update touches fresh pages again: on
the `xxs` agent update that is about 30,000 page faults and 5-10% of its time. Raising both keeps the pages in the
process (its peak memory, which it reaches in every update anyway, stays resident between updates).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (half its 64 MB heap size)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MB and the top of its heap in the process rather than return them
    to the system. Returns whether it took effect (False on another C library or platform)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))


def setup_host(threads: int) -> None:
    """The settings of a training process: `threads` CPU threads for torch (0 leaves torch's default) and
    `keep_freed_memory`."""
    if threads > 0:
        torch.set_num_threads(threads)
    keep_freed_memory()
