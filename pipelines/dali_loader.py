"""The ``dali`` backend: decoding and the whole two-view recipe inside one DALI pipeline.

Per image, one ``pipeline_def`` graph does:

1. ``fn.peek_image_shape`` -> (H, W); the crop window of each view is drawn with DALI random
   operators and arithmetic, with torchvision ``RandomResizedCrop``'s distribution: ten
   tries of (area ~ U(scale), log-aspect ~ U(log ratio)) evaluated as one vector per
   sample, the first that fits wins, else the central fallback (aspect clamped into ratio).
   Sizes are rounded half-up where torchvision rounds half-to-even; that is the only
   difference (exact .5 ties).
2. The image is decoded ONCE (both views share it) and each view is cut out and resized in
   a single ``fn.resize`` with an absolute ROI, so the window is known exactly; a flip is
   the same ROI with its x ends swapped (free). Two ROI decodes (``decoders.image_slice``)
   measured slower on CPU than one full decode shared by the views.
3. Colour jitter with the recipe's probability, in the fixed order brightness, contrast,
   saturation, hue (torchvision draws a random order): brightness and contrast in one
   ``brightness_contrast`` (contrast about the view's mean luma, as torchvision does);
   saturation, hue and grayscale as ONE 3x3 colour matrix per sample (``coord_transform``):
   ``M = Wy + s*cos(t)*K2 + s*sin(t)*K3`` with Wy the luma projection and K2/K3 the chroma
   plane of YIQ, so hue is a YIQ rotation (DALI's ``hsv`` approximation, not torchvision's
   exact HSV shift) and grayscale is s = 0 (luma weights 0.299/0.587/0.114 as torchvision).
4. Gaussian blur as two 1-D ``fn.filter`` passes whose kernel length follows each sample's
   sigma (radius ceil(3 sigma); a 1-tap kernel when the coin says no blur): DALI's
   ``gaussian_blur`` is an order of magnitude slower on CPU. Reflect borders as torchvision.
5. Solarize as ``x ^ ((x >= t) * 255 * coin)`` on uint8 (255 - x == x XOR 255).
6. ``crop_mirror_normalize`` to float32 HWC; the PyTorch side permutes NHWC to an NCHW
   view, which is channels-last memory, with no copy.

The per-sample draws of each view come out as a (B, 16) float32 ``params`` row (see
``PARAM_NAMES``); the loader turns the first seven into ``coords`` with
:func:`pixpro_fast.geometry.windows_to_coords`, and keeps the rows in ``last_params``.

Devices: with a CUDA training device the pipeline decodes with ``device="mixed"`` (nvJPEG)
and runs every image operator on the GPU; random draws and the small per-sample arithmetic
stay on the CPU as argument inputs. On CPU it runs with ``device_id=None``. ``dali_device``
('cpu' | 'gpu' | None = follow the training device) forces either.

Feeding: an external source reads the file bytes in the main process in the order of
:func:`pipelines.torch_loader.epoch_order` and :func:`~pipelines.torch_loader.shard_positions`
(the same epoch order, sharding and drop_last rule as the torch backend). A fresh pipeline
is built per pass with a seed drawn from (seed, epoch, rank, start batch). Guarantee: the
samples of every batch are exact for any (epoch, start_batch); an epoch iterated from batch
0 is reproducible bit for bit on CPU; a run resumed at start_batch > 0 sees the same samples
but new augmentation draws for them.

Bad files: bytes are checked cheaply before DALI sees them (JPEG/PNG/WebP signature, end
marker or declared size). If the DALI decoder still fails (damaged headers or data), the in-flight files are
decoded one by one with the same decoder to find the culprit, which is then treated like the
others, and the pipeline restarts at the failed batch. on_corrupt='skip' replaces a bad file
by the next readable one of the epoch order, counts it in ``Batch.skipped`` and logs it once;
'error' raises :class:`~pipelines.torch_loader.CorruptImageError` naming the file.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from pixpro_fast.geometry import windows_to_coords

from .batch import Batch
from .image_folder import scan_image_folder
from .recipe import BYOL, Recipe, ViewRecipe
from .torch_loader import CorruptImageError, epoch_order, shard_positions

try:
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    _DALI_ERROR: ImportError | None = None
except ImportError as exc:  # optional dependency
    _DALI_ERROR = exc

log = logging.getLogger(__name__)

PARAM_NAMES = ("top", "left", "height", "width", "image_height", "image_width", "flip", "jitter",
               "grayscale", "blur", "solarize", "sigma", "brightness", "contrast", "saturation", "hue")
CROP_TRIES = 10
LUMA = (0.299, 0.587, 0.114)
OUTPUTS = ("view1", "view2", "params1", "params2", "index", "replaced")


def require_dali() -> None:
    if _DALI_ERROR is not None:
        raise ImportError("the 'dali' loader needs NVIDIA DALI; install it with `pip install .[dali]` "
                          f"(package nvidia-dali-cuda130): {_DALI_ERROR}") from _DALI_ERROR


# --------------------------------------------------------------------------- colour algebra

def _yiq_matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Wy, K2, K3): any RGB colour matrix that keeps luma, scales chroma by s and turns it by
    t is ``Wy + s cos(t) K2 + s sin(t) K3`` (Wy + K2 = identity)."""
    yiq = np.array([LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)])
    inv = np.linalg.inv(yiq)
    wy = inv @ np.diag([1.0, 0.0, 0.0]) @ yiq
    k2 = inv @ np.diag([0.0, 1.0, 1.0]) @ yiq
    k3 = inv @ np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) @ yiq
    return wy, k2, k3


