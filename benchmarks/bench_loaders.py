"""Every installed loader backend beside two references, on the same files, cores and batch.

References (always run):

- ``decode ceiling``: plain full JPEG decode to RGB (PIL) in DataLoader workers, nothing else;
- ``decode ceiling, torchvision``: the same through torchvision's ``decode_jpeg`` into an
  array, the torch backend's JPEG decoder (its ``vs_torchvision_decode`` column);
- ``baseline``: the plain torchvision two-view pipeline (:mod:`benchmarks.baseline_loader`).

Then one function per backend produces that backend's rows: its two-view loader with the
full recipe (two views + boxes, yielding :class:`pipelines.batch.Batch`) and, where the
library has one, its stock single-view random-resized-crop pipeline, plus the 8-view
``swav_multicrop`` plan (2 x full size + 6 x 96/224 of it), and the full recipe with the
colour work in the backend's other place (torch and DALI: in their workers ``'workers'``
or after them ``'device'``; :mod:`pipelines.view_plan_loader`). A backend whose
library (or whose loader / benchmark module) is not installed is skipped with the reason,
never an error. Rows are images (samples) per second; each round runs every row in turn
and the median over rounds is kept, so a busy machine slows every contender alike. Ratios
are against the baseline and the decode ceiling of the same run.

    python -m benchmarks.bench_loaders --batch-size 32 --batches 8 --rounds 2
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from pipelines.batch import keep_torch_threads
from pipelines.image_folder import list_images
from pipelines.recipe import BYOL, SWAV_MULTICROP, Recipe, get_recipe

from .baseline_loader import build_baseline_loader
from .bench_torch_loader import decode_loader, images_per_second
from .common import add_shared_options, rate_columns, table_with_skips, write_json

DECODE, TV_DECODE, BASELINE = "decode ceiling", "decode ceiling, torchvision", "baseline (torchvision 2-view)"


class Unavailable(Exception):
    """A backend (or one of its rows) cannot run on this machine; the message says why."""


@dataclass
class LoaderBench:
    """What every row function gets: the same files, cores, batch and image size."""
    data_dir: Path
    batch_size: int
    image_size: int
    workers: int
    batches: int
    recipe: Recipe = BYOL
    device: str = "cpu"
    work_dir: Path = Path("bench_out")   # where derived data (the FFCV .beton) is kept

    @property
    def warmup(self) -> int:
        """Batches drained before timing: worker start-up and the filled prefetch queue."""
        return 2 * max(self.workers, 1) + 2

    @property
    def images_needed(self) -> int:
        return (self.batches + self.warmup) * self.batch_size


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{what} not installed (no module {module!r})")


def _optional_module(name: str):
    if importlib.util.find_spec(name) is None:
        raise Unavailable(f"{name} not present in this checkout")
    return importlib.import_module(name)


# -- references -----------------------------------------------------------------------------

def decode_ceiling(b: LoaderBench, decoder: str = "pil") -> float:
    return images_per_second(decode_loader(b.data_dir, b.batch_size, b.workers, decoder), b.batch_size, b.warmup,
                             b.batches)


def baseline(b: LoaderBench) -> float:
    loader = build_baseline_loader(b.data_dir, b.batch_size, b.image_size, b.recipe, device=b.device,
                                   num_workers=b.workers, persistent_workers=False)
    return images_per_second(loader, b.batch_size, b.warmup, b.batches, b.device)


# -- torch ----------------------------------------------------------------------------------

class _StockSingleView(torch.utils.data.Dataset):
    """torchvision's stock recipe for one view: decode, RandomResizedCrop, flip, tensor, normalise."""

    def __init__(self, paths, size: int, recipe: Recipe):
        v = recipe.view1
        self.paths = paths
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=v.crop_scale, ratio=v.crop_ratio, antialias=True),
            transforms.RandomHorizontalFlip(v.flip_p), transforms.ToTensor(),
            transforms.Normalize(recipe.mean, recipe.std)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def torch_rows(b: LoaderBench) -> dict[str, Callable[[], float]]:
    from pipelines.torch_loader import build_torch_loader

    def two_view(recipe=b.recipe, colour="auto"):
        loader = build_torch_loader(b.data_dir, b.batch_size, b.image_size, recipe, device=b.device,
                                    num_workers=b.workers, persistent_workers=False, colour=colour)
        return images_per_second(loader, b.batch_size, b.warmup, b.batches, b.device)

    def stock():
        ds = _StockSingleView(list_images(b.data_dir), b.image_size, b.recipe)
        loader = torch.utils.data.DataLoader(ds, batch_size=b.batch_size, shuffle=True, drop_last=True,
                                             num_workers=b.workers)
        return images_per_second(loader, b.batch_size, b.warmup, b.batches, b.device)

    rows = {"torch loader (2 views + boxes)": two_view, "torchvision stock 1-view RRC": stock,
            "torch loader (8-view multi-crop)": lambda: two_view(SWAV_MULTICROP)}
    # beside the default, the colour work's other place: in the workers or after them ('device')
    default = build_torch_loader(b.data_dir, b.batch_size, b.image_size, b.recipe, device=b.device,
                                 num_workers=0).colour
    other = "workers" if default == "device" else "device"
    rows[f"torch loader, colour='{other}'"] = lambda: two_view(colour=other)
    return rows


