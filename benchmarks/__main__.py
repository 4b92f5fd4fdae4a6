"""``python -m benchmarks [--quick | --smoke] [--out DIR]``: run the benchmark suite.

Prints markdown tables as each section finishes and writes suite.json, suite.md and
suite.png into --out. Without --quick or --smoke the full suite runs (long on a CPU).
"""
from __future__ import annotations

import argparse

from . import suite
from .bench_loaders import BACKENDS


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="resnet18 at small sizes, a subset of settings")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every section runs")
    ap.add_argument("--out", default="bench_out", help="output folder (default: bench_out/)")
    ap.add_argument("--sections", default=",".join(suite.SECTIONS),
                    help=f"comma-separated subset of {','.join(suite.SECTIONS)}")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help="loader backends for the loader and end-to-end sections (missing ones are skipped)")
    ap.add_argument("--data-dir", default=None, help="image folder (default: the built-in scenes)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch compute threads (default: torch's choice); fewer on a machine shared with others")
    ap.add_argument("--no-cuda", action="store_true", help="CPU only, even when a GPU is present")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile on the CPU (minutes of compilation; GPU rows always have it)")
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sections = tuple(s for s in args.sections.split(",") if s)
    backends = tuple(b for b in args.backends.split(",") if b)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    return suite.run(mode, args.out, sections, args.data_dir, backends, cuda=False if args.no_cuda else None,
                     threads=args.threads, compile_cpu=args.compile)


if __name__ == "__main__":
    main()
