"""Start a fuzzer in a process of its own size, not the test process's.

Linux keeps a process's peak RSS (`ru_maxrss`) across fork and exec: a fuzzer
started straight from a pytest process that has grown to gigabytes (models,
Beam) starts with that peak, and libFuzzer's `-rss_limit_mb` stops it at
once as out of memory.  Started by a small launcher process, it begins at
its own size, so the limit measures the code under test.
"""
from __future__ import annotations

import sys

_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def fresh_process(command: list[str]) -> list[str]:
    """`command`, run through a small launcher so its peak RSS starts from zero."""
    return [sys.executable, "-c", _LAUNCHER, *command]
