"""The C allocator for training on the CPU (``train.host_memory``).

A CPU step allocates and frees activation buffers of tens to hundreds of MB. glibc serves each
block that large with its own ``mmap`` and gives it back with ``munmap`` when freed, so the
kernel hands the next step fresh pages, faulted in and zeroed one by one: on the 2-core
development machine a fifth of the process's CPU time went to the kernel. ``keep`` tells glibc
to serve every block from its heap and never to trim it, so a step reuses the memory the step
before it freed. The price is resident memory: the process keeps its peak.

The setting applies to the whole process from the first CPU session on; nothing undoes it
(``system`` leaves the allocator as the process has it)."""

from __future__ import annotations

import ctypes

from hlbcli.errors import UsageError

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# the largest value mallopt takes (an int): glibc never trims a heap top smaller than this
NEVER_TRIM = 2**31 - 1

_kept = False


def glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def kept() -> bool:
    """Whether ``keep`` holds for this process."""
    return _kept


def resolve_host_memory(setting: str, device_type: str) -> str:
    """``keep`` or ``system`` for ``train.host_memory`` on this device (``auto``: keep for
    training on the CPU under glibc, else system)."""
    if setting == "auto":
        return "keep" if device_type == "cpu" and glibc() is not None else "system"
    if setting == "keep" and glibc() is None:
        raise UsageError(
            'train.host_memory="keep" needs glibc (Linux), and this process runs on another C library',
            'use --set train.host_memory="auto" or "system"',
        )
    return setting


def keep_freed_memory() -> bool:
    """Serve every block from glibc's heap (no ``mmap`` per large block) and never trim it.
    True once it holds for this process."""
    global _kept
    if _kept:
        return True
    libc = glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; both must hold, or the large blocks keep going back
    _kept = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    return _kept


def apply_host_memory(setting: str, device_type: str) -> str:
    """Resolve ``train.host_memory`` and apply it; returns what holds for the process: keep
    (also after ``system`` in a process an earlier session set to keep) or system."""
    if resolve_host_memory(setting, device_type) == "keep":
        keep_freed_memory()
    return "keep" if _kept else "system"
