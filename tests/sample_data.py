"""Helpers the test packages share: which loader backends are installed, small JPEG folders,
small files of enormous images."""
from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.batch import keep_torch_threads

# loader backend -> the module its library installs
BACKEND_MODULES = {"torch": "torch", "dali": "nvidia.dali", "ffcv": "ffcv"}


def installed_backends() -> list[str]:
    """The loader backends whose library is installed here (torch always)."""
    with keep_torch_threads():  # looking FFCV up may import it, which resets torch's thread count
        return [b for b, module in BACKEND_MODULES.items() if importlib.util.find_spec(module) is not None]


def jpeg_folder(root: Path, n: int, first: tuple[int, int] = (64, 80), step: tuple[int, int] = (0, 0), *,
                size=None, seed: int = 0, noise: float = 0.0, classes: tuple[str, ...] = (), quality: int = 90,
                detail: int = 8) -> Path:
    """``n`` smooth random JPEGs ``img_00.jpg``... under ``root``, the one writer of the tests.

    Image i is ``first + i * step`` (height, width), or ``size(i)`` when given; its content a
    random low-resolution colour field (a pixel per ``detail`` of the smaller side, at least
    2) upscaled bilinearly, plus Gaussian noise of ``noise`` levels; in the sub-folder
    ``classes[i % len(classes)]`` when classes are given (an ImageFolder)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = size(i) if size is not None else (first[0] + step[0] * i, first[1] + step[1] * i)
        low = rng.integers(0, 256, (max(h // detail, 2), max(w // detail, 2), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        if noise:
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255)
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img_{i:02d}.jpg", quality=quality)
    return root


def random_sizes(low: int, high: int, seed: int = 0):
    """``size`` for :func:`jpeg_folder`: heights and widths drawn from [low, high)."""
    drawn = np.random.default_rng(seed).integers(low, high, size=(10_000, 2))
    return lambda i: (int(drawn[i, 0]), int(drawn[i, 1]))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, written row by row
    (never held as pixels here): 12000 x 12000 is about 50 KB, and PIL decodes it to 144 MB."""
    row = bytes((width + 7) // 8 + 1)  # filter byte 0, then the packed pixels
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def loader_source(backend: str, folder: Path, out: Path, **writer_options) -> Path:
    """What ``backend`` reads for the images of ``folder``: the folder itself, or for the
    ffcv backend a .beton of it written at full resolution to ``out``."""
    if backend != "ffcv":
        return folder
    from pipelines import ffcv_writer
    options = dict(max_resolution=0, jpeg_quality=95, num_workers=1, progress=False, **writer_options)
    ffcv_writer.write_beton(folder, out, **options)
    return out


def class_folder_size(i: int) -> tuple[int, int]:
    """(height, width) of image i of :func:`damaged_class_folder`."""
    return 60 + 7 * i, 90 + 3 * i


def damaged_class_folder(root: Path) -> Path:
    """An ImageFolder of 24 small colourful JPEGs in two classes (dog, cat; image i of size
    :func:`class_folder_size`), plus a corrupt JPEG in cat and a truncated one in dog."""
    jpeg_folder(root, 24, size=class_folder_size, classes=("dog", "cat"), quality=92, detail=64)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    data = (root / "dog" / "img_00.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root
