"""Generate the small offline "web" that the demo curates.

`generate_sample_web(root)` paints a few hundred synthetic pictures (sky
scenes, stripes, checkerboards, textures, dots, gradients, blocks) into
`root`, in the formats found on real sites, and returns the input rows that
point at them.  About three rows in four are good; the rest are the faults a
web crawl really meets (dead links, server errors, duplicates, tiny icons,
HTML served as .jpg, cut-off files, useless alt text), so every stage of the
pipeline has something to do.  Each row's `row_note` says what was planted,
which makes the demo output explainable.

Everything is drawn from one seeded numpy generator, so a seed always gives
the same rows and the same file bytes.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CAPTIONS_FILE = "data/sample_captions.jsonl"
ENGLISH_SHARE = 0.8  # the rest of the good captions come from the other languages

GOOD = "good"
BROKEN_LINK = "broken_link"
SERVER_ERROR = "server_error"
TRUNCATED_TRANSFER = "truncated_transfer"
DUPLICATE = "duplicate_of"  # row_note is "duplicate_of:<path of the earlier row>"
NEAR_DUPLICATE = "near_duplicate_of"
TINY = "tiny"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
BAD_CAPTION = "bad_caption"  # row_note is "bad_caption:<why>"
OPTED_OUT = "opted_out"  # row_note is "opted_out:<signal>"

# The sample site's robots.txt: everything under /private/ is off limits.
_ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
# Opt-out signals, one per opted-out row in turn: (signal, path template).
_OPTOUT_SIGNALS = (
    ("robots_txt", "private/photo-{n:04d}.jpg"),
    ("x_robots_tag", "/_fault/headers?X-Robots-Tag=noai&id={n}"),
    ("tdm_reservation", "/_fault/headers?tdm-reservation=1&id={n}"),
)

_FILENAME_CAPTIONS = (
    "IMG_2041.JPG",
    "DSC00042.jpg",
    "IMG_20230514_184512.jpg",
    "PXL_20220712_093015123.jpg",
    "DSCN1234.JPG",
    "screenshot-2023-04-01.png",
)
_PLACEHOLDER_CAPTIONS = ("image", "untitled", "photo", "Image", "placeholder", "thumbnail", "alt text")
_EMPTY_CAPTIONS = ("", "   ")
# Keyword stuffing, the usual reason an alt text runs to thousands of characters.
_SPAM_WORDS = (
    "cheap running shoes", "best price", "free shipping", "buy now", "running shoes sale",
    "discount sneakers", "mens running shoes", "womens running shoes", "shoes online",
    "top rated shoes", "lightweight trainers", "outlet", "clearance", "limited offer",
)

_SITES = ("www.example.com", "blog.example.org", "shop.example.net", "photos.example.com", "news.example.org")
_SECTIONS = ("gallery", "blog", "products", "travel", "recipes", "stories")
_FOLDERS = ("images", "uploads/2022/11", "uploads/2023/05", "media/photos", "assets/img", "content/pictures")
_LICENSES = ("CC-BY-4.0", "CC-BY-SA-4.0", "CC0-1.0", "all-rights-reserved", None)
_LICENSE_WEIGHTS = (0.3, 0.2, 0.15, 0.25, 0.1)

# Output formats of the good pictures: (format, weight).
_FORMATS = (("jpg", 0.55), ("png", 0.08), ("png_alpha", 0.08), ("png_palette", 0.12), ("webp", 0.17))
# Long side of a good picture: (smallest, largest, weight).  Mostly web-sized,
# a few large ones; PNGs are capped lower to keep the whole web small.
_LONG_SIDES = ((64, 200, 0.2), (200, 500, 0.45), (500, 900, 0.25), (900, 1200, 0.1))
_PNG_MAX_SIDE = 360
_ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)
_EXTREME_SIZES = ((2000, 200), (180, 1400), (1600, 240))
_TINY_SPECS = ((8, 8, "png"), (16, 16, "jpg"), (1, 1, "gif"), (16, 16, "png"), (12, 12, "webp"))

_HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Photo gallery - page {n}</title></head>
<body><h1>Photo gallery</h1><p>This page moved. <a href="/gallery/">Back to the gallery</a>.</p></body></html>
"""
_TEXT_FILE = "Upload failed: quota exceeded. Please contact the site administrator.\n"


