"""Throughput, side by side on one machine: img2dataset vs `curate run`, and the decode floor.

One run of this script:

1. generates `--count` images of web-like size and variety (photo-like JPEGs
   640x480..1024x768 in both orientations, flat graphics, some PNG (a few with
   alpha), some greyscale, some 1600-2048 px) with captions, cached in `--work`;
2. serves them with nginx (Debian's `nginx-light`) on `--hosts` loopback
   addresses (127.0.0.1, 127.0.0.2, ...; the rows go round-robin over them, as a
   web list spreads over many sites: on one host curate's per-host politeness,
   8 connections and 20 requests/s per worker, would be the limit, 40 rows/s
   with 2 workers, not the CPU), one free port,
   as a non-daemon child process with a generated config and no access log,
   and checks that it is not the bottleneck (a concurrent fetch of every URL,
   and nginx's own CPU time during each run);
3. times, interleaved round by round (`--runs` rounds, median reported):
   * img2dataset (its CLI, webdataset output, the same image size, resize mode,
     quality, processes and threads);
   * `curate run` with download + resize + write only (`stages: []`);
   * `curate run` with the basic CPU filter chain (caption, language,
     resolution, dedup_exact, dedup_image);
   * both tools over 10 rows: the start-up cost, so the steady-state rate
     (count - 10) / (t(count) - t(10)) can be told apart from it;
   * the floor: the same files decoded, resized and encoded by PIL (curate's
     `pipeline.media.imaging`) in `--processes` processes, no network, no pipeline,
     with and without JPEG draft decoding.

Times are wall-clock of the whole command, start-up included.  The machine may
be shared: the 1-minute load average is recorded with every run, ratios are
also given per round (both contenders measured back to back), and CPU seconds
per sample (user + system of the command and its reaped children; nginx's
own share is shown apart) are shown as a figure that load distorts less.

    apt-get install -y nginx-light      # once
    .venv/bin/python benchmarks/throughput.py --count 2000 --runs 3

`--tree DIR` (repeatable) runs curate from other source trees too, interleaved
with the rest, e.g. a copy with a change applied: before/after in one run.

img2dataset runs as its users install it: alone in its own virtualenv
(`--img2dataset-venv`, created with `pip install img2dataset==VERSION` and
nothing else the first time), never inside curate's environment, where torch,
Beam and the gcp extra are importable and double its start-up.
`NO_ALBUMENTATIONS_UPDATE=1` is set for it, so it does not ask PyPI for
albumentations' latest version.

`--curate-python PY` runs curate with another interpreter, e.g. that of a
virtualenv holding `pip install -c constraints.txt .` without extras (what a
user installs for local runs).  The development environment's extras
(`gcp`, `train`) make Beam import the Google Cloud clients and pandas at
start-up.  The source tree still comes first on `sys.path` (the working
directory), so `--tree` works with it.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 3  # bump when the generated images change, to invalidate the cache
STARTUP_ROWS = 10
FILTER_STAGES = [
    {"caption": {"min_chars": 5, "min_words": 2}},
    "language",
    {"resolution": {"min_side": 32, "max_aspect_ratio": 6.0}},
    "dedup_exact",
    "dedup_image",
]

# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageSpec:
    name: str
    kind: str  # photo | graphic | grey
    width: int
    height: int
    format: str  # JPEG | PNG
    quality: int
    alpha: bool
    seed: int


_PHOTO_SIZES = ((640, 480), (800, 600), (1024, 768), (480, 640), (600, 800), (768, 1024), (960, 720), (720, 960))
_LARGE_SIZES = ((1600, 1200), (2048, 1536), (1200, 1600), (1920, 1080))


def image_specs(count: int, seed: int) -> list[ImageSpec]:
    """The mix: 70% photo JPEG, 10% graphic JPEG, 8% PNG (a quarter with alpha),
    4% greyscale JPEG, 8% large photo JPEG."""
    rng = random.Random(seed)
    specs = []
    for index in range(count):
        roll = rng.random()
        kind, fmt, alpha, sizes = "photo", "JPEG", False, _PHOTO_SIZES
        if roll < 0.10:
            kind = "graphic"
        elif roll < 0.18:
            kind, fmt, alpha = "graphic", "PNG", rng.random() < 0.25
        elif roll < 0.22:
            kind = "grey"
        elif roll < 0.30:
            sizes = _LARGE_SIZES
        (width, height) = rng.choice(sizes)
        extension = "png" if fmt == "PNG" else "jpg"
        specs.append(ImageSpec(f"{index:06d}.{extension}", kind, width, height, fmt, rng.randint(75, 95), alpha,
                               rng.randrange(2**32)))
    return specs


def _smooth_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-frequency colour structure: a few random sinusoids per channel."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        value = np.zeros((height, width), np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(-0.05, 0.05, 2)
            value += rng.uniform(20, 50) * np.sin(fx * x + fy * y + rng.uniform(0, 6.3))
        channels.append(value + rng.uniform(60, 190))
    return np.stack(channels, -1)


def _draw_shapes(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        x0, y0 = rng.integers(0, image.width), rng.integers(0, image.height)
        x1, y1 = x0 + rng.integers(10, image.width // 2), y0 + rng.integers(10, image.height // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))


def render(spec: ImageSpec) -> bytes:
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "graphic":
        image = Image.new("RGB", (spec.width, spec.height), tuple(int(c) for c in rng.integers(0, 256, 3)))
        _draw_shapes(image, rng, int(rng.integers(5, 25)))
        # Flat colours compress well in PNG; a scanned or re-saved graphic in JPEG carries some noise.
        noise = 1.5 if spec.format == "JPEG" else 0.0
        pixels = np.asarray(image, np.float32) + rng.normal(0, noise, (spec.height, spec.width, 3))
    else:
        image = Image.fromarray(np.clip(_smooth_field(rng, spec.width, spec.height), 0, 255).astype(np.uint8))
        _draw_shapes(image, rng, int(rng.integers(3, 12)))
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))  # soft edges, like optics
        # Sensor-like noise: what makes photos expensive to compress and decode.
        pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(3, 9), (spec.height, spec.width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if spec.kind == "grey":
        image = image.convert("L")
    if spec.alpha:
        alpha = Image.new("L", image.size, 255)
        ImageDraw.Draw(alpha).ellipse((0, 0, image.width, image.height), fill=128)
        image.putalpha(alpha)
    out = io.BytesIO()
    if spec.format == "PNG":
        image.save(out, "PNG", compress_level=6)
    else:
        image.save(out, "JPEG", quality=spec.quality)
    return out.getvalue()


def _render_to(args: tuple[ImageSpec, str]) -> int:
    spec, root = args
    data = render(spec)
    Path(root, spec.name).write_bytes(data)
    return len(data)


def generate_web(root: Path, count: int, seed: int, processes: int) -> list[ImageSpec]:
    """Writes the images to `root` unless a previous run left the same ones there."""
    specs = image_specs(count, seed)
    stamp = root / "generated.json"
    wanted = {"version": GENERATOR_VERSION, "count": count, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return specs
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"generating {count} images in {root} ...", flush=True)
    with ProcessPoolExecutor(processes) as pool:
        sizes = list(pool.map(_render_to, [(spec, str(root)) for spec in specs], chunksize=16))
    stamp.write_text(json.dumps(wanted))
    print(f"  {sum(sizes) / 1e6:.0f} MB, mean {sum(sizes) / len(sizes) / 1024:.0f} KiB", flush=True)
    return specs


_SUBJECTS = ("a red house", "two dogs", "an old bicycle", "a mountain lake", "a bowl of soup", "the city skyline",
             "a wooden table", "children playing", "a vintage car", "a field of sunflowers", "a black cat",
             "a modern kitchen", "a sailing boat", "fresh bread", "a snowy forest", "a concert crowd")
_SETTINGS = ("at sunset", "in the rain", "on a sunny day", "from above", "near the river", "in winter",
             "with a blue sky", "at night", "in a small village", "on the beach")
_OTHER_LANGUAGES = ("une maison rouge au bord de la rivière", "ein alter Fahrradladen in der Stadt",
                    "un perro jugando en la playa", "una tazza di caffè sul tavolo", "ein Boot auf dem See im Winter")


def caption_for(index: int) -> str:
    rng = random.Random(index)
    if rng.random() < 0.1:
        return rng.choice(_OTHER_LANGUAGES)
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_SETTINGS)}, photo {index}"


def write_url_list(path: Path, server: "Nginx", specs: list[ImageSpec]) -> None:
    rows = [{"url": server.url(i, spec.name), "caption": caption_for(i)} for i, spec in enumerate(specs)]
    pq.write_table(pa.Table.from_pylist(rows), path)


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_host(index: int) -> str:
    """The index-th loopback address: 127.0.0.1, 127.0.0.2, ... (127.0.0.0/8 answers locally on Linux)."""
    return f"127.0.{index // 254}.{index % 254 + 1}"


def nginx_config(root: Path, prefix: Path, port: int, workers: int, hosts: int = 1) -> str:
    # Running as root, nginx's workers would switch to `nobody`, who may not
    # read a private temporary folder; as anyone else the directive is moot.
    user = "user root;" if os.geteuid() == 0 else ""
    listens = "\n        ".join(f"listen {loopback_host(i)}:{port} backlog=4096;" for i in range(hosts))
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120;
    keepalive_requests 1000000;
    open_file_cache max=20000 inactive=120s;
    client_body_temp_path {prefix}/body;
    types {{ image/jpeg jpg; image/png png; }}
    default_type application/octet-stream;
    server {{
        {listens}
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """nginx serving `root` on 127.0.0.1 as a child process; `cpu_seconds()` of master + workers."""

    def __init__(self, root: Path, prefix: Path, workers: int, hosts: int = 1):
        self.root, self.prefix, self.workers, self.hosts = root, prefix, workers, hosts
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def url(self, index: int, name: str) -> str:
        """Row `index`'s URL: the rows go round-robin over the hosts."""
        return f"http://{loopback_host(index % self.hosts)}:{self.port}/{name}"

    def __enter__(self):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            sys.exit("nginx not found: apt-get update && apt-get install -y nginx-light")
        self.prefix.mkdir(parents=True, exist_ok=True)
        config = self.prefix / "nginx.conf"
        config.write_text(nginx_config(self.root, self.prefix, self.port, self.workers, self.hosts))
        self._process = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(config), "-e", str(self.prefix / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                sys.exit(f"nginx exited: {self._process.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        sys.exit("nginx did not start listening within 10 s")

    def __exit__(self, *exc) -> None:
        self._process.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def cpu_seconds(self) -> float:
        pids = [self._process.pid] + _children(self._process.pid)
        return sum(_process_cpu_seconds(pid) for pid in pids)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _fetch_share(urls: list[str], threads: int) -> int:
    import urllib3

    pool = urllib3.PoolManager(maxsize=threads)

    def get(url: str) -> int:
        response = pool.request("GET", url)
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        return len(response.data)

    with ThreadPoolExecutor(threads) as executor:
        return sum(executor.map(get, urls))


def fetch_rate(server: Nginx, urls: list[str], processes: int, threads: int) -> dict[str, float]:
    """Every URL fetched by `processes` x `threads` plain urllib3 clients: what nginx sustains at least."""
    cpu_before = server.cpu_seconds()
    start = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        total_bytes = sum(pool.map(_fetch_share, [urls[k::processes] for k in range(processes)],
                                   [threads] * processes))
    seconds = time.perf_counter() - start
    nginx_cpu = server.cpu_seconds() - cpu_before
    return {"requests_per_s": len(urls) / seconds, "mb_per_s": total_bytes / seconds / 1e6,
            "nginx_cpu_ms_per_request": 1000 * nginx_cpu / len(urls)}


# ---------------------------------------------------------------- contenders


@dataclass
class Measurement:
    name: str
    round: int
    seconds: float
    samples: int  # images written (or processed, for the floor)
    rows: int  # rows the figure is about
    load: float  # 1-minute load average when the run started
    cpu_seconds: float  # user + system of the command and the children it reaped
    nginx_cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass
class Setup:
    work: Path
    count: int
    processes: int
    threads: int
    image_size: int
    resize_mode: str
    quality: int
    shard_size: int
    rows_per_task: int | None
    server: Nginx | None = None
    url_lists: dict[int, Path] = field(default_factory=dict)
    img2dataset: Path | None = None  # its command, in its own virtualenv
    curate_python: str = sys.executable  # the interpreter curate runs with


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_command(name: str, command: list[str], setup: Setup, rows: int, round_number: int,
                   log: Path, env: dict[str, str], count_output, cwd: Path = REPO) -> Measurement:
    load = os.getloadavg()[0]
    cpu_before, nginx_before = _children_cpu(), setup.server.cpu_seconds()
    start = time.perf_counter()
    with log.open("w") as handle:
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                check=False).returncode
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    if status != 0:
        sys.exit(f"{name} failed (exit {status}); see {log}")
    return Measurement(name, round_number, seconds, count_output(), rows, load, cpu,
                       setup.server.cpu_seconds() - nginx_before)


IMG2DATASET_VERSION = "1.47.0"


def img2dataset_venv(path: Path, version: str = IMG2DATASET_VERSION) -> Path:
    """img2dataset's command in a virtualenv of its own (created once): how its users run it."""
    command = path / "bin" / "img2dataset"
    stamp = path / ".installed"
    if command.exists() and stamp.exists() and stamp.read_text() == version:
        return command
    print(f"creating {path} with img2dataset=={version} alone (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", f"img2dataset=={version}"],
                   check=True)
    stamp.write_text(version)
    return command


