"""Side by side: decode ceilings, DALI's stock single-view pipeline, the two-view DALI loader.

Same files, same cores (DALI threads = PIL threads = --workers), same batch size. Rows:

- ``PIL decode``: full decode to RGB in a thread pool (the ceiling of any PIL pipeline);
- ``DALI decode``: ``fn.readers.file`` + ``fn.decoders.image``, nothing else;
- ``DALI stock 1-view``: ``decoders.image_random_crop`` + ``resize`` + ``crop_mirror_normalize``;
- ``dali loader, geometry``: the loader with the recipe's colour steps off (two views + boxes);
- ``dali loader, full``: the loader with the full recipe, yielding Batch objects, with its
  default colour place; beside it the other one (``colour='workers'``: DALI operators in
  the graph; ``'device'``: the shared colour engine after the pipeline); in CPU-only mode,
  where the views are cut on the host by default, also the full recipe with the views cut
  by DALI's resize in the graph.

Rates count images, not views. Each round runs every row in turn and the median over rounds
is reported; the loader rows time batches after a warm-up inside one epoch (pipeline start
and the filled prefetch queue are not timed). Prints a markdown table, writes JSON, asserts
nothing.

    python -m benchmarks.bench_dali_loader --batches 12 --rounds 3
    python -m benchmarks.bench_dali_loader --device cuda --check    # GPU self-check, then timings
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import add_shared_options, markdown_table, write_json
from pipelines.dali_loader import DaliLoader, require_dali
from pipelines.image_folder import list_images
from pipelines.recipe import get_recipe
from benchmarks.photos import benchmark_images


def other_colour(colour: str) -> str:
    """The loader's colour place that is not ``colour`` (of ``DaliLoader.COLOUR``)."""
    return next(m for m in DaliLoader.COLOUR if m != colour)


def _pil_decode(path) -> int:
    with Image.open(path) as img:
        return img.convert("RGB").size[0]


def pil_rate(paths, batch_size: int, workers: int, batches: int) -> float:
    paths = paths[: batch_size * batches]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_pil_decode, paths[:batch_size]))  # warm-up
        t0 = time.perf_counter()
        list(pool.map(_pil_decode, paths, chunksize=4))
        return len(paths) / (time.perf_counter() - t0)


