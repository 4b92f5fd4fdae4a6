"""The ``dali`` backend: decoding and the whole view plan inside one DALI pipeline.

Split of the work:

- The feeder (an external source, main process) reads each file's bytes, reads its size
  from the header, and draws every view's parameters with :mod:`pipelines.sampler` (the
  one draw of every backend, keyed by (seed, epoch, dataset index, view)). It hands DALI
  per-sample arguments (ROI, colour matrix, blur kernels, masks).
  Why not DALI random operators plus arithmetic in the graph (peek_image_shape, coin_flip,
  uniform): that graph has ~150 tiny per-sample CPU operators, and their fixed cost capped
  the loader at ~2.9k (geometry) / ~1.7k (full recipe) images/s on an H100 machine with
  16 threads, against ~19k for DALI's stock single-view pipeline; drawing on the host gives
  ~13k / ~8.4k there, exact torchvision crop semantics and bit-exact resumes.
- One ``pipeline_def`` graph (:func:`view_plan_pipeline`) does all pixel work: one decode
  shared by every view; per view, at its own output size, ``fn.resize`` with an absolute ROI (the window is known
  exactly; a flip is the ROI with its x ends swapped); colour jitter in the fixed order
  brightness, contrast, saturation, hue (torchvision draws a random order): brightness and
  contrast about the view's mean luma (as torchvision) in one step; saturation, hue and
  grayscale as ONE 3x3 matrix per sample (``coord_transform``), ``M = Wy + s cos(t) K2 +
  s sin(t) K3`` with Wy the luma projection and K2/K3 the YIQ chroma plane, so hue is a YIQ
  rotation (DALI's ``hsv`` approximation, not torchvision's exact HSV shift) and grayscale is
  s = 0 (luma weights :data:`pipelines.colour_cpu.LUMA`, torchvision's); Gaussian blur as two 1-D ``fn.filter``
  passes with a kernel of radius ceil(3 sigma) per sample (a 1-tap kernel when not blurred;
  DALI's ``gaussian_blur`` is an order of magnitude slower on CPU), reflect borders as
  torchvision; solarize as ``x ^ ((x >= t) * mask)`` on uint8 (255 - x == x XOR 255);
  ``crop_mirror_normalize`` to float32 HWC. The PyTorch side permutes NHWC to an NCHW view,
  which is channels-last memory, with no copy. That is ``colour='workers'``.
- ``host_crop`` (the default in CPU-only mode, with ``colour='device'``): the graph stops at
  the decoded region, and each view is cut from it on the host by
  :func:`pipelines.resample.crop_resize`, the torch and FFCV backends' antialiased bilinear
  crop + resize (same windows, pixels within one level of DALI's resize), in a small thread
  pool. On 2 cores with photos the full recipe then runs at 1.4x the rate it has with the
  views cut by DALI's CPU resize in the graph, and the geometry alone at the rate of DALI's
  stock single-view pipeline (benchmarks/RESULTS.md).
- ``colour='device'`` (the default in CPU-only mode): the graph stops
  at each view's uint8 crop and :mod:`pipelines.colour` finishes it with the same draws (the
  fused numba pass on the CPU, in a thread that overlaps the consumer; tensor ops on a GPU),
  with the colour semantics of the torch and FFCV backends (exact HSV hue). On 2 CPU cores
  with photos it runs the full recipe at 1.6x the in-graph rate: DALI's CPU colour
  operators, one pass each over the image, cost more than the one fused pass.

Each sample's draws are :mod:`pipelines.sampler` rows; ``coords`` come from them
(:mod:`pipelines.view_plan_loader`, as on every backend).

Devices: with a CUDA training device the pipeline decodes with ``device="mixed"`` (nvJPEG)
and runs every image operator on the GPU (per-sample arguments stay on the CPU, as DALI
requires; the contrast step then uses arithmetic, since its centre, the view's mean, lives
on the GPU). On CPU it runs with ``device_id=None``. ``dali_device`` ('cpu' | 'gpu' | None =
follow the training device) forces either.

Order, sharding, resume and replacement: the skeleton's, as every backend's
(:mod:`pipelines.view_plan_loader`). A fresh pipeline is built per pass.
A batch's samples and draws depend on (seed, epoch, rank, batch number) only, so
``set_epoch(epoch, start_batch)`` resumes exactly (bit for bit on CPU).

Bad files: the feeder rejects bytes without a JPEG/PNG/WebP signature, end marker or
readable frame header, and an image whose header declares more than ``max_pixels`` pixels
(:mod:`pipelines.image_header`), before DALI sees any of them. If the DALI decoder still
fails (damage inside the data), the files in flight are decoded one by one with the same
decoder to find the culprit, which is then treated like the others, and the pipeline
restarts at the failed batch. Replacement, counting and naming follow
:mod:`pipelines.corrupt`.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from . import sampler
from .colour import gaussian_kernels
from .colour_cpu import LUMA, blur_radius
from .corrupt import CorruptImageError
from .image_header import check_pixels, image_shape
from .prefetch import Prefetcher
from .recipe import BYOL, Recipe, ViewSpec
from .resample import crop_resize
from .view_plan_loader import ViewPlanLoader

try:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    _DALI_ERROR: ImportError | None = None
except ImportError as exc:  # optional dependency
    _DALI_ERROR = exc



def output_names(recipe: Recipe) -> list[str]:
    return [f"view{k}" for k in range(1, recipe.num_views + 1)]


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


# --------------------------------------------------------------------------- per-sample arguments

def gaussian_kernel(sigma: float) -> np.ndarray:
    """The colour engines' normalised 1-D Gaussian (:func:`pipelines.colour.gaussian_kernels`
    over :func:`pipelines.colour_cpu.blur_radius`), float64 weights as float32; [1] for sigma
    0: no blur."""
    if sigma <= 0:
        return np.ones(1, dtype=np.float32)
    k = gaussian_kernels(torch.tensor([float(sigma)], dtype=torch.float64), blur_radius(sigma), torch.float64)
    return k[0].numpy().astype(np.float32)


class _ViewSteps:
    """Which steps a view recipe needs in the graph (a step with probability 0 is left out)."""

    def __init__(self, view: ViewSpec):
        jitter = view.jitter_p > 0
        self.brightness_contrast = jitter and (view.brightness > 0 or view.contrast > 0)
        self.matrix = (jitter and (view.saturation > 0 or view.hue > 0)) or view.grayscale_p > 0
        self.blur = view.blur_p > 0
        self.solarize = view.solarize_p > 0

    def inputs(self, gpu_style: bool) -> list[tuple[str, "types.DALIDataType"]]:
        """Names and types of the per-sample arguments this view takes from the feeder."""
        names = [("roi_start", types.FLOAT), ("roi_end", types.FLOAT)]
        if self.brightness_contrast:
            names += [("gain", types.FLOAT), ("luma_gain", types.FLOAT)] if gpu_style else \
                [("brightness", types.FLOAT), ("contrast", types.FLOAT)]
        if self.matrix:
            names.append(("matrix", types.FLOAT))
        if self.blur:
            names += [("kernel_x", types.FLOAT), ("kernel_y", types.FLOAT)]
        if self.solarize:
            names.append(("solarize_mask", types.UINT8))
        return names


def decode_region(params: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, V, len(PARAM_NAMES)) draws -> the whole-pixel region each sample is decoded in: the
    union of its views' windows, as (B, 2) anchors and (B, 2) shapes in (y, x)."""
    col = sampler.P
    top, left = params[:, :, col["top"]], params[:, :, col["left"]]
    bottom, right = top + params[:, :, col["height"]], left + params[:, :, col["width"]]
    y0, x0 = np.floor(top.min(axis=1)), np.floor(left.min(axis=1))
    y1 = np.minimum(np.ceil(bottom.max(axis=1)), heights)
    x1 = np.minimum(np.ceil(right.max(axis=1)), widths)
    anchor = np.stack([y0, x0], axis=1).astype(np.float32)
    return anchor, (np.stack([y1, x1], axis=1) - anchor).astype(np.float32)