def run_img2dataset(setup: Setup, rows: int, round_number: int, processes: int | None = None) -> Measurement:
    """img2dataset from its own virtualenv; `processes` instead of the benchmark's (its default is 1)."""
    out = setup.work / "out-img2dataset"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        str(setup.img2dataset),
        "--url_list", str(setup.url_lists[rows]), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption",
        "--output_format", "webdataset", "--output_folder", str(out),
        "--processes_count", str(processes or setup.processes), "--thread_count", str(setup.threads),
        "--distributor", "multiprocessing",
        "--number_sample_per_shard", str(setup.shard_size),
        "--image_size", str(setup.image_size), "--resize_mode", setup.resize_mode,
        "--encode_format", "jpg", "--encode_quality", str(setup.quality),
        "--timeout", "10", "--retries", "0", "--compute_hash", "sha256",
        # curate reads no EXIF beyond orientation: do not make img2dataset do more work than we do.
        "--extract_exif", "False",
        "--enable_wandb", "False",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}

    def written() -> int:
        return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))

    name = "img2dataset" if rows == setup.count else f"img2dataset, {rows} rows"
    if processes:
        name += f", {processes} process{'es' if processes > 1 else ''}"
    return _timed_command(name, command, setup, rows, round_number, setup.work / "img2dataset.log", env, written)


