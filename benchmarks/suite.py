"""The benchmark suite: loaders, training step, end to end and peers in one run.

Three sizes: ``smoke`` (tiny, for the tests), ``quick`` (resnet18 at small sizes, under
three minutes on a 2-core CPU) and ``full`` (resnet18 and resnet50 at 224, all settings). The
step and peer sections also run on CUDA when a GPU is present. Precisions are those native
on each device (bf16 only where the hardware has it); CPU rows under torch.compile only
with ``compile_cpu`` (``--compile``). Writes ``suite.json``,
``suite.md`` (the markdown tables) and ``suite.png`` (the chart) into the output folder;
asserts nothing about speed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from . import bench_end_to_end, bench_loaders, bench_peers, bench_step, chart
from .bench_step import StepSetting, settings_grid
from .common import machine
from pixpro_fast.hardware import resolve_precision

SECTIONS = ("loaders", "step", "end_to_end", "peers")
MODES = ("smoke", "quick", "full")


def best_setting(device: str) -> StepSetting:
    """Channels-last eager in the precision ``auto`` picks on ``device`` (bf16 only where native)."""
    return StepSetting(resolve_precision("auto", device), True, False)


def plan(mode: str, cuda: bool, workers: int | None = None, compile_cpu: bool = False) -> dict:
    """Section arguments for a mode; CUDA jobs are added when ``cuda``. CPU step rows under
    torch.compile (minutes of compilation on a small CPU) only with ``compile_cpu``. Precisions
    the device only emulates are listed by the step section as skipped."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    workers = workers or os.cpu_count() or 1
    cpu_compiled = "none" if not compile_cpu else "best" if mode == "quick" else "channels-last"
    if mode == "smoke":
        small = [StepSetting("fp32", False, False), StepSetting("bf16", True, False)]
        return {
            "loaders": dict(batch_size=4, image_size=64, workers=1, batches=2, rounds=1),
            "step": [dict(device="cpu", arch="resnet18", image_size=64, batch_size=4, settings=small, warmup=1,
                          iters=2)],
            "end_to_end": dict(arch="resnet18", image_size=64, batch_size=4, steps=2, skip=2, workers=1,
                               precision="auto"),
            "peers": [dict(device="cpu", arch="resnet18", image_size=64, batch_size=4, warmup=1, iters=2,
                           settings=[StepSetting("fp32", False, False)], best=StepSetting("fp32", False, False))],
        }
    quick = mode == "quick"
    step = ([dict(device="cpu", arch="resnet18", image_size=64, batch_size=32,
                  settings=settings_grid(compiled=cpu_compiled), warmup=1, iters=4)] if quick else
            [dict(device="cpu", arch=a, image_size=224, batch_size=32, settings=settings_grid(compiled=cpu_compiled),
                  warmup=2, iters=5) for a in ("resnet18", "resnet50")])
    peers = [dict(device="cpu", arch="resnet18", image_size=64 if quick else 224, batch_size=16 if quick else 32,
                  warmup=1 if quick else 2, iters=3 if quick else 5, best=best_setting("cpu"))]
    if not quick:
        peers.append(dict(device="cpu", arch="resnet50", image_size=224, batch_size=32, iters=5,
                          best=best_setting("cpu")))
    if cuda:
        gpu_archs = ("resnet50",) if quick else ("resnet18", "resnet50")
        step += [dict(device="cuda", arch=a, image_size=224, batch_size=128,
                      settings=settings_grid(compiled="best" if quick else "channels-last"), warmup=3, iters=10)
                 for a in gpu_archs]
        peers.append(dict(device="cuda", arch="resnet50", image_size=224, batch_size=64, iters=10,
                          best=best_setting("cuda")))
    return {
        "loaders": dict(batch_size=16 if quick else 64, image_size=224, workers=workers, batches=4 if quick else 12,
                        rounds=2 if quick else 3, device="cuda" if cuda else "cpu"),
        "step": step,
        "end_to_end": dict(arch="resnet18" if quick else "resnet50", image_size=96 if quick else 224,
                           batch_size=128 if cuda else 16 if quick else 32, steps=4 if quick else 10, skip=2,
                           workers=workers,
                           precision="auto", device="cuda" if cuda else "cpu"),
        "peers": peers,
    }


def images_needed(loaders_args: dict) -> int:
    b = loaders_args
    return (b["batches"] + 2 * max(b["workers"], 1) + 2) * b["batch_size"]


