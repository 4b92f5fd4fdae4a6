"""The ``ffcv`` backend: every view of the view plan per sample from an FFCV ``.beton`` file.

Write the file with ``python -m pipelines.ffcv_writer``. Per batch:

1. FFCV's JIT-compiled worker threads run :class:`ViewPlanDecoder`: each image is decoded
   ONCE (JPEG through libjpeg-turbo, with DCT down-scaling by 2, 4 or 8 where every crop
   window stays at least its view's output size: :func:`pipelines.resample.decode_reduction`,
   the torch backend's rule too), then every view is cropped, resized to its own size and
   flipped in one pass of :func:`pipelines.resample.crop_resize`
   (antialiased bilinear, the torch backend's PIL filter; on photos 0.58 of the time of the
   OpenCV area resampling FFCV's own RandomResizedCrop decoder uses, about a third where a
   window shrinks). The draws (window, flip, colour) come from :mod:`pipelines.sampler`
   inside the compiled decoder, keyed by (seed, epoch, dataset index, view) as in every
   backend. A view's window is mapped into the DCT-reduced image in fractional pixels
   (the resampler takes them), so the views match the boxes of the draws exactly.
2. The main thread moves the uint8 views to the training device and finishes the recipe
   there with :mod:`pipelines.colour` from the same draws (jitter, grayscale, blur,
   solarize, normalisation), yielding channels-last float views; coords are the draws'
   (:mod:`pipelines.view_plan_loader`), normalised by the stored image's size (normalised
   coordinates are the same in the stored, possibly resized, image and the original).

Order and sharding are :mod:`pipelines.epoch`'s over the samples of the file, or
``order='quasi_random'``: pages of the file are shuffled, then samples within windows of a
few batches, so that an epoch reads the file nearly sequentially (useful with
``os_cache=False`` on slow disks). ``set_epoch(e, start_batch=k)`` yields exactly batches
k.. of the uninterrupted epoch e, whatever ``num_workers``.

Unreadable images, and those above the writer's pixel cap, are left out by the writer. An
image that still fails to decode here (a damaged file), or whose stored size is above this
loader's ``max_pixels`` (read from the file's metadata: never decoded), follows
:mod:`pipelines.corrupt` like every backend (named ``sample <index> of <file>``): 'error'
raises :class:`~pipelines.corrupt.CorruptImageError`; 'skip' replaces it by the next readable
sample of the epoch order, counted in ``Batch.skipped``. The replacement is rare, so it is
cut outside the compiled decoder, from the sample's stored bytes, by
:func:`pipelines.decode.render_views` with the replacement's own draws; the colour pass
then treats it like the rest of the batch.
"""
from __future__ import annotations

import io
import queue
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from numba import set_parallel_chunksize

from . import sampler
from .batch import keep_torch_threads
from .decode import render_views
from .ffcv_writer import FFCV_INSTALL_HINT
from .image_header import DEFAULT_MAX_PIXELS, above_cap, check_max_pixels
from .recipe import BYOL, Recipe
from .resample import crop_resize, decode_reduction
from .view_plan_loader import ViewPlanLoader

with keep_torch_threads():  # importing ffcv sets torch's thread count to 1
    try:
        from ffcv.fields.rgb_image import IMAGE_MODES
        from ffcv.libffcv import ctypes_imdecode, ctypes_memcopy
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


def _read_only_state_types() -> None:
    """Give FFCV's memory managers read-only state types that leave numba's shared types alone.

    FFCV builds them as ``t = numba.uint8[::1]; t.mutable = False``, but numba interns its
    array types, so that assignment turns *every* ``uint8[::1]`` (and, for the process cache,
    ``uint8[:, ::1]``, ``uint64[::1]``, ``uint32[::1]``) read-only in the whole process. The
    type's hash changes under every numba dispatcher that already compiled for it, and the
    next compilation there fails with a ``KeyError`` from numba's overload table (our fused
    colour kernels, for one). ``copy(readonly=True)`` makes the same types as new objects
    (and the OS-cache reader, which names its return type, returns the read-only one).
    """
    import numba as nb
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.memory_managers.process_cache.manager import ProcessCacheManager

    read_only_bytes = nb.uint8[::1].copy(readonly=True)

    def os_cache_state(self):  # data read-only; FFCV leaves the two index arrays writable
        return nb.types.Tuple([read_only_bytes, nb.uint64[::1], nb.uint64[::1]])

    def os_cache_reader(self):  # the sample's bytes: a read-only slice of the mapped file
        def read(address, mem_state):
            size = mem_state[2][np.searchsorted(mem_state[1], address)]
            return mem_state[0][address:address + size]
        return Compiler.compile(read, read_only_bytes(nb.uint64, self.state_type))

    def process_cache_state(self):
        return nb.types.Tuple([t.copy(readonly=True) for t in
                               (nb.uint8[:, ::1], nb.uint64[::1], nb.uint64[::1], nb.uint32[::1])])

    OSCacheManager.state_type = property(os_cache_state)
    OSCacheManager.compile_reader = os_cache_reader
    ProcessCacheManager.state_type = property(process_cache_state)