def write_recipe(path: Path, setup: Setup, stages: list) -> None:
    import yaml

    download = {"timeout": 10, "retries": 0, "threads": setup.threads}
    if setup.rows_per_task:
        download["rows_per_task"] = setup.rows_per_task
    recipe = {
        "name": path.stem,
        "download": download,
        "resize": {"image_size": setup.image_size, "resize_mode": setup.resize_mode,
                   "encode_format": "jpg", "encode_quality": setup.quality},
        "output": {"format": "webdataset", "samples_per_shard": setup.shard_size},
        "stages": stages,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


CURATE_DOWNLOAD, CURATE_FILTERS = "curate, download+resize+write", "curate, + CPU filter chain"


def curate_name(what: str, tree_label: str) -> str:
    return f"{what} [{tree_label}]" if tree_label else what


def source_trees(paths: list[Path]) -> dict[str, Path]:
    """`--tree` paths by label: their folder names when several are compared, "" for one (default: this tree)."""
    paths = [path.resolve() for path in paths] or [REPO]
    return {("" if len(paths) == 1 else path.name): path for path in paths}


def run_curate(setup: Setup, tree: Path, tree_label: str, stages: list, rows: int, round_number: int,
               defaults: bool = False) -> Measurement:
    """`curate run` from the source tree `tree` (its own pipeline/ and filters/); with `defaults`, without
    the worker options (curate picks: one process for small inputs, else one worker per core)."""
    kind = "filters" if stages else "download"
    recipe = setup.work / f"recipe-{kind}.yaml"
    write_recipe(recipe, setup, stages)
    out = setup.work / f"out-curate-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        setup.curate_python, "-m", "pipeline.cli", "run", "--recipe", str(recipe),
        "--input", str(setup.url_lists[rows]), "--output", str(out), "--allow-private-network",
    ]
    if not defaults:
        command += [f"--direct_num_workers={setup.processes}", "--direct_running_mode=multi_processing"]

    def written() -> int:
        return json.loads((out / "report" / "audit.json").read_text())["counts"]["kept"]

    what = CURATE_FILTERS if stages else CURATE_DOWNLOAD
    if rows != setup.count:
        what = f"curate, {rows} rows" + (", defaults" if defaults else "")
    # `python -m` from the tree: its packages come first on sys.path, in the workers too (same cwd).
    return _timed_command(curate_name(what, tree_label), command, setup, rows, round_number,
                          setup.work / f"curate-{kind}.log", dict(os.environ), written, cwd=tree)