@dataclass(frozen=True)
class _Quota:
    """How many rows of one planted kind a web of `n_rows` gets."""

    kind: str
    share: float
    minimum: int

    def count(self, n_rows: int) -> int:
        return max(self.minimum, round(self.share * n_rows))


# Planted faults.  Besides these, a few "good:*" rows hold valid images in
# encodings that trip up naive loaders (CMYK, EXIF rotation, grayscale,
# banners); the pipeline should keep them.
_QUOTAS = (
    _Quota(BROKEN_LINK, 0.04, 2),
    _Quota(SERVER_ERROR, 0.007, 1),
    _Quota(TRUNCATED_TRANSFER, 0.007, 1),
    _Quota(DUPLICATE, 0.025, 1),
    _Quota(NEAR_DUPLICATE, 0.025, 1),
    _Quota(TINY, 0.02, 2),
    _Quota(NOT_AN_IMAGE, 0.01, 2),
    _Quota(TRUNCATED, 0.007, 1),
    _Quota(OPTED_OUT, 0.01, len(_OPTOUT_SIGNALS)),
    _Quota(f"{BAD_CAPTION}:empty", 0.015, 1),
    _Quota(f"{BAD_CAPTION}:none", 0.015, 1),
    _Quota(f"{BAD_CAPTION}:filename", 0.02, 1),
    _Quota(f"{BAD_CAPTION}:placeholder", 0.02, 1),
    _Quota(f"{BAD_CAPTION}:too_long", 0.0, 1),
)
_N_UNUSUAL_GOOD = 3 + len(_EXTREME_SIZES)  # rows made by _WebWriter.unusual_good_rows
_MIN_GOOD_ROWS = 10


def generate_sample_web(root: Path, n_rows: int = 300, seed: int = 0) -> list[dict]:
    """Write images (and a few non-image files) under `root` and return the input rows, in order:
    each row {"path": "<relative path under root, or a /_fault/... route>", "caption": str | None, plus a few extra columns
    that the pipeline carries through, e.g. "source_page", "license", "row_note"}. Deterministic for a seed: same bytes, same rows."""
    planted = [(quota.kind, quota.count(n_rows)) for quota in _QUOTAS]
    n_good = n_rows - _N_UNUSUAL_GOOD - sum(count for _, count in planted)
    if n_good < _MIN_GOOD_ROWS:
        smallest = n_rows - n_good + _MIN_GOOD_ROWS
        raise ValueError(f"n_rows={n_rows} is too small for a sample web: need at least {smallest}")
    web = _WebWriter(Path(root), np.random.default_rng(seed))
    good_rows = [web.good_row() for _ in range(n_good)]
    special_rows = web.unusual_good_rows()
    originals = _pick_originals(web.rng, good_rows, planted)
    for kind, count in planted:
        special_rows += [web.planted_row(kind, index, originals) for index in range(count)]
    (Path(root) / "robots.txt").write_text(_ROBOTS_TXT)
    return _interleave(web.rng, good_rows + special_rows)


# --- row order ---------------------------------------------------------------


def _pick_originals(
    rng: np.random.Generator, good_rows: list[dict], planted: list[tuple[str, int]]
) -> dict[str, list[dict]]:
    """Distinct good rows to copy: JPEGs for near-duplicates (re-encoded), any for exact ones."""
    wanted = dict(planted)
    jpegs = [row for row in good_rows if row["path"].endswith(".jpg")]
    near = [jpegs[i] for i in rng.choice(len(jpegs), size=wanted[NEAR_DUPLICATE], replace=False)]
    taken = {row["path"] for row in near}
    others = [row for row in good_rows if row["path"] not in taken]
    exact = [others[i] for i in rng.choice(len(others), size=wanted[DUPLICATE], replace=False)]
    return {NEAR_DUPLICATE: near, DUPLICATE: exact}