def colour_matrix(saturation: float, hue: float) -> np.ndarray:
    """The matrix the pipeline applies for a saturation factor and a hue shift in turns (numpy twin)."""
    wy, k2, k3 = _yiq_matrices()
    t = 2.0 * math.pi * hue
    return wy + saturation * math.cos(t) * k2 + saturation * math.sin(t) * k3


# --------------------------------------------------------------------------- graph pieces

def _f32(values) -> "types.Constant":
    return types.Constant(np.asarray(values, dtype=np.float32))


def _const(like, value: float):
    """A per-sample float scalar equal to ``value`` (shaped like the scalar node ``like``)."""
    return like * 0.0 + float(value)


def _where(cond, a, b):
    """Per-sample select for 0/1 (or bool) ``cond``."""
    return b + cond * (a - b)


def _coin(p: float, like):
    if p <= 0.0:
        return _const(like, 0.0)
    if p >= 1.0:
        return _const(like, 1.0)
    return fn.cast(fn.random.coin_flip(probability=float(p)), dtype=types.FLOAT)


def _uniform(lo: float, hi: float, like, shape=None):
    if hi <= lo:
        return _const(like, lo) if shape is None else like * 0.0 + _f32(np.full(shape, lo))
    if shape is None:
        return fn.random.uniform(range=(float(lo), float(hi)), dtype=types.FLOAT)
    return fn.random.uniform(range=(float(lo), float(hi)), shape=list(shape), dtype=types.FLOAT)


def _round(x):
    return dmath.floor(x + 0.5)