def _process_files(paths: list[str], image_size: int, resize_mode: str, quality: int,
                   use_draft: bool) -> tuple[int, float, float, float]:
    from pipeline.media.imaging import ResizeParams, _process_image

    params = ResizeParams(image_size=image_size, resize_mode=resize_mode, encode_format="jpg", encode_quality=quality)
    blobs = [Path(p).read_bytes() for p in paths]
    cpu_start, start = time.process_time(), time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    for data in blobs:
        _process_image(data, params, use_draft=use_draft)
    return len(blobs), start, time.monotonic(), time.process_time() - cpu_start


def run_floor(setup: Setup, paths: list[str], use_draft: bool, pool: ProcessPoolExecutor,
              round_number: int) -> Measurement:
    load = os.getloadavg()[0]
    shares = [paths[k::setup.processes] for k in range(setup.processes)]
    futures = [pool.submit(_process_files, share, setup.image_size, setup.resize_mode, setup.quality, use_draft)
               for share in shares]
    results = [f.result() for f in futures]
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    name = f"PIL floor, {'draft' if use_draft else 'full'} decode"
    return Measurement(name, round_number, seconds, sum(r[0] for r in results), len(paths), load,
                       sum(r[3] for r in results))


# ---------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(measurements: list[Measurement], setup: Setup, fetch: dict[str, float], tree_labels: list[str]) -> dict:
    by_name: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_name.setdefault(m.name, []).append(m)
    rows = {}
    for name, runs in by_name.items():
        rows[name] = {
            "runs": len(runs),
            "median_seconds": _median([m.seconds for m in runs]),
            "median_rate": _median([m.rate for m in runs]),
            "rates": [round(m.rate, 1) for m in runs],
            "samples_written": sorted({m.samples for m in runs}),
            "cpu_ms_per_row": _median([1000 * m.cpu_seconds / m.rows for m in runs]),
            "nginx_cpu_share": _median([m.nginx_cpu_seconds / m.seconds for m in runs]),
            "load": [round(m.load, 2) for m in runs],
        }
    return {"rows": rows, "ratios": _ratios(by_name, setup, tree_labels), "fetch_check": fetch,
            "tree_pairs": tree_pairs(by_name, tree_labels)}


