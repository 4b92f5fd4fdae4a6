"""An image's size from its header, and the pixel cap every backend applies before decoding.

A small file may decode to an enormous image (a constant 12000 x 12000 PNG is a few hundred
KB and 432 MB of pixels), and with many workers a few of them exhaust a host. Every
backend therefore reads the size from the header first and treats an image of more than
``max_pixels`` pixels as unreadable (:mod:`pipelines.corrupt`): it is never decoded.
``max_pixels=0`` turns the cap off, and PIL's own check below with it.

PIL has a check of its own (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels: a
``DecompressionBombWarning`` above it, an error above twice that); the cap takes its place
in :func:`open_image`, which lifts PIL's limit for the one ``Image.open`` that needs it
(an image within a cap raised above PIL's limit, or a format whose header is not read
here) and puts it back at once, so a caller's own limit stays in force everywhere else
(an ``Image.open`` in another thread during that call excepted). With the default cap,
below PIL's limit, a JPEG, PNG or WebP never needs it.
"""
from __future__ import annotations

import contextlib
import io
import numbers
import threading

from PIL import Image

DEFAULT_MAX_PIXELS = 50_000_000   # well above the largest ImageNet image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the cap allows."""


def check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 0:
        raise ValueError(f"max_pixels must be a non-negative integer (0: no cap), got {max_pixels!r}")


def above_cap(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of width x height is refused (its size against the cap), or None."""
    if max_pixels and width * height > max_pixels:
        mp = width * height / 1e6
        return (f"{width} x {height} = {f'{mp:.1f}' if mp >= 0.1 else f'{mp:.2g}'} megapixels, above the "
                f"{max_pixels / 1e6:g}-megapixel cap (max_pixels)")
    return None


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` saying :func:`above_cap`'s reason."""
    reason = above_cap(width, height, max_pixels)
    if reason is not None:
        raise ImageTooLarge(reason)


# --------------------------------------------------------------------------- header parsing

def _jpeg_size(b: memoryview) -> tuple[int, int]:
    i, n = 2, len(b)
    while i + 9 < n:
        if b[i] != 0xFF:
            raise ValueError("corrupt JPEG header (marker expected)")
        m = b[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
        elif m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            i += 2
        elif m in _JPEG_FRAMES:
            return (b[i + 7] << 8) | b[i + 8], (b[i + 5] << 8) | b[i + 6]
        elif m in (0xDA, 0xD9):
            break
        else:
            i += 2 + ((b[i + 2] << 8) | b[i + 3])
    raise ValueError("corrupt JPEG header (no frame header)")


def _webp_size(b: memoryview) -> tuple[int, int]:
    chunk = bytes(b[12:16])
    if chunk == b"VP8 " and bytes(b[23:26]) == b"\x9d\x01\x2a":   # lossy: 14-bit sizes after the start code
        return int.from_bytes(b[26:28], "little") & 0x3FFF, int.from_bytes(b[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and b[20] == 0x2F:                         # lossless: 14-bit sizes minus one
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":                                           # extended: 24-bit canvas sizes minus one
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    raise ValueError("unreadable WebP header")


def _bytes(data) -> memoryview:
    return memoryview(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).cast("B")


def _format(b: memoryview) -> str | None:
    if len(b) < 32:
        raise ValueError("file too short to be an image")
    if b[0] == 0xFF and b[1] == 0xD8 and b[2] == 0xFF:
        return "jpeg"
    if bytes(b[:8]) == _PNG_SIGNATURE:
        return "png"
    if bytes(b[:4]) == b"RIFF" and bytes(b[8:12]) == b"WEBP":
        return "webp"
    return None


def header_size(data) -> tuple[int, int] | None:
    """(width, height) declared by the header of JPEG, PNG or WebP bytes (EXIF orientation
    ignored, as in every backend); None for another format; ValueError for a damaged header."""
    b = _bytes(data)
    fmt = _format(b)
    if fmt == "jpeg":
        return _jpeg_size(b)
    if fmt == "png":
        if bytes(b[12:16]) != b"IHDR":
            raise ValueError("malformed PNG (no IHDR chunk first)")
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if fmt == "webp":
        return _webp_size(b)
    return None


def image_shape(data) -> tuple[int, int]:
    """(height, width) of encoded JPEG/PNG/WebP bytes, as the decoder will see them; ValueError
    saying why when the bytes cannot be an intact image. Cheap enough for a loader's main
    thread: signature, end marker or declared size, and the header; damage inside the data is
    left to the decoder."""
    b = _bytes(data)
    fmt = _format(b)
    if fmt is None:
        raise ValueError("not a JPEG, PNG or WebP file")
    if fmt == "jpeg" and b"\xff\xd9" not in bytes(b[-4096:]):
        raise ValueError("truncated JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in bytes(b[-64:]):
        raise ValueError("truncated or malformed PNG")
    if fmt == "webp" and int.from_bytes(b[4:8], "little") + 8 > len(b):
        raise ValueError("truncated WebP")
    size = header_size(b)
    w, h = size
    if h < 1 or w < 1:
        raise ValueError(f"unsupported image size {w}x{h}")
    return h, w


# --------------------------------------------------------------------------- opening with PIL

_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _pil_limit_lifted(pixels: int | None):
    """PIL's own pixel limit off for the block when an image of ``pixels`` (None: not known
    yet) could trip it; the limit is restored on leaving, and lifts are serialised."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or (pixels is not None and pixels <= limit):
        yield
        return
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``Image.open`` of encoded bytes under the pixel cap, without PIL's warning.

    A JPEG, PNG or WebP is checked on its header before PIL sees it; any other format PIL
    reads is checked on the size ``Image.open`` found (it reads the header, decodes nothing).
    Raises :class:`ImageTooLarge`, or what PIL raises for a file it cannot open."""
    try:
        size = header_size(data)
    except ValueError:
        size = None   # PIL judges a damaged header, with its own message
    if size is not None:
        check_pixels(*size, max_pixels)
    with _pil_limit_lifted(None if size is None else size[0] * size[1]):
        img = Image.open(io.BytesIO(data))
    try:
        check_pixels(*img.size, max_pixels)
    except ImageTooLarge:
        img.close()
        raise
    return img
