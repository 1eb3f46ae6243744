"""Which image format a body is, from its magic bytes (Content-Type is not trusted)."""
from __future__ import annotations

_HEIF_BRANDS = {
    b"avif": "image/avif", b"avis": "image/avif",
    b"heic": "image/heic", b"heix": "image/heic", b"hevc": "image/heic", b"hevx": "image/heic",
    b"heim": "image/heic", b"heis": "image/heic",
    b"mif1": "image/heif", b"msf1": "image/heif",
}
# BITMAPINFOHEADER sizes: "BM" alone is too weak a signature.
_BMP_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff_image_mime(data: bytes) -> str | None:
    """The image MIME type from the magic bytes, or None if `data` is not an image."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _BMP_DIB_HEADER_SIZES:
        return "image/bmp"
    if data[4:8] == b"ftyp":
        return _sniff_heif(data)
    return None


def _sniff_heif(data: bytes) -> str | None:
    """AVIF/HEIC/HEIF: the major brand or a compatible brand of the `ftyp` box."""
    box_size = int.from_bytes(data[:4], "big")
    brands = [data[8:12]] + [data[i : i + 4] for i in range(16, min(box_size, len(data)) - 3, 4)]
    found = {_HEIF_BRANDS[b] for b in brands if b in _HEIF_BRANDS}
    for mime in ("image/avif", "image/heic", "image/heif"):  # most specific first
        if mime in found:
            return mime
    return None
