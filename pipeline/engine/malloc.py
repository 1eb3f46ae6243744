"""Two glibc malloc arenas per process, so memory follows what a process holds.

glibc gives threads that contend for the heap arenas of their own (up to 8
per core) and hands freed memory back to the system mostly from the top of
an arena.  Download threads that each decode and encode images leave every
arena fragmented, so a long local run grew with the rows it had processed
rather than with what it held: at 10,000 -> 40,000 rows, +81 MiB in the
launching process and +62 MiB in a worker, against +35 and +15 MiB with two
arenas (benchmarks/memory.py).  A user's own MALLOC_ARENA_MAX wins.
"""
from __future__ import annotations

import ctypes
import os
import sys

ENV = "MALLOC_ARENA_MAX"
ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


def arena_max() -> str:
    return os.environ.get(ENV) or str(ARENA_MAX)


def limit_arenas() -> bool:
    """Caps this process's arenas (before its threads start); False where that is not glibc's to do."""
    if os.environ.get(ENV) or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, ARENA_MAX))
    except (OSError, AttributeError):
        return False  # musl or another libc: nothing to tune


def worker_command_prefix() -> str:
    """Environment assignment for a shell command that starts a worker process."""
    return f"{ENV}={arena_max()} "