# -- dali -----------------------------------------------------------------------------------

def dali_rows(b: LoaderBench) -> dict[str, Callable[[], float]]:
    _require("nvidia.dali", "NVIDIA DALI")
    from pipelines.dali_loader import DaliLoader
    bench = _optional_module("benchmarks.bench_dali_loader")
    files = list_images(b.data_dir)
    warmup = 3

    def loader(recipe=b.recipe, colour="auto"):
        return DaliLoader(b.data_dir, b.batch_size, b.image_size, recipe, device=b.device, num_workers=b.workers,
                          colour=colour)

    probe = loader()
    mode, device_id = probe.dali_device, probe.device_id
    other = bench.other_colour(probe.colour)
    del probe

    def two_view():
        return bench.loader_rate(loader(), b.batch_size, warmup, b.batches, b.device)

    def stock():
        pipe = bench.stock_pipeline(files, b.batch_size, b.workers, device_id, mode, b.image_size, b.recipe, True)
        return bench.pipeline_rate(pipe, b.batch_size, warmup, b.batches, b.device)

    def multi_crop():
        return bench.loader_rate(loader(SWAV_MULTICROP), b.batch_size, warmup, b.batches, b.device)

    return {"dali loader (2 views + boxes)": two_view, "DALI stock 1-view RRC": stock,
            "dali loader (8-view multi-crop)": multi_crop,
            f"dali loader, colour='{other}'": lambda: bench.loader_rate(loader(colour=other), b.batch_size, warmup,
                                                                          b.batches, b.device)}


# -- ffcv -----------------------------------------------------------------------------------

def ffcv_beton(data_dir, work_dir, workers: int = 1, max_resolution: int = 512) -> Path:
    """The .beton of ``data_dir`` that the ffcv backend reads (written once under ``work_dir``).

    FFCV stores the images re-encoded (JPEG quality 90, longer side at most
    ``max_resolution``), so its rows read the same images, not the same bytes."""
    from pipelines.ffcv_writer import write_beton
    data_dir = Path(data_dir).resolve()
    tag = hashlib.sha1(str(data_dir).encode()).hexdigest()[:10]
    beton = Path(work_dir) / "ffcv" / f"{data_dir.name}-{tag}-{max_resolution}.beton"
    if not beton.exists():
        write_beton(data_dir, beton, max_resolution, 90, workers, progress=False)
    return beton


def ffcv_rows(b: LoaderBench) -> dict[str, Callable[[], float]]:
    """The ffcv backend and FFCV's stock single-view pipeline (as in FFCV's ImageNet example),
    both on the .beton of the same folder, timed with the FFCV benchmark's own helpers."""
    _require("ffcv", "FFCV")
    try:
        bench = _optional_module("benchmarks.bench_ffcv_loader")
        from pipelines.ffcv_loader import FFCVLoader
    except ImportError as exc:
        raise Unavailable(f"the ffcv backend does not import: {exc}") from exc
    beton = ffcv_beton(b.data_dir, b.work_dir, b.workers)
    mean, std = np.array(b.recipe.mean) * 255, np.array(b.recipe.std) * 255
    stock = bench.ffcv_loader(beton, b.batch_size, b.workers, [
        bench.RandomResizedCropRGBImageDecoder((b.image_size, b.image_size)), bench.RandomHorizontalFlip(),
        bench.NormalizeImage(mean, std, np.float32), bench.ToTensor(), bench.ToTorchImage()])
    ours = FFCVLoader(beton, b.batch_size, b.image_size, b.recipe, device=b.device, num_workers=b.workers, seed=0)
    multi = FFCVLoader(beton, b.batch_size, b.image_size, SWAV_MULTICROP, device=b.device, num_workers=b.workers,
                       seed=0)
    makers = {"ffcv loader (2 views + boxes)": lambda: iter(ours), "FFCV stock 1-view RRC": lambda: iter(stock),
              "ffcv loader (8-view multi-crop)": lambda: iter(multi)}
    for make in makers.values():   # FFCV compiles each pipeline on its first pass: keep that out of the timing
        bench.measure(make, b.batch_size, 1, 1)
    return {name: (lambda m: lambda: bench.measure(m, b.batch_size, b.warmup, b.batches)[0])(make)
            for name, make in makers.items()}


