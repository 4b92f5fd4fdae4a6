"""The built-in dataset: procedurally generated scenes with per-pixel labels.

Each scene is a smooth background (gradient or soft blotches) with two to five objects.
An object's class fixes its outline (circle, square, triangle, star, ring, cross) and the
family of its fill pattern (dots, stripes, checks, speckle, rings, zigzag); the pattern's two
colours, orientation, phase and period are drawn per object, independently of the class.
So colour says nothing about the class: a dense probe has to read form and texture, which
is what pretrained features should pick up and raw colour cannot.
Images are JPEGs with sides between 256 and 640 pixels; beside
each ``scene_XXXXX.jpg`` lies ``scene_XXXXX.labels.png`` (uint8 class id per pixel,
0 = background), which :mod:`pipelines.image_folder` ignores.

Generation is a pure function of (seed, split, image number), uses numpy + PIL only, and
is cached under ``$PIXPRO_FAST_CACHE`` (default ``~/.cache/pixpro_fast``) in
``scenes-<version>-<seed>-<n>/<split>``. A split is built in a temporary folder and renamed
into place, so a cache folder that exists is complete.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = "v2"
CLASSES = ("background", "circle", "square", "triangle", "star", "ring", "cross")
SPLITS = {"train": 0, "val": 1}
MIN_SIDE, MAX_SIDE = 256, 640
MANIFEST = "manifest.json"
JPEG_QUALITY = 90


def cache_root(root: str | Path | None = None) -> Path:
    """Where generated datasets live: ``root``, else $PIXPRO_FAST_CACHE, else ~/.cache/pixpro_fast."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PIXPRO_FAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pixpro_fast"


def scenes_dir(n_images: int, seed: int = 0, root: str | Path | None = None, split: str = "train") -> Path:
    """The folder :func:`ensure_scenes` fills for these arguments."""
    return cache_root(root) / f"scenes-{VERSION}-{seed}-{n_images}" / split


def label_map_path(image_path: str | Path) -> Path:
    """``.../scene_00012.jpg`` -> ``.../scene_00012.labels.png``."""
    p = Path(image_path)
    return p.with_name(p.stem + ".labels.png")


# --------------------------------------------------------------------------- drawing

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0))


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency random field in [0, 1]: a few random values upsampled bilinearly."""
    small = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    planes = [np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.Resampling.BILINEAR))
              for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.float32) / 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth: a linear gradient or soft blotches between two colours, plus low-frequency
    shading. High-frequency structure belongs to the objects."""
    c1, c2 = _random_colour(rng), _random_colour(rng)
    if rng.random() < 0.5:  # linear gradient
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    else:  # blotches
        t = _smooth_field(rng, h, w, int(rng.integers(3, 10)))[..., 0]
    img = c1 + t[..., None] * (c2 - c1)
    img += (_smooth_field(rng, h, w, 6, 3) - 0.5) * rng.uniform(20, 80)
    return img


