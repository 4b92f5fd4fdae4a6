"""The ``torch`` backend: PIL decoding and augmentation in DataLoader workers.

The portable CPU fast path. Per sample, ONE decode serves every view of the recipe:

1. open the file (header only), draw every view's parameters (:mod:`pipelines.sampler`),
   then ask libjpeg for the largest DCT down-scaling (1/2, 1/4, 1/8) that still leaves each
   crop window at least its view's output size (``Image.draft``), so large images are never
   decoded in full;
2. crop + resize each view with the window mapped into the reduced image (coords stay in
   ORIGINAL image pixels): antialiased bilinear, by :func:`pipelines.resample.crop_resize`
   straight into the planar uint8 layout the colour pass reads (about half the time of
   PIL's resize), or by PIL's ``Image.resize(size, box=...)`` for ``colour='pil'``;
3. colour work, flip folded into the copy into the batch buffer. ``colour='device'`` (the
   default): workers ship the uint8 crops, and the
   drawn jitter, grayscale, blur, solarize and the normalisation run over the whole batch on
   the training device in :mod:`pipelines.colour` (float semantics, jitter in the fixed
   order brightness, contrast, saturation, hue): on a GPU as tensor ops after a pinned,
   non-blocking copy; on the CPU as the fused numba pass, in a thread that overlaps the
   consumer. ``colour='fused'``: the same fused pass in each worker, which then ships
   float32 views; fresh shared memory for 4x the bytes costs about as much as the pass
   itself (on 2 cores with photos, 'device' ran x1.01-1.2 the rate of 'fused').
   ``colour='pil'``: per view on uint8 PIL images (look-up tables, blends, PIL's box-pass
   Gaussian blur; jitter in the drawn random order, as torchvision on PIL images); workers
   then ship uint8 NHWC views and the main process normalises them on the device. All use
   the same per-sample draws. On 2 cores at 224 px the fused pass costs about a quarter of
   the PIL ops' time.

Determinism: epoch order and sharding are :mod:`pipelines.epoch`'s; a sample's draws come
from (seed, epoch, dataset index, view) only, so the output depends neither on the number
of workers nor on which rank or worker handles it. Unreadable images, and those whose
header declares more than ``max_pixels`` pixels (:mod:`pipelines.image_header`; never
decoded), follow :mod:`pipelines.corrupt` (replaced by the next readable sample of the
epoch order).
"""
from __future__ import annotations

import functools
import gc
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageFilter

try:  # deprecated in torchvision 0.29 in favour of torchcodec; PIL decodes where it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - depends on the torchvision version
    decode_jpeg = None

from .geometry import window_to_coords

from . import resample, sampler
from .batch import Batch, check_loader_options
from .colour import ColourAugment, ColourParams, to_device
from .colour import apply_colour as apply_batch_colour
from .colour_cpu import LUMA
from .corrupt import (MAX_REPLACEMENTS, CorruptFiles, CorruptImageError, plain_reason, replacement_positions,
                      too_many_unreadable)
from .epoch import EpochCursor, epoch_order, rank_positions
from .image_folder import scan_image_folder
from .image_header import DEFAULT_MAX_PIXELS, open_image
from .prefetch import hand_over
from .recipe import BYOL, Recipe, ViewRecipe

_JITTER_OPS = sampler.JITTER_OPS
COLOUR_MODES = ("auto", "fused", "pil", "device")


# --------------------------------------------------------------------------- per-view draws

@dataclass(frozen=True)
class ViewParams:
    """Every random decision for one view, for the PIL colour ops. ``jitter`` lists
    (operation, factor) in the order applied (empty when colour jitter is not applied; an
    operation of zero strength is left out); ``blur_sigma`` is None for no blur."""
    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: tuple[tuple[str, float], ...]
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def view_params(row: np.ndarray, view: ViewRecipe) -> ViewParams:
    """One view's row of :mod:`pipelines.sampler` draws as :class:`ViewParams`."""
    p = {name: row[i] for name, i in sampler.P.items()}
    jitter: tuple[tuple[str, float], ...] = ()
    if p["jitter"] > 0.5:
        strength = {"brightness": view.brightness, "contrast": view.contrast, "saturation": view.saturation,
                    "hue": view.hue}
        jitter = tuple((name, float(p[name])) for name in sampler.jitter_order(p["jitter_order"]) if strength[name] > 0)
    return ViewParams(int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"]), bool(p["flip"] > 0.5), jitter,
                      bool(p["grayscale"] > 0.5), float(p["sigma"]) if p["blur"] > 0.5 else None,
                      bool(p["solarize"] > 0.5))