def sample_window(height, width, scale: tuple[float, float], ratio: tuple[float, float], tries: int = CROP_TRIES):
    """Crop window (top, left, h, w) as per-sample float nodes, RandomResizedCrop's distribution."""
    area = height * width
    target = area * _uniform(scale[0], scale[1], height, (tries,))
    aspect = dmath.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), height, (tries,)))
    w = _round(dmath.sqrt(target * aspect))
    h = _round(dmath.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    score = fits * _f32(np.arange(tries, 0, -1))      # the first try that fits scores highest
    best = fn.reductions.max(score)
    pick = (score == best) & fits
    found = best > 0
    w_try, h_try = fn.reductions.sum(w * pick), fn.reductions.sum(h * pick)
    in_ratio = width / height
    w_fall = _where(in_ratio > ratio[1], dmath.max(_round(height * ratio[1]), 1.0), width)
    h_fall = _where(in_ratio < ratio[0], dmath.max(_round(width / ratio[0]), 1.0), height)
    w = _where(found, w_try, w_fall)
    h = _where(found, h_try, h_fall)
    top_try = dmath.min(dmath.floor(_uniform(0.0, 1.0, height) * (height - h + 1)), height - h)
    left_try = dmath.min(dmath.floor(_uniform(0.0, 1.0, height) * (width - w + 1)), width - w)
    top = _where(found, top_try, dmath.floor((height - h) * 0.5))
    left = _where(found, left_try, dmath.floor((width - w) * 0.5))
    return top, left, h, w


def _blur(img, blur_on, sigma, max_sigma: float, on_gpu: bool):
    """Separable Gaussian blur, kernel radius ceil(3 sigma) per sample (radius 0 when off)."""
    reach = int(math.ceil(3.0 * max_sigma))
    offsets = _f32(np.arange(-reach, reach + 1))
    radius = dmath.min(dmath.ceil(3.0 * sigma), float(reach)) * blur_on
    kernel = dmath.exp(-(offsets * offsets) / (2.0 * sigma * sigma)) * (dmath.abs(offsets) <= radius)
    kernel = kernel / fn.reductions.sum(kernel)
    r = fn.cast(radius, dtype=types.INT32)
    kernel = fn.slice(kernel, reach - r, 2 * r + 1, axes=[0], normalized_anchor=False, normalized_shape=False)
    kx, ky = fn.expand_dims(kernel, axes=[0]), fn.expand_dims(kernel, axes=[1])
    if on_gpu:
        kx, ky = kx.gpu(), ky.gpu()
    return fn.filter(fn.filter(img, kx, border="reflect_101"), ky, border="reflect_101")


def _view(image, height, width, view: ViewRecipe, size: int, mean, std, on_gpu: bool, gpu_style: bool):
    """One augmented view of the decoded images; returns (normalised HWC float view, params)."""
    one = _const(height, 1.0)
    top, left, h, w = sample_window(height, width, view.crop_scale, view.crop_ratio)
    flip = _coin(view.flip_p, height)
    x0, x1 = left + flip * w, left + w - flip * w
    img = fn.resize(image, size=[size, size], roi_start=fn.stack(top, x0), roi_end=fn.stack(top + h, x1),
                    roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)

    strengths = (view.brightness, view.contrast, view.saturation, view.hue)
    jitter = _coin(view.jitter_p, height) if any(s > 0 for s in strengths) else _const(height, 0.0)

    def factor(strength):
        if view.jitter_p <= 0 or strength <= 0:
            return one
        return 1.0 + jitter * (_uniform(max(0.0, 1.0 - strength), 1.0 + strength, height) - 1.0)

    bright, contrast, sat = factor(view.brightness), factor(view.contrast), factor(view.saturation)
    hue = jitter * _uniform(-view.hue, view.hue, height) if view.jitter_p > 0 and view.hue > 0 else _const(height, 0.0)
    gray = _coin(view.grayscale_p, height)

    if view.jitter_p > 0 and (view.brightness > 0 or view.contrast > 0):
        mean_rgb = fn.reductions.mean(img, axes=[0, 1])
        luma = mean_rgb[0] * LUMA[0] + mean_rgb[1] * LUMA[1] + mean_rgb[2] * LUMA[2]
        if gpu_style:  # argument inputs must live on the CPU; the mean lives with the image
            img = fn.cast(img * (bright * contrast) + luma * (bright * (1.0 - contrast)), dtype=types.UINT8)
        else:
            img = fn.brightness_contrast(img, brightness=bright, contrast=contrast, contrast_center=luma)
    if (view.jitter_p > 0 and (view.saturation > 0 or view.hue > 0)) or view.grayscale_p > 0:
        wy, k2, k3 = _yiq_matrices()
        s = sat * (1.0 - gray)
        turn = hue * (2.0 * math.pi)
        matrix = _f32(wy) + (s * dmath.cos(turn)) * _f32(k2) + (s * dmath.sin(turn)) * _f32(k3)
        img = fn.coord_transform(img, M=matrix, dtype=types.UINT8)

    blur_on = _coin(view.blur_p, height)
    sigma = _uniform(view.blur_sigma[0], view.blur_sigma[1], height) * blur_on
    if view.blur_p > 0:
        img = _blur(img, blur_on, dmath.max(sigma, 1e-3), view.blur_sigma[1], on_gpu)

    solarize = _coin(view.solarize_p, height)
    if view.solarize_p > 0:
        mask = fn.cast(solarize * 255.0, dtype=types.UINT8)
        img = img ^ ((img >= int(view.solarize_threshold)) * mask)

    out = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC",
                                   mean=[255.0 * m for m in mean], std=[255.0 * s for s in std])
    params = fn.stack(top, left, h, w, height, width, flip, jitter, gray, blur_on, solarize, sigma,
                      bright, contrast, sat, hue)
    return out, params


