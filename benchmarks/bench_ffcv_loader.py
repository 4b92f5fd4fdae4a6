"""Side by side on one .beton: decode ceilings, FFCV's stock single-view pipeline, the ffcv backend.

Rows (same images, cores, batch size and thread count):

- PIL decode: full decode of the source JPEGs in DataLoader workers (the torch backend's ceiling);
- FFCV decode only: every image decoded at full size and nothing else (SimpleRGBImageDecoder;
  for files of mixed image sizes, which it refuses, the same libjpeg-turbo call into
  buffers of the largest size);
- FFCV stock, 1 view: RandomResizedCropRGBImageDecoder + RandomHorizontalFlip +
  NormalizeImage + ToTensor + ToTorchImage, as FFCV's ImageNet example on the CPU;
- ffcv backend, geometry: our two views with colour off (decode once, two crops, boxes);
- ffcv backend, full recipe: two views plus pipelines.colour on the device.

Rates count images (a two-view sample is one image). Each round runs every row for one
pass in turn: the first ``--warmup`` batches of a pass (threads starting, FFCV's queue
filling) are not timed, and the median over rounds is reported, so a noisy machine slows
every row alike. Beside the wall-clock rate, ``cpu ms/img`` is process CPU time (all
threads; FFCV decodes in threads of this process) per image over the timed batches, a
figure that other load on a shared machine moves less. FFCV JIT-compiles each pipeline on
its first pass, which a compile pass before the rounds takes out of the measurement.
Prints a markdown table and writes JSON; asserts nothing.

    python -m benchmarks.bench_ffcv_loader --images 1024 --batch-size 64 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_torch_loader import decode_loader
from benchmarks.common import add_shared_options, markdown_table, write_json
from pipelines.ffcv_writer import require_ffcv, write_beton
from pipelines.image_folder import list_images
from pipelines.recipe import get_recipe
from benchmarks.photos import benchmark_images

require_ffcv()
from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder  # noqa: E402
from ffcv.fields.rgb_image import IMAGE_MODES  # noqa: E402
from ffcv.libffcv import ctypes_imdecode  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor, ToTorchImage  # noqa: E402

from pipelines.ffcv_loader import FFCVLoader, stop_epoch_iterator  # noqa: E402


class FullDecode(SimpleRGBImageDecoder):
    """SimpleRGBImageDecoder for files of mixed image sizes: full decode into largest-size buffers."""

    def declare_state_and_memory(self, previous_state):
        shape = (int(self.metadata["height"].max()) * int(self.metadata["width"].max()) * 3,)
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("<u1")),
                AllocationQuery(shape, np.dtype("<u1")))

    def generate_code(self):
        mem_read, my_range, imdecode_c = self.memory_read, Compiler.get_iterator(), ctypes_imdecode
        jpg = IMAGE_MODES["jpg"]

        def decode(batch_indices, destination, metadata, storage_state):
            for i in my_range(len(batch_indices)):
                field = metadata[batch_indices[i]]
                data = mem_read(field["data_ptr"], storage_state)
                h, w = field["height"], field["width"]
                if field["mode"] == jpg:
                    imdecode_c(data.ctypes.data, data.size, h, w, destination[i].ctypes.data, h, w, 0, 0, 1, 1,
                               False, False)
                else:
                    destination[i][:data.size] = data
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


def ffcv_loader(beton: Path, batch_size: int, workers: int, pipeline: list) -> Loader:
    from ffcv.reader import Reader
    pipelines = {name: None for name in Reader(str(beton)).handlers}
    pipelines["image"] = pipeline
    return Loader(str(beton), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM,
                  drop_last=True, pipelines=pipelines, seed=0)


def _stop(it) -> None:
    """End a pass early without leaving FFCV's producer thread decoding behind the next row."""
    if hasattr(it, "terminate_event"):  # FFCV's EpochIterator
        stop_epoch_iterator(it)
    elif hasattr(it, "close"):  # our generator: its finally block stops the FFCV pass
        it.close()