# --------------------------------------------------------------------------- uint8 colour ops

_IDENTITY = np.arange(256, dtype=np.float64)


def _lut(values: np.ndarray) -> list[int]:
    """float table -> uint8 table with PIL's blend semantics (clip, then truncate)."""
    return np.clip(values, 0, 255).astype(np.uint8).tolist() * 3


def _grey_mean(img: Image.Image) -> int:
    """Mean of the ITU-R 601 luma, as ImageEnhance.Contrast uses, from one RGB histogram."""
    hist = np.asarray(img.histogram(), dtype=np.float64).reshape(3, 256)
    means = hist @ _IDENTITY / max(hist[0].sum(), 1.0)
    return int(means @ np.array(LUMA) + 0.5)


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
    """'auto' is 'device': the workers only crop, and the colour work runs batched on the
    training device (on the CPU as the fused pass, beside the consumer)."""
    if colour not in COLOUR_MODES:
        raise ValueError(f"colour must be one of {COLOUR_MODES}, got {colour!r}")
    return "device" if colour == "auto" else colour


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


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """A JPEG's pixels as (H, W, 3) uint8 through torchvision's libjpeg-turbo decoder.

    The same pixels as PIL's decode, in half the time of PIL's decode plus its copy into an
    array (PIL keeps RGB at four bytes a pixel and repacks it on the way out); torchvision
    returns a channel-first view of interleaved memory, so no copy is made here."""
    try:
        x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:  # torchvision prefixes libjpeg's message with its source location
        raise OSError(f"cannot decode JPEG data: {str(exc).rsplit(', ', 1)[-1]}") from exc
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def render_views(path: str | Path, recipe: Recipe, image_size: int, seed: int, epoch: int, sample: int,
                 reducing_gap: float | None = 2.0, colour: bool = True, spec: np.ndarray | None = None,
                 planar: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[list[np.ndarray], list[tuple[float, ...]], np.ndarray]:
    """Decode ``path`` once and produce every view of the recipe as uint8 arrays (flip
    applied), their coords per the box contract, and the (V, len(PARAM_NAMES)) draws of
    :mod:`pipelines.sampler` for key (seed, epoch, sample).

    Resampling is antialiased bilinear (PIL's filter, as torchvision's on PIL images).
    ``planar=False``: HxWx3 views from PIL's ``Image.resize``; where a window is at least
    ``reducing_gap`` times the output size it is first box-reduced by an integer factor
    (PIL's ``reducing_gap``; Pillow calls the result indistinguishable from the direct
    resize in most cases from 3.0 up, 2.0 trades a little of that for speed; None turns it
    off; with JPEG draft decoding it rarely triggers). ``planar=True`` (no colour work):
    3xHxW views from :func:`pipelines.resample.crop_resize`, the same filter in about half
    of PIL's time, in the layout the colour pass reads; an RGB or grey JPEG that needs no
    draft reduction is then decoded by :func:`decode_jpeg_rgb`. ``colour=False`` leaves the
    colour work out (the caller applies the drawn parameters itself). An image of more than
    ``max_pixels`` pixels is refused from its header, undecoded
    (:class:`pipelines.image_header.ImageTooLarge`)."""
    if planar and colour:
        raise ValueError("planar views leave the colour work to the caller: pass colour=False")
    spec = sampler.recipe_spec(recipe, image_size) if spec is None else spec
    sizes = [int(s) for s in spec[:, sampler.S["size"]]]
    data = path.read() if hasattr(path, "read") else Path(path).read_bytes()
    pixels = None
    with open_image(data, max_pixels) as img:
        width, height = img.size
        rows = np.zeros((len(recipe.views), len(sampler.PARAM_NAMES)))
        sampler.draw_sample(rows, spec, seed, epoch, sample, height, width)
        params = [view_params(r, v) for r, v in zip(rows, recipe.views)]
        scale = 1.0
        f = int(resample.decode_reduction(rows, spec[:, sampler.S["size"]])) if img.format == "JPEG" else 1
        if planar and f == 1 and img.format == "JPEG" and img.mode in ("RGB", "L") and decode_jpeg is not None:
            pixels = decode_jpeg_rgb(data)
        else:
            if f > 1:
                drafted = img.draft("RGB", (width // f, height // f))
                if drafted is not None:
                    scale = width / drafted[1][2]
            img.load()
            img = _to_rgb(img)
            if planar:
                pixels = np.asarray(img)
    arrays, coords = [], []
    for p, view, size in zip(params, recipe.views, sizes):
        top, left, h, w = p.top / scale, p.left / scale, p.height / scale, p.width / scale
        if planar:
            arr = np.empty((3, size, size), dtype=np.uint8)
            resample.crop_resize(pixels, top, left, h, w, size, p.flip, arr)
        else:
            out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h),
                             reducing_gap=reducing_gap)
            if colour:
                out = apply_colour(out, p, view.solarize_threshold)
            arr = np.asarray(out)
            arr = arr[:, ::-1] if p.flip else arr
        arrays.append(arr)
        coords.append(window_to_coords(p.top, p.left, p.height, p.width, height, width, p.flip))
    return arrays, coords, rows


# --------------------------------------------------------------------------- epoch plan

class _EpochPlan:
    """DataLoader sampler: yields one descriptor per batch, (epoch, positions, indices)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int,
                 drop_last: bool, shuffle: bool, source: str):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.drop_last, self.shuffle = rank, world_size, drop_last, shuffle
        self.positions = rank_positions(n, batch_size, rank, world_size, drop_last, source)
        self.cursor = EpochCursor(self.num_batches())

    def num_batches(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __len__(self) -> int:
        return max(self.num_batches() - self.cursor.start_batch, 0)

    run_on = False   # set by a loader whose workers outlive a pass: see TorchLoader.__iter__

    def __iter__(self):
        # the DataLoader may ask more than once per pass: each call reads the same cursor
        if self.run_on:
            return self._from(self.cursor.epoch, self.cursor.start_batch)
        return self._batches(self.cursor.epoch, self.cursor.start_batch)

    def _from(self, epoch: int, start: int):
        """Epoch ``epoch`` from batch ``start``, then every following epoch from its first batch."""
        while True:
            yield from self._batches(epoch, start)
            epoch, start = epoch + 1, 0

    def _batches(self, epoch: int, start: int):
        order = epoch_order(self.n, self.seed, epoch, self.shuffle)
        for b in range(start, self.num_batches()):
            pos = self.positions[b * self.batch_size:(b + 1) * self.batch_size]
            yield epoch, tuple(int(p) for p in pos), tuple(int(order[p % self.n]) for p in pos)


# --------------------------------------------------------------------------- worker side

class ViewPlanDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches, keyed by an :class:`_EpochPlan` descriptor.

    Returns ``(views, coords B x V x 4 float32, index B int64, skipped, bad)``: ``views`` one
    tensor per view (uint8 B x 3 x S x S for colour 'device', uint8 B x S x S x 3 for 'pil',
    float32 channels-last B x 3 x S x S for 'fused'), ``bad`` the (path, reason) of the
    unreadable files met.
    """

    def __init__(self, paths: list[Path], recipe: Recipe, image_size: int, seed: int, on_corrupt: str = "skip",
                 reducing_gap: float | None = 2.0, max_replacements: int = MAX_REPLACEMENTS, colour: str = "pil",
                 shuffle: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths = [str(p) for p in paths]
        self.recipe, self.image_size, self.seed = recipe, image_size, seed
        self.spec = sampler.recipe_spec(recipe, image_size)
        self.sizes = recipe.output_sizes(image_size)
        self.on_corrupt, self.reducing_gap, self.max_replacements = on_corrupt, reducing_gap, max_replacements
        self.colour = resolve_colour(colour)
        # workers crop straight into the planar uint8 layout the colour pass reads (PIL's colour
        # ops work on interleaved images)
        self.planar = self.colour != "pil"
        self.shuffle, self.max_pixels = shuffle, max_pixels
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.paths), self.seed, epoch, self.shuffle))
        return self._order[1]

    def sample(self, epoch: int, position: int, index: int):
        """Every view of the sample at ``position`` of the epoch order (``index`` is its dataset
        index), or of the next readable one; returns (arrays, coords, draws, used index, bad)."""
        bad = []
        order = None
        for k, pos in enumerate(replacement_positions(position, len(self.paths), self.max_replacements)):
            if k > 0:
                order = self._epoch_order(epoch) if order is None else order
                index = int(order[pos])
            path = self.paths[index]
            try:
                arrays, coords, rows = render_views(path, self.recipe, self.image_size, self.seed, epoch, index,
                                                    self.reducing_gap, colour=self.colour == "pil", spec=self.spec,
                                                    planar=self.planar, max_pixels=self.max_pixels)
                return arrays, coords, rows, index, bad
            except Exception as exc:  # PIL raises many types for damaged files
                if self.on_corrupt == "error":
                    raise CorruptImageError(f"cannot decode image {path}: {plain_reason(str(exc))}") from exc
                bad.append((path, str(exc) or type(exc).__name__))
        raise too_many_unreadable(len(bad), bad[-1][0])

    def __getitem__(self, desc):
        epoch, positions, indices = desc
        b, nv = len(positions), len(self.sizes)
        views = [torch.empty((b, 3, s, s) if self.planar else (b, s, s, 3), dtype=torch.uint8) for s in self.sizes]
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.colour in ("pil", "device"):
            for v in views:
                v.share_memory_()  # filled in place: no copy into shared memory on the way out
        coords = torch.empty((b, nv, 4), dtype=torch.float32)
        used = torch.empty((b,), dtype=torch.int64)
        arrays_np = [v.numpy() for v in views]
        c = coords.numpy()
        drawn = np.zeros((b, nv, len(sampler.PARAM_NAMES)))
        bad_files, skipped = [], 0
        for k, (pos, idx) in enumerate(zip(positions, indices)):
            arrays, xy, rows, used_idx, bad = self.sample(epoch, pos, idx)
            for v in range(nv):
                arrays_np[v][k] = arrays[v]
            c[k] = xy
            drawn[k] = rows
            used[k] = used_idx
            skipped += bool(bad)
            bad_files.extend(bad)
        if self.colour in ("pil", "device"):
            return tuple(views), coords, used, skipped, bad_files, drawn
        out = []
        for i, view in enumerate(self.recipe.views):
            x = apply_batch_colour(views[i], sampler.colour_params(drawn[:, i]),
                                   view.solarize_threshold, self.recipe.mean, self.recipe.std, engine="numba")
            out.append(x.share_memory_() if in_worker else x)
        return tuple(out), coords, used, skipped, bad_files, drawn


