"""The perceptual hash of a stored image, which `phash:` opt-out rules match.

`phash_of_image` hashes the image as it is stored in the dataset (after the
recipe's resize), so the run and a later takedown agree.  pHash survives
scaling but not padding or cropping, so white `border` padding is undone
first (the content box follows from the original width and height); content
that `center_crop` cut away cannot be recovered, so a non-square image
cropped that way usually does not match its creator's hash.
"""
from __future__ import annotations

import io


def phash_of_image(data: bytes, original_size: tuple[int | None, int | None] | None = None) -> int:
    """64-bit pHash of a stored image, with white `border` padding removed.

    `original_size` is (original_width, original_height) from the metadata.
    Raises OSError/ValueError if the image does not decode.
    """
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (128, 128))  # pHash looks at 32x32: a reduced JPEG decode is plenty
        img = img.convert("RGB")
    return int(str(imagehash.phash(unpadded(img, original_size))), 16)


def unpadded(img, original_size: tuple[int | None, int | None] | None):
    """A stored PIL image without the white bars `border` resizing added (unchanged if it has none)."""
    box = _padded_content_box(img, original_size)
    return img if box is None else img.crop(box)


_WHITE_ENOUGH = 245  # mean grey level of a padding bar after JPEG artefacts


def _padded_content_box(img, original_size) -> tuple[int, int, int, int] | None:
    """The centred box holding the picture if `img` looks border-padded, else None."""
    if not original_size or not all(original_size):
        return None
    (width, height), (original_width, original_height) = img.size, original_size
    scale = min(width / original_width, height / original_height)
    content_width, content_height = round(original_width * scale), round(original_height * scale)
    if content_width >= width - 1 and content_height >= height - 1:
        return None  # same aspect ratio: nothing was padded
    left, top = (width - content_width) // 2, (height - content_height) // 2
    box = (left, top, left + content_width, top + content_height)
    bars = [(0, 0, width, top), (0, box[3], width, height), (0, 0, left, height), (box[2], 0, width, height)]
    grey = img.convert("L")
    for bar in bars:
        if bar[2] > bar[0] and bar[3] > bar[1] and _mean(grey.crop(bar)) < _WHITE_ENOUGH:
            return None  # not white bars: cropped (center_crop) rather than padded
    return box


def _mean(img) -> float:
    from PIL import ImageStat

    return ImageStat.Stat(img).mean[0]
