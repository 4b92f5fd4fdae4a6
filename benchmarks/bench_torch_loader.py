"""Side by side: plain JPEG decode ceiling, the plain torchvision baseline, the torch backend.

Same files, same cores, same batch size and worker count. Each round runs every pipeline
in turn (fresh workers, warm-up batches drained first so that prefetched batches do not
flatter anyone) and the median over rounds is reported, so a noisy machine slows every
contender alike. Beside the wall-clock rate, each pipeline's CPU cost per image is measured
in-process (no workers, ``time.process_time`` counts every thread): a figure that other
load on a shared machine barely moves. Prints a table and writes JSON; asserts nothing.

    python -m benchmarks.bench_torch_loader --batches 20 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.baseline_loader import build_baseline_loader
from benchmarks.common import add_shared_options, batches_forever, markdown_table, steady_rate, sync, write_json
from pipelines.image_folder import list_images
from pipelines.recipe import get_recipe
from pipelines.scenes import ensure_scenes
from pipelines.decode import decode_jpeg_rgb
from pipelines.torch_loader import build_torch_loader


class _DecodeOnly(torch.utils.data.Dataset):
    """Full decode to RGB and nothing else: the ceiling any pipeline on these files faces.

    ``decoder``: 'pil' (PIL's decode, no array made) or 'torchvision' (JPEGs through the
    torch backend's :func:`~pipelines.decode.decode_jpeg_rgb` into an array, other
    files through PIL)."""

    def __init__(self, paths, decoder: str = "pil"):
        if decoder not in ("pil", "torchvision"):
            raise ValueError(f"decoder must be 'pil' or 'torchvision', got {decoder!r}")
        self.paths, self.decoder = paths, decoder

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        if self.decoder == "torchvision" and path.suffix.lower() in (".jpg", ".jpeg"):
            return decode_jpeg_rgb(path.read_bytes()).shape[1]
        with Image.open(path) as img:
            return img.convert("RGB").size[0]


def decode_loader(data_dir, batch_size, num_workers, decoder: str = "pil"):
    ds = _DecodeOnly(list_images(data_dir), decoder)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=num_workers)


def images_per_second(loader, batch_size: int, warmup: int, batches: int, device="cpu") -> float:
    """Steady-state rate: ``warmup`` batches (workers starting, prefetch queue) are not timed;
    the rate is the slope of the start and the next ``batches`` arrival times
    (:func:`steady_rate`): DataLoader workers deliver in bursts of one batch each, so a clock
    stopped after a few batches times a burst. For evenly spaced arrivals the slope is the
    clock's rate. On a GPU each batch's device work (colour, copies) is waited for, not only
    queued."""
    it = batches_forever(loader)
    for _ in range(warmup):
        next(it)
    sync(device)
    arrivals = [time.perf_counter()]   # the start counts: one batch gives the plain clock's rate
    for _ in range(batches):
        next(it)
        sync(device)
        arrivals.append(time.perf_counter())
    it.close()
    return steady_rate(arrivals, batch_size)


def timed_batches(batches: int, workers: int) -> int:
    """At least four bursts of the workers' batches, so the slope spans more than one."""
    return max(batches, 4 * workers, 2)


