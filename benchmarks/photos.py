"""Real-photo-like JPEGs of ImageNet's sizes for the loader benchmarks.

The built-in scenes are smooth synthetic images, which decode and blur faster than photos.
This set is made from the colour photographs that scikit-image ships in its package data
(astronaut, cat, coffee, motorcycles, rocket, retina, ...): each image is a random window of
one photo (25-100% of its area), resized to one of ImageNet's common shapes (500 x 375,
500 x 333, 375 x 500, 500 x 500, with a few pixels of jitter), flipped at random, given a
mild colour cast, and saved as a JPEG of quality 85-95 with 4:2:0 chroma subsampling, as
ImageNet's files are. Generated once per (count, seed) into the cache folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = 1
SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
           "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "ihc.png", "color.png")
SHAPES = ((500, 375), (500, 333), (375, 500), (500, 500), (500, 400), (333, 500))   # (width, height)
MANIFEST = "photos.json"


def source_folder() -> Path:
    """scikit-image's data folder (found without importing the package)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the photo set is made from scikit-image's sample photos: "
                                  "pip install scikit-image (or pip install -e .[bench])")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _load_sources() -> list[Image.Image]:
    folder = source_folder()
    found = [folder / name for name in SOURCES if (folder / name).is_file()]
    if len(found) < 3:
        raise FileNotFoundError(f"only {len(found)} of scikit-image's sample photos found in {folder}")
    return [Image.open(p).convert("RGB") for p in found]


def make_photo(sources: list[Image.Image], rng: np.random.Generator) -> tuple[Image.Image, int]:
    """One benchmark image and its JPEG quality."""
    src = sources[int(rng.integers(len(sources)))]
    w, h = src.size
    target_w, target_h = SHAPES[int(rng.integers(len(SHAPES)))]
    target_w += int(rng.integers(-8, 9))
    target_h += int(rng.integers(-8, 9))
    aspect = target_w / target_h
    area = w * h * rng.uniform(0.25, 1.0)
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(cw / aspect)))
    cw = int(min(w, round(ch * aspect)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src.crop((left, top, left + cw, top + ch)).resize((target_w, target_h), Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-12, 12, size=3)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img, int(rng.integers(85, 96))


def photos_dir(n_images: int, seed: int = 0, root: str | Path | None = None) -> Path:
    base = Path(root or os.environ.get("PIXPRO_FAST_CACHE") or Path.home() / ".cache" / "pixpro_fast")
    return base / f"photos-v{VERSION}-seed{seed}" / f"n{n_images}"


def ensure_photos(n_images: int = 512, seed: int = 0, root: str | Path | None = None) -> Path:
    """Generate (or reuse) ``n_images`` photos; returns the folder holding them."""
    if n_images < 1:
        raise ValueError(f"n_images must be positive, got {n_images}")
    target = photos_dir(n_images, seed, root)
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".photos.tmp-", dir=target.parent))
    try:
        sources = _load_sources()
        rng = np.random.default_rng((seed, VERSION))
        names = []
        for i in range(n_images):
            img, quality = make_photo(sources, rng)
            name = f"photo_{i:06d}.jpg"
            img.save(tmp / name, quality=quality, subsampling=2)
            names.append(name)
        (tmp / MANIFEST).write_text(json.dumps({"version": VERSION, "seed": seed, "images": names}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def benchmark_images(source: str, n_images: int) -> Path:
    """The folder a loader benchmark reads: ``scenes`` (the built-in dataset) or ``photos``."""
    if source == "photos":
        return ensure_photos(n_images)
    if source == "scenes":
        from pipelines.scenes import ensure_scenes
        return ensure_scenes(n_images)
    raise ValueError(f"image source must be 'scenes' or 'photos', got {source!r}")
