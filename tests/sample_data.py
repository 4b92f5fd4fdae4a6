"""Helpers the test packages share: which loader backends are installed, small JPEG folders."""
from __future__ import annotations

import importlib.util
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