def two_view_pipeline(source, recipe: Recipe, image_size: int, dali_device: str = "cpu", gpu_style: bool | None = None):
    """The DALI graph (wrap with ``pipeline_def``): encoded bytes -> two views + their params.

    ``source`` yields (list of uint8 byte arrays, int64 indices, uint8 replaced flags) per batch.
    ``gpu_style`` builds the GPU variant of device-sensitive steps (default: when on GPU);
    it runs on CPU too, which is how the tests cover it.
    """
    on_gpu = dali_device == "gpu"
    gpu_style = on_gpu if gpu_style is None else gpu_style
    data, index, replaced = fn.external_source(source=source, num_outputs=3, batch=True,
                                               dtype=[types.UINT8, types.INT64, types.UINT8])
    shape = fn.peek_image_shape(data, dtype=types.FLOAT, adjust_orientation=False)
    height, width = shape[0], shape[1]
    image = fn.decoders.image(data, device="mixed" if on_gpu else "cpu", output_type=types.RGB,
                              adjust_orientation=False)
    view1, params1 = _view(image, height, width, recipe.view1, image_size, recipe.mean, recipe.std, on_gpu, gpu_style)
    view2, params2 = _view(image, height, width, recipe.view2, image_size, recipe.mean, recipe.std, on_gpu, gpu_style)
    return view1, view2, params1, params2, index, replaced


def _decode_check_pipeline(source, dali_device: str):
    data = fn.external_source(source=source, batch=True, dtype=types.UINT8)
    shape = fn.peek_image_shape(data, adjust_orientation=False)
    image = fn.decoders.image(data, device="mixed" if dali_device == "gpu" else "cpu", output_type=types.RGB,
                              adjust_orientation=False)
    return shape, image