def view_arguments(params: np.ndarray, steps: _ViewSteps, gpu_style: bool, origin: np.ndarray) -> dict[str, object]:
    """The pipeline's per-sample arguments for one view from its drawn params; ``origin``:
    (B, 2), the (y, x) corner of each sample's decoded region (:func:`decode_region`)."""
    col = sampler.P
    p = params
    top, left, h, w, flip = (p[:, col[k]] for k in ("top", "left", "height", "width", "flip"))
    top, left = top - origin[:, 0], left - origin[:, 1]
    # ROI in (y, x) in the decoded region; a flip is the same window with its x ends swapped
    args: dict[str, object] = {
        "roi_start": np.stack([top, left + flip * w], axis=1).astype(np.float32),
        "roi_end": np.stack([top + h, left + w - flip * w], axis=1).astype(np.float32)}
    b, c = p[:, col["brightness"]], p[:, col["contrast"]]
    if steps.brightness_contrast and gpu_style:
        # brightness then contrast about the mean luma m: b*c*x + b*(1-c)*m
        args["gain"], args["luma_gain"] = (b * c).astype(np.float32), (b * (1.0 - c)).astype(np.float32)
    elif steps.brightness_contrast:
        args["brightness"], args["contrast"] = b.astype(np.float32), c.astype(np.float32)
    if steps.matrix:
        wy, k2, k3 = _yiq_matrices()
        sat = p[:, col["saturation"]] * (1.0 - p[:, col["grayscale"]])
        turn = 2.0 * math.pi * p[:, col["hue"]]
        m = wy + (sat * np.cos(turn))[:, None, None] * k2 + (sat * np.sin(turn))[:, None, None] * k3
        args["matrix"] = m.astype(np.float32)
    if steps.blur:
        kernels = [gaussian_kernel(s) for s in p[:, col["sigma"]]]
        args["kernel_x"] = [k[None, :] for k in kernels]
        args["kernel_y"] = [k[:, None] for k in kernels]
    if steps.solarize:
        args["solarize_mask"] = (p[:, col["solarize"]] * 255).astype(np.uint8)
    return args