def tree_pairs(by_name: dict[str, list[Measurement]], tree_labels: list[str]) -> dict[str, dict]:
    """Each later tree against the first, contender by contender, round by round: a median of medians
    hides how often the change won, and this machine's rounds move by 10-20%."""
    pairs = {}
    if len(tree_labels) < 2:
        return pairs
    base_label, *others = tree_labels
    for label in others:
        for name in by_name:
            if not name.endswith(f" [{base_label}]"):
                continue
            other = name.removesuffix(f" [{base_label}]") + f" [{label}]"
            base_runs = {m.round: m.seconds for m in by_name[name]}
            differences = [m.seconds - base_runs[m.round] for m in by_name.get(other, []) if m.round in base_runs]
            if differences:
                pairs[f"{other} vs [{base_label}]"] = {
                    "rounds": len(differences),
                    "faster_rounds": sum(d < 0 for d in differences),
                    "median_difference_s": round(statistics.median(differences), 2),
                    "differences_s": [round(d, 2) for d in differences],
                }
    return pairs


def _paired(by_name: dict[str, list[Measurement]], top: str, bottom: str, of=lambda m: m.rate) -> float:
    """Median over rounds of top/bottom measured in the same round."""
    bottoms = {m.round: m for m in by_name.get(bottom, [])}
    return _median([of(m) / of(bottoms[m.round]) for m in by_name.get(top, []) if m.round in bottoms])


def _steady_rate(by_name, full: str, startup: str, setup: Setup) -> float:
    extra_rows = setup.count - STARTUP_ROWS
    return extra_rows / (_median([m.seconds for m in by_name.get(full, [])])
                         - _median([m.seconds for m in by_name.get(startup, [])]))


