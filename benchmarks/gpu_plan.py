"""The GPU measurements in one command: each benchmark in its own process, under its own time
limit, so that one part that hangs, fails or lacks its library costs only itself.

    python -m benchmarks.gpu_plan --out gpu_out                 # every part, in the order below
    python -m benchmarks.gpu_plan --parts step_levers,methods   # a subset (one call per GPU lease)
    python -m benchmarks.gpu_plan --list                        # the parts, their commands and limits
    python -m benchmarks.gpu_plan --budget-s 540                # every part that fits in 9 minutes

Parts (ResNet-50 and ViT-S/16 at 224 px, batch 128, as in RESULTS.md's GPU section):

- ``step_levers``: the compiled bf16 PixPro step and both views in one encoder call, eager and
  compiled (``bench_step --levers bf16 --only concat-views``);
- ``step_max_autotune``, ``step_cuda_graphs``: the compiled step beside the same step compiled
  with ``max-autotune`` or ``reduce-overhead`` (each compiles slowly, so each is its own part);
- ``step_whole``: the whole step (forward, backward, optimiser, momentum update) compiled as
  one graph, and the same replayed as CUDA graphs (``--only whole-step``);
- ``step_batch256``: the channels-last compiled bf16 step at batch 256;
- ``methods``: LOCA beside PixPro: step time, FLOPs per image and MFU (``bench_methods``);
- ``torch_loader``: the torch backend's feed rate with the colour work on the GPU beside the
  CPU colour path (``bench_torch_loader --device cuda``);
- ``end_to_end``: the torch backend feeding the compiled step, with the verdict;
- ``dali_loader``: DALI in GPU mode against its stock pipeline (skipped without DALI);
- ``dali_end_to_end``: DALI feeding the compiled step, the colour steps in its graph and in
  the shared pass after it (skipped without DALI);
- ``ffcv_end_to_end``: FFCV feeding the compiled step, from a .beton of the same scenes
  (skipped without FFCV);
- ``quality_224``: every method pretrained on the scenes at 224 px on the GPU (ResNet-18,
  ViT-S/16) for the same images, probed beside random init (``benchmarks.quality``).

Each part writes its JSON into ``OUT/<part>/``; ``OUT/gpu_plan.json`` records every part's
command, exit status, seconds and the end of its output (or why it was skipped).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bench_torch_loader import timed_batches
from .common import add_shared_options, machine

ROOT = Path(__file__).resolve().parent.parent
LOADER_BATCHES = 12   # timed batches per loader row (at least 4 per worker)
# end to end: steps past the start-up (workers starting, the prefetch queue of 2 batches per
# worker filling, the compiled step's first calls), then enough steps to span many bursts
E2E_STEPS = ("--steps", "120", "--skip", "40")


def scenes_for(workers: int, batch_size: int = 128) -> str:
    """One set of built-in scenes for every loader part (generated once, then reused): enough
    for the torch loader's pass (its warm-up drains 2 batches per worker, plus 2, then it times
    at least 4 batches per worker) and at least 6144, the count earlier GPU rows used."""
    need = (timed_batches(LOADER_BATCHES, workers) + 2 * workers + 2) * batch_size
    return str(max(6144, -(-need // 512) * 512))


@dataclass(frozen=True)
class Part:
    name: str
    module: str                       # a ``benchmarks`` module with a ``main(argv)``
    args: tuple[str, ...]
    timeout_s: int
    needs: tuple[str, ...] = field(default=())   # importable libraries the part cannot run without


def _workers() -> str:
    return str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def gpu_parts(device: str = "cuda") -> list[Part]:
    workers = _workers()
    images = scenes_for(int(workers))
    r50 = ("--arch", "resnet50", "--image-size", "224", "--batch-size", "128")
    return [
        Part("step_levers", "bench_step", ("--device", device, *r50, "--levers", "bf16", "--only", "concat-views",
                                           "--iters", "10"), 420),
        Part("step_max_autotune", "bench_step", ("--device", device, *r50, "--levers", "bf16",
                                                 "--only", "max-autotune", "--iters", "10"), 540),
        Part("step_cuda_graphs", "bench_step", ("--device", device, *r50, "--levers", "bf16",
                                                "--only", "reduce-overhead", "--iters", "10"), 360),
        Part("step_whole", "bench_step", ("--device", device, *r50, "--levers", "bf16", "--only", "whole-step",
                                          "--iters", "10"), 540),
        Part("step_batch256", "bench_step", ("--device", device, "--arch", "resnet50", "--image-size", "224",
                                             "--batch-size", "256", "--precisions", "bf16", "--compiled", "best",
                                             "--iters", "10"), 240),
        Part("methods", "bench_methods", ("--device", device, *r50, "--vit-arch", "vit_small_patch16",
                                          "--methods", "pixpro,loca", "--iters", "10"), 180),
        Part("torch_loader", "bench_torch_loader", ("--device", device, "--batch-size", "128", "--workers", workers,
                                                    "--batches", str(LOADER_BATCHES), "--rounds", "1",
                                                    "--images", images), 300),
        Part("end_to_end", "bench_end_to_end", ("--device", device, "--backends", "torch", *r50, "--compile",
                                                *E2E_STEPS, "--workers", workers, "--images", images), 300),
        Part("dali_loader", "bench_dali_loader", ("--device", device, "--images", images, "--batch-size", "128",
                                                  "--workers", workers), 240, needs=("nvidia.dali",)),
        Part("dali_end_to_end", "bench_end_to_end", ("--device", device, "--backends", "dali:workers,dali:device",
                                                     *r50, "--compile", *E2E_STEPS, "--workers", workers,
                                                     "--images", images), 420, needs=("nvidia.dali",)),
        Part("ffcv_end_to_end", "bench_end_to_end", ("--device", device, "--backends", "ffcv", *r50, "--compile",
                                                     *E2E_STEPS, "--workers", workers, "--images", images), 360,
             needs=("ffcv",)),
        Part("quality_224", "quality", ("--device", device, "--image-size", "224", "--batch-size", "64",
                                        "--arch", "resnet18", "--vit-arch", "vit_small_patch16", "--methods", "all",
                                        "--budget", "0.5", "--probe-seeds", "2", "--workers", workers,
                                        "--proj-hidden-dim", "2048"), 570),
    ]


def command(part: Part, out: Path) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.{part.module}", *part.args, "--out", str(out / part.name)]


def missing_library(part: Part) -> str | None:
    for name in part.needs:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return name
    return None


def run_with_limit(cmd: list[str], timeout_s: float) -> tuple[str, int | None]:
    """Run ``cmd`` in a session of its own; past ``timeout_s`` kill the whole process group
    (loader workers and compile workers included, which would otherwise keep the output pipe
    open). Returns the output and the exit status (None when it was killed)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return output, proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        return output or "", None
    except BaseException:   # the plan itself stopped (SIGTERM, Ctrl-C): the part must not outlive it
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Stopped(Exception):
    """The plan received SIGTERM."""