def summary(result: dict) -> dict:
    """The headline numbers of a run (all ratios measured side by side within it)."""
    s = result["sections"]
    out: dict = {}
    for sec in s.get("step") or []:
        rows = {r["setting"]: r for r in sec["rows"]}
        best = max(sec["rows"], key=lambda r: r["speedup_vs_fp32_eager"])
        key = f"{sec['device']} {sec['arch']}@{sec['image_size']}"
        out.setdefault("step", {})[key] = {
            "flops_ratio_pixpro_over_supervised": sec["flops_per_image"]["ratio"],
            "fastest_setting": best["setting"], "fastest_speedup_vs_fp32_eager": best["speedup_vs_fp32_eager"],
            "flop_throughput_ratio_fastest": best["flop_throughput_ratio"],
            "flop_throughput_ratio_fp32_eager": rows[bench_step.BASELINE.name]["flop_throughput_ratio"]}
    for sec in s.get("peers") or []:
        if sec.get("rows"):
            key = f"{sec['device']} {sec['arch']}@{sec['image_size']}"
            out.setdefault("peers", {})[key] = {r["comparison"]: r["speedup_vs_pixelcl"] for r in sec["rows"]}
    if s.get("loaders"):
        out["loaders"] = {r["pipeline"]: {"vs_baseline": r["vs_baseline"], "vs_decode_ceiling": r["vs_decode_ceiling"]}
                          for r in s["loaders"]["rows"]}
    if s.get("end_to_end"):
        out["end_to_end"] = {r["backend"]: r["verdict"] for r in s["end_to_end"]["rows"]}
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    gpu = m.get("gpu")
    lines = [f"# Benchmark suite ({result['mode']})", "",
             f"Machine: {m['cpu_count']} CPU cores ({m['cpu']}, {m['cpu_capability']}), torch {m['torch']}, "
             f"torch threads {m['torch_threads']}, " + (f"GPU {gpu}" if gpu else "no GPU") + ".", ""]
    s = result["sections"]
    if s.get("loaders"):
        ld = s["loaders"]
        lines += ["## Loaders", "", f"{ld['images']} images, batch {ld['batch_size']}, {ld['image_size']}px, "
                  f"{ld['workers']} workers, recipe {ld['recipe']}, median of {ld['rounds']} rounds.", "",
                  bench_loaders.table(ld), ""]
    for sec in s.get("step") or []:
        f = sec["flops_per_image"]
        lines += [f"## Step: {sec['device']} {sec['arch']} at {sec['image_size']}px, batch {sec['batch_size']}", "",
                  f"FLOPs per image: PixPro {f['pixpro'] / 1e9:.3g} G, supervised {f['supervised'] / 1e9:.3g} G "
                  f"(ratio {f['ratio']:.2f}).", "", bench_step.table(sec), ""]
        for sk in sec["skipped"]:
            lines.append(f"- {sk['setting']}: skipped ({sk['reason']})")
    if s.get("end_to_end"):
        e = s["end_to_end"]
        lines += [f"## End to end: {e['arch']} at {e['image_size']}px, batch {e['batch_size']}, {e['precision']}, "
                  f"{e['workers']} workers, {e['steps']} steps", "", bench_end_to_end.table(e), ""]
    for sec in s.get("peers") or []:
        lines += [f"## Peers: {sec['device']} {sec['arch']} at {sec['image_size']}px, batch {sec['batch_size']}", "",
                  bench_peers.table(sec), ""]
    lines += ["## Summary", "", "```", json.dumps(result["summary"], indent=1), "```", ""]
    return "\n".join(lines)


def run(mode: str = "quick", out: str | Path = "bench_out", sections=SECTIONS, data_dir=None,
        backends=tuple(bench_loaders.BACKENDS), cuda: bool | None = None, threads: int | None = None,
        compile_cpu: bool = False, log=print) -> dict:
    from pipelines.scenes import ensure_scenes
    if threads:
        torch.set_num_threads(threads)   # the compute threads of this process (loader workers are separate)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    p = plan(mode, cuda, compile_cpu=compile_cpu)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in sections:
        if name not in SECTIONS:
            raise ValueError(f"unknown section {name!r}; choose from {SECTIONS}")
    if data_dir is None and ({"loaders", "end_to_end"} & set(sections)):
        need = images_needed(p["loaders"])
        data_dir = ensure_scenes(-(-need // 128) * 128)
    result = {"mode": mode, "machine": machine(), "plan": _jsonable(p), "data_dir": str(data_dir),
              "sections": {}, "durations_s": {}}

    def save():
        result["summary"] = summary(result)
        (out / "suite.json").write_text(json.dumps(result, indent=1))

    for name in SECTIONS:
        if name not in sections:
            continue
        t0 = time.perf_counter()
        log(f"== {name}")
        if name == "loaders":
            res = bench_loaders.run(data_dir, backends=backends, work_dir=out, log=log, **p["loaders"])
            log(bench_loaders.table(res))
        elif name == "step":
            res = []
            for job in p["step"]:
                res.append(bench_step.run(log=log, **job))
                log(bench_step.table(res[-1]))
        elif name == "end_to_end":
            res = bench_end_to_end.run(data_dir, backends=backends, data_for=_data_for(backends, data_dir, out),
                                       log=log, **p["end_to_end"])
            log(bench_end_to_end.table(res))
        else:
            res = []
            for job in p["peers"]:
                res.append(bench_peers.run(log=log, **job))
                log(bench_peers.table(res[-1]))
        result["sections"][name] = res
        result["durations_s"][name] = time.perf_counter() - t0
        save()
    save()
    (out / "suite.md").write_text(markdown(result))
    chart.draw(result, out / "suite.png")
    log(f"wrote {out / 'suite.json'}, {out / 'suite.md'}, {out / 'suite.png'}")
    return result


def _data_for(backends, data_dir, out) -> dict:
    """Backends that read their own format get it made from the same folder (ffcv: a .beton)."""
    if "ffcv" not in backends:
        return {}
    try:
        return {"ffcv": bench_loaders.ffcv_beton(data_dir, out)}
    except Exception:   # FFCV not installed or unusable: the end-to-end section reports the skip
        return {}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, StepSetting):
        return obj.name
    return obj
