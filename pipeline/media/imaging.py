"""Decode, orient, resize and re-encode one downloaded image.

The resize semantics are img2dataset's (its `Resizer`, cv2 + albumentations),
so recipes carry over: same output sizes for every mode, same rounding, same
white padding for `border`, same alpha compositing onto white.  What differs is
how we get there, for speed:

* JPEGs that are going to be downscaled are decoded at a reduced DCT scale
  (`Image.draft`, 1/2, 1/4 or 1/8) that is still at least the target size,
  then resized with an antialiasing filter.  This roughly doubles throughput
  on typical web photos at ~42 dB PSNR against a full-size decode.
* `center_crop` resizes only the region that survives the crop (`resize(box=)`)
  instead of resizing the whole image and throwing most of it away.
* With `skip_reencode`, an image that needs no change is only decoded to
  validate it (at 1/8 scale for JPEG) and its original bytes are kept.

Choices worth knowing:

* Output is always RGB.  Transparent images (RGBA, LA, PA, palette or
  grey/RGB with a tRNS transparency) are composited onto white for every output
  format, as img2dataset does, so the pixels do not depend on `encode_format`.
* EXIF orientation is applied; widths and heights (original ones included) are
  reported as displayed, i.e. after orientation.  Colour profiles (ICC) are not
  applied, as in img2dataset.
* Animated GIF/WebP/PNG and multi-picture JPEG (MPO): the first frame is used.
* Only common raster formats are opened (`_OPEN_FORMATS`); notably not EPS,
  which Pillow would render with Ghostscript.
* No global Pillow state is changed.  Pillow's own bomb check still runs inside
  `Image.open`: above `Image.MAX_IMAGE_PIXELS` it warns, above twice that it
  raises; both are reported as `decompression_bomb`.  So `max_pixels` larger
  than 2 * Image.MAX_IMAGE_PIXELS (~179 Mpx) has no further effect unless the
  process raises that limit.  Likewise, truncated files are only rejected while
  `ImageFile.LOAD_TRUNCATED_IMAGES` is left at its default (False).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import ExifTags, Image

from pipeline.media.decode_budget import OverBudget, estimate_decode_bytes, shared_budget
from pipeline.media.image_integrity import container_shortfall, jpeg_shortfall
from pipeline.core.params import ParamError

WHITE = (255, 255, 255)

# Formats we are willing to decode.  Pillow would otherwise also try every
# plugin it has, some of which (EPS) shell out to external programs.
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PPM")
Image.init()
_OPEN_FORMATS = tuple(name for name in _WANTED_FORMATS if name in Image.OPEN)

# Pillow format name -> our extension, for formats we can also write.
_EXTENSION_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_DRAFTABLE_FORMATS = ("JPEG", "MPO")

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# EXIF orientation -> the transpose that displays the image upright (the same
# table as ImageOps.exif_transpose).
_UPRIGHT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)

# Pillow's filters are antialiased when shrinking (support grows with the
# scale).  BILINEAR (a triangle filter) is ~40% faster than BICUBIC; after a
# draft decode, whose error dominates, both land at ~42 dB PSNR against a full
# decode + LANCZOS, and without draft BILINEAR (44 dB) still beats BOX (40 dB),
# the equivalent of img2dataset's INTER_AREA.  LANCZOS for enlarging matches
# img2dataset's default upscale interpolation.
_DOWNSCALE_FILTER = Image.Resampling.BILINEAR
_UPSCALE_FILTER = Image.Resampling.LANCZOS

# zlib's default level: used for PNG unless encode_quality is an explicit
# compression level 0-9 (img2dataset's meaning of quality for PNG).
_DEFAULT_PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class ResizeParams:
    """The `resize:` section of a recipe."""

    image_size: int = 256  # px: the square output side (keep_ratio: the shorter side)
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "border"  # as img2dataset: border pads, center_crop crops
    resize_only_if_bigger: bool = False  # never upscale smaller images
    encode_format: Literal["jpg", "png", "webp"] = "jpg"  # image format in the shards
    # Quality for jpg/webp.  For png (lossless) a value 0-9 is the zlib
    # compression level, as in img2dataset; anything larger means level 6.
    encode_quality: int = 95
    # Decompression-bomb guard, checked on the header before decoding.  Also
    # bounds the output of keep_ratio, which can be huge for extreme aspect ratios.
    max_pixels: int = 89_478_485
    # Decoded bytes in flight across all the download threads of a process
    # (pipeline.media.decode_budget): bounds decode memory whatever `download.threads`.
    # An image whose estimated peak alone exceeds it is rejected as
    # decode_budget_exceeded; the default fits a max_pixels RGBA or 16-bit image.
    decode_budget_bytes: int = 1 << 30
    # Keep the original bytes when nothing would change and the format matches.
    skip_reencode: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ParamError(f"resize.image_size must be at least 1, got {self.image_size}")
        if not 0 <= self.encode_quality <= 100:
            raise ParamError(f"resize.encode_quality must be within 0-100, got {self.encode_quality}")
        if self.max_pixels < 1:
            raise ParamError(f"resize.max_pixels must be at least 1, got {self.max_pixels}")
        if self.decode_budget_bytes < 1 << 20:
            raise ParamError(f"resize.decode_budget_bytes must be at least 1 MiB, got {self.decode_budget_bytes}")


@dataclass
class ProcessedImage:
    data: bytes  # encoded output
    format: str  # "jpg" | "png" | "webp": the file extension used in shards
    width: int
    height: int
    original_width: int  # after EXIF orientation
    original_height: int
    # The decoded output image, for stages that compute from pixels while the
    # download has them (perceptual hashes): not kept on samples.
    pixels: Image.Image | None = field(default=None, repr=False, compare=False)


# Every reason ImageRejected carries (the fuzz test holds the decoder to these).
REJECT_REASONS = frozenset({
    "decode_error", "truncated_image", "decompression_bomb", "decode_budget_exceeded",
    "unsupported_image", "output_too_large", "encode_error",
})


class ImageRejected(Exception):
    """The image cannot be used; `reason` is a snake_case word for reject records.

    Reasons: decode_error, truncated_image (cut short, or less data than the
    header declares), decompression_bomb, decode_budget_exceeded (needs more
    memory to decode than resize.decode_budget_bytes), unsupported_image (a mode
    that has no RGB conversion, or float samples), output_too_large (keep_ratio of an extreme
    aspect ratio), encode_error.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Plan:
    """What to do to an upright image of a known size; all None: nothing."""

    scaled_size: tuple[int, int] | None  # whole image resized to this
    crop_box: tuple[int, int, int, int] | None  # then keep this part of the scaled image
    pad_to: int | None  # then pad to this square, centred, with white

    @property
    def changes_pixels(self) -> bool:
        return (self.scaled_size, self.crop_box, self.pad_to) != (None, None, None)

    @property
    def output_size(self) -> tuple[int, int] | None:
        if self.pad_to is not None:
            return (self.pad_to, self.pad_to)
        if self.crop_box is not None:
            (left, top, right, bottom) = self.crop_box
            return (right - left, bottom - top)
        return self.scaled_size


