"""Cost of each pretext task's input construction beside its whole training step.

For every pretext method, on one synthetic batch of normalised views: the time of the task
transform alone (rotations, tiles, Lab and soft targets, noise) and of a full step (forward,
backward, SGD). The share tells whether building the task on the device is worth moving.

    python -m benchmarks.bench_pretext --arch resnet18 --image-size 64 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pixpro_fast.methods.colorization import Colorization, soft_encode
from pixpro_fast.methods.denoising_ae import DenoisingAE
from pixpro_fast.methods.jigsaw import Jigsaw
from pixpro_fast.methods.relative_location import RelativeLocation
from pixpro_fast.methods.rotation import Rotation, rotations
from .common import add_shared_options, default_device


def task_of(method, x):
    if isinstance(method, Rotation):
        return rotations(x)
    if isinstance(method, Colorization):
        lightness, ab = method.task(x)
        return soft_encode(ab, method.bins, method.k, method.sigma) if method.mode == "classification" else ab
    return method.task(x)


def timed(fn, device, repeats):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    add_shared_options(ap, batch_size=32, image_size=64, device=default_device(),
                       out="bench_out/pretext.json", helps={"out": "the JSON file to write"})
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    rows = []
    for name, method in [("rotation", Rotation(args.arch)), ("jigsaw", Jigsaw(args.arch)),
                         ("relative_location", RelativeLocation(args.arch)),
                         ("colorization", Colorization(args.arch)), ("denoising_ae", DenoisingAE(args.arch))]:
        method = method.to(device)
        opt = torch.optim.SGD(method.online.parameters(), lr=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            method((x,), None).loss.backward()
            opt.step()

        with torch.no_grad():
            task_s = timed(lambda: task_of(method, x), device, args.repeats)
        step_s = timed(step, device, args.repeats)
        rows.append({"method": name, "task_ms": 1e3 * task_s, "step_ms": 1e3 * step_s,
                     "task_share": task_s / step_s, "images_per_s": args.batch_size / step_s})
    print(f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {device}")
    print(f"{'method':<18} {'task ms':>9} {'step ms':>9} {'task share':>11} {'img/s':>8}")
    for r in rows:
        print(f"{r['method']:<18} {r['task_ms']:9.2f} {r['step_ms']:9.1f} {r['task_share']:11.1%} {r['images_per_s']:8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