def _interleave(rng: np.random.Generator, rows: list[dict]) -> list[dict]:
    """Shuffle the rows, then put every copy after the row it copies, as a crawl would meet them."""
    order = [rows[i] for i in rng.permutation(len(rows))]
    position = {row["path"]: index for index, row in enumerate(order)}
    for index in range(len(order)):
        row = order[index]
        copied = _copied_path(row["row_note"])
        if copied is not None and position[copied] > index:
            other = position[copied]
            order[index], order[other] = order[other], order[index]
            position[copied], position[row["path"]] = index, other
    return order


def _copied_path(row_note: str) -> str | None:
    kind, _, path = row_note.partition(":")
    return path if kind in (DUPLICATE, NEAR_DUPLICATE) else None


# --- captions ----------------------------------------------------------------


class _CaptionDeck:
    """Deals the bundled alt texts: mostly English, each pool shuffled and dealt round-robin."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        captions = _bundled_captions()
        english = [c for c in captions if c["lang"] == "en"]
        other = [c for c in captions if c["lang"] != "en"]
        self._pools = [[pool[i] for i in rng.permutation(len(pool))] for pool in (english, other)]
        self._dealt = [0, 0]

    def deal(self) -> tuple[str, str]:
        """(caption, language)."""
        pool = 0 if self.rng.random() < ENGLISH_SHARE else 1
        entry = self._pools[pool][self._dealt[pool] % len(self._pools[pool])]
        self._dealt[pool] += 1
        return entry["caption"], entry["lang"]


def _bundled_captions() -> list[dict]:
    text = resources.files("pipeline.demo").joinpath(CAPTIONS_FILE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _long_caption(rng: np.random.Generator) -> str:
    words = [_SPAM_WORDS[i] for i in rng.integers(0, len(_SPAM_WORDS), size=200)]
    return ", ".join(words)


# --- writing the web -----------------------------------------------------------


class _WebWriter:
    """Writes files under `root` and builds the rows that point at them."""

    def __init__(self, root: Path, rng: np.random.Generator):
        self.root = root
        self.rng = rng
        self.captions = _CaptionDeck(rng)
        self._serial = 0

    # --- rows ---

    def good_row(self) -> dict:
        scene = _SCENE_NAMES[self.rng.integers(len(_SCENE_NAMES))]
        fmt = _FORMATS[self._weighted([w for _, w in _FORMATS])][0]
        width, height = self._pick_size(_PNG_MAX_SIDE if fmt.startswith("png") else None)
        picture = _SCENES[scene](self.rng, width, height)
        data, ext = _encode(self.rng, picture, fmt)
        return self._row_with_caption(self._write(scene, ext, data), GOOD)

    def unusual_good_rows(self) -> list[dict]:
        """Valid pictures in encodings that trip up naive loaders (`_N_UNUSUAL_GOOD` of them)."""
        encoded = [
            ("good:cmyk", _jpeg(_paint_sky(self.rng, 640, 427).convert("CMYK"), quality=88)),
            ("good:exif_orientation", _exif_rotated_jpeg(_paint_sky(self.rng, 480, 640))),
            ("good:grayscale", _jpeg(_paint_texture(self.rng, 500, 500).convert("L"), quality=85)),
        ]
        for index, (width, height) in enumerate(_EXTREME_SIZES):
            banner = (_paint_stripes if index % 2 else _paint_gradient)(self.rng, width, height)
            encoded.append(("good:extreme_aspect", _jpeg(banner, quality=85)))
        return [self._row_with_caption(self._write("photo", "jpg", data), kind) for kind, data in encoded]

    def planted_row(self, kind: str, index: int, originals: dict[str, list[dict]]) -> dict:
        """One row of a planted kind; `index` counts rows of that kind (it varies their details)."""
        if kind in originals:
            return self._copy_row(kind, originals[kind][index])
        if kind.startswith(BAD_CAPTION):
            return self._bad_caption_row(kind, index)
        return self._PLANTERS[kind](self, index)

    def _copy_row(self, kind: str, original: dict) -> dict:
        """The original's bytes at a new path (or, for a near-duplicate, re-encoded), with another caption."""
        data = (self.root / original["path"]).read_bytes()
        ext = original["path"].rsplit(".", 1)[1]
        if kind == NEAR_DUPLICATE:
            with Image.open(io.BytesIO(data)) as picture:
                data, ext = _jpeg(picture, quality=int(self.rng.integers(35, 55))), "jpg"
        path = self._write(Path(original["path"]).stem.rsplit("-", 1)[0], ext, data)
        caption, lang = self.captions.deal()
        while caption == original["caption"]:
            caption, lang = self.captions.deal()
        return self._row(path, caption, lang, f"{kind}:{original['path']}")

    def _bad_caption_row(self, kind: str, index: int) -> dict:
        """A good picture whose alt text says nothing about it."""
        why = kind.partition(":")[2]
        scene = _SCENE_NAMES[index % len(_SCENE_NAMES)]
        path = self._write(scene, "jpg", _jpeg(_SCENES[scene](self.rng, *self._pick_size(None)), quality=80))
        if why == "too_long":
            return self._row(path, _long_caption(self.rng), "en", kind)
        choices = {
            "empty": _EMPTY_CAPTIONS,
            "none": (None,),
            "filename": _FILENAME_CAPTIONS,
            "placeholder": _PLACEHOLDER_CAPTIONS,
        }[why]
        return self._row(path, choices[index % len(choices)], None, kind)

    def _broken_link_row(self, index: int) -> dict:
        # Most dead links are files that are gone; some servers say so explicitly.
        path = f"/_fault/status/404?id={self._next_serial()}" if index % 4 == 3 else self._path("photo", "jpg")
        return self._row_with_caption(path, BROKEN_LINK)

    def _server_error_row(self, index: int) -> dict:
        return self._row_with_caption(f"/_fault/status/500?id={self._next_serial()}", SERVER_ERROR)

    def _truncated_transfer_row(self, index: int) -> dict:
        return self._row_with_caption(f"/_fault/truncated?id={self._next_serial()}", TRUNCATED_TRANSFER)

    def _tiny_row(self, index: int) -> dict:
        width, height, ext = _TINY_SPECS[index % len(_TINY_SPECS)]
        picture = _paint_dots(self.rng, width, height)
        data, _ = _encode(self.rng, picture, ext)
        return self._row_with_caption(self._write("icon", ext, data), TINY)

    def _not_an_image_row(self, index: int) -> dict:
        if index % 2 == 0:
            path = self._write("gallery", "html", _HTML_PAGE.format(n=index + 1).encode())
        else:  # an error message saved under an image's name
            path = self._write("photo", "jpg", _TEXT_FILE.encode())
        return self._row_with_caption(path, NOT_AN_IMAGE)

    def _truncated_row(self, index: int) -> dict:
        data = _jpeg(_paint_texture(self.rng, 400, 300), quality=85)
        return self._row_with_caption(self._write("photo", "jpg", data[: len(data) * 3 // 5]), TRUNCATED)

    def _opted_out_row(self, index: int) -> dict:
        """A picture whose site says no: robots.txt, an X-Robots-Tag or a TDMRep header."""
        signal, template = _OPTOUT_SIGNALS[index % len(_OPTOUT_SIGNALS)]
        path = template.format(n=self._next_serial())
        if not path.startswith("/"):
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_jpeg(_paint_sky(self.rng, 320, 240), quality=85))
        return self._row_with_caption(path, f"{OPTED_OUT}:{signal}")

    _PLANTERS: dict[str, Callable[["_WebWriter", int], dict]] = {
        BROKEN_LINK: _broken_link_row,
        SERVER_ERROR: _server_error_row,
        TRUNCATED_TRANSFER: _truncated_transfer_row,
        TINY: _tiny_row,
        NOT_AN_IMAGE: _not_an_image_row,
        TRUNCATED: _truncated_row,
        OPTED_OUT: _opted_out_row,
    }

    # --- helpers ---

    def _row_with_caption(self, path: str, row_note: str) -> dict:
        caption, lang = self.captions.deal()
        return self._row(path, caption, lang, row_note)

    def _row(self, path: str, caption: str | None, page_lang: str | None, row_note: str) -> dict:
        site = _SITES[self.rng.integers(len(_SITES))]
        section = _SECTIONS[self.rng.integers(len(_SECTIONS))]
        lang_prefix = f"/{page_lang}" if page_lang not in (None, "en") else ""
        return {
            "path": path,
            "caption": caption,
            "source_page": f"https://{site}{lang_prefix}/{section}/{self._serial:04d}.html",
            "license": _LICENSES[self._weighted(_LICENSE_WEIGHTS)],
            "page_lang": page_lang,
            "row_note": row_note,
        }

    def _weighted(self, weights) -> int:
        return int(self.rng.choice(len(weights), p=np.asarray(weights) / sum(weights)))

    def _pick_size(self, max_side: int | None) -> tuple[int, int]:
        low, high, _ = _LONG_SIDES[self._weighted([w for *_, w in _LONG_SIDES])]
        long_side = int(self.rng.integers(low, high + 1))
        if max_side is not None:
            long_side = min(long_side, max_side)
        aspect = _ASPECTS[self.rng.integers(len(_ASPECTS))]
        short_side = max(64, round(long_side / max(aspect, 1 / aspect)))
        return (long_side, short_side) if aspect >= 1 else (short_side, long_side)

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _path(self, stem: str, ext: str) -> str:
        folder = _FOLDERS[self.rng.integers(len(_FOLDERS))]
        return f"{folder}/{stem}-{self._next_serial():04d}.{ext}"

    def _write(self, stem: str, ext: str, data: bytes) -> str:
        path = self._path(stem, ext)
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return path


# --- encoding --------------------------------------------------------------------


def _encode(rng: np.random.Generator, picture: Image.Image, fmt: str) -> tuple[bytes, str]:
    """(bytes, file extension) of `picture` in one of the `_FORMATS` (or gif)."""
    out = io.BytesIO()
    if fmt == "jpg":
        return _jpeg(picture, quality=int(rng.integers(60, 96))), "jpg"
    if fmt == "webp":
        picture.save(out, format="WEBP", quality=int(rng.integers(70, 91)), method=2)  # method: speed over size
        return out.getvalue(), "webp"
    if fmt == "gif":
        picture.convert("P").save(out, format="GIF")
        return out.getvalue(), "gif"
    if fmt == "png_alpha":
        picture = _with_soft_alpha(picture)
    elif fmt == "png_palette":
        picture = picture.quantize(colors=int(rng.integers(16, 129)), method=Image.Quantize.FASTOCTREE)
    picture.save(out, format="PNG")
    return out.getvalue(), "png"


def _jpeg(picture: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """A JPEG whose pixels are stored sideways with EXIF orientation 6, as phone cameras write them."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
    out = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(out, format="JPEG", quality=85, exif=exif)
    return out.getvalue()


def _with_soft_alpha(picture: Image.Image) -> Image.Image:
    """A cut-out look: opaque in the middle, fading to transparent at the edges."""
    width, height = picture.size
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot((x - width / 2) / (width / 2), (y - height / 2) / (height / 2))
    alpha = np.clip((1.2 - distance) * 400, 0, 255).astype(np.uint8)
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


# --- painting ----------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _vertical_gradient(width: int, height: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    column = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
    return np.broadcast_to(column, (height, width, 3)).astype(np.uint8)


def _paint_sky(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Sky fading to the horizon, a sun, and rolling ground."""
    horizon = int(height * rng.uniform(0.5, 0.75))
    sky_top = (int(rng.integers(20, 90)), int(rng.integers(60, 140)), int(rng.integers(150, 230)))
    sky_low = (int(rng.integers(200, 256)), int(rng.integers(150, 220)), int(rng.integers(120, 200)))
    picture = Image.fromarray(_vertical_gradient(width, height, sky_top, sky_low))
    draw = ImageDraw.Draw(picture)
    radius = max(2, int(min(width, height) * rng.uniform(0.05, 0.12)))
    sun_x, sun_y = int(rng.integers(radius, max(radius + 1, width - radius))), int(horizon * rng.uniform(0.2, 0.7))
    draw.ellipse((sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius), fill=(255, 230, 120))
    ground = (int(rng.integers(40, 110)), int(rng.integers(90, 160)), int(rng.integers(30, 80)))
    xs = np.linspace(0, width, 12)
    ridge = horizon + (rng.random(12) - 0.5) * height * 0.1
    draw.polygon([(0, height)] + [(float(x), float(y)) for x, y in zip(xs, ridge)] + [(width, height)], fill=ground)
    return picture


def _paint_stripes(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    palette = np.array([_colour(rng) for _ in range(int(rng.integers(2, 6)))], dtype=np.uint8)
    angle = rng.uniform(0, np.pi)
    band = rng.uniform(6, 40)
    y, x = np.mgrid[0:height, 0:width]
    index = ((x * np.cos(angle) + y * np.sin(angle)) // band).astype(int) % len(palette)
    return _soften(Image.fromarray(palette[index]))


def _paint_checks(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    palette = np.array([_colour(rng), _colour(rng)], dtype=np.uint8)
    cell = int(rng.integers(8, 64))
    y, x = np.mgrid[0:height, 0:width]
    return _soften(Image.fromarray(palette[(x // cell + y // cell) % 2]))


def _soften(picture: Image.Image) -> Image.Image:
    """Blur hard pixel edges a little, as a camera would; it also keeps the JPEGs small."""
    return picture.filter(ImageFilter.BoxBlur(1))


def _paint_texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth coloured noise (like clouds, marble or foliage)."""
    coarse = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    tint = np.asarray(_colour(rng), float) / 255
    tinted = (coarse * (0.4 + 0.6 * tint)).astype(np.uint8)
    return Image.fromarray(tinted).resize((width, height), Image.Resampling.BICUBIC)


def _paint_dots(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    picture = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 15))):
        radius = max(1, int(min(width, height) * rng.uniform(0.05, 0.25)))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_colour(rng))
    return picture


def _paint_gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Bilinear blend of four corner colours."""
    corners = np.array([_colour(rng) for _ in range(4)], dtype=float).reshape(2, 2, 3)
    ty = np.linspace(0, 1, height)[:, None, None]
    tx = np.linspace(0, 1, width)[None, :, None]
    top = (1 - tx) * corners[0, 0] + tx * corners[0, 1]
    bottom = (1 - tx) * corners[1, 0] + tx * corners[1, 1]
    return Image.fromarray(((1 - ty) * top + ty * bottom).astype(np.uint8))


def _paint_blocks(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Overlapping rectangles, like a poster or a flat-design illustration."""
    picture = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 10))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
        draw.rectangle((x0, y0, x1, y1), fill=_colour(rng), outline=(20, 20, 20), width=max(1, width // 150))
    return picture


_SCENES: dict[str, Callable[[np.random.Generator, int, int], Image.Image]] = {
    "sky": _paint_sky,
    "stripes": _paint_stripes,
    "checks": _paint_checks,
    "texture": _paint_texture,
    "dots": _paint_dots,
    "gradient": _paint_gradient,
    "blocks": _paint_blocks,
}
_SCENE_NAMES = tuple(_SCENES)
