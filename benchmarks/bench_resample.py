"""The per-view steps a CPU loader repeats, each beside what it replaced, in one run.

On the same photos, one thread, each image's view windows drawn by :mod:`pipelines.sampler`
from the ``byol`` recipe (so the mix of enlarging and shrinking crops is the loaders'):

- crop + resize to the view size: :func:`pipelines.resample.crop_resize` (planar output,
  flip folded in) against PIL's ``Image.resize(BILINEAR, box=...)`` (the same filter) and,
  where OpenCV is installed, ``cv2.resize(INTER_AREA)`` on the window plus the planar copy
  (what FFCV's own decoder and, before, the ffcv backend did);
- JPEG decode to an (H, W, 3) array: torchvision's ``decode_jpeg`` (the torch backend's)
  against PIL's decode and its copy into an array.

Times are interleaved medians (:func:`benchmarks.common.time_interleaved`); the table gives
milliseconds per view or image and the ratio to the first row of each step. Prints a table
and writes JSON; asserts nothing.

    python -m benchmarks.bench_resample --source photos --images 64
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import add_shared_options, markdown_table, time_interleaved, write_json
from benchmarks.photos import benchmark_images
from pipelines import resample, sampler
from pipelines.image_folder import list_images
from pipelines.recipe import get_recipe
from pipelines.decode import decode_jpeg_rgb
from pixpro_fast.probe import single_thread

try:
    import cv2
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None


def view_windows(images: list[np.ndarray], recipe, image_size: int) -> list[tuple]:
    """(image index, top, left, height, width, size, flip) for every view of every image."""
    spec = sampler.recipe_spec(recipe, image_size)
    out = []
    for i, img in enumerate(images):
        rows = np.zeros((len(recipe.views), len(sampler.PARAM_NAMES)))
        sampler.draw_sample(rows, spec, 0, 0, i, img.shape[0], img.shape[1])
        for row, s in zip(rows, spec[:, sampler.S["size"]]):
            p = {k: row[j] for k, j in sampler.P.items()}
            out.append((i, int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"]), int(s),
                        p["flip"] > 0.5))
    return out


@single_thread()  # the thread count is restored on return
def run(data_dir, n_images: int = 64, image_size: int = 224, recipe_name: str = "byol", iters: int = 5) -> dict:
    paths = list_images(data_dir)[:n_images]
    blobs = [p.read_bytes() for p in paths]
    images = [np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for b in blobs]
    pils = [Image.fromarray(a) for a in images]
    windows = view_windows(images, get_recipe(recipe_name), image_size)
    outs = {s: np.empty((3, s, s), np.uint8) for s in {w[5] for w in windows}}

    def numba_views():
        for i, t, l, h, w, s, flip in windows:
            resample.crop_resize(images[i], float(t), float(l), float(h), float(w), s, flip, outs[s])

    def pil_views():
        for i, t, l, h, w, s, flip in windows:
            v = np.asarray(pils[i].resize((s, s), Image.Resampling.BILINEAR, box=(l, t, l + w, t + h)))
            outs[s][:] = (v[:, ::-1] if flip else v).transpose(2, 0, 1)

    def opencv_views():
        for i, t, l, h, w, s, flip in windows:
            v = cv2.resize(images[i][t:t + h, l:l + w], (s, s), interpolation=cv2.INTER_AREA)
            outs[s][:] = (v[:, ::-1] if flip else v).transpose(2, 0, 1)

    steps = {"crop + resize": {"numba crop_resize (planar, flip)": numba_views,
                               "PIL resize BILINEAR box": pil_views}}
    if cv2 is not None:
        cv2.setNumThreads(1)
        steps["crop + resize"]["OpenCV INTER_AREA + planar copy"] = opencv_views
    steps["JPEG decode to array"] = {
        "torchvision decode_jpeg": lambda: [decode_jpeg_rgb(b) for b in blobs],
        "PIL decode + np.asarray": lambda: [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]}
    rows = []
    for step, fns in steps.items():
        per = len(windows) if step == "crop + resize" else len(blobs)
        times = time_interleaved(fns, iters=iters)
        first = next(iter(times.values()))
        rows += [{"step": step, "implementation": k, "ms_each": 1000 * t / per, "vs_first": t / first}
                 for k, t in times.items()]
    return {"benchmark": "resample", "data_dir": str(data_dir), "images": len(paths), "views": len(windows),
            "image_size": image_size, "recipe": recipe_name, "threads": 1, "rows": rows}


def per_view_arguments(description: str) -> argparse.ArgumentParser:
    """The options of the per-view benchmarks (this one and bench_colour)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--source", default="photos", choices=("scenes", "photos"))
    ap.add_argument("--images", type=int, default=64)
    add_shared_options(ap, image_size=224, out="bench_out")
    ap.add_argument("--recipe", default="byol")
    ap.add_argument("--iters", type=int, default=5)
    return ap


def benchmark_folder(args) -> Path:
    """The images a per-view benchmark reads (photos: the loader benchmarks' 512)."""
    return benchmark_images(args.source, max(args.images, 512 if args.source == "photos" else args.images))


def main(argv=None):
    args = per_view_arguments(__doc__.splitlines()[0]).parse_args(argv)
    data_dir = benchmark_folder(args)
    result = run(data_dir, args.images, args.image_size, args.recipe, args.iters)
    print(f"{result['images']} images, {result['views']} views from {data_dir}, {args.image_size}px, "
          f"recipe {args.recipe}, one thread")
    print(markdown_table(result["rows"], ["step", "implementation", "ms_each", "vs_first"]))
    print(f"wrote {write_json(args.out, 'resample.json', result)}")
    return result


if __name__ == "__main__":
    main()
