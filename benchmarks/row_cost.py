"""CPU per row of a download thread's work, one thread, no Beam: decode floor, fetch, and the whole row.

    .venv/bin/python benchmarks/row_cost.py --urls WORK/urls-8000.parquet --rows 1000

`--urls` is a URL list served on loopback (throughput.py's: run it with
`--work WORK` and start WORK/nginx/nginx.conf's nginx, or any server of the
same files).  Prints CPU ms per row for:

* floor: `process_image` (decode, resize, encode) on bodies already in memory;
* fetch: `Downloader.fetch` alone (urllib3, checks, body read);
* row: `fetch_and_resize`, what a download thread does for each row;
  with `--recipe R.yaml`, with the download-thread hooks of R's stages
  (opt-out checks, image hashes), so a chain's per-row share shows.

`--profile` adds a cProfile of the chosen part.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import pyarrow.parquet as pq

from pipeline.core.records import Sample
from pipeline.engine.download_images import DownloadHooks, fetch_and_resize
from pipeline.engine.recipe import load_recipe
from pipeline.media.download import Downloader, DownloadParams
from pipeline.media.imaging import ResizeParams, process_image

BODIES_IN_MEMORY = 200  # the floor cycles over these


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", required=True)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--part", choices=["floor", "fetch", "row"], action="append")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--recipe", help="run the row part with this recipe's download-thread hooks")
    args = parser.parse_args()
    rows = pq.read_table(args.urls).slice(0, args.rows).to_pylist()
    downloader = Downloader(DownloadParams(retries=0, allow_private_network=True), retry_throttled=False)
    resize = ResizeParams(image_size=256, resize_mode="border", encode_format="jpg", encode_quality=90)
    hooks = DownloadHooks()
    if args.recipe:  # set up as the download step sets them up: opt-out lists and the like load here
        recipe = load_recipe(args.recipe)
        hooks = DownloadHooks.of(recipe.build_stages())
        for stage in hooks.stages():
            stage.setup(recipe.stage_context())
    bodies = [downloader.fetch(row["url"]).data for row in rows[:BODIES_IN_MEMORY]]

    def floor():
        for index in range(len(rows)):
            process_image(bodies[index % len(bodies)], resize)

    def fetch():
        for row in rows:
            downloader.fetch(row["url"])

    def row():
        for index, values in enumerate(rows):
            sample = Sample(key=str(index), shard_id=0, url=values["url"], caption=values.get("caption"))
            fetch_and_resize(downloader, resize, hooks, sample)

    for name in args.part or ["floor", "fetch", "row"]:
        part = {"floor": floor, "fetch": fetch, "row": row}[name]
        cpu, wall = time.process_time(), time.monotonic()
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(part)
        else:
            part()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        print(f"{name:6s} {1000 * cpu / len(rows):7.3f} CPU ms/row  {1000 * wall / len(rows):7.3f} wall ms/row")
        if args.profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
