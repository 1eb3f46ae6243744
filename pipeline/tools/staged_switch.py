"""Changing a dataset folder so that a crash at any point leaves the old or the new dataset.

A takedown writes every new file under `<folder>/.takedown-staging/<its final
path>` and says what the switch will do in `.takedown-staging/plan.json`:
the staged files to move into place, and the digests of
`report/audit.json` before and after.  Writing plan.json (atomically, under a
temporary name) is the commit point; until then the dataset's own files are
untouched and a failure removes the staging folder, leaving the folder exactly
as it was.

The switch: remove `_SUCCESS`, rename each staged file onto its final path
(one rename each, replacing the old file), write `_SUCCESS`, remove the
staging folder.  (Nothing is deleted: a shard a takedown empties stays as an
empty shard, so shard numbers keep no gap.)  Between the commit and the end of the
switch the folder has no `_SUCCESS`, so a reader that waits for `_SUCCESS`
never reads a mix of old and new files.

Recovery rule (`recover`, run before a takedown looks at its folder):
* a staging folder without plan.json: a takedown stopped before its commit
  point; the dataset is the old one, complete.  The staging folder is deleted.
* a staging folder with plan.json: a takedown committed and was interrupted
  during the switch.  The switch is run again from the start: every step is
  idempotent (a staged file that was already moved is no longer there), so
  it ends with the new dataset.
  If report/audit.json is neither the one the plan replaces nor the one it
  writes, the folder was rewritten since (`curate run --overwrite`): the plan
  is stale and refused, and the message says to delete the staging folder.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.core import layout
from pipeline.engine import audit
from pipeline.engine.built_dataset import delete_folder, folder_exists, is_local, open_file


class StalePlanError(Exception):
    """A committed plan that no longer belongs to the folder it is in."""


class StagedSwitch:
    """New files staged beside the old ones, then switched in by `commit` and `switch`."""

    def __init__(self, folder: str):
        self.folder = folder.rstrip("/")
        self.paths = layout.OutputLayout(self.folder)
        self.staging, self.plan_path = self.paths.staging, self.paths.path(layout.STAGING_PLAN)
        self.moves: list[str] = []

    def stage(self, relative: str) -> str:
        """Where to write the new `relative` (e.g. "shards/00001.tar"); the switch moves it into place."""
        self.moves.append(relative)
        return f"{self.staging}/{relative}"

    def commit(self) -> dict[str, Any]:
        """Write the plan: from here on, the new dataset is what the folder holds (once switched)."""
        plan = {
            "moves": self.moves,
            "audit_before": _digest(self.paths.audit),
            "audit_after": _digest(f"{self.staging}/{layout.AUDIT}"),
            "committed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        audit.write_json(self.plan_path, plan)
        return plan

    def discard(self) -> None:
        """Forget an uncommitted switch: the folder is left as it was."""
        delete_folder(self.staging)

    def switch(self, plan: dict[str, Any]) -> None:
        """Put the committed new files in place; idempotent, so a crash is finished by calling it again."""
        success = self.paths.success
        if FileSystems.exists(success):
            FileSystems.delete([success])
        for relative in plan["moves"]:
            staged, final = f"{self.staging}/{relative}", f"{self.folder}/{relative}"
            if FileSystems.exists(staged):
                _move(staged, final)
        with FileSystems.create(success) as handle:
            handle.write(b"")
        delete_folder(self.staging)


def recover(folder: str) -> str | None:
    """Apply the recovery rule to `folder`; a sentence saying what was done, or None if nothing was left over."""
    switch = StagedSwitch(folder)
    if not folder_exists(switch.staging):
        return None
    plan_path = switch.plan_path
    if not FileSystems.exists(plan_path):
        switch.discard()
        return f"removed {switch.staging}, left by a takedown that stopped before changing anything"
    with open_file(plan_path) as handle:
        plan = json.loads(handle.read())
    current = _digest(switch.paths.audit)
    if current not in (plan["audit_before"], plan["audit_after"]):
        raise StalePlanError(
            f"{plan_path}: an interrupted takedown of {plan['committed_at']}, but {layout.AUDIT} was rewritten "
            f"since (by `curate run --overwrite`?): delete {switch.staging} and run the takedown again")
    switch.switch(plan)
    return f"finished the takedown committed at {plan['committed_at']} and interrupted while switching files"


def _move(staged: str, final: str) -> None:
    if is_local(final):
        os.makedirs(os.path.dirname(final), exist_ok=True)
    FileSystems.rename([staged], [final])  # os.rename locally: replaces `final` in one step


def _digest(path: str) -> str | None:
    if not FileSystems.exists(path):
        return None
    with open_file(path) as handle:
        return hashlib.sha256(handle.read()).hexdigest()