def measure(make_iter, batch_size: int, warmup: int, batches: int) -> tuple[float, float]:
    """(images/s, process CPU ms per image) over ``batches`` batches after ``warmup``."""
    it = make_iter()
    try:
        for _ in range(warmup):
            next(it)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(batches):
            next(it)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        _stop(it)
    n = batches * batch_size
    return n / wall, 1000 * cpu / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="image folder (default: --source)")
    ap.add_argument("--source", default="scenes", choices=("scenes", "photos"),
                    help="images to generate when no --data-dir: the built-in scenes or real-photo-like JPEGs")
    ap.add_argument("--images", type=int, default=1024, help="scenes to generate when no --data-dir")
    ap.add_argument("--beton", default=None, help=".beton to use (default: written under --out, reused)")
    ap.add_argument("--max-resolution", type=int, default=512)
    ap.add_argument("--jpeg-quality", type=int, default=90)
    add_shared_options(ap, batch_size=64, image_size=224, device="cpu", rounds=3, out="bench_out",
                       helps={"out": "folder for the JSON result (and the .beton)"})
    ap.add_argument("--recipe", default="byol")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="FFCV threads / DataLoader workers")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batches", type=int, default=10, help="timed batches per row and round")
    args = ap.parse_args(argv)

    data_dir = Path(args.data_dir) if args.data_dir else benchmark_images(args.source, args.images)
    n_files = len(list_images(data_dir))
    beton = Path(args.beton) if args.beton else Path(args.out) / "ffcv" / f"{data_dir.parent.name}-{data_dir.name}-{args.max_resolution}.beton"
    if not beton.exists():
        print(f"writing {beton} from {data_dir}", flush=True)
        write_beton(data_dir, beton, args.max_resolution, args.jpeg_quality, args.workers, progress=False)
    recipe = get_recipe(args.recipe)
    bs, size, w = args.batch_size, args.image_size, args.workers
    need = (args.warmup + args.batches) * bs
    mean, std = np.array(recipe.mean) * 255, np.array(recipe.std) * 255

    stock = ffcv_loader(beton, bs, w, [RandomResizedCropRGBImageDecoder((size, size)), RandomHorizontalFlip(),
                                       NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()])
    if len(stock) * bs < need:
        raise SystemExit(f"{beton} holds {len(stock) * bs} full batches' worth of images; {need} are needed "
                         f"for one pass (lower --batches or --batch-size, or raise --images)")
    sizes = stock.reader.metadata[f"f{list(stock.reader.handlers).index('image')}"]
    constant = len(set(zip(sizes["height"].tolist(), sizes["width"].tolist()))) == 1
    decode = ffcv_loader(beton, bs, w, [SimpleRGBImageDecoder() if constant else FullDecode()])
    common = dict(batch_size=bs, image_size=size, device=args.device, num_workers=w, seed=0)
    geometry = FFCVLoader(beton, recipe=recipe.without_colour(), **common)
    ours = FFCVLoader(beton, recipe=recipe, **common)

    rows = {
        "PIL decode (source JPEGs)": lambda: iter(decode_loader(data_dir, bs, w)),
        "FFCV decode only": lambda: iter(decode),
        "FFCV stock, 1 view": lambda: iter(stock),
        "ffcv backend, geometry": lambda: iter(geometry),
        "ffcv backend, full recipe": lambda: iter(ours),
    }
    for name, make in rows.items():  # JIT compilation, page cache
        measure(make, bs, 1, 1)
    rates: dict[str, list[float]] = {k: [] for k in rows}
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(args.rounds):
        for name, make in rows.items():
            rate, ms = measure(make, bs, args.warmup, args.batches)
            rates[name].append(rate)
            cpu[name].append(ms)
            print(f"round {r + 1}/{args.rounds} {name}: {rate:.1f} images/s, {ms:.2f} cpu ms/img", flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    stock_rate, decode_rate = med["FFCV stock, 1 view"], med["FFCV decode only"]
    table = [{"pipeline": k, "images/s": v, "vs FFCV stock": v / stock_rate, "vs FFCV decode": v / decode_rate,
              "cpu ms/img": med_cpu[k] if not k.startswith("PIL") else "(workers)"} for k, v in med.items()]
    print()
    print(f"{n_files} images from {data_dir} -> {beton} (max side {args.max_resolution}), batch {bs}, {size}px, "
          f"recipe {recipe.name}, {w} workers/threads, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, median of {args.rounds} rounds x {args.batches} batches")
    print(markdown_table(table, ["pipeline", "images/s", "vs FFCV stock", "vs FFCV decode", "cpu ms/img"]))
    path = write_json(args.out, "ffcv_loader.json", {
        "benchmark": "ffcv_loader", "data_dir": str(data_dir), "beton": str(beton), "images": n_files,
        "batch_size": bs, "image_size": size, "recipe": recipe.name, "workers": w, "device": args.device,
        "batches": args.batches, "warmup": args.warmup, "rounds": args.rounds, "rates": rates,
        "cpu_ms_per_image": cpu, "median": med, "median_cpu_ms_per_image": med_cpu,
        "ours_vs_stock": med["ffcv backend, full recipe"] / stock_rate})
    print(f"wrote {path}")
    return med


if __name__ == "__main__":
    main()