def _shape_mask(cls: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the shape's own frame (unit radius)."""
    if cls == "circle":
        return u * u + v * v <= 1.0
    if cls == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if cls == "triangle":
        inside = np.ones(u.shape, dtype=bool)
        for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * math.cos(a) + v * math.sin(a) >= -0.5
        return inside
    if cls == "star":  # five points, inner radius 0.42
        rho, phi = np.hypot(u, v), np.arctan2(v, u)
        sector = 2 * np.pi / 5
        a = np.mod(phi, sector)
        a = np.minimum(a, sector - a)
        x, y = rho * np.cos(a), rho * np.sin(a)
        px, py = 0.42 * math.cos(sector / 2), 0.42 * math.sin(sector / 2)
        return (px - 1.0) * y - py * (x - 1.0) >= 0.0  # origin side of the edge (1,0)->(px,py)
    if cls == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if cls == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    raise ValueError(f"unknown shape class {cls!r}")


# Each class has its own fill pattern family; the pattern's colours, orientation, phase and
# scale are drawn per instance, so neither colour nor one exact pattern names a class.
PATTERNS = {"circle": "dots", "square": "stripes", "triangle": "checks", "star": "speckle", "ring": "rings",
            "cross": "zigzag"}


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours whose luma differs by at least 60 levels, so a pattern survives
    greyscale and colour jitter."""
    while True:
        c1, c2 = _random_colour(rng), _random_colour(rng)
        luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if abs(float((c1 - c2) @ luma)) >= 60.0:
            return c1, c2


def _pattern(kind: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Mix weight in [0, 1] of the pattern ``kind`` in the shape's frame; ``period`` is in
    the same units as ``u``, ``v`` (shape radii)."""
    a = rng.uniform(0, np.pi)
    x, y = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi / period
    if kind == "stripes":
        t = np.sin(x * w + phase) > 0
    elif kind == "checks":
        t = (np.sin(x * w + phase) > 0) ^ (np.sin(y * w) > 0)
    elif kind == "dots":
        t = (np.cos(x * w + phase) + np.cos(y * w)) > 1.0
    elif kind == "rings":
        t = np.sin(np.hypot(u, v) * w + phase) > 0
    elif kind == "zigzag":
        t = np.sin(x * w + 1.5 * np.abs(((y * w / np.pi) % 2.0) - 1.0) * np.pi + phase) > 0
    elif kind == "speckle":  # random cells of half the period
        cells = rng.random((64, 64)) > 0.5
        i = np.clip(((x + 1.5) / (period / 2)).astype(np.int64), 0, 63)
        j = np.clip(((y + 1.5) / (period / 2)).astype(np.int64), 0, 63)
        t = cells[i, j]
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return t.astype(np.float32)


def generate_scene(rng: np.random.Generator, objects: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 HxWx3 image, uint8 HxW label map). ``objects``, a list, receives
    each drawn object as (class id, centre y, centre x, radius, box (y0, y1, x0, x1), mask of
    the box); the scene is the same with or without it."""
    h, w = (int(s) for s in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    img = _background(rng, h, w)
    labels = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        cls_id = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(0.12, 0.3) * min(h, w)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        theta = rng.uniform(0, 2 * np.pi)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = (xx - cx) / r, (yy - cy) / r
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        mask = _shape_mask(CLASSES[cls_id], u, v)
        c1, c2 = _contrasting_colours(rng)
        period = max(rng.uniform(0.3, 0.45), 12.0 / r)  # at least 12 pixels
        t = _pattern(PATTERNS[CLASSES[cls_id]], rng, u, v, period)
        fill = c1 + t[..., None] * (c2 - c1)
        region = img[y0:y1, x0:x1]
        region[mask] = fill[mask]
        labels[y0:y1, x0:x1][mask] = cls_id
        if objects is not None:
            objects.append((cls_id, cy, cx, r, (y0, y1, x0, x1), mask))
    img += rng.normal(0.0, rng.uniform(2.0, 6.0), size=(h, w, 1)).astype(np.float32)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8), labels


def _write_one(args) -> list[str]:
    folder, seed, split_code, i = args
    image, labels = generate_scene(np.random.default_rng((seed, split_code, i)))
    name = f"scene_{i:05d}"
    Image.fromarray(image).save(Path(folder) / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
    Image.fromarray(labels, "L").save(Path(folder) / f"{name}.labels.png", "PNG")
    return [f"{name}.jpg"]


def _is_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def _build(target: Path, seed: int, split: str, count: int, write_one, manifest: dict, subfolders=(),
           workers: int | None = None) -> Path:
    """Fill ``target`` with ``write_one((folder, seed, split code, i))`` for i < ``count`` (each
    returns the names it wrote) in a temporary folder renamed into place, so a
    folder that exists is complete; ``manifest`` gets the names and lands in MANIFEST."""
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=target.parent))
    try:
        for name in subfolders:
            (tmp / name).mkdir()
        jobs = [(str(tmp), seed, SPLITS[split], i) for i in range(count)]
        workers = min(16, os.cpu_count() or 1) if workers is None else workers
        if workers > 1 and count >= 32:
            with ProcessPoolExecutor(workers) as pool:
                written = list(pool.map(write_one, jobs, chunksize=8))
        else:
            written = [write_one(j) for j in jobs]
        names = [n for w in written for n in w]
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "images": names}, indent=1))
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)  # left over from an interrupted older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # someone else won the race only if theirs is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check(split: str, count: int, what: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if count < 1:
        raise ValueError(f"{what} must be positive, got {count}")


def ensure_scenes(n_images: int = 512, seed: int = 0, root: str | Path | None = None, split: str = "train",
                  workers: int | None = None) -> Path:
    """Generate (or reuse) ``n_images`` scenes of ``split``; returns the folder holding them."""
    _check(split, n_images, "n_images")
    manifest = {"version": VERSION, "seed": seed, "split": split, "n_images": n_images, "classes": list(CLASSES)}
    return _build(scenes_dir(n_images, seed, root, split), seed, split, n_images, _write_one, manifest,
                  workers=workers)


# --------------------------------------------------------------------------- objects: a labelled ImageFolder

OBJECT_SIZE = 96            # side of the saved object crops
OBJECT_CONTEXT = 1.2        # crop side / object diameter
OBJECT_MIN_VISIBLE = 0.6    # share of an object's own pixels still its class after later objects are drawn


def object_crops(image: np.ndarray, labels: np.ndarray, objects: list) -> list[tuple[int, np.ndarray]]:
    """(class id, uint8 OBJECT_SIZE^2 x 3 crop) of every object of a scene that later objects
    leave at least OBJECT_MIN_VISIBLE visible: a square of OBJECT_CONTEXT x its diameter
    around its centre, shifted to lie inside the image."""
    h, w = labels.shape
    crops = []
    for cls_id, cy, cx, r, (y0, y1, x0, x1), mask in objects:
        if not mask.any() or (labels[y0:y1, x0:x1][mask] == cls_id).mean() < OBJECT_MIN_VISIBLE:
            continue
        side = min(int(round(2 * r * OBJECT_CONTEXT)), h, w)
        top = int(min(max(round(cy - side / 2), 0), h - side))
        left = int(min(max(round(cx - side / 2), 0), w - side))
        crop = Image.fromarray(image[top:top + side, left:left + side])
        crops.append((cls_id, np.asarray(crop.resize((OBJECT_SIZE, OBJECT_SIZE), Image.Resampling.BILINEAR))))
    return crops


def objects_dir(n_scenes: int, seed: int = 0, root: str | Path | None = None, split: str = "train") -> Path:
    """The folder :func:`ensure_objects` fills for these arguments."""
    return cache_root(root) / f"objects-{VERSION}-{seed}-{n_scenes}" / split


def _write_objects(args) -> list[str]:
    folder, seed, split_code, i = args
    objects: list = []
    image, labels = generate_scene(np.random.default_rng((seed, split_code, i)), objects)
    names = []
    for k, (cls_id, crop) in enumerate(object_crops(image, labels, objects)):
        name = f"{CLASSES[cls_id]}/scene_{i:05d}_{k}.jpg"
        Image.fromarray(crop).save(Path(folder) / name, "JPEG", quality=JPEG_QUALITY)
        names.append(name)
    return names


def ensure_objects(n_scenes: int = 256, seed: int = 0, root: str | Path | None = None, split: str = "train",
                   workers: int | None = None) -> Path:
    """The objects of the first ``n_scenes`` scenes of ``split`` (the same scenes as
    :func:`ensure_scenes` draws) as an ImageFolder, one sub-folder per object class: an image
    classification task from the built-in data (generated once, cached like the scenes)."""
    _check(split, n_scenes, "n_scenes")
    manifest = {"version": VERSION, "seed": seed, "split": split, "n_scenes": n_scenes, "classes": list(CLASSES[1:])}
    return _build(objects_dir(n_scenes, seed, root, split), seed, split, n_scenes, _write_objects, manifest,
                  CLASSES[1:], workers)


def load_label_map(image_path: str | Path) -> np.ndarray:
    """The uint8 (H, W) class map saved beside a scene image."""
    with Image.open(label_map_path(image_path)) as im:
        return np.asarray(im, dtype=np.uint8)