def _no_collate(item):
    return item


def _stop_signals_from_owner_only(owner: int, worker_id: int) -> None:
    """A worker ends on SIGTERM or SIGUSR1 only when ``owner``, the process that iterates the
    loader, sent it (the DataLoader's and multiprocessing's shutdown) or has gone. Slurm and
    torchrun send these signals to every process of a job; the training process handles them
    (finish the step, save), and a worker killed by one would fail the batch that process may
    be waiting for. The signals are blocked in the worker and read by a thread that sees the
    sender."""
    if not hasattr(signal, "sigwaitinfo"):   # not on macOS or Windows: the default actions stay
        return
    stops = {signal.SIGTERM, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)   # threads started later inherit the mask

    def wait():
        while True:
            info = signal.sigwaitinfo(stops)
            if info.si_pid == owner or not _alive(owner):
                os._exit(128 + info.si_signo)
    threading.Thread(target=wait, name="stop-signals", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# --------------------------------------------------------------------------- main-process side

def normalise_uint8(views: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> float32 (B, 3, H, W) channels-last, (x/255 - mean)/std.

    Works on the (B*H, W*3) view with per-channel constants tiled along a row: broadcasting
    a 3-vector over an innermost dimension of 3 would defeat vectorisation."""
    b, h, w, c = views.shape
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).repeat(w)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).repeat(w)
    x = views.reshape(b * h, w * c).float()
    torch.addcmul(to_device(shift, x.device), x, to_device(scale, x.device), out=x)
    return x.view(b, h, w, c).permute(0, 3, 1, 2)  # NHWC memory = channels-last NCHW


class TorchLoader:
    """View-plan loader over an image folder (see the module docstring for the contract).

    ``last_params`` holds the latest batch's draws, (B, V, len(PARAM_NAMES)) float64."""

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 device: str | torch.device = "cpu", num_workers: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, on_corrupt: str = "skip",
                 pin_memory: bool | None = None, prefetch_factor: int | None = None,
                 persistent_workers: bool | None = None, shuffle: bool = True,
                 reducing_gap: float | None = 2.0, colour: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS):
        check_loader_options(on_corrupt, rank, world_size, seed, max_pixels)
        self.images = scan_image_folder(data_dir)
        self.batch_size, self.image_size, self.recipe = batch_size, image_size, recipe
        self.device = torch.device(device)
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.colour = resolve_colour(colour)
        self.dataset = ViewPlanDataset(list(self.images.paths), recipe, image_size, seed, on_corrupt, reducing_gap,
                                       colour=self.colour, shuffle=shuffle, max_pixels=max_pixels)
        self.plan = _EpochPlan(len(self.images), batch_size, seed, rank, world_size, drop_last, shuffle,
                               str(self.images.root))
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        workers = self.num_workers > 0
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=self.plan, num_workers=self.num_workers,
            collate_fn=_no_collate, pin_memory=pin_memory,
            worker_init_fn=functools.partial(_stop_signals_from_owner_only, os.getpid()),
            prefetch_factor=(prefetch_factor or 2) if workers else None,
            persistent_workers=(workers if persistent_workers is None else persistent_workers and workers))
        # persistent workers read on into the next epoch while this one is consumed: one stream
        # of batches across passes, so an epoch's end costs no stall (see __iter__)
        self.plan.run_on = self._loader.persistent_workers
        self._stream = None
        self._stream_at: tuple[int, int] | None = None   # (epoch, batch) the stream yields next
        self.corrupt = CorruptFiles(on_corrupt)
        self.device_colour = [ColourAugment(v, recipe.mean, recipe.std, reuse_outputs=True) for v in recipe.views]
        self.last_params: np.ndarray | None = None

    def __len__(self) -> int:
        return self.plan.num_batches()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.plan.cursor.set(epoch, start_batch)

    def _to_batch(self, raw) -> tuple[Batch, np.ndarray]:
        views, coords, index, skipped, bad, drawn = raw
        for path, reason in bad:
            self.corrupt.report(path, reason)
        dev = self.device
        mean, std = self.recipe.mean, self.recipe.std
        coords = to_device(coords, dev)   # already pinned where the DataLoader pins: then no copy
        if self.colour == "device":  # uint8 crops: colour work batched on the training device
            views = [aug.apply(to_device(v, dev), sampler.colour_params(drawn[:, k]))
                     for k, (v, aug) in enumerate(zip(views, self.device_colour))]
        elif views[0].dtype == torch.uint8:
            views = [normalise_uint8(to_device(v, dev), mean, std) for v in views]
        else:  # colour work and normalisation done in the worker; channels-last kept (a no-op copy-wise)
            views = [to_device(v, dev).contiguous(memory_format=torch.channels_last) for v in views]
        return Batch(tuple(views), tuple(coords[:, k] for k in range(coords.shape[1])),
                     to_device(index, dev), int(skipped)), drawn

    def _raw_batches(self, epoch: int, start: int) -> Iterator:
        """The pass's raw batches. With persistent workers they come from one stream that runs
        on into the following epochs, so the workers prepare the next epoch's first batches
        while this one ends; a pass that does not start where the stream stands (a
        ``set_epoch`` elsewhere, an abandoned pass) starts the stream again there.

        The DataLoader's iterator, which forks the worker processes, is made here, in the
        caller's thread, not lazily in the colour thread that reads the batches: a fork from a
        thread other than the one that started numba's TBB pool (FFCV starts it on import)
        leaves TBB in an undefined state in the workers, and numba says so on stderr."""
        if self.num_workers > 0 and getattr(self._loader, "_iterator", None) is None:
            gc.collect()  # finalise garbage here, not in the workers about to be forked (a finaliser may hang there)
        if not self.plan.run_on:
            return iter(self._loader)
        if self._stream is None or self._stream_at != (epoch, start):
            self._stream = iter(self._loader)   # (re)starts the sampler at the cursor
        return self._stream_batches(epoch, start)

    def _stream_batches(self, epoch: int, start: int) -> Iterator:
        last = self.plan.num_batches() - 1
        for b in range(start, last + 1):
            raw = next(self._stream)
            self._stream_at = (epoch + 1, 0) if b == last else (epoch, b + 1)
            yield raw

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.plan.cursor.begin_pass()
        # on a CPU device the colour pass runs in a thread beside the consumer
        thread = "torch-colour" if self.colour == "device" and self.device.type == "cpu" else None
        remaining = self.plan.num_batches() - start
        try:
            made = (self._to_batch(raw) for raw in self._raw_batches(epoch, start))   # workers start here
            for batch in hand_over(self, made, thread):  # stops the colour thread before the workers below
                remaining -= 1
                yield batch
        except GeneratorExit:
            # a consumer that takes the pass's last batch and then drops the iterator (a training
            # loop counting its steps) has finished the pass: the workers read on
            if remaining > 0:
                self.close()
            raise
        except BaseException:
            self.close()  # a failed or abandoned pass leaves no half-read persistent workers behind
            raise

    def close(self) -> None:
        """Stop the worker processes now (they are restarted by the next pass)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None
        self._stream = self._stream_at = None


def build_torch_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                       **options) -> TorchLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`TorchLoader`)."""
    return TorchLoader(data_dir, batch_size, image_size, recipe, **options)