_read_only_state_types()


# --------------------------------------------------------------------------- the decoder

class ViewPlanDecoder(Operation):
    """Decode an ``RGBImageField`` once and cut every view of the recipe from it.

    Outputs ``(packed, ok, params)``: ``packed`` (B, sum of 3 * S_k * S_k) uint8, view k
    planar (3, S_k, S_k) at offset ``offsets[k]``, flip applied (both by
    :func:`~pipelines.resample.crop_resize`); ``ok`` (B, 1) int32, 0 when libjpeg reported
    an error (the views are then mid-grey until the loader replaces the sample); ``params`` (B, V,
    len(PARAM_NAMES)) float64, the draws of :mod:`pipelines.sampler` for key (seed, epoch,
    dataset index of the sample, view). A sample whose stored image has more than
    ``max_pixels`` pixels (0: no cap) is not decoded: it reports ``ok`` 0 like a failed
    decode, and the scratch buffers are sized for the largest image within the cap.

    FFCV's threads take the batch's samples one at a time (numba's parallel chunk size 1)
    rather than in equal shares fixed up front: on the CPU the loader's colour thread
    shares the cores, so with fixed shares the decoding thread it slows down keeps the other
    waiting at the end of every batch. In one interleaved run on 2 cores, photos, batch 16:
    +23% images/s for the full recipe, +18% with colour off.

    (seed, epoch) are read from ``self.state`` at every batch and the dataset index of each
    sample from ``self.keys``: numba freezes arrays captured by a compiled function at
    compile time, so both are reached through their (fixed) addresses with a memcpy instead,
    and ``set_state`` changes the next batches without recompiling the pipeline.
    """

    def __init__(self, recipe: Recipe, image_size: int, keys: np.ndarray, seed: int = 0,
                 scale_decode: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        check_max_pixels(max_pixels)
        self.max_pixels = int(max_pixels)
        self.spec = sampler.recipe_spec(recipe, image_size)
        self.sizes = np.array(recipe.output_sizes(image_size), dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(3 * self.sizes * self.sizes)]).astype(np.int64)
        self.scale_decode = bool(scale_decode)
        self.keys = np.ascontiguousarray(keys, dtype=np.int64)  # kept alive with the decoder: its address is compiled in
        self.state = np.zeros(2, dtype=np.int64)
        self.set_state(seed, 0)

    def set_state(self, seed: int, epoch: int) -> None:
        self.state[0], self.state[1] = int(seed), int(epoch)

    def declare_state_and_memory(self, previous_state: State):
        pixels = self.metadata["width"].astype(np.int64) * self.metadata["height"].astype(np.int64)
        if self.max_pixels:
            pixels = pixels[pixels <= self.max_pixels]
        self.scratch_pixels = int(pixels.max()) if len(pixels) else 1
        nv = len(self.sizes)
        u8 = np.dtype("<u1")
        total = int(self.offsets[-1])
        return (replace(previous_state, jit_mode=True, shape=(total,), dtype=u8),
                (AllocationQuery((total,), u8), AllocationQuery((1,), np.dtype("<i4")),
                 AllocationQuery((nv, len(sampler.PARAM_NAMES)), np.dtype("<f8")),
                 AllocationQuery((self.scratch_pixels * 3,), u8)))

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        # libffcv's C entry points, called directly (numba calls ctypes functions natively)
        imdecode_c, memcpy_c = ctypes_imdecode, ctypes_memcopy
        jpg = IMAGE_MODES["jpg"]
        state_address, keys_address = self.state.ctypes.data, self.keys.ctypes.data
        spec, sizes, offsets = self.spec, self.sizes, self.offsets
        nv = len(self.sizes)
        scale_decode, max_pixels = self.scale_decode, self.max_pixels
        draw_sample, reduction = sampler.draw_sample, decode_reduction
        TOP, LEFT, HEIGHT, WIDTH, FLIP = (sampler.P[k] for k in ("top", "left", "height", "width", "flip"))

        def decode(batch_indices, my_storage, metadata, storage_state):
            set_parallel_chunksize(1)  # FFCV's threads take samples one at a time (class docstring)
            packed, status_out, params, temp_storage = my_storage
            state = np.empty(2, dtype=np.int64)
            memcpy_c(state_address, state.ctypes.data, 16)
            seed, epoch = state[0], state[1]
            for dst_ix in my_range(len(batch_indices)):
                sample = batch_indices[dst_ix]
                key = np.empty(1, dtype=np.int64)
                memcpy_c(keys_address + 8 * sample, key.ctypes.data, 8)
                field = metadata[sample]
                height = np.int64(field["height"])
                width = np.int64(field["width"])
                rows = params[dst_ix]
                draw_sample(rows, spec, seed, epoch, key[0], height, width)
                image_data = mem_read(field["data_ptr"], storage_state)
                temp = temp_storage[dst_ix]
                ok = 1
                denom = 1
                if max_pixels > 0 and height * width > max_pixels:
                    # above the cap: never decoded. A 1x1 grey stand-in, until the loader replaces the sample
                    ok = 0
                    dh, dw = 1, 1
                    temp[:3] = 128
                elif field["mode"] == jpg:
                    if scale_decode:
                        denom = reduction(rows, sizes)
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
                status_out[dst_ix, 0] = ok
                for v in range(nv):
                    size = sizes[v]
                    out = packed[dst_ix, offsets[v]:offsets[v + 1]].reshape(3, size, size)
                    flip = rows[v, FLIP] > 0.5
                    if ok:  # the drawn window in the decoded image, in fractional pixels
                        crop_resize(decoded, rows[v, TOP] / denom, rows[v, LEFT] / denom, rows[v, HEIGHT] / denom,
                                    rows[v, WIDTH] / denom, size, flip, out)
                    else:
                        out[:] = 128
            n = len(batch_indices)
            return packed[:n], status_out[:n], params[:n]

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


