"""One writer per output folder: `lock_output_folder(path)`.

A `curate run` and a `curate takedown` (or two takedowns) on the same folder
at once would each see the other's half-done files.  The lock is an
exclusive `flock` on the folder itself: no lock file is written, so taking it
changes nothing in the folder, and the kernel drops it when the process dies
(no stale lock after a crash).  It holds between processes of one machine on
a local filesystem; object stores (gs://, s3://) have no such lock and are
not locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from apache_beam.io.filesystems import FileSystems


class OutputLockedError(Exception):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def lock_output_folder(path: str) -> Iterator[None]:
    """Hold the folder's exclusive lock for the `with` block; OutputLockedError at once if it is taken."""
    if FileSystems.get_scheme(path) is not None:
        yield  # not a local folder: nothing to lock
        return
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(f"{path} is in use by another curate run or takedown; try again when it ends") from None
        yield
    finally:
        os.close(descriptor)  # releases the lock
