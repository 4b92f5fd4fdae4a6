"""The CPU training step with glibc's malloc on huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``)
against its default, each in a fresh process, the two alternating round by round.

glibc hands every allocation above its mmap threshold (at most 32 MB) fresh pages from the
kernel and returns them on free, so a step whose activations are tens of MB faults in
hundreds of MB of 4 KiB pages every time; the ``kernel_s_per_step`` column shows what that
costs. With the tunable (glibc 2.35 or newer, transparent huge pages set to ``always`` or
``madvise``) malloc asks for 2 MiB pages: one fault where there were 512, but each huge page
is zeroed and may need compacting, so whether the step gains depends on the step (see
benchmarks/RESULTS.md). The tunable must be set before the process starts, which is why each
mode runs in its own process; to train with it:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py --device cpu ...

    python -m benchmarks.bench_hugepages --method loca --image-size 128 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {"default": None, "hugetlb": "glibc.malloc.hugetlb=1"}
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The kernel's transparent huge page setting (the bracketed word), or 'unknown'."""
    try:
        text = THP.read_text()
    except OSError:
        return "unknown"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def child(args) -> dict:
    """Time ``args.iters`` steps after ``args.warmup`` in this process: median seconds, and the
    minor page faults and kernel seconds per step."""
    import torch

    from .bench_methods import method_step
    if args.threads:
        torch.set_num_threads(args.threads)
    step = method_step(args.method, args.arch, args.image_size, args.batch_size, "cpu", args.precision,
                       vit_arch=args.vit_arch)
    for _ in range(args.warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"step_s": statistics.median(times), "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.iters,
            "kernel_s_per_step": (after.ru_stime - before.ru_stime) / args.iters}


def run_mode(mode: str, argv: list[str]) -> dict:
    env = dict(os.environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb")]
    if MODES[mode]:
        tunables.append(MODES[mode])
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_hugepages", "--child", *argv], env=env,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"the {mode} process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(argv: list[str], rounds: int = 3, log=print) -> dict:
    got = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            got[mode].append(run_mode(mode, argv))
            log(f"round {r + 1}/{rounds} {mode}: {got[mode][-1]['step_s']:.3f} s a step, "
                f"{got[mode][-1]['faults_per_step']:.0f} page faults a step")
    rows = []
    for mode, results in got.items():
        rows.append({"mode": mode, "tunables": MODES[mode] or "",
                     **{k: statistics.median(r[k] for r in results) for k in results[0]}})
    for row in rows:
        row["speedup"] = rows[0]["step_s"] / row["step_s"]
    return {"glibc": platform.libc_ver()[1] or "unknown", "transparent_hugepage": thp_mode(), "rounds": rounds, "rows": rows}


def main(argv=None) -> dict | None:
    from .common import add_shared_options, markdown_table, write_json
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_hugepages", description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="pixpro")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--vit-arch", default="vit_tiny_patch16")
    add_shared_options(ap, batch_size=32, image_size=128, rounds=3, threads=True, out="bench_out",
                       helps={"rounds": "processes per mode, the modes alternating"})
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return None
    result = run(argv, args.rounds)   # the children parse the same arguments (and ignore --rounds, --out)
    result.update(method=args.method, image_size=args.image_size, batch_size=args.batch_size, precision=args.precision)
    print(f"{args.method} step, batch {args.batch_size}, {args.image_size} px, {args.precision}; glibc "
          f"{result['glibc']}, transparent huge pages: {result['transparent_hugepage']}; medians of {args.rounds} "
          "processes per mode")
    print(markdown_table(result["rows"], ["mode", "step_s", "faults_per_step", "kernel_s_per_step", "speedup"]))
    print("wrote", write_json(args.out, "hugepages.json", result))
    return result


if __name__ == "__main__":
    main()
