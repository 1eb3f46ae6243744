"""`curate demo`: the bundled sample end to end, with no internet.

Generates the sample web (pipeline.demo.sample_web), serves it on 127.0.0.1,
writes the URL list, and runs the same job as `curate run` over it
(`pipeline.tools.launch.run_job`) with the loopback address allowed and
`--overwrite`.  The server stops when the run ends.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.demo.localweb import LocalWeb
from pipeline.demo.sample_web import generate_sample_web

DEFAULT_RECIPE = "local-sample"  # bundled: found in a checkout and in an installed wheel alike


def write_url_list(rows: list[dict], web: LocalWeb, path: Path) -> Path:
    table = [{"url": web.url(row["path"]), **{k: v for k, v in row.items() if k != "path"}} for row in rows]
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


def run_demo(output: str, recipe: str | None = None, extra_args: list[str] = (), overrides: list[str] = ()) -> int:
    """The demo run; `extra_args` are Beam options, `overrides` `STAGE.PARAM=VALUE` as `--set` takes them.
    Returns the exit code `curate` would."""
    from pipeline.core.errors import JobError
    from pipeline.tools.launch import load_job_recipe, print_summary, run_job

    with tempfile.TemporaryDirectory(prefix="curate-demo-") as temp:
        root = Path(temp) / "web"
        rows = generate_sample_web(root)
        with LocalWeb(root) as web:
            url_list = write_url_list(rows, web, Path(temp) / "sample-urls.parquet")
            print(f"curate demo: serving {len(rows)} sample rows from {web.base_url}")
            try:
                job_recipe = load_job_recipe(recipe or DEFAULT_RECIPE, overrides, allow_private_network=True)
                result = run_job(job_recipe, [str(url_list)], output, extra_args, overwrite=True, progress=True)
            except JobError as err:
                print(f"curate: error: {err}", file=sys.stderr)
                return 2
            print_summary(result)
            return 0