BACKENDS: dict[str, Callable[[LoaderBench], dict[str, Callable[[], float]]]] = {
    "torch": torch_rows, "dali": dali_rows, "ffcv": ffcv_rows}


def run(data_dir, batch_size: int = 32, image_size: int = 224, workers: int | None = None, batches: int = 8,
        rounds: int = 2, recipe: str | Recipe = "byol", device: str = "cpu", backends=tuple(BACKENDS),
        work_dir="bench_out", log=print) -> dict:
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    workers = workers if workers is not None else (os.cpu_count() or 1)
    b = LoaderBench(Path(data_dir), batch_size, image_size, workers, batches, recipe, device, Path(work_dir))
    n_files = len(list_images(b.data_dir))
    if n_files < b.images_needed:
        raise ValueError(f"{data_dir} has {n_files} images; one pass of {b.batches} timed + {b.warmup} warm-up "
                         f"batches of {batch_size} needs {b.images_needed}")
    rows: dict[str, Callable[[], float]] = {DECODE: lambda: decode_ceiling(b),
                                            TV_DECODE: lambda: decode_ceiling(b, "torchvision"),
                                            BASELINE: lambda: baseline(b)}
    backend_of = {DECODE: "reference", TV_DECODE: "reference", BASELINE: "reference"}
    skipped = {}
    for name in backends:
        try:
            with keep_torch_threads():  # importing a library may change them (FFCV does)
                extra = BACKENDS[name](b)
        except (Unavailable, ImportError) as exc:
            skipped[name] = str(exc)
            log(f"  loaders: {name} skipped ({exc})")
            continue
        rows.update(extra)
        backend_of.update({k: name for k in extra})
    rates: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(rounds):
        for name, fn in list(rows.items()):
            if name not in rates:
                continue
            try:
                with keep_torch_threads():
                    rates[name].append(fn())
            except Unavailable as exc:
                skipped[name] = str(exc)
                del rates[name]
                continue
            log(f"  loaders round {r + 1}/{rounds} {name}: done")
    med = {k: statistics.median(v) for k, v in rates.items()}
    base, ceiling, tv_ceiling = med[BASELINE], med[DECODE], med[TV_DECODE]
    table_rows = [{"pipeline": k, "backend": backend_of[k], "images_per_s": v, "vs_baseline": v / base,
                   "vs_decode_ceiling": v / ceiling, "vs_torchvision_decode": v / tv_ceiling}
                  for k, v in med.items()]
    return {"data_dir": str(data_dir), "images": n_files, "batch_size": batch_size, "image_size": image_size,
            "workers": workers, "recipe": recipe.name, "device": device, "batches": batches, "rounds": rounds,
            "warmup_batches": b.warmup, "rates": rates, "rows": table_rows, "skipped": skipped}


def table(result: dict) -> str:
    rows, rate = rate_columns(result["rows"], result.get("device", "cpu"), {"images_per_s": "images/s"})
    cols = ["pipeline", "backend", *rate, "vs_baseline", "vs_decode_ceiling", "vs_torchvision_decode"]
    return table_with_skips(rows, cols, result["skipped"])


def main(argv=None):
    from .photos import benchmark_images
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="image folder (default: --source)")
    ap.add_argument("--source", default="scenes", choices=("scenes", "photos"),
                    help="images to generate when no --data-dir: the built-in scenes or real-photo-like JPEGs")
    add_shared_options(ap, batch_size=32, image_size=224, device="cpu", rounds=2, out="bench_out")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args(argv)
    need = (args.batches + 2 * args.workers + 2) * args.batch_size
    data_dir = args.data_dir or benchmark_images(args.source, -(-need // 512) * 512)
    result = run(data_dir, args.batch_size, args.image_size, args.workers, args.batches, args.rounds,
                 device=args.device, work_dir=args.out)
    print(table(result))
    print("wrote", write_json(args.out, "loaders.json", result))
    return result


if __name__ == "__main__":
    main()
