"""The ``ffcv`` backend: two views per sample from an FFCV ``.beton`` file.

Write the file with ``python -m pipelines.ffcv_writer``. Per batch:

1. FFCV's JIT-compiled worker threads run :class:`TwoViewDecoder`: each image is decoded
   ONCE (JPEG through libjpeg-turbo, with DCT down-scaling by 2, 4 or 8 when both crop
   windows stay at least the output size), then both views are cropped and resized
   (OpenCV area resampling, as FFCV's own RandomResizedCrop decoder) and flipped. Besides
   the two uint8 views the decoder fills a third buffer with each view's window, flip and
   the size of the image it was cut from: the boxes are exact, not re-derived.
2. The main thread moves the uint8 views to the training device and finishes the recipe
   there with :mod:`pipelines.colour` (jitter, grayscale, blur, solarize, normalisation),
   yielding channels-last float views; coords follow the contract in
   ``pixpro_fast.geometry``, normalised by the decoded image's size (normalised
   coordinates are the same in the stored, possibly resized, image and the original).

Order and sharding are those of the torch backend (``torch_loader.epoch_order`` and
``shard_positions``) over the samples of the file, or ``order='quasi_random'``: pages of
the file are shuffled, then samples within windows of a few batches, so that an epoch
reads the file nearly sequentially (useful with ``os_cache=False`` on slow disks).

What is guaranteed (for the same file, seed, batch_size, world_size and drop_last):
- the samples of batch k of epoch e on rank r, whatever ``num_workers``;
- each sample's crop windows and flips: drawn from a counter-based generator keyed by
  (seed, epoch, sample, view), so they do not depend on thread scheduling either;
- each batch's colour parameters: drawn from (seed, epoch, rank, batch number);
- ``set_epoch(e, start_batch=k)`` therefore yields exactly batches k.. of the
  uninterrupted epoch e (the offset applies to the next pass only).

Unreadable images are left out by the writer; an image that still fails to decode here
becomes a mid-grey view and is counted in ``Batch.skipped`` (and logged once).
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pixpro_fast.geometry import windows_to_coords

from .batch import Batch, check_loader_options, keep_torch_threads
from .epoch import EpochCursor
from .colour import ColourAugment
from .ffcv_writer import FFCV_INSTALL_HINT
from .recipe import BYOL, Recipe, ViewRecipe
from .torch_loader import epoch_order, shard_positions

with keep_torch_threads():  # importing ffcv sets torch's thread count to 1
    try:
        from numba import njit
        from ffcv.fields.rgb_image import IMAGE_MODES
        from ffcv.libffcv import ctypes_imdecode, ctypes_memcopy, ctypes_resize
        from ffcv.loader import Loader as _FFCVLoader
        from ffcv.loader import OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.pipeline.allocation_query import AllocationQuery
        from ffcv.pipeline.compiler import Compiler
        from ffcv.pipeline.operation import Operation
        from ffcv.pipeline.state import State
        from ffcv.traversal_order.base import TraversalOrder
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{FFCV_INSTALL_HINT} ({exc})") from exc


log = logging.getLogger(__name__)

# Per view, the decoder's info row: window in the decoded image, flip, decoded image size, ok.
INFO_TOP, INFO_LEFT, INFO_HEIGHT, INFO_WIDTH, INFO_FLIP, INFO_IMAGE_H, INFO_IMAGE_W, INFO_OK = range(8)
CROP_TRIES = 10
_STATE_SEED, _STATE_EPOCH = 0, 1
# then per view: scale lo, scale hi, log ratio lo, log ratio hi, flip p (floats stored as float64 bits)
_STATE_LEN = 2 + 2 * 5


# --------------------------------------------------------------------------- counter-based random numbers

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@njit(cache=False, inline="always")
def _mix(z):
    """splitmix64's finaliser: a bijective scramble of 64 bits."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=False, inline="always")
def _uniform(state):
    """(uniform in [0, 1), next state) from a splitmix64 counter."""
    state = state + _GAMMA
    return float(_mix(state) >> _S11) * (1.0 / 9007199254740992.0), state


@njit(cache=False, inline="always")
def _stream(seed, epoch, sample, view):
    """Starting state for the draws of one (seed, epoch, sample, view)."""
    z = _mix(np.uint64(seed) + _GAMMA)
    z = _mix(z ^ (np.uint64(epoch) + _GAMMA))
    z = _mix(z ^ (np.uint64(sample) * np.uint64(2) + np.uint64(view)))
    return z