# --------------------------------------------------------------------------- the graph

def _luma_mean(img):
    """Per-sample mean luma of an HWC image (a scalar node on the image's device)."""
    return fn.reductions.sum(fn.reductions.mean(img, axes=[0, 1]) * types.Constant(np.float32(LUMA)))


def _view(image, args: dict, view: ViewSpec, steps: _ViewSteps, size: int, mean, std, gpu_style: bool,
          normalise: bool = True):
    img = fn.resize(image, size=[size, size], roi_start=args["roi_start"], roi_end=args["roi_end"],
                    roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)
    if not normalise:  # the uint8 crop; the colour engine finishes it after the pipeline
        return img
    if steps.brightness_contrast:
        luma = _luma_mean(img)
        if gpu_style:  # argument inputs must live on the CPU; the mean lives with the image
            img = fn.cast(img * args["gain"] + luma * args["luma_gain"], dtype=types.UINT8)
        else:
            img = fn.brightness_contrast(img, brightness=args["brightness"], contrast=args["contrast"],
                                         contrast_center=luma)
    if steps.matrix:
        img = fn.coord_transform(img, M=args["matrix"], dtype=types.UINT8)
    if steps.blur:
        img = fn.filter(img, args["kernel_x"], border="reflect_101")
        img = fn.filter(img, args["kernel_y"], border="reflect_101")
    if steps.solarize:
        img = img ^ ((img >= int(view.solarize_threshold)) * args["solarize_mask"])
    return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC",
                                    mean=[255.0 * m for m in mean], std=[255.0 * s for s in std])


def input_names(recipe: Recipe, gpu_style: bool, crop_views: bool = True) -> list[tuple[str, "types.DALIDataType"]]:
    """The feeder's outputs, in order: encoded bytes, the decoded region, then each view's
    arguments (none when the views are cut outside the graph)."""
    names = [("data", types.UINT8), ("region_anchor", types.FLOAT), ("region_shape", types.FLOAT)]
    for k, view in enumerate(recipe.views if crop_views else (), 1):
        names += [(f"view{k}.{n}", t) for n, t in _ViewSteps(view).inputs(gpu_style)]
    return names


