"""The ``torch`` backend: PIL decoding and augmentation in DataLoader workers.

The portable CPU fast path. Per sample, ONE decode serves both views:

1. open the file (header only), draw both views' parameters, then ask libjpeg for the
   largest DCT down-scaling (1/2, 1/4, 1/8) that still leaves both crop windows at least
   the output size (``Image.draft``), so large images are never decoded in full;
2. crop + resize each view in one ``Image.resize(size, box=...)`` call with the window
   mapped into the reduced image (coords stay in ORIGINAL image pixels);
3. colour work, flip folded into the copy into the batch buffer. ``colour='fused'`` (the
   default where numba is installed): the worker runs the drawn jitter, grayscale, blur,
   solarize and the normalisation over its whole batch in one fused pass per view
   (:mod:`pipelines.colour`'s numba engine: float semantics, jitter in the fixed order
   brightness, contrast, saturation, hue) and ships float32 channels-last views.
   ``colour='pil'``: per view on uint8 PIL images (look-up tables, blends, PIL's box-pass
   Gaussian blur; jitter in the drawn random order, as torchvision on PIL images); workers
   then ship uint8 NHWC views (a quarter of the float IPC) and the main process normalises
   them on the device. Both use the same per-sample draws. On 2 cores at 224 px the fused
   pass costs about a quarter of the PIL ops' time.

Determinism: epoch order is a permutation drawn from (seed, epoch); the random draws of
the sample at position p of that order come from (seed, epoch, p) only, so the output does
not depend on the number of workers or on which rank/worker handles it.

Sharding: rank r takes positions r, r + world_size, r + 2 * world_size, ... of the epoch
order. drop_last=True (default): every rank gets the same number of full batches,
``N // (world_size * batch_size)``; the few samples left over are skipped this epoch (a
different few each epoch). drop_last=False: the order is padded by repeating its first
samples up to a multiple of world_size, so every sample is seen at least once (the padding
twice) and the last batch of a rank may be short.

Unreadable images (on_corrupt='skip'): the sample is replaced by another image chosen
from the same per-sample random stream, the replacement is counted in ``Batch.skipped``
and the file is logged once (per loader). on_corrupt='error' raises naming the file.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageFilter

from pixpro_fast.geometry import window_to_coords

from . import colour_cpu
from .batch import Batch, check_loader_options
from .epoch import EpochCursor
from .colour import ColourParams
from .colour import apply_colour as apply_batch_colour
from .crop import sample_crop
from .image_folder import scan_image_folder
from .recipe import BYOL, Recipe, ViewRecipe

log = logging.getLogger(__name__)

_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
COLOUR_MODES = ("auto", "fused", "pil")
_DRAFT_FACTORS = (8, 4, 2)


class CorruptImageError(RuntimeError):
    """An image file could not be decoded."""


# --------------------------------------------------------------------------- per-view draws

@dataclass(frozen=True)
class ViewParams:
    """Every random decision for one view. ``jitter`` lists (operation, factor) in the order
    applied (empty when colour jitter is not applied); ``blur_sigma`` is None for no blur."""
    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: tuple[tuple[str, float], ...]
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def _factor_range(strength: float) -> tuple[float, float] | None:
    return (max(0.0, 1.0 - strength), 1.0 + strength) if strength > 0 else None


def sample_view_params(rng: np.random.Generator, view: ViewRecipe, image_height: int,
                       image_width: int) -> ViewParams:
    """Draw one view's parameters with the distribution of the torchvision recipe
    (RandomResizedCrop, flip, RandomApply(ColorJitter) with a random op order, RandomGrayscale,
    RandomApply(GaussianBlur), RandomSolarize)."""
    top, left, h, w = sample_crop(rng, image_height, image_width, view.crop_scale, view.crop_ratio)
    flip = bool(rng.random() < view.flip_p)
    jitter: tuple[tuple[str, float], ...] = ()
    if rng.random() < view.jitter_p:
        ranges = {"brightness": _factor_range(view.brightness), "contrast": _factor_range(view.contrast),
                  "saturation": _factor_range(view.saturation),
                  "hue": (-view.hue, view.hue) if view.hue > 0 else None}
        ops = []
        for k in rng.permutation(4):
            name = _JITTER_OPS[k]
            if ranges[name] is not None:
                ops.append((name, float(rng.uniform(*ranges[name]))))
        jitter = tuple(ops)
    grayscale = bool(rng.random() < view.grayscale_p)
    blur_sigma = float(rng.uniform(*view.blur_sigma)) if rng.random() < view.blur_p else None
    solarize = bool(rng.random() < view.solarize_p)
    return ViewParams(top, left, h, w, flip, jitter, grayscale, blur_sigma, solarize)


def draft_factor(params: list[ViewParams] | tuple[ViewParams, ...], size: int) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) keeping every crop window >= ``size`` pixels."""
    smallest = min(min(p.height, p.width) for p in params)
    for f in _DRAFT_FACTORS:
        if smallest >= f * size:
            return f
    return 1