def stored_image_span(reader, sample_id: int) -> tuple[int, int]:
    """(offset in the file, size in bytes) of one sample's stored image field."""
    field = reader.metadata[f"f{list(reader.handlers).index('image')}"][sample_id]
    table = reader.alloc_table
    size = int(table["size"][np.flatnonzero(table["ptr"] == field["data_ptr"])[0]])
    return int(field["data_ptr"]), size


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


class FFCVLoader(ViewPlanLoader):
    """View-plan loader over a ``.beton`` file (see the module docstring for the contract).

    Options beyond those of :class:`pipelines.view_plan_loader.ViewPlanLoader`: ``order``
    ('random' | 'quasi_random'), ``os_cache`` (FFCV: rely on the OS page cache, else a
    process cache), ``batches_ahead`` (FFCV's queue depth), ``scale_decode`` (JPEG DCT
    down-scaling). ``pin_memory``, ``prefetch_factor`` and ``persistent_workers`` are the
    torch backend's and are accepted and ignored (FFCV pins its buffers itself when CUDA is
    present)."""

    NAME = "ffcv"
    MIN_WORKERS = 1

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 order: str = "random", os_cache: bool = True, batches_ahead: int = 3, scale_decode: bool = True,
                 pin_memory=None, prefetch_factor=None, persistent_workers=None, **options):
        if order not in ("random", "quasi_random"):
            raise ValueError(f"order must be 'random' or 'quasi_random', got {order!r}")
        self.order = order
        super().__init__(lambda: self._open(data_dir), batch_size, image_size, recipe, **options)
        reader = self._reader
        self._index_of = self._index_column(reader)
        self.decoder = ViewPlanDecoder(recipe, image_size, self._index_of, self.seed, scale_decode, self.max_pixels)
        pipelines = {name: None for name in reader.handlers}
        pipelines["image"] = PipelineSpec("image", decoder=self.decoder, transforms=[])
        with keep_torch_threads():
            self._ffcv = _FFCVLoader(str(self.path), batch_size=batch_size, num_workers=self.num_workers,
                                     os_cache=os_cache, order=OrderOption.SEQUENTIAL, seed=self.seed,
                                     drop_last=self.drop_last, batches_ahead=batches_ahead, pipelines=pipelines)
        self._plan = _PlannedOrder(self._ffcv, self._rank_order(0))
        self._ffcv.traversal_order = self._plan
        self._ffcv.first_traversal_order = self._plan.planned
        self._active = None
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _open(self, data_dir) -> tuple[int, str]:
        if data_dir is None:
            raise ValueError("the ffcv backend reads a .beton file: pass its path as data_dir")
        path = Path(data_dir).expanduser()
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; the ffcv backend reads a .beton file "
                                    f"(write one with: python -m pipelines.ffcv_writer --data {path} --out FILE.beton)")
        if not path.is_file():
            raise FileNotFoundError(f".beton file {path} does not exist "
                                    f"(write one with: python -m pipelines.ffcv_writer --data DIR --out {path})")
        from ffcv.reader import Reader
        reader = Reader(str(path))
        if "image" not in reader.handlers:
            raise ValueError(f"{path} has no 'image' field (fields: {', '.join(reader.handlers)})")
        self.path, self._reader = path, reader
        self._pages = sample_pages(reader) if self.order == "quasi_random" else None
        return int(reader.num_samples), str(path)

    @staticmethod
    def _index_column(reader) -> np.ndarray:
        """Dataset index per sample: the writer's ``index`` field, else the sample id."""
        names = list(reader.handlers.keys())
        if "index" in names:
            return np.asarray(reader.metadata[f"f{names.index('index')}"]).astype(np.int64).reshape(-1)
        return np.arange(int(reader.num_samples), dtype=np.int64)

    # ------------------------------------------------------------------ epoch plan

    def make_order(self, epoch: int) -> np.ndarray | None:
        if self.order != "quasi_random":
            return None
        return quasi_random_order(self._pages, self.seed, epoch, 4 * self.batch_size * self.world_size)

    def _rank_order(self, epoch: int) -> np.ndarray:
        """Sample ids this rank reads in ``epoch``, in reading order."""
        return self.epoch_order(epoch)[self.positions % self.num_samples].astype(np.uint64)

    # ------------------------------------------------------------------ iteration

    def _stop_active(self) -> None:
        """End an unfinished pass (the loop was left early) before the shared state changes."""
        it, self._active = self._active, None
        if it is not None:
            stop_epoch_iterator(it)

    def _to_device(self, packed: np.ndarray) -> torch.Tensor:
        """Copy FFCV's buffer out before the next batch may reuse it."""
        host = torch.from_numpy(packed)
        if self._copy_stream is None:
            return host  # the CPU colour pass reads it before the next batch is asked for
        with torch.cuda.stream(self._copy_stream):
            dev = host.to(self.device, non_blocking=True)
        self._copy_stream.synchronize()  # FFCV refills the pinned buffers once we ask for more
        dev.record_stream(torch.cuda.current_stream(self.device))
        return dev

    def sample_name(self, sample_id: int) -> str:
        """Named by its dataset index (the writer's ``index`` field) and the file."""
        return f"sample {int(self._index_of[sample_id])} of {self.path}"

    def _above_cap(self, sample_id: int) -> str | None:
        """Why the decoder left a sample out for its size, from the file's metadata, or None."""
        reader = self._ffcv.reader
        field = reader.metadata[f"f{list(reader.handlers).index('image')}"][sample_id]
        return above_cap(int(field["width"]), int(field["height"]), self.max_pixels)

    def _render_stored(self, epoch: int, sample_id: int):
        """Every view of one sample, cut outside the compiled decoder from its stored bytes."""
        offset, size = stored_image_span(self._ffcv.reader, sample_id)
        data = io.BytesIO(np.fromfile(self.path, dtype=np.uint8, count=size, offset=offset).tobytes())
        return render_views(data, self.recipe, self.image_size, self.seed, epoch, int(self._index_of[sample_id]),
                            colour=False, spec=self.spec, planar=True, max_pixels=self.max_pixels)

    def _to_batch(self, raw, sample_ids: np.ndarray, epoch: int, batch: int):
        (packed, ok, params), = raw
        ok = np.array(ok[:, 0])   # small: copied out of the ring buffer
        params = np.array(params)
        sample_ids = sample_ids.astype(np.int64)
        host = self._to_device(packed)
        offsets = self.decoder.offsets
        failed = np.flatnonzero(ok == 0)
        positions = self.batch_positions(batch)
        for j in failed:
            self.corrupt.report(self.sample_name(sample_ids[j]),
                                self._above_cap(sample_ids[j]) or "libjpeg-turbo failed to decode it")
            (arrays, _, params[j]), sample_ids[j], _ = self.first_readable(
                epoch, int(positions[j]), lambda i: self._render_stored(epoch, i), first=1)
            for v, arr in enumerate(arrays):
                host[j, int(offsets[v]):int(offsets[v + 1])] = torch.from_numpy(arr).reshape(-1).to(host.device)
        views = [host[:, int(offsets[v]):int(offsets[v + 1])].view(-1, 3, size, size)
                 for v, size in enumerate(self.sizes)]
        return self.finish(views, params, self._index_of[sample_ids], len(failed))

    def batches(self, epoch: int, start: int):
        self._stop_active()
        planned = self._rank_order(epoch)[start * self.batch_size:]
        self._plan.planned = planned
        self.decoder.set_state(self.seed, epoch)
        if len(planned) == 0:
            return iter(())
        with keep_torch_threads():
            it = iter(self._ffcv)
        self._active = it
        bs = self.batch_size
        return (self._to_batch(raw, planned[k * bs:(k + 1) * bs], epoch, start + k) for k, raw in enumerate(it))

    def end_pass(self, finished: bool) -> None:
        self._stop_active()


def build_ffcv_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                      **options) -> FFCVLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`FFCVLoader`)."""
    return FFCVLoader(data_dir, batch_size, image_size, recipe, **options)
