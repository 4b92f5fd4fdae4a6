"""Helpers the test packages share: which loader backends are installed, small JPEG folders,
small files of enormous images."""
from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import torch
from PIL import Image

from pipelines.batch import keep_torch_threads

# loader backend -> the module its library installs
BACKEND_MODULES = {"torch": "torch", "dali": "nvidia.dali", "ffcv": "ffcv"}


def installed_backends() -> list[str]:
    """The loader backends whose library is installed here (torch always)."""
    with keep_torch_threads():  # looking FFCV up may import it, which resets torch's thread count
        return [b for b, module in BACKEND_MODULES.items() if importlib.util.find_spec(module) is not None]


def jpeg_folder(root: Path, n: int, first: tuple[int, int], step: tuple[int, int]) -> Path:
    """``n`` smooth random JPEGs ``img_00.jpg``...; image i is ``first + i * step`` (height, width)."""
    gen = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = first[0] + step[0] * i, first[1] + step[1] * i
        arr = (torch.rand(h // 8, w // 8, 3, generator=gen) * 255).byte().numpy()
        Image.fromarray(arr).resize((w, h), Image.BILINEAR).save(root / f"img_{i:02d}.jpg", quality=90)
    return root


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
