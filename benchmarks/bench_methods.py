"""Training-step images/sec of every objective beside PixPro: same backbone, batch, image
size, precision and memory format, synthetic tensors (no loader), timed side by side. Each
method gets the views of its own plan (LOCA's eleven, the pretext tasks' one); LOCA runs on
the ViT given by ``--vit-arch``. FLOPs are counted with ``torch.utils.flop_counter`` over one
whole step (forward, backward, target branch); ``mfu`` is each step's FLOP rate over the rate
of a large matmul on the same device in the step's precision, measured in the same run.

    python -m benchmarks.bench_methods --arch resnet18 --image-size 64 --batch-size 32
"""
from __future__ import annotations

import argparse

from torch.utils.flop_counter import FlopCounterMode

from pixpro_fast.config import TrainConfig
from pipelines.recipe import get_recipe
from pixpro_fast.engine import Trainer
from pixpro_fast.methods import METHODS
from pipelines.synthetic import SyntheticLoader

from pixpro_fast.hardware import resolve_precision

from .bench_step import MATMUL_DTYPES, matmul_flops_per_sec
from .common import (add_shared_options, default_device, markdown_table, rate_columns, time_interleaved,
                     write_json)



def method_step(method: str, arch: str, image_size: int, batch_size: int, device: str, precision: str,
                channels_last: bool = True, vit_arch: str = "vit_tiny_patch16", **settings):
    """A closure running one engine training step of ``method`` on a fixed synthetic batch
    (``settings``: further config fields, e.g. ``attention="math"``)."""
    arch = vit_arch if METHODS[method].encoder == "vit" else arch
    cfg = TrainConfig.from_file(method).replace(
        arch=arch, image_size=image_size, batch_size=batch_size, device=device, precision=precision,
        channels_last=channels_last, tensorboard=False, epochs=1000, warmup_epochs=0.0, resume=False,
        out="bench_out/unused", **settings)
    loader = SyntheticLoader(batch_size, image_size, get_recipe(cfg.recipe), device=device, batches_per_epoch=1)
    trainer = Trainer(cfg, loader=loader)
    batch = next(iter(loader))
    return lambda: trainer.train_one_step([batch])


def flops_per_image(step, batch_size: int) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch_size


def run(arch="resnet18", image_size=64, batch_size=32, device="cpu", precision="auto", iters=5,
        methods=None, vit_arch="vit_tiny_patch16") -> dict:
    methods = list(methods or METHODS)
    steps = {m: method_step(m, arch, image_size, batch_size, device, precision, vit_arch=vit_arch) for m in methods}
    flops = {m: flops_per_image(s, batch_size) for m, s in steps.items()}
    times = time_interleaved(steps, device, warmup=2, iters=iters)
    matmul_precision = resolve_precision(precision, device, warn=False)
    peak = matmul_flops_per_sec(device, MATMUL_DTYPES[matmul_precision])
    ref = "pixpro" if "pixpro" in times else methods[0]
    rows = []
    for m in methods:
        rate = flops[m] * batch_size / times[m]
        rows.append({"method": m, "arch": vit_arch if METHODS[m].encoder == "vit" else arch, "description": METHODS[m].description,
                     "gflops_per_image": flops[m] / 1e9, "step_time_vs_pixpro": times[m] / times[ref],
                     "images_per_sec_vs_pixpro": times[ref] / times[m], "images_per_sec": batch_size / times[m],
                     "tflops_per_sec": rate / 1e12, "mfu": rate / peak})
    return {"arch": arch, "vit_arch": vit_arch, "image_size": image_size, "batch_size": batch_size, "device": device,
            "precision": precision, "matmul_precision": matmul_precision, "matmul_flops_per_sec": peak, "rows": rows}


def table(result: dict) -> str:
    rows, rate = rate_columns(result["rows"], result["device"], {"images_per_sec": "images/s"})
    cols = ["method", "arch", "gflops_per_image", *rate, "step_time_vs_pixpro", "images_per_sec_vs_pixpro", "mfu",
            "tflops_per_sec"]
    return markdown_table(rows, cols)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--vit-arch", default="vit_tiny_patch16", help="encoder of the ViT methods (loca)")
    add_shared_options(ap, batch_size=32, image_size=64, device=default_device(), out="bench_out")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--methods", help="comma-separated subset (default: all)")
    args = ap.parse_args(argv)
    result = run(args.arch, args.image_size, args.batch_size, args.device, args.precision, args.iters,
                 args.methods.split(",") if args.methods else None, args.vit_arch)
    print(f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {args.precision}, {args.device}; "
          f"mfu against a {result['matmul_precision']} matmul at {result['matmul_flops_per_sec'] / 1e12:.2f} TFLOP/s")
    print(table(result))
    print("wrote", write_json(args.out, "methods.json", result))
    return result


if __name__ == "__main__":
    main()