def _seconds(m: Measurement) -> float:
    return m.seconds


def _ratios(by_name: dict[str, list[Measurement]], setup: Setup, tree_labels: list[str]) -> dict[str, float]:
    theirs = "img2dataset"
    ratios = {}
    for label in tree_labels:
        ours = curate_name(CURATE_DOWNLOAD, label)
        suffix = f" [{label}]" if label else ""
        ratios.update({
            f"curate / img2dataset (target >= 1.5){suffix}": _paired(by_name, ours, theirs),
            f"curate / draft floor (target >= 0.8){suffix}": _paired(by_name, ours, "PIL floor, draft decode"),
            f"curate / full-decode floor{suffix}": _paired(by_name, ours, "PIL floor, full decode"),
            f"filter chain time / download-only time (target <= 1.10){suffix}": _paired(
                by_name, curate_name(CURATE_FILTERS, label), ours, _seconds),
            f"curate steady-state rows/s{suffix}": _steady_rate(
                by_name, ours, curate_name(f"curate, {STARTUP_ROWS} rows", label), setup),
            f"curate start-up s, {STARTUP_ROWS} rows, defaults (target <= 2.5){suffix}": _median(
                [m.seconds for m in by_name.get(curate_name(f"curate, {STARTUP_ROWS} rows, defaults", label), [])]),
        })
    ratios["img2dataset steady-state rows/s"] = _steady_rate(by_name, theirs, f"img2dataset, {STARTUP_ROWS} rows",
                                                              setup)
    ratios[f"img2dataset start-up s, {STARTUP_ROWS} rows, 1 process (its default)"] = _median(
        [m.seconds for m in by_name.get(f"img2dataset, {STARTUP_ROWS} rows, 1 process", [])])
    return ratios


def print_summary(summary: dict) -> None:
    print()
    print(f"{'':44s} {'median s':>9s} {'rows/s':>8s}  {'runs (rows/s)':26s} {'CPU ms/row':>10s} "
          f"{'nginx CPU':>9s}  {'written':>9s}  load")
    for name, row in summary["rows"].items():
        print(f"{name:44s} {row['median_seconds']:9.2f} {row['median_rate']:8.1f}  {row['rates']!s:26s} "
              f"{row['cpu_ms_per_row']:10.2f} {100 * row['nginx_cpu_share']:8.1f}%  "
              f"{row['samples_written']!s:>9s}  {row['load']}")
    print()
    for name, value in summary["ratios"].items():
        print(f"{name:58s} {value:7.2f}")
    if summary.get("tree_pairs"):
        print()
    for name, pair in summary.get("tree_pairs", {}).items():
        print(f"{name}: faster in {pair['faster_rounds']} of {pair['rounds']} rounds, median difference "
              f"{pair['median_difference_s']:+.2f} s {pair['differences_s']}")
    fetch = summary["fetch_check"]
    print(f"\nnginx check: {fetch['requests_per_s']:.0f} requests/s, {fetch['mb_per_s']:.0f} MB/s to plain "
          f"urllib3 clients; {fetch['nginx_cpu_ms_per_request']:.3f} ms nginx CPU per request")


def machine_description() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} CPUs ({cpu}), {memory_kb / 2**20:.0f} GiB RAM, Python {sys.version.split()[0]}"


# ---------------------------------------------------------------- main