def process_image(data: bytes, params: ResizeParams) -> ProcessedImage:
    """Decode `data`, resize it per `params` and encode it.  Raises ImageRejected only."""
    return _process_image(data, params)


def _process_image(data: bytes, params: ResizeParams, use_draft: bool = True) -> ProcessedImage:
    # `use_draft=False` exists for the benchmark (draft vs full decode).
    try:
        return _decode_and_transform(data, params, use_draft)
    except ImageRejected:
        raise
    except OverBudget as err:
        raise ImageRejected("decode_budget_exceeded", str(err)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # The warning only arrives as an exception when warnings are errors.
        raise ImageRejected("decompression_bomb", str(err)) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("decode_error", "not an image in a supported format") from None
    except EOFError as err:
        raise ImageRejected("truncated_image", str(err) or "unexpected end of data") from None
    except Exception as err:  # noqa: BLE001 - any input bytes must end as a reason, never a crash
        reason = "truncated_image" if "truncated" in str(err).lower() else "decode_error"
        raise ImageRejected(reason, f"{type(err).__name__}: {err}") from None


def _decode_and_transform(data: bytes, params: ResizeParams, use_draft: bool) -> ProcessedImage:
    _reject_if_short(container_shortfall(data))
    with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as img:
        header_size = img.size
        _check_header_size(header_size, params)
        if use_draft and img.format in _DRAFTABLE_FORMATS:
            _draft_for_target(img, header_size, params)
        with shared_budget(params.decode_budget_bytes).hold(_decode_bytes(img, header_size, params)):
            return _decode_held(img, data, header_size, params)


def _decode_bytes(img: Image.Image, header_size: tuple[int, int], params: ResizeParams) -> int:
    """The decode memory to reserve, from the header (orientation only where it precedes the pixels)."""
    orientation = _orientation(img) if "exif" in img.info else 1
    plan = plan_resize(*_upright_size(header_size, orientation), params)
    (out_width, out_height) = plan.output_size or header_size
    return estimate_decode_bytes(img, orientation != 1, out_width * out_height)


def _decode_held(img: Image.Image, data: bytes, header_size: tuple[int, int], params: ResizeParams) -> ProcessedImage:
    img.load()  # raises on truncated or corrupt data
    _reject_if_short(jpeg_shortfall(img, data))
    orientation = _orientation(img)
    (width, height) = _upright_size(header_size, orientation)
    plan = plan_resize(width, height, params)
    if _can_keep_original(img, plan, orientation, params):
        return ProcessedImage(data, params.encode_format, width, height, width, height, img)
    result = _apply_plan(_upright(_to_rgb(img), orientation), plan, (width, height))
    return ProcessedImage(encode_image(result, params), params.encode_format, *result.size, width, height, result)


def _reject_if_short(shortfall: str | None) -> None:
    if shortfall is not None:
        raise ImageRejected("truncated_image", shortfall)


def _check_header_size(size: tuple[int, int], params: ResizeParams) -> None:
    (width, height) = size
    if width < 1 or height < 1:
        raise ImageRejected("decode_error", f"empty image {width}x{height}")
    if width * height > params.max_pixels:
        raise ImageRejected(
            "decompression_bomb", f"{width}x{height} is more than max_pixels={params.max_pixels}"
        )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - broken EXIF should not cost us the image
        return 1
    return value if value in _UPRIGHT_TRANSPOSE else 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    (width, height) = size
    return (height, width) if orientation in _SIDEWAYS_ORIENTATIONS else (width, height)


def plan_resize(width: int, height: int, params: ResizeParams) -> _Plan:
    """img2dataset's Resizer decisions and rounding, for an upright width x height."""
    nothing = _Plan(None, None, None)
    mode = params.resize_mode
    if mode == "no":
        return nothing
    reference_side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    size = params.image_size
    if params.resize_only_if_bigger and reference_side <= size:
        return nothing
    # albumentations' SmallestMaxSize / LongestMaxSize: scale, then round each side.
    scale = size / reference_side
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    crop_box = _center_box(scaled, size) if mode == "center_crop" else None
    pad_to = size if mode == "border" and scaled != (size, size) else None
    plan = _Plan(scaled if scaled != (width, height) else None, crop_box, pad_to)
    (out_width, out_height) = plan.output_size or (width, height)
    if out_width * out_height > params.max_pixels:
        raise ImageRejected(
            "output_too_large", f"{width}x{height} would become {out_width}x{out_height}"
        )
    return plan


def _center_box(size: tuple[int, int], side: int) -> tuple[int, int, int, int] | None:
    """albumentations' CenterCrop box; None when it is the whole image."""
    (width, height) = size
    if (width, height) == (side, side):
        return None
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def _draft_for_target(img: Image.Image, header_size: tuple[int, int], params: ResizeParams) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that still covers the target."""
    orientation = _orientation(img)  # JPEG EXIF is in the header, readable before decode
    plan = plan_resize(*_upright_size(header_size, orientation), params)
    if _can_keep_original(img, plan, orientation, params):
        # Pixels are only decoded to validate the file: the smallest scale will do.
        img.draft("RGB", (1, 1))
        return
    if plan.scaled_size is None:
        return
    wanted = _upright_size(plan.scaled_size, orientation)  # back to stored orientation
    if wanted[0] < header_size[0] and wanted[1] < header_size[1]:
        img.draft("RGB", wanted)


def _can_keep_original(img: Image.Image, plan: _Plan, orientation: int, params: ResizeParams) -> bool:
    return (
        params.skip_reencode
        and _EXTENSION_OF_FORMAT.get(img.format or "") == params.encode_format
        and not plan.changes_pixels
        and orientation == 1
        and not _has_alpha(img)
        and not getattr(img, "is_animated", False)
    )


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        # Float samples have no agreed display range (0-1? 0-255? HDR?): any
        # choice would silently turn many of them black or white.
        raise ImageRejected("unsupported_image", "32-bit float samples (mode F)")
    if img.mode in _SIXTEEN_BIT_GREY_MODES:
        return _sixteen_bit_grey_to_rgb(img)
    try:
        if _has_alpha(img):
            return _flatten_onto_white(img if img.mode == "RGBA" else img.convert("RGBA"))
        return img.convert("RGB")
    except ValueError as err:  # a mode Pillow cannot convert (e.g. LAB, HSV)
        raise ImageRejected("unsupported_image", f"mode {img.mode}: {err}") from None


def _sixteen_bit_grey_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's convert() clips 16-bit values at 255 instead of scaling them.
    # In place on one copy in the image's own width (2 or 4 bytes a pixel),
    # not int64 temporaries: decode memory is budgeted per pixel.
    grey = np.array(img)
    if grey.dtype.kind == "i":
        np.clip(grey, 0, 65535, out=grey)
    np.right_shift(grey, 8, out=grey)
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def _flatten_onto_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    transpose = _UPRIGHT_TRANSPOSE.get(orientation)
    return img.transpose(transpose) if transpose is not None else img


def _apply_plan(img: Image.Image, plan: _Plan, upright_size: tuple[int, int]) -> Image.Image:
    """`img` may be smaller than `upright_size` (draft decode); the plan is in full-size terms."""
    if plan.scaled_size is not None or plan.crop_box is not None:
        img = _scale_and_crop(img, plan, upright_size)
    if plan.pad_to is not None:
        img = _pad_to_square(img, plan.pad_to)
    return img


def _scale_and_crop(img: Image.Image, plan: _Plan, upright_size: tuple[int, int]) -> Image.Image:
    (scaled_width, scaled_height) = plan.scaled_size or upright_size
    box = plan.crop_box or (0, 0, scaled_width, scaled_height)
    # The same region in the decoded image's own coordinates.
    x_ratio = img.width / scaled_width
    y_ratio = img.height / scaled_height
    source_box = (box[0] * x_ratio, box[1] * y_ratio, box[2] * x_ratio, box[3] * y_ratio)
    out_size = (box[2] - box[0], box[3] - box[1])
    enlarging = scaled_width > upright_size[0]
    return img.resize(out_size, _UPSCALE_FILTER if enlarging else _DOWNSCALE_FILTER, box=source_box)


def _pad_to_square(img: Image.Image, side: int) -> Image.Image:
    # albumentations' PadIfNeeded: the odd pixel goes to the bottom/right.
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def encode_image(img: Image.Image, params: ResizeParams) -> bytes:
    out = io.BytesIO()
    try:
        if params.encode_format == "jpg":
            img.save(out, "JPEG", quality=params.encode_quality)
        elif params.encode_format == "png":
            img.save(out, "PNG", compress_level=_png_compress_level(params.encode_quality))
        else:
            img.save(out, "WEBP", quality=params.encode_quality, method=4)
    except (OSError, ValueError) as err:  # e.g. WebP is limited to 16383 px a side
        raise ImageRejected("encode_error", f"{img.width}x{img.height} as {params.encode_format}: {err}") from None
    return out.getvalue()


def _png_compress_level(quality: int) -> int:
    return quality if quality <= 9 else _DEFAULT_PNG_COMPRESS_LEVEL