def view_plan_pipeline(source, recipe: Recipe, image_size: int, dali_device: str = "cpu", gpu_style: bool = False,
                       normalise: bool = True, crop_views: bool = True):
    """The DALI graph (wrap with ``pipeline_def``): encoded bytes + per-sample arguments -> every view.

    ``source`` yields one batch per call in the order of :func:`input_names`. ``gpu_style``
    builds the variant whose steps all work with GPU images (required on GPU; it runs on CPU
    too, which is how the tests cover it). ``normalise=False`` (with a geometry-only recipe)
    ends each view at its uint8 HWC crop. ``crop_views=False``: the graph only decodes, and
    its one output is each sample's decoded region (uint8 HWC, shapes differ per sample).
    """
    names = input_names(recipe, gpu_style, crop_views)
    nodes = fn.external_source(source=source, num_outputs=len(names), batch=True, dtype=[t for _, t in names])
    inputs = dict(zip((n for n, _ in names), nodes))
    # only the union of the views' windows is decoded (libjpeg-turbo / nvJPEG skip the rest)
    image = fn.decoders.image_slice(inputs["data"], inputs["region_anchor"], inputs["region_shape"], axes=[0, 1],
                                    normalized_anchor=False, normalized_shape=False,
                                    device="mixed" if dali_device == "gpu" else "cpu",
                                    output_type=types.RGB, adjust_orientation=False)
    if not crop_views:
        return (image,)
    views = []
    for k, (view, size) in enumerate(zip(recipe.views, recipe.output_sizes(image_size)), 1):
        args = {n.split(".", 1)[1]: node for n, node in inputs.items() if n.startswith(f"view{k}.")}
        views.append(_view(image, args, view, _ViewSteps(view), size, recipe.mean, recipe.std, gpu_style,
                           normalise))
    return tuple(views)


def _decode_check_pipeline(source, dali_device: str):
    data = fn.external_source(source=source, batch=True, dtype=types.UINT8)
    return fn.decoders.image(data, device="mixed" if dali_device == "gpu" else "cpu", output_type=types.RGB,
                             adjust_orientation=False)


# --------------------------------------------------------------------------- reading bytes

def release_pipeline(pipe) -> None:
    """Stop a DALI pipeline's threads now. Left to the garbage collector, a pipeline (which
    sits in reference cycles) may be finalised in a process forked later (a DataLoader or
    writer worker), where its shutdown waits for threads that do not exist there: that child
    hangs. ``Pipeline.__del__`` calls the same ``_shutdown``, which is then a no-op."""
    shutdown = getattr(pipe, "_shutdown", None)
    if shutdown is not None:
        shutdown()


class _EpochFeeder:
    """External source for one pass: yields this rank's batches from ``start`` on.

    Reads bytes, replaces bad files (known or newly found) by the next readable file of the
    epoch order, draws every view's parameters with :mod:`pipelines.sampler`, and keeps per
    batch what the loader needs besides the images (indices, replacements, params) until the
    loader takes it.
    """

    def __init__(self, loader: "DaliLoader", epoch: int, start: int):
        self.loader, self.epoch, self.start = loader, epoch, start
        self.fed: dict[int, dict] = {}

    def _read(self, index: int):
        """(bytes, (height, width)) of one file, checked before DALI sees it."""
        with open(self.loader.paths[index], "rb") as f:
            data = f.read()
        h, w = image_shape(data)
        check_pixels(w, h, self.loader.max_pixels)
        return np.frombuffer(data, dtype=np.uint8), (h, w)

    def __iter__(self):
        ld = self.loader
        names = [n for n, _ in input_names(ld.graph_recipe, ld.gpu_style, not ld.host_crop)]
        steps = [] if ld.host_crop else [_ViewSteps(v) for v in ld.graph_recipe.views]
        for k in range(self.start, ld.num_batches):
            samples = [ld.first_readable(self.epoch, int(p), self._read)
                       for p in ld.batch_positions(k)]
            heights = np.array([s[0][1][0] for s in samples], dtype=np.int64)
            widths = np.array([s[0][1][1] for s in samples], dtype=np.int64)
            index = np.array([s[1] for s in samples], dtype=np.int64)
            params = sampler.draw(ld.spec, ld.image_size, ld.seed, self.epoch, index, heights, widths)
            anchor, shape = decode_region(params, heights, widths)
            out = {"data": [s[0][0] for s in samples], "region_anchor": anchor, "region_shape": shape}
            for v, st in enumerate(steps):
                out.update({f"view{v + 1}.{n}": a
                            for n, a in view_arguments(params[:, v], st, ld.gpu_style, anchor).items()})
            self.fed[k] = {"index": index.tolist(), "skipped": sum(s[2] for s in samples), "params": params,
                           "origin": anchor}
            yield tuple(out[n] for n in names)