# --------------------------------------------------------------------------- uint8 colour ops

_IDENTITY = np.arange(256, dtype=np.float64)


def _lut(values: np.ndarray) -> list[int]:
    """float table -> uint8 table with PIL's blend semantics (clip, then truncate)."""
    return np.clip(values, 0, 255).astype(np.uint8).tolist() * 3


def _grey_mean(img: Image.Image) -> int:
    """Mean of the ITU-R 601 luma, as ImageEnhance.Contrast uses, from one RGB histogram."""
    hist = np.asarray(img.histogram(), dtype=np.float64).reshape(3, 256)
    means = hist @ _IDENTITY / max(hist[0].sum(), 1.0)
    return int(means @ np.array([0.299, 0.587, 0.114]) + 0.5)


def adjust_brightness(img: Image.Image, factor: float) -> Image.Image:
    return img.point(_lut(_IDENTITY * factor))


def adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    mean = _grey_mean(img)
    return img.point(_lut(mean + factor * (_IDENTITY - mean)))


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    return Image.blend(img.convert("L").convert("RGB"), img, factor)


def adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    """Rotate the HSV hue by ``factor`` turns (|factor| <= 0.5), on uint8 as torchvision does for PIL."""
    shift = int(factor * 255)
    if shift == 0:
        return img
    h, s, v = img.convert("HSV").split()
    h = h.point([(i + shift) % 256 for i in range(256)])
    return Image.merge("HSV", (h, s, v)).convert("RGB")


_ADJUST = {"brightness": adjust_brightness, "contrast": adjust_contrast,
           "saturation": adjust_saturation, "hue": adjust_hue}


def _solarize_lut(threshold: int) -> list[int]:
    return [i if i < threshold else 255 - i for i in range(256)] * 3


def apply_colour(img: Image.Image, params: ViewParams, solarize_threshold: int = 128) -> Image.Image:
    """Jitter (in the drawn order), grayscale, blur and solarize of an RGB view."""
    for name, factor in params.jitter:
        img = _ADJUST[name](img, factor)
    if params.grayscale:
        img = img.convert("L").convert("RGB")
    if params.blur_sigma is not None:
        img = img.filter(ImageFilter.GaussianBlur(params.blur_sigma))
    if params.solarize:
        img = img.point(_solarize_lut(solarize_threshold))
    return img


def colour_params(params: list[ViewParams]) -> ColourParams:
    """The colour decisions of a batch of views as :class:`pipelines.colour.ColourParams`
    (the same draws; the fused engine applies jitter in its fixed order)."""
    b = len(params)
    jitter = torch.tensor([bool(p.jitter) for p in params], dtype=torch.bool)
    factors = {name: torch.full((b,), 0.0 if name == "hue" else 1.0) for name in _JITTER_OPS}
    for k, p in enumerate(params):
        for name, value in p.jitter:
            factors[name][k] = value
    return ColourParams(jitter, factors["brightness"], factors["contrast"], factors["saturation"], factors["hue"],
                        torch.tensor([p.grayscale for p in params], dtype=torch.bool),
                        torch.tensor([p.blur_sigma or 0.0 for p in params], dtype=torch.float32),
                        torch.tensor([p.solarize for p in params], dtype=torch.bool))


def resolve_colour(colour: str) -> str:
    """'auto' is 'fused' where numba is installed, else 'pil'."""
    if colour not in COLOUR_MODES:
        raise ValueError(f"colour must be one of {COLOUR_MODES}, got {colour!r}")
    if colour != "auto":
        if colour == "fused" and not colour_cpu.available():
            raise ValueError("colour='fused' needs numba (pip install numba); use colour='pil'")
        return colour
    return "fused" if colour_cpu.available() else "pil"


# --------------------------------------------------------------------------- decoding

