"""The CPU colour pass, per view: the fused engine beside the tensor-op engine, and its parts.

On the same photos, one thread: every image's views are cut by
:func:`pipelines.resample.crop_resize` from the windows :mod:`pipelines.sampler` draws for
the ``byol`` recipe, batched by view (view 0 always blurs, view 1 blurs one time in ten and
may solarize), and each batch gets its recipe's drawn colour work (jitter, grayscale, blur,
solarize, normalisation):

- ``numba``: :mod:`pipelines.colour_cpu`, the fused pass the CPU loaders run;
- ``torch``: the tensor-op engine of :mod:`pipelines.colour` (what a GPU runs), on the CPU;
- the fused pass again with the blur, then also the hue rotation, then the whole jitter
  left out of the same draws: the differences are what those parts cost.

Times are interleaved medians (:func:`benchmarks.common.time_interleaved`); the table gives
milliseconds per view and the ratio to the fused pass of the same view. Prints a table and
writes JSON; asserts nothing.

    python -m benchmarks.bench_colour --source photos --images 64
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch
from PIL import Image

from benchmarks.bench_resample import benchmark_folder, per_view_arguments, view_windows
from benchmarks.common import markdown_table, time_interleaved, write_json
from pipelines import resample
from pipelines.colour import apply_colour, sample_colour_params
from pipelines.image_folder import list_images
from pipelines.recipe import get_recipe
from pixpro_fast.probe import single_thread


def view_batches(data_dir, n_images: int, image_size: int, recipe) -> list[torch.Tensor]:
    """(n_images, 3, S, S) uint8 crops of each view of ``recipe``, in view order."""
    paths = list_images(data_dir)[:n_images]
    images = [np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")))
              for p in paths]
    windows = view_windows(images, recipe, image_size)
    per_view: list[list[np.ndarray]] = [[] for _ in recipe.views]
    for k, (i, t, l, h, w, s, flip) in enumerate(windows):
        out = np.empty((3, s, s), np.uint8)
        resample.crop_resize(images[i], float(t), float(l), float(h), float(w), s, flip, out)
        per_view[k % len(recipe.views)].append(out)
    return [torch.from_numpy(np.stack(v)) for v in per_view]


@single_thread()  # the thread count is restored on return
def run(data_dir, n_images: int = 64, image_size: int = 224, recipe_name: str = "byol", iters: int = 5,
        seed: int = 0) -> dict:
    recipe = get_recipe(recipe_name)
    batches = view_batches(data_dir, n_images, image_size, recipe)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for v, (view, images) in enumerate(zip(recipe.views, batches)):
        b = images.shape[0]
        params = sample_colour_params(view, b, gen)
        no_blur = dataclasses.replace(params, blur_sigma=torch.zeros(b))
        no_hue = dataclasses.replace(no_blur, hue=torch.zeros(b))
        no_jitter = dataclasses.replace(no_blur, jitter=torch.zeros(b, dtype=torch.bool))
        out = torch.empty(images.shape, dtype=torch.float32).contiguous(memory_format=torch.channels_last)

        def colour(p, engine):
            return lambda: apply_colour(images, p, view.solarize_threshold, recipe.mean, recipe.std,
                                        engine=engine, out=out if engine == "numba" else None)

        fns = {"fused numba pass": colour(params, "numba"),
               "tensor ops (torch engine)": colour(params, "torch"),
               "fused, no blur": colour(no_blur, "numba"),
               "fused, no blur, no hue": colour(no_hue, "numba"),
               "fused, no blur, no jitter": colour(no_jitter, "numba")}
        times = time_interleaved(fns, iters=iters)
        first = times["fused numba pass"]
        rows += [{"view": v, "implementation": k, "ms_per_view": 1000 * t / b, "vs_fused": t / first}
                 for k, t in times.items()]
        rows[-len(fns)]["drawn"] = (f"jitter {int(params.jitter.sum())}, grey {int(params.grayscale.sum())}, "
                                    f"blur {int((params.blur_sigma > 0).sum())}, "
                                    f"solarize {int(params.solarize.sum())} of {b}")
    return {"benchmark": "colour", "data_dir": str(data_dir), "images": n_images, "image_size": image_size,
            "recipe": recipe_name, "threads": 1, "rows": rows}


def main(argv=None):
    ap = per_view_arguments(__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data_dir = benchmark_folder(args)
    result = run(data_dir, args.images, args.image_size, args.recipe, args.iters, args.seed)
    print(f"{args.images} images from {data_dir}, {args.image_size}px, recipe {args.recipe}, one thread")
    print(markdown_table(result["rows"], ["view", "implementation", "ms_per_view", "vs_fused", "drawn"]))
    print(f"wrote {write_json(args.out, 'colour.json', result)}")
    return result


if __name__ == "__main__":
    main()
