"""Images whose pixels encode their own position, and the check that a view's corners
show the positions its ``coords`` claim (the strongest test of the box contract)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def coordinate_plane(height: int, width: int) -> np.ndarray:
    """uint8 RGB image: red = x / (W-1), green = y / (H-1), blue = 128 (constant)."""
    x = np.linspace(0.0, 255.0, width)[None, :].repeat(height, 0)
    y = np.linspace(0.0, 255.0, height)[:, None].repeat(width, 1)
    img = np.stack([x, y, np.full_like(x, 128.0)], axis=-1)
    return np.round(img).astype(np.uint8)


def write_coordinate_planes(folder: Path, sizes: list[tuple[int, int]], fmt: str = "JPEG") -> list[Path]:
    """Write one coordinate-plane image per (height, width) into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"plane_{i:03d}_{h}x{w}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        Image.fromarray(coordinate_plane(h, w)).save(p, fmt, **({"quality": 98, "subsampling": 0} if fmt == "JPEG" else {}))
        paths.append(p)
    return paths


def denormalise(view: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) normalised float -> values on the 0..1 scale."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return view.float().cpu() * s + m


def corner_errors(view01: torch.Tensor, coords: torch.Tensor, inset: int = 1) -> torch.Tensor:
    """Largest |decoded position - claimed position| over the four corners of each view.

    Reads each corner ``inset`` pixels in from the border (resampling blurs the outermost
    pixel), and compares with the claimed position interpolated at that pixel.
    Returns (B,) errors on the [0, 1] scale.
    """
    b, _, h, w = view01.shape
    coords = coords.float().cpu()
    errs = []
    for r in (inset, h - 1 - inset):
        for c in (inset, w - 1 - inset):
            fx, fy = c / (w - 1), r / (h - 1)
            want_x = coords[:, 0] + fx * (coords[:, 2] - coords[:, 0])
            want_y = coords[:, 1] + fy * (coords[:, 3] - coords[:, 1])
            got_x, got_y = view01[:, 0, r, c], view01[:, 1, r, c]
            errs.append(torch.maximum((got_x - want_x).abs(), (got_y - want_y).abs()))
    return torch.stack(errs, dim=1).amax(dim=1)


def corner_tolerance(height: int, width: int, size: int, lossy: bool) -> float:
    """Allowed corner error on the [0, 1] scale.

    The contract puts the view's corner pixels at the window's first and last pixel
    (reference convention) while a resampler aligns pixel edges: the two differ by half an
    original pixel when upscaling and half an output pixel when downscaling. On top come
    the 8-bit position code (1/2 level) and, for JPEG, compression error (~2-3 levels).
    A wrong flip, a window off by its own size or a draft window mapped at the wrong scale
    all give errors of 0.1 or more.
    """
    half_pixel = 0.5 / (min(height, width) - 1) + 0.5 / (size - 1)
    return half_pixel + (4.0 if lossy else 1.5) / 255
