"""The output folder: whose files are whose, and one run at a time.

curate deletes only files it writes itself.  Which those are is known from
its layout (`LAYOUT`: shards, rejects, report files, recipe.json, _SUCCESS,
the work folder, and the hidden temporary names of files being written), and
a folder is known to be a curate output by the marker `_curate_output.json`,
written before anything else.  So:

* a new or empty folder is claimed (marker written) and used;
* a folder with the marker and no `_SUCCESS` is an unfinished run: its
  result files are removed before the run writes them again (the download
  checkpoints in `_work/` are kept for reuse); any other file stays;
* a folder with the marker and `_SUCCESS` is refused without `--overwrite`;
* any other non-empty folder is refused without `--overwrite`, nothing touched;
* `--overwrite` removes the files of curate's layout, whoever wrote them
  (including `_work/`), and never any other file: those are listed as kept.

`_curate.lock` (pid, host, start time) keeps a second run off a folder one is
writing.  A lock whose process is gone (same host, pid not running) is stale
and taken over with a warning; a lock from another host cannot be checked and
is refused: delete the file by hand if no run is going on.  On local disks the
lock is taken atomically (O_EXCL); on object stores (gs://, s3://) Beam offers
no create-if-absent, so two runs starting within the same second may both pass.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import socket
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline import __version__
from pipeline.audit import SUCCESS_FILE, write_json
from pipeline.errors import JobError
from pipeline.output_lock import OutputLockedError, lock_output_folder

MARKER = "_curate_output.json"
LOCK = "_curate.lock"
_SHARD = r"[0-9][0-9_-]*"  # shard names are numbers; separators allowed for numbering schemes
# Every file curate writes, relative to the output folder; nothing else is ever deleted.
LAYOUT = re.compile(
    "|".join(
        [
            rf"shards/{_SHARD}(\.tar|\.parquet|_stats\.json)",
            rf"rejects/{_SHARD}\.parquet",
            r"report/(audit\.json|audit\.html|optout\.json|takedown-[^/]+\.json)",
            r"recipe\.json",
            re.escape(SUCCESS_FILE),
            rf"_work/(manifest\.json|{_SHARD}\.ckpt\.parquet|progress-[^/]+\.json)",
            r"(.+/)?\.[^/]+\.[0-9a-f]{32}\.tmp",  # pipeline.writers.AtomicFile's temporary names
        ]
    )
)
_WORK_PREFIX = "_work/"


class OutputFolderError(JobError):
    """The output folder cannot be used as asked; nothing in it was changed."""


def in_layout(relative_path: str) -> bool:
    return LAYOUT.fullmatch(relative_path) is not None


def list_files(output_dir: str) -> list[str]:
    """Every file under `output_dir`, relative to it (any Beam filesystem); empty if it does not exist."""
    if FileSystems.get_scheme(output_dir) is None:
        if os.path.isfile(output_dir):
            raise OutputFolderError(f"--output {output_dir} is an existing file, not a folder")
        found = [os.path.join(root, name) for root, _, names in os.walk(output_dir) for name in names]
    else:
        found = [m.path for r in FileSystems.match([f"{output_dir}/**"]) for m in r.metadata_list]
    return sorted(os.path.relpath(path, output_dir) if "://" not in path else path[len(output_dir) + 1:]
                  for path in found)


def check_claim(output_dir: str, overwrite: bool) -> list[str]:
    """The folder's files, if this run may use it; OutputFolderError (nothing touched) if not."""
    files = [name for name in list_files(output_dir) if name != LOCK]  # the lock is this run's own, or refused later
    ours = MARKER in files
    if ours and SUCCESS_FILE in files and not overwrite:
        raise OutputFolderError(f"{output_dir} already holds a finished run; pass --overwrite to replace it")
    if files and not ours and not overwrite:
        raise OutputFolderError(
            f"{output_dir} is not empty and is not a curate output folder (no {MARKER}): it holds "
            f"{len(files)} file(s){_examples(files, 3)}; nothing was changed. Choose a new or empty folder, or pass "
            "--overwrite to remove only the files of curate's layout (shards/, rejects/, report/, recipe.json, "
            "_SUCCESS, _work/) from it; other files are never removed"
        )
    return files


def claim(output_dir: str, files: list[str], overwrite: bool, say=print) -> None:
    """Mark the folder as curate's and remove the results this run writes again (see the module doc)."""
    if MARKER not in files:
        write_json(f"{output_dir}/{MARKER}", {"written_by": "curate", "version": __version__})
    removable = [name for name in files if in_layout(name) and (overwrite or not name.startswith(_WORK_PREFIX))]
    if removable:
        FileSystems.delete([f"{output_dir}/{name}" for name in removable])
    if overwrite and files:
        kept = [name for name in files if not in_layout(name) and name != MARKER]
        say(f"curate: --overwrite: removed {len(removable)} file(s) of curate's layout from {output_dir}"
            f"{_examples(removable)}" + (f"; kept {len(kept)} other file(s){_examples(kept)}" if kept else ""))


def _examples(names: list[str], shown: int = 5) -> str:
    return f" ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})" if names else ""


class OutputLock:
    """`DIR/_curate.lock` while a run writes to DIR (see the module doc for stale locks)."""

    def __init__(self, output_dir: str):
        self.path = f"{output_dir}/{LOCK}"
        self._local = FileSystems.get_scheme(output_dir) is None
        self._holder = {
            "pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def __enter__(self) -> "OutputLock":
        if not self._try_create():
            holder = self._read()
            if not self._is_stale(holder):
                raise OutputFolderError(
                    f"another curate run is writing to this folder (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started_at')}); if no run is going on, "
                    f"delete {self.path}"
                )
            logging.warning("taking over the stale lock %s of a run that is gone: %s", self.path, holder)
            FileSystems.delete([self.path])
            if not self._try_create():
                raise OutputFolderError(f"another curate run took the lock {self.path} just now")
        self._folder_lock = self._lock_folder()
        return self

    def _lock_folder(self) -> contextlib.ExitStack:
        """Also the folder's flock, which `curate takedown` takes: a run and a takedown exclude each other."""
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(lock_output_folder(os.path.dirname(self.path)))
        except OutputLockedError as err:
            self._release_file()
            raise OutputFolderError(str(err)) from None
        return stack

    def __exit__(self, *exc) -> None:
        self._folder_lock.close()
        self._release_file()

    def _release_file(self) -> None:
        if self._read().get("token") == self._holder["token"]:
            FileSystems.delete([self.path])

    def _try_create(self) -> bool:
        data = json.dumps(self._holder).encode()
        if self._local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            return True
        if FileSystems.exists(self.path):
            return False
        with FileSystems.create(self.path) as handle:
            handle.write(data)
        return self._read().get("token") == self._holder["token"]

    def _read(self) -> dict:
        try:
            with FileSystems.open(self.path) as handle:
                return json.loads(handle.read())
        except (OSError, ValueError) as err:  # gone, or half-written by a killed run
            return {"unreadable": str(err)}

    def _is_stale(self, holder: dict) -> bool:
        # An unreadable lock may be one being written this instant: never stale.
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False