def wanted_img2dataset(args) -> bool:
    return not args.only or "img2dataset" in args.only or "startup" in args.only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="images / URLs (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for every contender")
    parser.add_argument("--threads", type=int, default=16, help="download threads per process, both tools")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--resize-mode", default="border", choices=["keep_ratio", "center_crop", "border"])
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the output, both tools")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="rows per shard, both tools (default count / processes: one shard per process)")
    parser.add_argument("--rows-per-task", type=int, default=None, help="curate's download.rows_per_task "
                        "(default: the recipe default)")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--hosts", type=int, default=64, help="loopback addresses the rows are spread over (max 254*254)")
    parser.add_argument("--only", action="append", default=[],
                        choices=["img2dataset", "curate", "filters", "startup", "floor"],
                        help="run only these contenders (repeatable; default all)")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="source tree to run curate from (default: this one); repeat to compare trees, "
                        "interleaved, e.g. before and after a change")
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-throughput"),
                        help="images, URL lists, outputs and logs (images are cached here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--img2dataset-venv", type=Path, default=None,
                        help="virtualenv holding img2dataset alone (default WORK/img2dataset-venv, created "
                        f"with img2dataset=={IMG2DATASET_VERSION} on first use)")
    parser.add_argument("--curate-python", type=Path, default=None,
                        help="interpreter to run curate with (default: this one), e.g. VENV/bin/python of an "
                        "install without extras")
    args = parser.parse_args()

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    setup = Setup(work, args.count, args.processes, args.threads, args.image_size, args.resize_mode,
                  args.quality, args.shard_size or -(-args.count // args.processes), args.rows_per_task)
    if args.curate_python:
        setup.curate_python = str(args.curate_python.absolute())  # a venv's python is a symlink: keep its path
    if wanted_img2dataset(args):
        setup.img2dataset = img2dataset_venv((args.img2dataset_venv or work / "img2dataset-venv").resolve())
    specs = generate_web(work / "web", args.count, args.seed, args.processes)
    paths = [str(work / "web" / spec.name) for spec in specs]
    wanted = set(args.only) or {"img2dataset", "curate", "filters", "startup", "floor"}
    trees = source_trees(args.tree)
    print(machine_description())

    with Nginx(work / "web", work / "nginx", args.nginx_workers, args.hosts) as server:
        setup.server = server
        for rows in (args.count, STARTUP_ROWS):
            setup.url_lists[rows] = work / f"urls-{rows}.parquet"
            write_url_list(setup.url_lists[rows], server, specs[:rows])
        urllib.request.urlopen(f"{server.base_url}/{specs[0].name}", timeout=5).read()
        fetch = fetch_rate(server, [server.url(i, spec.name) for i, spec in enumerate(specs)], args.processes, args.threads)
        print(f"nginx on {server.hosts} loopback hosts, port {server.port}: {fetch['requests_per_s']:.0f} requests/s, {fetch['mb_per_s']:.0f} MB/s "
              f"to {args.processes}x{args.threads} urllib3 clients", flush=True)

        contenders = [lambda r: run_img2dataset(setup, args.count, r)] if "img2dataset" in wanted else []
        for label, tree in trees.items():
            for part, stages, rows in (("curate", [], args.count), ("filters", FILTER_STAGES, args.count),
                                       ("startup", [], STARTUP_ROWS)):
                if part in wanted:
                    contenders.append(functools.partial(run_curate, setup, tree, label, stages, rows))
            if "startup" in wanted:  # as a user's smoke test runs it: no worker options
                contenders.append(functools.partial(run_curate, setup, tree, label, [], STARTUP_ROWS,
                                                    defaults=True))
        if "startup" in wanted:
            contenders.append(lambda r: run_img2dataset(setup, STARTUP_ROWS, r))
            contenders.append(lambda r: run_img2dataset(setup, STARTUP_ROWS, r, processes=1))  # its default
        measurements: list[Measurement] = []
        with ProcessPoolExecutor(args.processes) as floor_pool:
            if "floor" in wanted:
                list(floor_pool.map(_process_files, [paths[:2]] * args.processes, [args.image_size] * args.processes,
                                    [args.resize_mode] * args.processes, [args.quality] * args.processes,
                                    [True] * args.processes))  # start the workers and import PIL before timing
                contenders.append(lambda r: run_floor(setup, paths, False, floor_pool, r))
                contenders.append(lambda r: run_floor(setup, paths, True, floor_pool, r))
            for round_number in range(args.runs):
                # Rotate the order so that no contender always follows the same one.
                shift = round_number % max(len(contenders), 1)
                for contender in contenders[shift:] + contenders[:shift]:
                    m = contender(round_number)
                    measurements.append(m)
                    print(f"round {round_number + 1}: {m.name:44s} {m.seconds:7.2f} s {m.rate:7.1f} rows/s "
                          f"({m.samples} written, load {m.load:.2f})", flush=True)

    summary = summarize(measurements, setup, fetch, list(trees))
    summary["machine"] = machine_description()
    summary["settings"] = {name: str(getattr(setup, name)) for name in (
        "count", "processes", "threads", "image_size", "resize_mode", "quality", "shard_size", "rows_per_task")}
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