# --------------------------------------------------------------------------- reading bytes

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_encoded(data: bytes | np.ndarray) -> str | None:
    """Why these bytes cannot be decoded (None when they look fine). Cheap enough for the
    main thread (a few microseconds): signature and end marker or declared size. Damage
    inside a file is left to the decoder-failure path of :class:`DaliLoader`."""
    n = len(data)
    if n < 32:
        return "file too short to be an image"
    head = bytes(data[:12])
    if head[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in bytes(data[-4096:]):
            return "truncated JPEG (no end-of-image marker)"
    elif head[:8] == _PNG_SIGNATURE:
        if b"IEND" not in bytes(data[-64:]):
            return "truncated PNG (no IEND chunk)"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        if int.from_bytes(head[4:8], "little") + 8 > n:
            return "truncated WebP"
    else:
        return "not a JPEG, PNG or WebP file"
    return None


class _EpochFeeder:
    """External source for one pass: yields this rank's batches from ``start`` on.

    Reads bytes, replaces bad files (known or newly found) by the next readable file of the
    epoch order, and records the indices fed per batch so a decoder failure can be traced.
    """

    def __init__(self, loader: "DaliLoader", order: np.ndarray, start: int):
        self.loader, self.order, self.start = loader, order, start
        self.fed: dict[int, list[int]] = {}

    def _read(self, index: int) -> tuple[np.ndarray | None, str | None]:
        path = self.loader.paths[index]
        if path in self.loader.bad:
            return None, self.loader.bad[path]
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            return None, f"cannot read ({exc})"
        reason = check_encoded(data)
        return (None, reason) if reason else (data, None)

    def _sample(self, position: int):
        """The file at ``position`` of the epoch order, or the next readable one after it."""
        n = len(self.order)
        for k in range(self.loader.max_replacements + 1):
            index = int(self.order[(position + k) % n])
            data, reason = self._read(index)
            if data is not None:
                return data, index, k > 0
            self.loader._mark_bad(index, reason)
        raise CorruptImageError(f"{self.loader.max_replacements + 1} unreadable images in a row from position "
                                f"{position}; is the dataset damaged?")

    def __iter__(self):
        positions, b = self.loader.positions, self.loader.batch_size
        for k in range(self.start, self.loader.num_batches):
            samples = [self._sample(int(p)) for p in positions[k * b:(k + 1) * b]]
            self.fed[k] = [s[1] for s in samples]
            yield ([s[0] for s in samples], np.array([s[1] for s in samples], dtype=np.int64),
                   np.array([s[2] for s in samples], dtype=np.uint8))


# --------------------------------------------------------------------------- the loader

def _resolve_device(device, dali_device: str | None) -> tuple[torch.device, str, int | None]:
    device = torch.device(device)
    if dali_device not in (None, "cpu", "gpu"):
        raise ValueError(f"dali_device must be 'cpu', 'gpu' or None, got {dali_device!r}")
    mode = dali_device or ("gpu" if device.type == "cuda" else "cpu")
    if mode == "cpu":
        return device, mode, None
    if not torch.cuda.is_available():
        raise RuntimeError("dali_device='gpu' needs a CUDA device, and none is available")
    device_id = device.index if device.type == "cuda" and device.index is not None else torch.cuda.current_device()
    return device, mode, device_id


class DaliLoader:
    """Two-view loader running the recipe in a DALI pipeline (see the module docstring)."""

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 device: str | torch.device = "cpu", num_workers: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, on_corrupt: str = "skip",
                 prefetch: int = 2, dali_device: str | None = None, shuffle: bool = True,
                 max_replacements: int = 16, gpu_style: bool | None = None):
        require_dali()
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.images = scan_image_folder(data_dir)
        self.paths = [str(p) for p in self.images.paths]
        self.batch_size, self.image_size, self.recipe = batch_size, image_size, recipe
        self.device, self.dali_device, self.device_id = _resolve_device(device, dali_device)
        if num_workers is None:
            num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.num_workers = max(1, int(num_workers))
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.shuffle, self.on_corrupt = drop_last, shuffle, on_corrupt
        self.prefetch, self.max_replacements, self.gpu_style = prefetch, max_replacements, gpu_style
        self.positions = shard_positions(len(self.paths), batch_size, rank, world_size, drop_last)
        if len(self.positions) == 0:
            raise ValueError(f"{len(self.paths)} images under {self.images.root} give no batch of "
                             f"{batch_size} on each of {world_size} ranks (drop_last={drop_last})")
        self.num_batches = -(-len(self.positions) // batch_size)
        self.epoch, self.start_batch = 0, 0
        self.bad: dict[str, str] = {}
        self.last_params: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    # ---- bad files

    def _mark_bad(self, index: int, reason: str | None) -> None:
        path = self.paths[index]
        if self.on_corrupt == "error":
            raise CorruptImageError(f"cannot decode image {path}: {reason}")
        if path not in self.bad:
            self.bad[path] = reason or "unreadable"
            log.warning("skipping unreadable image %s (%s); replaced by another sample", path, reason)

    def _undecodable(self, indices: list[int]) -> list[int]:
        """Those of ``indices`` the pipeline's decoder rejects, tried one file at a time."""
        found, pipe = [], None
        current: list[np.ndarray] = []
        for index in dict.fromkeys(indices):
            current[:] = [np.fromfile(self.paths[index], dtype=np.uint8)]
            if pipe is None:
                pipe = pipeline_def(_decode_check_pipeline)(
                    batch_size=1, num_threads=1, device_id=self.device_id, prefetch_queue_depth=1,
                    source=lambda: list(current), dali_device=self.dali_device)
                pipe.build()
            try:
                pipe.run()
            except Exception:  # DALI reports decoder failures as RuntimeError; stay broad
                found.append(index)
                pipe = None  # a failed pipeline cannot be reused
        return found

    # ---- iteration

    def _pass_seed(self, epoch: int, start: int) -> int:
        return int(np.random.SeedSequence([self.seed, epoch, self.rank, start]).generate_state(1)[0] & 0x7FFFFFFF)

    def _start(self, epoch: int, start: int, order: np.ndarray):
        feeder = _EpochFeeder(self, order, start)
        pipe = pipeline_def(two_view_pipeline)(
            batch_size=self.batch_size, num_threads=self.num_workers, device_id=self.device_id,
            seed=self._pass_seed(epoch, start), prefetch_queue_depth=self.prefetch,
            source=feeder, recipe=self.recipe, image_size=self.image_size, dali_device=self.dali_device,
            gpu_style=self.gpu_style)
        it = DALIGenericIterator(pipe, list(OUTPUTS), last_batch_policy=LastBatchPolicy.PARTIAL,
                                 auto_reset=False, prepare_first_batch=False)
        return feeder, it

    def _to_batch(self, out: dict) -> Batch:
        dev = self.device
        nb = dev.type == "cuda"
        views = []
        for name in ("view1", "view2"):
            v = out[name].permute(0, 3, 1, 2)  # NHWC memory seen as NCHW = channels-last, no copy
            views.append(v if v.device == dev else v.to(dev, non_blocking=nb).contiguous(memory_format=torch.channels_last))
        params = (out["params1"].cpu(), out["params2"].cpu())
        coords = [windows_to_coords(p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4], p[:, 5], p[:, 6] > 0.5).to(dev, non_blocking=nb)
                  for p in params]
        self.last_params = params
        index = out["index"].to(dev, non_blocking=nb)
        skipped = int(out["replaced"].sum().item())
        return Batch(views[0], views[1], coords[0], coords[1], index, skipped)

    def __iter__(self) -> Iterator[Batch]:
        epoch, position = self.epoch, self.start_batch
        self.start_batch = 0  # a resume offset applies to one pass only
        order = epoch_order(len(self.paths), self.seed, epoch, self.shuffle)
        while position < self.num_batches:
            feeder, it = self._start(epoch, position, order)
            while True:
                try:
                    out = next(it)
                except StopIteration:
                    return
                except CorruptImageError:
                    raise
                except RuntimeError as err:
                    del it
                    suspects = [i for k in range(position, position + self.prefetch + 2) for i in feeder.fed.get(k, [])]
                    culprits = self._undecodable(suspects)
                    if not culprits:
                        raise
                    for index in culprits:
                        try:
                            self._mark_bad(index, "the DALI decoder rejected it")
                        except CorruptImageError as exc:
                            raise exc from err
                    break  # restart the pipeline at the failed batch, culprits now replaced
                yield self._to_batch(out[0])
                position += 1


def build_dali_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                      **options) -> DaliLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`DaliLoader`)."""
    return DaliLoader(data_dir, batch_size, image_size, recipe, **options)
