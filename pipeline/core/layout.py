"""Every path of an output folder, in one place.

What `curate run` writes into its output folder DIR (and what `curate report`
and `curate takedown` read and rewrite there):

    DIR/_curate_output.json            MARKER: written first, says DIR is a curate output
    DIR/_curate.lock                   LOCK: while a run (or a takedown) writes to DIR
    DIR/recipe.json                    RECIPE: the resolved recipe of the run
    DIR/shards/00000.tar               shard_file(name, "tar"): WebDataset samples
    DIR/shards/00000.parquet           shard_file(name, "parquet"): one metadata row per sample
    DIR/shards/00000_stats.json        shard_stats_file(name): img2dataset's per-shard stats
    DIR/shards/00000.npz               shard_file(name, "npz"): embeddings in DataComp's layout, when a
                                       stage says embeddings_file: npz (pipeline.engine.embedding_files)
    DIR/rejects/00000.parquet          rejects_file(name): every dropped row, by input block
    DIR/report/audit.json              AUDIT: the accounting (input = kept + rejected)
    DIR/report/optout.json             OPTOUT: opt-out drops by rule and domain
    DIR/report/audit.html              AUDIT_HTML: the same as one page
    DIR/report/takedown-<time>.json    takedown_manifest(stamp): what a takedown removed
    DIR/_SUCCESS                       SUCCESS: written last, when all of the above is complete
    DIR/_work/manifest.json            WORK_MANIFEST: what the download checkpoints depend on
    DIR/_work/00000-00000.ckpt.parquet checkpoint_file(shard, task): one download task's results
    DIR/_work/progress-<host>-<pid>.json  PROGRESS_PREFIX: a download worker's status, for the progress line
    DIR/.takedown-staging/...          STAGING: a takedown's new files before its switch,
    DIR/.takedown-staging/plan.json    STAGING_PLAN: its commit point

Shard names are numbers of at least `shard_digits` digits (`shard_name`).
Files are written under a hidden temporary name first (`.<name>.<32 hex>.tmp`,
pipeline.engine.writers.AtomicFile) and renamed into place.  `in_layout` says
whether a relative path is one of these files: curate never deletes any other.

Names here are relative to DIR; `OutputLayout(DIR)` gives the full paths (DIR
may be local or on any Beam filesystem, so paths are joined with "/").
This module imports nothing of ours (pipeline.core).
"""
from __future__ import annotations

import re

SHARDS = "shards"
REJECTS = "rejects"
REPORT = "report"
WORK = "_work"
RECIPE = "recipe.json"
SUCCESS = "_SUCCESS"
MARKER = "_curate_output.json"
LOCK = "_curate.lock"
AUDIT = f"{REPORT}/audit.json"
OPTOUT = f"{REPORT}/optout.json"
AUDIT_HTML = f"{REPORT}/audit.html"
WORK_MANIFEST = f"{WORK}/manifest.json"
PROGRESS_PREFIX = "progress-"  # _work/progress-<host>-<pid>.json (pipeline.engine.worker_status)
STAGING = ".takedown-staging"
STAGING_PLAN = f"{STAGING}/plan.json"
# The image of a sample: a tar member `<key>.<extension>`, or a binary column of that name in a Parquet shard.
IMAGE_EXTENSIONS = ("jpg", "png", "webp")

_SHARD = r"[0-9][0-9_-]*"  # shard names are numbers; separators allowed for numbering schemes
# Every file curate writes, relative to the output folder; nothing else is ever deleted.
LAYOUT = re.compile(
    "|".join(
        [
            rf"{SHARDS}/{_SHARD}(\.tar|\.parquet|\.npz|_stats\.json)",
            rf"{REJECTS}/{_SHARD}\.parquet",
            rf"{REPORT}/(audit\.json|audit\.html|optout\.json|takedown-[^/]+\.json)",
            re.escape(RECIPE),
            re.escape(SUCCESS),
            rf"{WORK}/(manifest\.json|{_SHARD}\.ckpt\.parquet|{PROGRESS_PREFIX}[^/]+\.json)",
            r"(.+/)?\.[^/]+\.[0-9a-f]{32}\.tmp",  # pipeline.engine.writers.AtomicFile's temporary names
        ]
    )
)


def in_layout(relative_path: str) -> bool:
    """Whether `relative_path` (relative to an output folder) is a file curate writes."""
    return LAYOUT.fullmatch(relative_path) is not None


def in_work_folder(relative_path: str) -> bool:
    return relative_path.startswith(f"{WORK}/")


def shard_name(number: int, digits: int) -> str:
    """The name of shard (or input block) `number`: "00042"."""
    return f"{number:0{digits}d}"


def shard_file(name: str, extension: str) -> str:
    return f"{SHARDS}/{name}.{extension}"


def shard_stats_file(name: str) -> str:
    return f"{SHARDS}/{name}_stats.json"


def rejects_file(name: str) -> str:
    return f"{REJECTS}/{name}.parquet"


def checkpoint_file(shard: str, task: int) -> str:
    return f"{WORK}/{shard}-{task:05d}.ckpt.parquet"


def takedown_manifest(stamp: str) -> str:
    return f"{REPORT}/takedown-{stamp}.json"


class OutputLayout:
    """The full paths of one output folder's files (see the module doc)."""

    def __init__(self, output_dir: str):
        self.root = output_dir

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def relative(self, path: str) -> str:
        """`path` (under the folder) relative to it."""
        return path[len(self.root) + 1:]

    @property
    def shards(self) -> str:
        return self.path(SHARDS)

    @property
    def rejects(self) -> str:
        return self.path(REJECTS)

    @property
    def report(self) -> str:
        return self.path(REPORT)

    @property
    def work(self) -> str:
        return self.path(WORK)

    @property
    def audit(self) -> str:
        return self.path(AUDIT)

    @property
    def optout(self) -> str:
        return self.path(OPTOUT)

    @property
    def audit_html(self) -> str:
        return self.path(AUDIT_HTML)

    @property
    def recipe(self) -> str:
        return self.path(RECIPE)

    @property
    def success(self) -> str:
        return self.path(SUCCESS)

    @property
    def marker(self) -> str:
        return self.path(MARKER)

    @property
    def lock(self) -> str:
        return self.path(LOCK)

    @property
    def work_manifest(self) -> str:
        return self.path(WORK_MANIFEST)

    @property
    def staging(self) -> str:
        return self.path(STAGING)

    def shard(self, name: str, extension: str) -> str:
        return self.path(shard_file(name, extension))

    def shard_stats(self, name: str) -> str:
        return self.path(shard_stats_file(name))

    def rejects_file(self, name: str) -> str:
        return self.path(rejects_file(name))

    def checkpoint(self, shard: str, task: int) -> str:
        return self.path(checkpoint_file(shard, task))

    def shards_glob(self, extension: str) -> str:
        """Every shard file with `extension` ("tar", "parquet"), as a Beam filesystem pattern."""
        return self.path(shard_file("*", extension))

    @property
    def rejects_glob(self) -> str:
        return self.path(rejects_file("*"))

    @property
    def checkpoints_glob(self) -> str:
        return self.path(f"{WORK}/*.ckpt.parquet")