def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha dropped, palette expanded, CMYK / grayscale converted)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey -> 8-bit, scaled
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a * (255.0 / max(a.max(), 255.0)), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def render_views(path: str | Path, rng: np.random.Generator, recipe: Recipe, size: int,
                 reducing_gap: float | None = 2.0,
                 colour: bool = True) -> tuple[list[np.ndarray], list[tuple[float, ...]], list[ViewParams]]:
    """Decode ``path`` once and produce both views as uint8 HxWx3 arrays (flip applied),
    their coords per the box contract, and the parameters drawn.

    Resampling is PIL's antialiased bilinear, as torchvision's on PIL images; where a window
    is at least ``reducing_gap`` times the output size it is first box-reduced by an integer
    factor (PIL's ``reducing_gap``; Pillow calls the result indistinguishable from the direct
    resize in most cases from 3.0 up, 2.0 trades a little of that for speed). None turns it
    off. With JPEG draft decoding this step rarely triggers. ``colour=False`` leaves the colour
    work out (the caller applies the drawn parameters itself)."""
    with Image.open(path) as img:
        width, height = img.size
        params = [sample_view_params(rng, v, height, width) for v in recipe.views]
        scale = 1.0
        if img.format == "JPEG":
            f = draft_factor(params, size)
            if f > 1:
                drafted = img.draft("RGB", (width // f, height // f))
                if drafted is not None:
                    scale = width / drafted[1][2]
        img.load()
        img = _to_rgb(img)
    arrays, coords = [], []
    for p, view in zip(params, recipe.views):
        box = (p.left / scale, p.top / scale, (p.left + p.width) / scale, (p.top + p.height) / scale)
        out = img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=reducing_gap)
        if colour:
            out = apply_colour(out, p, view.solarize_threshold)
        arr = np.asarray(out)
        arrays.append(arr[:, ::-1] if p.flip else arr)
        coords.append(window_to_coords(p.top, p.left, p.height, p.width, height, width, p.flip))
    return arrays, coords, params


# --------------------------------------------------------------------------- epoch plan

def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of dataset indices for an epoch (identical on every rank)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng((seed, epoch, 0x5EED)).permutation(n)


def shard_positions(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """Positions in the epoch order that this rank reads, in reading order (see module doc)."""
    if drop_last:
        per_rank = (n // (world_size * batch_size)) * batch_size
    else:
        per_rank = -(-n // world_size)
    return rank + world_size * np.arange(per_rank)


def _sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    return np.random.default_rng((seed, epoch, position))


class _EpochPlan:
    """DataLoader sampler: yields one descriptor per batch, (epoch, positions, indices)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int,
                 drop_last: bool, shuffle: bool):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.drop_last, self.shuffle = rank, world_size, drop_last, shuffle
        self.positions = shard_positions(n, batch_size, rank, world_size, drop_last)
        self.cursor = EpochCursor(self.num_batches())

    def num_batches(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __len__(self) -> int:
        return max(self.num_batches() - self.cursor.start_batch, 0)

    def __iter__(self):
        # the DataLoader may ask more than once per pass: each call reads the same cursor
        return self._batches(self.cursor.epoch, self.cursor.start_batch)

    def _batches(self, epoch: int, start: int):
        order = epoch_order(self.n, self.seed, epoch, self.shuffle)
        for b in range(start, self.num_batches()):
            pos = self.positions[b * self.batch_size:(b + 1) * self.batch_size]
            yield epoch, tuple(int(p) for p in pos), tuple(int(order[p % self.n]) for p in pos)


# --------------------------------------------------------------------------- worker side

class TwoViewDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches, keyed by an :class:`_EpochPlan` descriptor.

    Returns ``(views1 uint8 BxSxSx3, views2, coords Bx2x4 float32, index B int64, skipped, bad_paths)``.
    """

    def __init__(self, paths: list[Path], recipe: Recipe, size: int, seed: int, on_corrupt: str = "skip",
                 reducing_gap: float | None = 2.0, max_replacements: int = 16, colour: str = "pil"):
        self.paths = [str(p) for p in paths]
        self.recipe, self.size, self.seed = recipe, size, seed
        self.on_corrupt, self.reducing_gap, self.max_replacements = on_corrupt, reducing_gap, max_replacements
        self.colour = resolve_colour(colour)

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, epoch: int, position: int, index: int):
        """Both views of one sample; returns (arrays, coords, view params, used index, bad paths)."""
        rng = _sample_rng(self.seed, epoch, position)
        bad = []
        for _ in range(self.max_replacements + 1):
            path = self.paths[index]
            try:
                arrays, coords, params = render_views(path, rng, self.recipe, self.size, self.reducing_gap,
                                                      colour=self.colour == "pil")
                return arrays, coords, params, index, bad
            except Exception as exc:  # PIL raises many types for damaged files
                if self.on_corrupt == "error":
                    raise CorruptImageError(f"cannot decode image {path}: {exc}") from exc
                bad.append(path)
                index = int(rng.integers(len(self.paths)))
        raise CorruptImageError(f"{len(bad)} unreadable images in a row, last {bad[-1]}; is the dataset damaged?")

    def __getitem__(self, desc):
        epoch, positions, indices = desc
        b, s = len(positions), self.size
        views = torch.empty((2, b, s, s, 3), dtype=torch.uint8)
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.colour == "pil":
            views.share_memory_()  # filled in place: no copy into shared memory on the way out
        coords = torch.empty((b, 2, 4), dtype=torch.float32)
        used = torch.empty((b,), dtype=torch.int64)
        v, c = views.numpy(), coords.numpy()
        bad_paths, skipped, drawn = [], 0, []
        for k, (pos, idx) in enumerate(zip(positions, indices)):
            arrays, xy, params, used_idx, bad = self.sample(epoch, pos, idx)
            v[0, k], v[1, k] = arrays
            c[k] = xy
            drawn.append(params)
            used[k] = used_idx
            skipped += bool(bad)
            bad_paths.extend(bad)
        if self.colour == "pil":
            return views[0], views[1], coords, used, skipped, bad_paths
        out = []
        for i, view in enumerate(self.recipe.views):
            x = apply_batch_colour(views[i].permute(0, 3, 1, 2), colour_params([p[i] for p in drawn]),
                                   view.solarize_threshold, self.recipe.mean, self.recipe.std, engine="numba")
            out.append(x.share_memory_() if in_worker else x)
        return out[0], out[1], coords, used, skipped, bad_paths


def _no_collate(item):
    return item


# --------------------------------------------------------------------------- main-process side

def normalise_uint8(views: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> float32 (B, 3, H, W) channels-last, (x/255 - mean)/std.

    Works on the (B*H, W*3) view with per-channel constants tiled along a row: broadcasting
    a 3-vector over an innermost dimension of 3 would defeat vectorisation."""
    b, h, w, c = views.shape
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).repeat(w)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).repeat(w)
    x = views.reshape(b * h, w * c).float()
    torch.addcmul(shift.to(x.device, non_blocking=True), x, scale.to(x.device, non_blocking=True), out=x)
    return x.view(b, h, w, c).permute(0, 3, 1, 2)  # NHWC memory = channels-last NCHW


class TorchLoader:
    """Two-view loader over an image folder (see the module docstring for the contract)."""

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 device: str | torch.device = "cpu", num_workers: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, on_corrupt: str = "skip",
                 pin_memory: bool | None = None, prefetch_factor: int | None = None,
                 persistent_workers: bool | None = None, shuffle: bool = True,
                 reducing_gap: float | None = 2.0, colour: str = "auto"):
        check_loader_options(on_corrupt, rank, world_size, seed)
        self.images = scan_image_folder(data_dir)
        self.batch_size, self.image_size, self.recipe = batch_size, image_size, recipe
        self.device = torch.device(device)
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.dataset = TwoViewDataset(list(self.images.paths), recipe, image_size, seed, on_corrupt, reducing_gap,
                                      colour=colour)
        self.plan = _EpochPlan(len(self.images), batch_size, seed, rank, world_size, drop_last, shuffle)
        if len(self.plan.positions) == 0:
            raise ValueError(f"{len(self.images)} images under {self.images.root} give no batch of "
                             f"{batch_size} on each of {world_size} ranks (drop_last={drop_last})")
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        workers = self.num_workers > 0
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=self.plan, num_workers=self.num_workers,
            collate_fn=_no_collate, pin_memory=pin_memory,
            prefetch_factor=(prefetch_factor or 2) if workers else None,
            persistent_workers=(workers if persistent_workers is None else persistent_workers and workers))
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self.plan.num_batches()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.plan.cursor.set(epoch, start_batch)

    def _to_batch(self, raw) -> Batch:
        v1, v2, coords, index, skipped, bad = raw
        for path in bad:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping unreadable image %s (replaced by another sample)", path)
        dev, nb = self.device, self.device.type == "cuda"
        mean, std = self.recipe.mean, self.recipe.std
        coords = coords.to(dev, non_blocking=nb)
        if v1.dtype == torch.uint8:
            v1, v2 = (normalise_uint8(v.to(dev, non_blocking=nb), mean, std) for v in (v1, v2))
        else:  # colour work and normalisation done in the worker; channels-last kept (a no-op copy-wise)
            v1, v2 = (v.to(dev, non_blocking=nb).contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        return Batch(v1, v2,
                     coords[:, 0], coords[:, 1], index.to(dev, non_blocking=nb), int(skipped))

    def __iter__(self) -> Iterator[Batch]:
        self.plan.cursor.begin_pass()
        try:
            for raw in self._loader:
                yield self._to_batch(raw)
        except BaseException:
            self.close()  # a failed pass leaves no half-read persistent workers behind
            raise

    def close(self) -> None:
        """Stop the worker processes now (they are restarted by the next pass)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None


def build_torch_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                       **options) -> TorchLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`TorchLoader`)."""
    return TorchLoader(data_dir, batch_size, image_size, recipe, **options)