def stock_pipeline(files, batch_size, workers, device_id, mode, size, recipe, single_view: bool):
    """DALI's own pipelines: plain decode, or the stock single-view random-resized-crop."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=workers, device_id=device_id, seed=0, prefetch_queue_depth=2)
    def pipe():
        data, _ = fn.readers.file(files=[str(f) for f in files], random_shuffle=False, name="reader")
        dev = "mixed" if mode == "gpu" else "cpu"
        if not single_view:
            return fn.decoders.image(data, device=dev, output_type=types.RGB)
        v = recipe.view1
        img = fn.decoders.image_random_crop(data, device=dev, output_type=types.RGB, random_area=list(v.crop_scale),
                                            random_aspect_ratio=list(v.crop_ratio), num_attempts=10)
        img = fn.resize(img, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC",
                                        mean=[255 * m for m in recipe.mean], std=[255 * s for s in recipe.std],
                                        mirror=fn.random.coin_flip(probability=v.flip_p))

    p = pipe()
    p.build()
    return p


def pipeline_rate(p, batch_size: int, warmup: int, batches: int, device: str) -> float:
    for _ in range(warmup):
        p.run()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        out = p.run()
    if device == "cuda":
        out[0].as_cpu()  # waits for the last batch's GPU work
    return batches * batch_size / (time.perf_counter() - t0)


def loader_rate(loader: DaliLoader, batch_size: int, warmup: int, batches: int, device: str) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    if device == "cuda":
        b.view2.sum().item()
        torch.cuda.synchronize()
    rate = batches * batch_size / (time.perf_counter() - t0)
    it.close()
    return rate


def self_check(device: str, workers: int) -> bool:
    """The box contract and batch contract in the mode the device selects (GPU mode on cuda)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from coordinate_plane import corner_errors, denormalise, write_coordinate_planes

    recipe = get_recipe("byol")
    size, ok = 64, True
    with tempfile.TemporaryDirectory() as tmp:
        write_coordinate_planes(Path(tmp), [(90, 400), (400, 90), (131, 257), (300, 300), (64, 640), (480, 200),
                                            (97, 113), (250, 333)])
        geo = DaliLoader(tmp, 8, size, recipe.without_colour(), device=device, num_workers=workers)
        worst, flips = 0.0, 0
        for epoch in range(4):
            geo.set_epoch(epoch)
            for b in geo:
                for v, c in ((b.view1, b.coords1), (b.view2, b.coords2)):
                    worst = max(worst, corner_errors(denormalise(v, recipe.mean, recipe.std), c).max().item())
                    flips += int((c[:, 0] > c[:, 2]).sum())
        tol = 0.5 / (size - 1) + 3 / 255
        print(f"[check] dali mode {geo.dali_device}: worst corner error {worst:.4f} (tolerance {tol:.4f}), "
              f"{flips} flipped views")
        ok &= worst < tol and flips > 0
        full = DaliLoader(tmp, 8, size, recipe, device=device, num_workers=workers)
        b = next(iter(full))
        for v in (b.view1, b.view2):
            good = (v.device.type == torch.device(device).type and v.dtype == torch.float32
                    and v.shape == (8, 3, size, size) and v.is_contiguous(memory_format=torch.channels_last)
                    and bool(torch.isfinite(v).all()))
            ok &= good
        ok &= b.coords1.shape == (8, 4) and b.coords1.device.type == torch.device(device).type
        print(f"[check] batch contract on {device}: view {tuple(b.view1.shape)} {b.view1.dtype} "
              f"{b.view1.device}, channels_last={b.view1.is_contiguous(memory_format=torch.channels_last)}")
    print("[check]", "PASS" if ok else "FAIL")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="image folder (default: --source)")
    ap.add_argument("--source", default="scenes", choices=("scenes", "photos"),
                    help="images to generate when no --data-dir: the built-in scenes or real-photo-like JPEGs")
    ap.add_argument("--images", type=int, default=None, help="scenes to generate when no --data-dir")
    add_shared_options(ap, batch_size=64, image_size=224, device="cpu", rounds=3, out="bench_out",
                       helps={"device": "training device: cpu (DALI CPU-only) or cuda (GPU mode)"})
    ap.add_argument("--recipe", default="byol")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count())
    ap.add_argument("--batches", type=int, default=12, help="timed batches per row and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="run the box/batch contract self-check first")
    args = ap.parse_args(argv)
    require_dali()

    if args.check and not self_check(args.device, args.workers):
        raise SystemExit(1)
    need = (args.batches + args.warmup) * args.batch_size
    data_dir = Path(args.data_dir) if args.data_dir else benchmark_images(args.source, args.images or -(-need // 512) * 512)
    files = list_images(data_dir)
    if len(files) < need:
        raise SystemExit(f"{data_dir} has {len(files)} images; {need} are needed for one pass "
                         f"(lower --batches or --batch-size, or raise --images)")
    recipe = get_recipe(args.recipe)
    B, S, W = args.batch_size, args.image_size, args.workers

    def loader(r, colour="auto", host_crop=None):
        return DaliLoader(data_dir, B, S, r, device=args.device, num_workers=W, colour=colour, host_crop=host_crop)

    probe = loader(recipe)
    mode, device_id, default_colour, host_crop = probe.dali_device, probe.device_id, probe.colour, probe.host_crop
    other = other_colour(default_colour)
    del probe
    rows = {
        "PIL decode (threads)": lambda: pil_rate(files, B, W, args.batches),
        "DALI decode": lambda: pipeline_rate(stock_pipeline(files, B, W, device_id, mode, S, recipe, False),
                                             B, args.warmup, args.batches, args.device),
        "DALI stock 1-view": lambda: pipeline_rate(stock_pipeline(files, B, W, device_id, mode, S, recipe, True),
                                                   B, args.warmup, args.batches, args.device),
        "dali loader, geometry (2 views)": lambda: loader_rate(loader(recipe.without_colour()), B,
                                                               args.warmup, args.batches, args.device),
        "dali loader, full recipe (2 views)": lambda: loader_rate(loader(recipe), B, args.warmup, args.batches,
                                                                  args.device),
        f"dali loader, full recipe, colour '{other}'": lambda: loader_rate(
            loader(recipe, other), B, args.warmup, args.batches, args.device),
    }
    if host_crop:  # the lever beside the default: the same views cut by DALI's resize in the graph
        rows["dali loader, full recipe, views cut in the graph"] = lambda: loader_rate(
            loader(recipe, host_crop=False), B, args.warmup, args.batches, args.device)
    rates: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(args.rounds):
        for name, run in rows.items():
            rates[name].append(run())
            print(f"round {r + 1}/{args.rounds} {name}: {rates[name][-1]:.1f} images/s", flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    stock, ceiling = med["DALI stock 1-view"], med["DALI decode"]
    table = [{"pipeline": k, "images/s": v, "vs stock 1-view": v / stock, "vs DALI decode": v / ceiling}
             for k, v in med.items()]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    print()
    print(f"{len(files)} images from {data_dir}, batch {B}, {S}px, recipe {recipe.name}, {W} threads, "
          f"device {args.device} (DALI {mode} mode, GPU {gpu}, default colour '{default_colour}', "
          f"views cut {'on the host' if host_crop else 'in the graph'}), "
          f"median of {args.rounds} rounds")
    print(markdown_table(table, ["pipeline", "images/s", "vs stock 1-view", "vs DALI decode"]))
    path = write_json(args.out, f"dali_loader_{args.device}.json", {
        "benchmark": "dali_loader", "data_dir": str(data_dir), "images": len(files), "batch_size": B,
        "image_size": S, "recipe": recipe.name, "workers": W, "device": args.device, "dali_mode": mode,
        "default_colour": default_colour, "host_crop": host_crop,
        "batches": args.batches, "warmup": args.warmup, "rounds": args.rounds, "rates": rates, "median": med,
        "full_vs_stock": med["dali loader, full recipe (2 views)"] / stock})
    print(f"wrote {path}")
    return med


if __name__ == "__main__":
    main()