def _stop_on_sigterm(signum, frame):
    raise Stopped(f"signal {signum}")


MIN_PART_S = 60   # under this much of the budget left, a part is not started


def run_plan(parts: list[Part], out: str | Path, log=print, tail_chars: int = 4000,
             budget_s: float | None = None) -> dict:
    """Run ``parts`` one after another, each in its own process with its own limit; never raises
    for a part's failure. Returns (and writes to ``out/gpu_plan.json``) one record per part.

    ``budget_s``: the plan's whole time (a device lease): a part's limit is cut to what is
    left of it, and once less than ``MIN_PART_S`` is left the remaining parts are skipped."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    summary_path = out / "gpu_plan.json"

    def save():
        summary_path.write_text(json.dumps({"machine": machine(), "parts": records}, indent=2))

    for part in parts:
        cmd = command(part, out)
        record = {"part": part.name, "command": " ".join(cmd[1:]), "timeout_s": part.timeout_s}
        lib = missing_library(part)
        left = None if budget_s is None else budget_s - (time.perf_counter() - start)
        if lib:
            record.update(status="skipped", reason=f"{lib} is not installed")
            log(f"[{part.name}] skipped: {lib} is not installed")
        elif left is not None and left < MIN_PART_S:
            record.update(status="skipped", reason=f"{max(left, 0):.0f} s of the {budget_s:.0f} s budget left")
            log(f"[{part.name}] skipped: {record['reason']}")
        else:
            limit = part.timeout_s if left is None else min(part.timeout_s, int(left))
            record["timeout_s"] = limit
            log(f"[{part.name}] {record['command']}  (limit {limit} s)")
            t0 = time.perf_counter()
            try:
                output, rc = run_with_limit(cmd, limit)
            except (Stopped, KeyboardInterrupt) as exc:   # keep what the earlier parts measured
                record.update(status="interrupted", reason=str(exc) or type(exc).__name__,
                              seconds=round(time.perf_counter() - t0, 1))
                records.append(record)
                save()
                raise
            record["status"] = "timed out" if rc is None else "ok" if rc == 0 else "failed"
            record.update(returncode=rc, seconds=round(time.perf_counter() - t0, 1), output_tail=output[-tail_chars:])
            log(output[-tail_chars:].rstrip())
            log(f"[{part.name}] {record['status']} in {record['seconds']} s")
        records.append(record)
        save()   # after every part: a lease that ends early keeps what was measured
    save()
    return {"parts": records, "path": str(summary_path)}


def select(parts: list[Part], names: str | None) -> list[Part]:
    if not names:
        return parts
    by_name = {p.name: p for p in parts}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(unknown)}; the parts are {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(ap, device="cuda", out="gpu_out", helps={"out": "output folder, one sub-folder a part"})
    ap.add_argument("--parts", default=None, help="comma-separated subset, in the order given (default: all)")
    ap.add_argument("--list", action="store_true", help="print the parts and their commands, run nothing")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="the whole plan's seconds (a device lease): each part's limit is cut to what is left, "
                         f"and parts are skipped once under {MIN_PART_S} s remain")
    args = ap.parse_args(argv)
    parts = select(gpu_parts(args.device), args.parts)
    if args.list:
        for p in parts:
            need = f"  (needs {', '.join(p.needs)})" if p.needs else ""
            print(f"{p.name:18s} {p.timeout_s:4d} s  {' '.join(command(p, Path(args.out))[1:])}{need}")
        return None
    signal.signal(signal.SIGTERM, _stop_on_sigterm)   # a job limit's SIGTERM kills the running part too
    try:
        result = run_plan(parts, args.out, budget_s=args.budget_s)
    except (Stopped, KeyboardInterrupt) as exc:
        print(f"stopped ({exc or type(exc).__name__}); what finished is in {Path(args.out) / 'gpu_plan.json'}",
              file=sys.stderr)
        raise SystemExit(143)
    print("wrote", result["path"])
    return result


if __name__ == "__main__":
    main()
