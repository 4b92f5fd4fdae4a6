"""The LOCA training step with each attention kernel (``--attention auto`` against ``math``),
and with ``--compile`` each kernel again under ``torch.compile``, timed side by side in one run
on the same synthetic batch: which kernel a ViT should use on this device, at each image size
and precision, and what compiling adds.

On a CPU, ``auto`` is torch's flash kernel. Small views give short token sequences (a 128 px
view is 64 tokens, a focal view 9-16), where its bf16 backward costs more than the plain
matmul-softmax-matmul path. ``tokens`` is the token count of a full view at that size.
Compiled steps are timed after their first call (the compilation: minutes on a CPU); each
``*_speedup`` column is the eager ``auto`` step's seconds over that variant's.

    python -m benchmarks.bench_attention --vit-archs vit_tiny_patch16 --image-sizes 128,224
    python -m benchmarks.bench_attention --image-sizes 128 --precisions auto --compile
"""
from __future__ import annotations

import argparse

import torch

from pixpro_fast.config import ATTENTION_KERNELS
from pixpro_fast.hardware import resolve_precision
from pixpro_fast.vit import PATCH

from .bench_methods import method_step
from .common import add_shared_options, default_device, markdown_table, time_interleaved, write_json


def variants(compile: bool) -> dict[str, dict]:
    """Timed variant -> its config fields: each kernel eager, and compiled when asked."""
    out = {k: {"attention": k} for k in ATTENTION_KERNELS}
    if compile:
        out.update({f"{k}_compiled": {"attention": k, "compile": True} for k in ATTENTION_KERNELS})
    return out


def run(vit_archs=("vit_tiny_patch16",), image_sizes=(128, 224), precisions=("auto", "fp32"), batch_size=32,
        device="cpu", iters=5, compile=False, log=print) -> dict:
    # "auto" resolves to fp32 on a CPU without native bf16: time each resolved precision once
    resolved = list(dict.fromkeys(resolve_precision(p, device, warn=False) for p in precisions))
    rows = []
    for arch in vit_archs:
        for size in image_sizes:
            for precision in resolved:
                steps = {name: method_step("loca", arch, size, batch_size, device, precision, vit_arch=arch, **fields)
                         for name, fields in variants(compile).items()}
                times = time_interleaved(steps, device, warmup=2, iters=iters)
                row = {"arch": arch, "image_size": size, "tokens": (size // PATCH) ** 2, "precision": precision,
                       **{f"{name}_s": t for name, t in times.items()},
                       **{f"{name}_speedup": times["auto"] / t for name, t in times.items() if name != "auto"}}
                rows.append(row)
                log(f"{arch} {size} px {precision}: " + ", ".join(f"{name} {t:.3f} s" for name, t in times.items()))
    return {"device": device, "batch_size": batch_size, "iters": iters, "compile": compile,
            "variants": list(variants(compile)), "rows": rows}


def table(result: dict) -> str:
    names = result["variants"]
    return markdown_table(result["rows"], ["arch", "image_size", "tokens", "precision"] + [f"{n}_s" for n in names]
                          + [f"{n}_speedup" for n in names if n != "auto"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_attention", description=__doc__.splitlines()[0])
    ap.add_argument("--vit-archs", default="vit_tiny_patch16", help="comma-separated ViTs")
    ap.add_argument("--image-sizes", default="128,224", help="comma-separated view sizes (reference and query 0)")
    ap.add_argument("--precisions", default="auto,fp32", help="comma-separated: auto, fp32, bf16, fp16")
    add_shared_options(ap, batch_size=32, device=default_device(), threads=True, out="bench_out")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--compile", action="store_true",
                    help="also time each kernel under torch.compile (each compiles first: minutes on a CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(tuple(args.vit_archs.split(",")), tuple(int(s) for s in args.image_sizes.split(",")),
                 tuple(args.precisions.split(",")), args.batch_size, args.device, args.iters, args.compile)
    print(f"LOCA step, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads; "
          "X_speedup = eager auto seconds / X seconds")
    print(table(result))
    print("wrote", write_json(args.out, "attention.json", result))
    return result


if __name__ == "__main__":
    main()