def cpu_ms_per_image(loader, batch_size: int, batches: int) -> float:
    """CPU milliseconds per image of a loader built with num_workers=0 (first batch untimed).

    Runs with one torch thread, as DataLoader workers do: a multi-threaded op on a busy
    machine would bill spin-waiting as work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        it = iter(loader)
        next(it)
        t0 = time.process_time()
        for _ in range(batches):
            next(it)
        return (time.process_time() - t0) * 1000 / (batches * batch_size)
    finally:
        torch.set_num_threads(threads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="image folder (default: the built-in scenes)")
    ap.add_argument("--images", type=int, default=None,
                    help="scenes to generate when no --data-dir (default: enough for one pass)")
    add_shared_options(ap, batch_size=64, image_size=224, device="cpu", rounds=3, out="bench_out")
    ap.add_argument("--recipe", default="byol")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--batches", type=int, default=12,
                    help="timed batches per pipeline and round (at least 4 per worker)")
    ap.add_argument("--cpu-batches", type=int, default=2, help="batches per in-process CPU-cost measurement")
    args = ap.parse_args(argv)

    warmup = 2 * args.workers + 2  # drains the prefetch queue (prefetch_factor 2 per worker)
    batches = timed_batches(args.batches, args.workers)
    need = (batches + warmup) * args.batch_size
    data_dir = Path(args.data_dir) if args.data_dir else ensure_scenes(args.images or -(-need // 512) * 512)
    recipe = get_recipe(args.recipe)
    n_files = len(list_images(data_dir))
    if n_files < need:
        raise SystemExit(f"{data_dir} has {n_files} images; {need} are needed for one pass "
                         f"(lower --batches or --batch-size, or raise --images)")
    common = dict(batch_size=args.batch_size, image_size=args.image_size, recipe=recipe,
                  device=args.device, num_workers=args.workers)
    makers = {
        "decode ceiling": lambda w: decode_loader(data_dir, args.batch_size, w),
        "baseline (torchvision)": lambda w: build_baseline_loader(data_dir, persistent_workers=False,
                                                                  **{**common, "num_workers": w}),
        "torch backend": lambda w: build_torch_loader(data_dir, persistent_workers=False,
                                                      **{**common, "num_workers": w}),
        "torch backend, PIL colour": lambda w: build_torch_loader(data_dir, persistent_workers=False, colour="pil",
                                                                  **{**common, "num_workers": w}),
    }
    if str(args.device).startswith("cuda"):  # the default there; the CPU rows beside it for comparison
        makers["torch backend, CPU colour in workers"] = lambda w: build_torch_loader(
            data_dir, persistent_workers=False, colour="workers", **{**common, "num_workers": w})
    rates: dict[str, list[float]] = {k: [] for k in makers}
    cpu: dict[str, list[float]] = {k: [] for k in makers}
    for r in range(args.rounds):
        for name, make in makers.items():
            rates[name].append(images_per_second(make(args.workers), args.batch_size, warmup, batches, args.device))
            cpu[name].append(cpu_ms_per_image(make(0), args.batch_size, args.cpu_batches))
            print(f"round {r + 1}/{args.rounds} {name}: {rates[name][-1]:.1f} images/s, "
                  f"{cpu[name][-1]:.2f} CPU ms/image", flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    base, base_cpu = med["baseline (torchvision)"], med_cpu["baseline (torchvision)"]
    ceiling = med["decode ceiling"]
    rows = [{"pipeline": k, "images/s": v, "vs baseline": v / base, "vs decode ceiling": v / ceiling,
             "CPU ms/image": med_cpu[k], "CPU vs baseline": base_cpu / med_cpu[k]} for k, v in med.items()]
    print()
    print(f"{n_files} images from {data_dir}, batch {args.batch_size}, {args.image_size}px, recipe {recipe.name}, "
          f"{args.workers} workers, device {args.device}, median of {args.rounds} rounds")
    print(markdown_table(rows, ["pipeline", "images/s", "vs baseline", "vs decode ceiling", "CPU ms/image",
                                "CPU vs baseline"]))
    path = write_json(args.out, "torch_loader.json", {
        "benchmark": "torch_loader", "data_dir": str(data_dir), "images": n_files, "batch_size": args.batch_size,
        "image_size": args.image_size, "recipe": recipe.name, "workers": args.workers, "device": args.device,
        "batches": batches, "rounds": args.rounds, "rates": rates, "median": med,
        "cpu_ms_per_image": cpu, "median_cpu_ms_per_image": med_cpu,
        "speedup_vs_baseline": med["torch backend"] / base,
        "cpu_speedup_vs_baseline": base_cpu / med_cpu["torch backend"]})
    print(f"wrote {path}")
    return med


if __name__ == "__main__":
    main()
