"""A real loader feeding the real training step: where does the time go?

For each installed backend, the engine's :class:`~pixpro_fast.engine.Trainer` is built with
that loader and its own step is driven for N steps by a lean loop that times, per step, the
wait for the next batch and the step itself (the device is synchronised after the step, so
the split is honest on a GPU too). The first steps (worker start-up, the prefetch queue
filling) are left out. The wait fraction goes through :func:`pixpro_fast.metrics.verdict`
("loader-bound: 38% of wall time waiting ..." or "compute-bound ...", with the remedy).

The same loop over the synthetic loader (no decoding) gives the compute ceiling of the same
run, so each backend's end-to-end rate is also reported as a fraction of that ceiling. A
backend may name where its colour steps run (``dali:workers``, ``dali:device``; see
:mod:`pipelines.view_plan_loader`); the ffcv backend reads a .beton of the same images,
written once under ``--out``.

    python -m benchmarks.bench_end_to_end --backends torch,dali --steps 8
    python -m benchmarks.bench_end_to_end --backends torch,dali:workers,dali:device,ffcv --device cuda --compile
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


import pipelines
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import Trainer
from pixpro_fast.hardware import native_precisions, resolve_precision
from pixpro_fast.metrics import verdict

from .bench_torch_loader import images_per_second
from .common import add_shared_options, batches_forever, rate_columns, sync, table_with_skips, write_json


def summarise(waits: list[float], computes: list[float], batch_size: int, loader: str | None = None,
              skipped_steps: int = 0, bf16_native: bool = True, in_use: tuple[str, ...] = ()) -> dict:
    """Per-step wait and compute times -> totals, wait fraction, rate and the verdict (for the
    ``loader`` backend, after ``skipped_steps`` untimed steps; see :func:`verdict`)."""
    if len(waits) != len(computes) or not waits:
        raise ValueError("need one wait and one compute time per step, at least one step")
    wait, compute = sum(waits), sum(computes)
    wall = wait + compute
    fraction = wait / wall if wall > 0 else 0.0
    return {"steps": len(waits), "wait_s": wait, "compute_s": compute, "wall_s": wall,
            "wait_fraction": fraction, "images_per_s": batch_size * len(waits) / wall if wall > 0 else 0.0,
            "median_wait_s": statistics.median(waits), "median_compute_s": statistics.median(computes),
            "verdict": verdict(fraction, in_use=in_use, loader=loader, bf16_native=bf16_native,
                               warmup_steps=skipped_steps)}


def measure(trainer: Trainer, steps: int, skip: int = 2) -> tuple[list[float], list[float]]:
    """Drive ``trainer``'s step over its loader (across epoch ends); per-step (wait, compute)
    seconds after ``skip`` steps."""
    waits, computes = [], []
    dev = trainer.device
    stream = batches_forever(trainer.loader)
    for i in range(skip + steps):
        t0 = time.perf_counter()
        batch = next(stream)
        t1 = time.perf_counter()
        trainer.train_one_step([batch])
        sync(dev)
        t2 = time.perf_counter()
        if i >= skip:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
    stream.close()
    return waits, computes


def split_backend(spec: str) -> tuple[str, str | None]:
    """``'dali:workers'`` -> ``('dali', 'workers')``; a plain backend name has no colour place."""
    backend, _, colour = spec.partition(":")
    return backend, colour or None


def run(data_dir, backends=("torch", "dali", "ffcv"), arch: str = "resnet18", image_size: int = 128,
        batch_size: int = 32, steps: int = 8, skip: int = 2, precision: str = "auto", channels_last: bool = True,
        compiled: bool = False, workers: int | None = None, device: str = "cpu", proj_hidden_dim: int = 4096,
        data_for: dict | None = None, log=print) -> dict:
    """``data_for`` maps a backend to its own data path where it needs one (ffcv: a .beton)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    resolved = resolve_precision(precision, device)
    in_use = tuple(n for n, on in (("bf16 autocast", resolved != "fp32"), ("channels-last", channels_last),
                                   ("torch.compile", compiled)) if on)
    bf16_native = "bf16" in native_precisions(device)
    rows, skipped = [], {}
    base_cfg = dict(arch=arch, image_size=image_size, batch_size=batch_size, proj_hidden_dim=proj_hidden_dim,
                    device=device, precision=precision, channels_last=channels_last, compile=compiled,
                    tensorboard=False, epochs=1000, warmup_epochs=0.0, resume=False, num_workers=workers)
    with tempfile.TemporaryDirectory() as out:
        for spec in ("synthetic",) + tuple(backends):
            backend, colour = split_backend(spec)
            data = (data_for or {}).get(backend, data_dir)
            cfg = TrainConfig(**base_cfg, loader=backend, data=str(data), out=out)
            try:
                opts = {"device": device}
                if backend == "synthetic":
                    opts["batches_per_epoch"] = skip + steps
                else:
                    opts["num_workers"] = workers
                if colour:
                    opts["colour"] = colour
                loader = pipelines.build_loader(backend, data, batch_size, image_size, cfg.recipe, **opts)
            except Exception as exc:   # library missing, or data this backend cannot read: a skip, not a failure
                skipped[spec] = f"{type(exc).__name__}: {exc}"[:300]
                log(f"  end-to-end: {spec} skipped ({skipped[spec]})")
                continue
            trainer = Trainer(cfg, loader=loader)
            waits, computes = measure(trainer, steps, skip)
            row = {"backend": spec, "colour": getattr(loader, "colour", None),
                   **summarise(waits, computes, batch_size, backend, skip, bf16_native, in_use),
                   "waits": waits,
                   "computes": computes}
            if backend != "synthetic":   # the same loader without the step: what it could deliver
                row["feed_images_per_s"] = images_per_second(loader, batch_size, skip, steps, device)
            rows.append(row)
            log(f"  end-to-end {spec}: {row['verdict'].split(' (')[0]}")
            del trainer, loader
    ceiling = rows[0]["images_per_s"]
    for r in rows:
        r["vs_compute_ceiling"] = r["images_per_s"] / ceiling
        if "feed_images_per_s" in r:   # above 1: the loader alone outpaces the step
            r["feed_vs_compute_ceiling"] = r["feed_images_per_s"] / ceiling
    return {"arch": arch, "image_size": image_size, "batch_size": batch_size, "steps": steps, "skipped_steps": skip,
            "precision": resolved, "channels_last": channels_last, "compiled": compiled, "workers": workers,
            "device": device, "data_dir": str(data_dir), "rows": rows, "skipped": skipped}


