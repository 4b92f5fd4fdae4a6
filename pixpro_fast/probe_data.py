"""The dense probe's data: the built-in scenes as square images and coarser label maps.

Images: shorter side resized to ``image_size`` and centre-cropped to a square (bilinear,
antialiased). Labels: the same square window resized with nearest-neighbour straight to
``image_size / label_stride``; :data:`IGNORE_INDEX` marks pixels no class is scored on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from .probe import ProbeConfig

IGNORE_INDEX = 255


@dataclass
class ProbeSplit:
    """uint8 images (N, S, S, 3) and int64 label maps (N, S/stride, S/stride)."""
    images: torch.Tensor
    labels: torch.Tensor


def square_window(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square of side min(width, height), as a PIL box."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_scene(image_path: str | Path, image_size: int, label_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene resized (shorter side) and centre-cropped: (S, S, 3) uint8 image, (L, L) uint8 labels."""
    from pipelines.scenes import load_label_map
    with Image.open(image_path) as im:
        im = im.convert("RGB")
        box = square_window(*im.size)
        image = np.asarray(im.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))
    labels = Image.fromarray(load_label_map(image_path))
    if labels.size != im.size:
        raise ValueError(f"label map of {image_path} is {labels.size}, the image {im.size}")
    labels = np.asarray(labels.resize((label_size, label_size), Image.Resampling.NEAREST, box=box))
    return image, labels


def load_scenes_split(split: str, n_images: int, image_size: int, label_stride: int = 4, scenes_seed: int = 0,
                      root: str | Path | None = None) -> ProbeSplit:
    """The first ``n_images`` scenes of ``split`` ('train' or 'val'), generated on first use."""
    from pipelines.scenes import ensure_scenes
    folder = ensure_scenes(n_images=n_images, seed=scenes_seed, root=root, split=split)
    names = json.loads((folder / "manifest.json").read_text())["images"]
    label_size = image_size // label_stride
    images = np.empty((n_images, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty((n_images, label_size, label_size), dtype=np.uint8)
    for i, name in enumerate(names[:n_images]):
        images[i], labels[i] = load_scene(folder / name, image_size, label_size)
    return ProbeSplit(torch.from_numpy(images), torch.from_numpy(labels).long())


def load_probe_data(cfg: ProbeConfig, root: str | Path | None = None) -> tuple[ProbeSplit, ProbeSplit]:
    return (load_scenes_split("train", cfg.train_images, cfg.image_size, cfg.label_stride, cfg.scenes_seed, root),
            load_scenes_split("val", cfg.val_images, cfg.image_size, cfg.label_stride, cfg.scenes_seed, root))