@njit(cache=False)
def sample_window(state, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """torchvision's RandomResizedCrop distribution (as ``pipelines.crop.sample_crop``):
    returns (top, left, h, w, state)."""
    area = height * width
    for _ in range(CROP_TRIES):
        u, state = _uniform(state)
        target_area = area * (scale_lo + (scale_hi - scale_lo) * u)
        u, state = _uniform(state)
        aspect = math.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * u)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            u, state = _uniform(state)
            top = min(int(u * (height - h + 1)), height - h)
            u, state = _uniform(state)
            left = min(int(u * (width - w + 1)), width - w)
            return top, left, h, w, state
    # fallback: central crop with the aspect clamped into the ratio range
    in_ratio = width / height
    ratio_lo, ratio_hi = math.exp(log_ratio_lo), math.exp(log_ratio_hi)
    if in_ratio < ratio_lo:
        w = width
        h = max(1, min(height, int(round(w / ratio_lo))))
    elif in_ratio > ratio_hi:
        h = height
        w = max(1, min(width, int(round(h * ratio_hi))))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, state


# --------------------------------------------------------------------------- the decoder

def _view_state(view: ViewRecipe) -> list[float]:
    return [view.crop_scale[0], view.crop_scale[1], math.log(view.crop_ratio[0]), math.log(view.crop_ratio[1]),
            view.flip_p]


