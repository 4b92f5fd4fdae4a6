"""Random-resized-crop window sampler with torchvision's ``RandomResizedCrop`` distribution.

Up to ``tries`` attempts draw an area fraction ~ U(scale) and a log-aspect ~ U(log ratio);
the first window that fits is placed uniformly at random. If none fits, the fallback is
the central crop with the aspect ratio clamped to ``ratio`` (the whole image when its
aspect already lies inside). A pure function of the generator and the image size, so any
backend (and the tests) can reproduce a window from the same random stream.
"""
from __future__ import annotations

import math

import numpy as np
import torch

Generator = np.random.Generator | torch.Generator


def _uniform(rng: Generator, lo: float, hi: float) -> float:
    if isinstance(rng, torch.Generator):
        return lo + (hi - lo) * torch.rand((), generator=rng, dtype=torch.float64).item()
    return float(rng.uniform(lo, hi))


def _integer(rng: Generator, high_inclusive: int) -> int:
    """Uniform integer in [0, high_inclusive]."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(0, high_inclusive + 1, (), generator=rng).item())
    return int(rng.integers(0, high_inclusive + 1))


def sample_crop(rng: Generator, height: int, width: int,
                scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3),
                tries: int = 10) -> tuple[int, int, int, int]:
    """Sample a crop window of an ``height x width`` image; returns ``(top, left, h, w)`` in pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target_area = area * _uniform(rng, scale[0], scale[1])
        aspect = math.exp(_uniform(rng, log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _integer(rng, height - h)
            left = _integer(rng, width - w)
            return top, left, h, w
    return central_crop(height, width, ratio)


def central_crop(height: int, width: int, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """The fallback window: centred, aspect clamped into ``ratio``."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w = width
        h = max(1, min(height, int(round(w / ratio[0]))))
    elif in_ratio > ratio[1]:
        h = height
        w = max(1, min(width, int(round(h * ratio[1]))))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