# --------------------------------------------------------------------------- the loader

def _regions(pipe) -> Iterator[list[np.ndarray]]:
    """The decoded regions of each batch of a decode-only pipeline, as numpy views."""
    while True:
        try:
            (regions,) = pipe.run()
        except StopIteration:
            return
        yield [np.asarray(regions[i]) for i in range(len(regions))]


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


def resolve_host_crop(host_crop: bool | None, colour: str, dali_device: str) -> bool:
    """Whether the views are cut from DALI's decoded region by :func:`pipelines.resample.crop_resize`
    on the host instead of by ``fn.resize`` in the graph. None: where the colour engine also
    runs on the CPU (CPU-only mode, colour 'device'), where it is the faster of the two
    (benchmarks/RESULTS.md). It needs colour 'device' and a CPU graph."""
    if host_crop is None:
        return colour == "device" and dali_device == "cpu"
    if host_crop and (colour != "device" or dali_device != "cpu"):
        raise ValueError(f"host_crop=True needs colour='device' and a CPU pipeline; got colour={colour!r}, "
                         f"dali_device={dali_device!r}")
    return bool(host_crop)


class DaliLoader(ViewPlanLoader):
    """View-plan loader running the recipe in a DALI pipeline (see the module docstring).

    ``colour``: 'workers' (DALI operators in the graph) or 'device' (:mod:`pipelines.colour`
    after the pipeline); 'auto': 'device' in CPU-only mode (measured faster on CPU, see
    benchmarks/RESULTS.md), else 'workers'. ``host_crop``: see :func:`resolve_host_crop`.
    Options beyond those of :class:`pipelines.view_plan_loader.ViewPlanLoader`:
    ``dali_device`` ('cpu' | 'gpu' | None = follow the training device), ``gpu_style``."""

    COLOUR = ("device", "workers")
    NAME = "dali"
    MIN_WORKERS = 1

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 device: str | torch.device = "cpu", dali_device: str | None = None, gpu_style: bool = False,
                 host_crop: bool | None = None, **options):
        require_dali()
        _, self.dali_device, self.device_id = _resolve_device(device, dali_device)
        super().__init__(lambda: self.open_image_folder(data_dir), batch_size, image_size, recipe, device=device, **options)
        # the GPU graph needs the GPU-style steps; on CPU they are a test hook
        self.gpu_style = bool(gpu_style) or self.dali_device == "gpu"
        self.host_crop = resolve_host_crop(host_crop, self.colour, self.dali_device)
        # the recipe the graph runs: the geometry alone when the colour engine finishes the views
        self.graph_recipe = recipe.without_colour() if self.colour == "device" else recipe
        self._crops: list[np.ndarray] | None = None
        self._crop_pool: ThreadPoolExecutor | None = None

    def default_colour(self) -> str:
        return "device" if self.dali_device == "cpu" else "workers"

    def sample_name(self, index: int) -> str:
        return self.paths[index]

    # ---- bad files

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
                release_pipeline(pipe)
                pipe = None  # a failed pipeline cannot be reused
        if pipe is not None:
            release_pipeline(pipe)
        return found

    # ---- iteration

    def _start(self, epoch: int, start: int):
        feeder = _EpochFeeder(self, epoch, start)
        source = Prefetcher(feeder, self.prefetch + 1, name="dali-feeder")
        seed = int(np.random.SeedSequence([self.seed, epoch, self.rank, start]).generate_state(1)[0] & 0x7FFFFFFF)
        pipe = pipeline_def(view_plan_pipeline)(
            batch_size=self.batch_size, num_threads=self.num_workers, device_id=self.device_id, seed=seed,
            prefetch_queue_depth=self.prefetch, source=source, recipe=self.graph_recipe, image_size=self.image_size,
            dali_device=self.dali_device, gpu_style=self.gpu_style, normalise=self.colour == "workers",
            crop_views=not self.host_crop)
        if self.host_crop:
            # per-sample shapes differ, which DALI's torch iterator does not take: read the
            # pipeline's outputs as they are (numpy views, valid until the next run)
            return feeder, source, pipe, _regions(pipe)
        it = DALIGenericIterator(pipe, output_names(self.recipe), last_batch_policy=LastBatchPolicy.PARTIAL,
                                 auto_reset=False, prepare_first_batch=False)
        return feeder, source, pipe, it

    def _cut_views(self, regions, fed: dict) -> list[torch.Tensor]:
        """Each view as planar uint8 (B, 3, S, S), resampled from the decoded regions by
        ``num_workers`` threads (crop_resize runs without the GIL) into buffers reused from
        batch to batch (the colour pass reads them before the next batch is cut)."""
        params, origin, n = fed["params"], fed["origin"], len(regions)
        sizes = self.recipe.output_sizes(self.image_size)
        if self._crops is None:
            self._crops = [np.empty((self.batch_size, 3, s, s), np.uint8) for s in sizes]
        if self._crop_pool is None:  # one per pipeline run: no idle threads outlive a pass
            self._crop_pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="dali-crop")
        col = sampler.P
        top, left, height, width, flip = (params[:, :, col[k]] for k in ("top", "left", "height", "width", "flip"))

        def cut(first: int, stop: int) -> None:
            for i in range(first, stop):
                for v, size in enumerate(sizes):
                    crop_resize(regions[i], top[i, v] - origin[i, 0], left[i, v] - origin[i, 1], height[i, v],
                                width[i, v], size, flip[i, v] > 0.5, self._crops[v][i])

        bounds = np.linspace(0, n, min(self.num_workers, n) + 1).astype(int)
        for job in [self._crop_pool.submit(cut, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
            job.result()
        return [torch.from_numpy(c[:n]) for c in self._crops]

    def _to_batch(self, out: dict, fed: dict):
        if self.host_crop:
            views = self._cut_views(out, fed)
        else:   # NHWC memory seen as NCHW = channels-last, no copy
            views = [out[name].permute(0, 3, 1, 2) for name in output_names(self.recipe)]
        return self.finish(views, fed["params"], fed["index"], fed["skipped"])

    def batches(self, epoch: int, position: int):
        """Batches ``position``.. of ``epoch``: a pipeline per run, restarted at the failed
        batch when its decoder rejects a file the feeder let through. Stopping the pass stops
        the pipeline and its feeder."""
        while position < self.num_batches:
            feeder, source, pipe, it = self._start(epoch, position)
            try:
                while True:
                    try:
                        out = next(it)
                    except StopIteration:
                        return
                    except CorruptImageError:
                        raise
                    except RuntimeError as err:
                        del it
                        source.close()  # every batch not yet yielded is in feeder.fed
                        suspects = [i for rec in list(feeder.fed.values()) for i in rec["index"]]
                        culprits = self._undecodable(suspects)
                        if not culprits:
                            raise
                        for index in culprits:
                            try:
                                self.corrupt.report(self.sample_name(index), "the DALI decoder rejected it")
                            except CorruptImageError as exc:
                                raise exc from err
                        break  # restart the pipeline at the failed batch, culprits now replaced
                    yield self._to_batch(out if self.host_crop else out[0], feeder.fed.pop(position))
                    position += 1
            finally:
                source.close()
                release_pipeline(pipe)
                if self._crop_pool is not None:
                    self._crop_pool.shutdown()
                    self._crop_pool = None


def build_dali_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                      **options) -> DaliLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`DaliLoader`)."""
    return DaliLoader(data_dir, batch_size, image_size, recipe, **options)