class TwoViewDecoder(Operation):
    """Decode an ``RGBImageField`` once and cut two random-resized-crop views from it.

    Outputs ``(view1, view2, info)``: two (B, 3, S, S) uint8 arrays (planar, flip applied:
    OpenCV resizes into an interleaved scratch buffer and one loop transposes and flips) and
    (B, 2, 8) int32 ``info`` rows, per view ``top, left, height, width`` of the window in
    the decoded image, ``flip``, the decoded image's ``height, width`` and ``ok`` (0 when
    libjpeg reported an error; the view is then mid-grey).

    The random draws read (seed, epoch, crop ranges, flip rates) from ``self.state`` at
    every batch. Numba freezes arrays captured by a compiled function at compile time, so
    the state is reached through its (fixed) address with a memcpy instead: ``set_state``
    changes the next batches without recompiling the pipeline.
    """

    def __init__(self, output_size: int, views: tuple[ViewRecipe, ViewRecipe], seed: int = 0,
                 scale_decode: bool = True):
        super().__init__()
        self.output_size = int(output_size)
        self.scale_decode = bool(scale_decode)
        self.state = np.zeros(_STATE_LEN, dtype=np.float64)  # kept alive with the decoder: its address is compiled in
        self.set_state(seed, 0, views)

    def set_state(self, seed: int, epoch: int, views: tuple[ViewRecipe, ViewRecipe]) -> None:
        ints = self.state[:2].view(np.int64)
        ints[_STATE_SEED], ints[_STATE_EPOCH] = int(seed), int(epoch)
        self.state[2:] = _view_state(views[0]) + _view_state(views[1])

    def declare_state_and_memory(self, previous_state: State):
        widths, heights = self.metadata["width"], self.metadata["height"]
        self.max_width, self.max_height = int(widths.max()), int(heights.max())
        s = self.output_size
        u8 = np.dtype("<u1")
        view = AllocationQuery((3, s, s), u8)
        return (replace(previous_state, jit_mode=True, shape=(3, s, s), dtype=u8),
                (view, view, AllocationQuery((2, 8), np.dtype("<i4")),
                 AllocationQuery((self.max_height * self.max_width * 3,), u8), AllocationQuery((s, s, 3), u8)))

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        # libffcv's C entry points, called directly (numba calls ctypes functions natively)
        imdecode_c, resize_c, memcpy_c = ctypes_imdecode, ctypes_resize, ctypes_memcopy
        jpg = IMAGE_MODES["jpg"]
        state_address = self.state.ctypes.data
        state_bytes = self.state.nbytes
        size = self.output_size
        scale_decode = self.scale_decode

        def decode(batch_indices, my_storage, metadata, storage_state):
            out1, out2, info, temp_storage, scratch_storage = my_storage
            state = np.empty(_STATE_LEN, dtype=np.float64)
            memcpy_c(state_address, state.ctypes.data, state_bytes)
            ints = state[:2].view(np.int64)
            seed, epoch = ints[0], ints[1]
            for dst_ix in my_range(len(batch_indices)):
                sample = batch_indices[dst_ix]
                field = metadata[sample]
                height = np.int64(field["height"])
                width = np.int64(field["width"])
                wins = np.empty((2, 5), dtype=np.int64)
                smallest = 1 << 30
                for v in range(2):
                    p = 2 + 5 * v
                    st = _stream(seed, epoch, sample, v)
                    top, left, h, w, st = sample_window(st, height, width, state[p], state[p + 1],
                                                        state[p + 2], state[p + 3])
                    u, st = _uniform(st)
                    wins[v, 0], wins[v, 1], wins[v, 2], wins[v, 3] = top, left, h, w
                    wins[v, 4] = 1 if u < state[p + 4] else 0
                    smallest = min(smallest, h, w)
                image_data = mem_read(field["data_ptr"], storage_state)
                temp = temp_storage[dst_ix]
                ok = 1
                denom = 1
                if field["mode"] == jpg:
                    if scale_decode:
                        while denom < 8 and smallest >= 2 * denom * size:
                            denom *= 2
                    dh = (height + denom - 1) // denom
                    dw = (width + denom - 1) // denom
                    status = imdecode_c(image_data.ctypes.data, image_data.size, height, width, temp.ctypes.data,
                                        height, width, 0, 0, 1, denom, False, False)
                    if status != 0:
                        ok = 0
                        temp[:dh * dw * 3] = 128
                else:
                    dh, dw = height, width
                    temp[:dh * dw * 3] = image_data[:dh * dw * 3]
                decoded = temp[:dh * dw * 3].reshape(dh, dw, 3)
                scratch = scratch_storage[dst_ix]
                for v in range(2):
                    out = out1[dst_ix] if v == 0 else out2[dst_ix]
                    # window in the decoded image (the exact one for denom 1)
                    top = wins[v, 0] // denom
                    left = wins[v, 1] // denom
                    h = max(1, min(dh - top, (wins[v, 0] + wins[v, 2]) // denom - top))
                    w = max(1, min(dw - left, (wins[v, 1] + wins[v, 3]) // denom - left))
                    resize_c(0, decoded.ctypes.data, dh, dw, top, top + h, left, left + w, scratch.ctypes.data,
                             size, size)
                    if wins[v, 4]:
                        for ch in range(3):
                            for r in range(size):
                                for c in range(size):
                                    out[ch, r, c] = scratch[r, size - 1 - c, ch]
                    else:
                        for ch in range(3):
                            for r in range(size):
                                for c in range(size):
                                    out[ch, r, c] = scratch[r, c, ch]
                    row = info[dst_ix, v]
                    row[0], row[1], row[2], row[3] = top, left, h, w
                    row[4], row[5], row[6], row[7] = wins[v, 4], dh, dw, ok
            n = len(batch_indices)
            return out1[:n], out2[:n], info[:n]

        decode.is_parallel = True
        return decode


# --------------------------------------------------------------------------- sample order

class _PlannedOrder(TraversalOrder):
    """Hands FFCV the sample ids this loader planned for the coming pass."""

    def __init__(self, loader, planned: np.ndarray):
        super().__init__(loader)
        self.planned = planned

    def sample_order(self, epoch: int):
        return self.planned


def sample_pages(reader) -> np.ndarray:
    """The file page holding each sample's first data allocation (-1 for none)."""
    table = reader.alloc_table
    pages = np.full(int(reader.num_samples), -1, dtype=np.int64)
    if len(table):
        shift = int(np.log2(int(reader.page_size)))
        first = np.argsort(table["ptr"], kind="stable")[::-1]  # later assignment wins: keep the lowest ptr
        pages[table["sample_id"][first].astype(np.int64)] = (table["ptr"][first] >> np.uint64(shift)).astype(np.int64)
    return pages


def quasi_random_order(pages: np.ndarray, seed: int, epoch: int, window: int) -> np.ndarray:
    """Pages in random order, samples shuffled within each page, then within consecutive
    windows of ``window`` samples: random enough for SGD, nearly sequential on disk."""
    rng = np.random.default_rng((seed, epoch, 0x9A6E5))
    n = len(pages)
    page_rank = rng.permutation(int(pages.max()) + 2)[pages + 1]  # random rank per page
    order = np.lexsort((rng.random(n), page_rank))
    for start in range(0, n, window):
        order[start:start + window] = rng.permutation(order[start:start + window])
    return order


# --------------------------------------------------------------------------- the loader

def stop_epoch_iterator(it) -> None:
    """End an unfinished FFCV pass (an ``EpochIterator``) and wait for its producer thread.

    The thread looks at its terminate flag only while the queue is full, and its final put
    has no timeout: keep taking batches until it has gone."""
    it.terminate_event.set()
    while it.is_alive():
        try:
            it.output_queue.get(timeout=0.05)
        except queue.Empty:
            pass
    it.close()


class FFCVLoader:
    """Two-view loader over a ``.beton`` file (see the module docstring for the contract).

    Options beyond the common ones: ``order`` ('random' | 'quasi_random'), ``os_cache``
    (FFCV: rely on the OS page cache, else a process cache), ``batches_ahead`` (FFCV's
    queue depth), ``dtype`` of the views, ``scale_decode`` (JPEG DCT down-scaling),
    ``colour_chunk`` (see :func:`pipelines.colour.apply_colour`), and on a CPU device
    ``colour_threads`` / ``prefetch`` for the thread that finishes batches.
    ``pin_memory``, ``prefetch_factor`` and ``persistent_workers`` are the torch backend's
    and are accepted and ignored (FFCV pins its buffers itself when CUDA is present).
    """

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 device: str | torch.device = "cpu", num_workers: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, order: str = "random",
                 os_cache: bool = True, batches_ahead: int = 3, on_corrupt: str = "skip",
                 image_field: str = "image", dtype: torch.dtype = torch.float32, scale_decode: bool = True,
                 colour_chunk: int | None = None, colour_threads: int = 1, prefetch: int = 2,
                 pin_memory=None, prefetch_factor=None, persistent_workers=None):
        if data_dir is None:
            raise ValueError("the ffcv backend reads a .beton file: pass its path as data_dir")
        path = Path(data_dir).expanduser()
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; the ffcv backend reads a .beton file "
                                    f"(write one with: python -m pipelines.ffcv_writer --data {path} --out FILE.beton)")
        if not path.is_file():
            raise FileNotFoundError(f".beton file {path} does not exist "
                                    f"(write one with: python -m pipelines.ffcv_writer --data DIR --out {path})")
        if order not in ("random", "quasi_random"):
            raise ValueError(f"order must be 'random' or 'quasi_random', got {order!r}")
        check_loader_options(on_corrupt, rank, world_size, seed)
        self.path, self.batch_size, self.image_size, self.recipe = path, batch_size, image_size, recipe
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.order, self.on_corrupt = order, on_corrupt
        self.colour_threads, self.prefetch = colour_threads, prefetch
        self.num_workers = (os.cpu_count() or 1) if num_workers is None or num_workers < 1 else num_workers
        self.decoder = TwoViewDecoder(image_size, recipe.views, seed, scale_decode)
        self.colour = [ColourAugment(v, recipe.mean, recipe.std, dtype, colour_chunk) for v in recipe.views]

        with keep_torch_threads():
            self._ffcv = _FFCVLoader(str(path), batch_size=batch_size, num_workers=self.num_workers,
                                     os_cache=os_cache, order=OrderOption.SEQUENTIAL, seed=seed, drop_last=drop_last,
                                     batches_ahead=batches_ahead, pipelines=self._pipelines(path))
        reader = self._ffcv.reader
        self.num_samples = int(reader.num_samples)
        self._index_of = self._index_column(reader)
        self._pages = sample_pages(reader) if order == "quasi_random" else None
        self.positions = shard_positions(self.num_samples, batch_size, rank, world_size, drop_last)
        if len(self.positions) == 0:
            raise ValueError(f"{self.num_samples} samples in {path} give no batch of {batch_size} "
                             f"on each of {world_size} ranks (drop_last={drop_last})")
        self._plan = _PlannedOrder(self._ffcv, self._rank_order(0))
        self._ffcv.traversal_order = self._plan
        self._ffcv.first_traversal_order = self._plan.planned
        self.cursor = EpochCursor(len(self))
        self._active = None
        self._warned: set[int] = set()
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _pipelines(self, path: Path) -> dict:
        from ffcv.reader import Reader
        names = Reader(str(path)).handlers.keys()
        if "image" not in names:
            raise ValueError(f"{path} has no 'image' field (fields: {', '.join(names)})")
        pipelines = {name: None for name in names}
        pipelines["image"] = PipelineSpec("image", decoder=self.decoder, transforms=[])
        return pipelines

    @staticmethod
    def _index_column(reader) -> np.ndarray:
        """Dataset index per sample: the writer's ``index`` field, else the sample id."""
        names = list(reader.handlers.keys())
        if "index" in names:
            return np.asarray(reader.metadata[f"f{names.index('index')}"]).astype(np.int64).reshape(-1)
        return np.arange(int(reader.num_samples), dtype=np.int64)

    # ------------------------------------------------------------------ epoch plan

    def _rank_order(self, epoch: int) -> np.ndarray:
        """Sample ids this rank reads in ``epoch``, in reading order."""
        n = self.num_samples
        if self.order == "quasi_random":
            window = 4 * self.batch_size * self.world_size
            full = quasi_random_order(self._pages, self.seed, epoch, window)
        else:
            full = epoch_order(n, self.seed, epoch)
        return full[self.positions % n].astype(np.uint64)

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.cursor.set(epoch, start_batch)

    # ------------------------------------------------------------------ iteration

    def _stop_active(self) -> None:
        """End an unfinished pass (the loop was left early) before the shared state changes."""
        it, self._active = self._active, None
        if it is not None:
            stop_epoch_iterator(it)

    def _colour_generator(self, epoch: int, batch: int) -> torch.Generator:
        key = np.random.SeedSequence((self.seed, epoch, self.rank, batch, 0xC010)).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(key) & ((1 << 63) - 1))

    def _to_device(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Copy FFCV's buffers out before the next batch may reuse them."""
        host = [torch.from_numpy(a) for a in arrays]
        if self._copy_stream is None:
            return host  # the CPU colour pass reads them before the next batch is asked for
        with torch.cuda.stream(self._copy_stream):
            dev = [t.to(self.device, non_blocking=True) for t in host]
        self._copy_stream.synchronize()  # FFCV refills the pinned buffers once we ask for more
        current = torch.cuda.current_stream(self.device)
        for t in dev:
            t.record_stream(current)
        return dev

    def _to_batch(self, raw, sample_ids: np.ndarray, epoch: int, batch: int) -> Batch:
        (v1, v2, info), = raw
        info = np.array(info)  # small: copy out of the ring buffer
        ok = info[:, :, INFO_OK].all(axis=1)
        skipped = int((~ok).sum())
        if skipped:
            bad = [int(s) for s in sample_ids[~ok]]
            if self.on_corrupt == "error":
                raise RuntimeError(f"cannot decode samples {bad} of {self.path}")
            for s in bad:
                if s not in self._warned:
                    self._warned.add(s)
                    log.warning("sample %d of %s failed to decode; its views are mid-grey", s, self.path)
        t = torch.from_numpy(info.astype(np.int64))
        coords = [windows_to_coords(t[:, v, INFO_TOP], t[:, v, INFO_LEFT], t[:, v, INFO_HEIGHT], t[:, v, INFO_WIDTH],
                                    t[:, v, INFO_IMAGE_H], t[:, v, INFO_IMAGE_W], t[:, v, INFO_FLIP].bool())
                  for v in range(2)]
        g = self._colour_generator(epoch, batch)
        params = [aug.sample(len(sample_ids), g) for aug in self.colour]
        u1, u2 = self._to_device([v1, v2])
        views = [aug.apply(u, p) for aug, u, p in zip(self.colour, (u1, u2), params)]
        dev, nb = self.device, self.device.type == "cuda"
        index = torch.from_numpy(self._index_of[sample_ids.astype(np.int64)])
        return Batch(views[0], views[1], coords[0].to(dev, non_blocking=nb), coords[1].to(dev, non_blocking=nb),
                     index.to(dev, non_blocking=nb), skipped)

    def __iter__(self) -> Iterator[Batch]:
        self._stop_active()
        epoch, start = self.cursor.begin_pass()
        planned = self._rank_order(epoch)[start * self.batch_size:]
        self._plan.planned = planned
        self.decoder.set_state(self.seed, epoch, self.recipe.views)
        if len(planned) == 0:
            return
        with keep_torch_threads():
            it = iter(self._ffcv)
        self._active = it
        batches = (self._to_batch(raw, planned[k * self.batch_size:(k + 1) * self.batch_size], epoch, start + k)
                   for k, raw in enumerate(it))
        try:
            if self.device.type == "cpu":
                yield from _finish_in_thread(batches, self.colour_threads, self.prefetch)
            else:
                yield from batches  # on a GPU the colour work is kernel launches: cheap in this thread
        finally:
            if self._active is it:
                self._stop_active()


def _finish_in_thread(batches: Iterator[Batch], threads: int, prefetch: int) -> Iterator[Batch]:
    """Run ``batches`` (CPU colour work included) in a thread of its own, ``prefetch`` ahead.

    The thread has its own intra-op thread count (OpenMP's is per calling thread): FFCV
    sets the caller's to its worker count, and torch's threads spinning beside FFCV's busy
    decoding threads on the same cores cost far more than they gain. It also overlaps the
    colour work with whatever the consumer does between batches.
    """
    out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        torch.set_num_threads(max(1, threads))
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    worker = threading.Thread(target=work, name="ffcv-colour", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                out.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def build_ffcv_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                      **options) -> FFCVLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`FFCVLoader`)."""
    return FFCVLoader(data_dir, batch_size, image_size, recipe, **options)