def table(result: dict) -> str:
    rows, rates = rate_columns(result["rows"], result.get("device", "cpu"),
                               {"images_per_s": "images/s", "feed_images_per_s": "feed images/s"})
    cols = ["backend", "wait_fraction", rates[0], "vs_compute_ceiling", rates[1], "feed_vs_compute_ceiling", "verdict"]
    return table_with_skips(rows, cols, result["skipped"])


def main(argv=None):
    from pipelines.scenes import ensure_scenes
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backends", default="torch,dali,ffcv")
    ap.add_argument("--arch", default="resnet18")
    add_shared_options(ap, batch_size=32, image_size=128, device="cpu", out="bench_out")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--precision", default="auto",
                    help="auto (bf16 where native on this device, else fp32), fp32, bf16 or fp16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (its first steps are skipped)")
    ap.add_argument("--skip", type=int, default=2, help="untimed first steps (start-up, compilation)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers/threads (default: all cores)")
    ap.add_argument("--images", type=int, default=512, help="scenes to generate when no --data-dir")
    args = ap.parse_args(argv)
    data_dir = args.data_dir or ensure_scenes(args.images)
    backends = tuple(args.backends.split(","))
    data_for = {}
    if any(split_backend(b)[0] == "ffcv" for b in backends):
        try:
            from .bench_loaders import ffcv_beton
            data_for["ffcv"] = ffcv_beton(data_dir, args.out, args.workers or 1)
        except ImportError as exc:   # FFCV not installed: the row is skipped with the reason
            print(f"  end-to-end: no .beton for ffcv ({exc})")
    result = run(data_dir, backends, args.arch, args.image_size, args.batch_size, args.steps,
                 skip=args.skip, precision=args.precision, compiled=args.compile, workers=args.workers,
                 device=args.device, data_for=data_for)
    print(table(result))
    print("wrote", write_json(args.out, "end_to_end.json", result))
    return result


if __name__ == "__main__":
    main()
