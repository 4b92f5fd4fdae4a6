"""``python -m benchmarks``: list the benchmarks; ``python -m benchmarks NAME [options]``: run one.

    python -m benchmarks                     # the benchmarks and tools, one line each
    python -m benchmarks step --help         # one benchmark's options
    python -m benchmarks suite --quick       # loaders, step, end to end and peers in one run
    python -m benchmarks --quick             # the same (options alone run the suite)
"""
from __future__ import annotations

import argparse
import importlib
import sys

PROG = "python -m benchmarks"

# name -> (module, what it measures). Each module has a main(argv).
BENCHMARKS = {
    "suite": ("suite", "loaders, step, end to end and peers in one run: tables, suite.json, suite.png "
                       "(--quick, --smoke)"),
    "loaders": ("bench_loaders", "every installed loader backend beside plain decoding and the torchvision "
                                 "baseline, images/sec"),
    "torch_loader": ("bench_torch_loader", "the torch backend beside the decode ceiling and the torchvision "
                                           "baseline, CPU or GPU colour work"),
    "dali_loader": ("bench_dali_loader", "the DALI loader beside DALI's stock single-view pipeline (needs DALI)"),
    "ffcv_loader": ("bench_ffcv_loader", "the FFCV loader beside FFCV's stock pipeline on one .beton (needs FFCV)"),
    "resample": ("bench_resample", "per-view crop + resize and JPEG decode beside PIL and OpenCV"),
    "colour": ("bench_colour", "the CPU colour pass per view beside tensor ops, and what its parts cost"),
    "epoch_turn": ("bench_epoch_turn", "the wait at an epoch's first batch: workers reading on against "
                                       "workers started afresh"),
    "step": ("bench_step", "the PixPro step on synthetic tensors beside a supervised step, "
                           "per precision, layout, compile"),
    "methods": ("bench_methods", "step images/sec, FLOPs per image and MFU of every objective beside PixPro"),
    "loss": ("bench_loss", "the PixPro loss beside its straightforward form, forward + backward"),
    "attention": ("bench_attention", "the LOCA step with each attention kernel, per image size and precision"),
    "pretext": ("bench_pretext", "each pretext task's input construction beside its whole training step"),
    "hugepages": ("bench_hugepages", "a CPU step with glibc malloc on huge pages against the default"),
    "end_to_end": ("bench_end_to_end", "a real loader feeding the real step: time waiting for data, and the "
                                       "verdict"),
    "peers": ("bench_peers", "our PixPro step beside the PixelCL package's"),
}

# runnable modules that are not throughput benchmarks
TOOLS = {
    "quality": ("quality", "evaluation: pretrain each method on the scenes, probe it beside random init"),
    "finetune": ("finetune_table", "evaluation: pretrain methods on the scenes, then k-NN, linear, head-only and "
                                   "full fine-tune at label fractions beside supervised training from scratch"),
    "loca_position": ("loca_position", "evaluation: LOCA's position task at initialisation, and its head's "
                                       "learning"),
    "gpu_plan": ("gpu_plan", "the GPU measurements, each benchmark in its own process under a time limit"),
}


def listing() -> str:
    width = max(map(len, {**BENCHMARKS, **TOOLS}))
    lines = [f"usage: {PROG} NAME [options]   ({PROG} NAME --help for its options)", "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in BENCHMARKS.items()]
    lines += ["", "evaluations and tools:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in TOOLS.items()]
    return "\n".join(lines)


def module_for(name: str) -> str | None:
    """The module a name runs: ``step``, ``bench_step`` and ``end-to-end`` are all accepted."""
    name = name.replace("-", "_")
    name = name[len("bench_"):] if name.startswith("bench_") else name
    entry = BENCHMARKS.get(name) or TOOLS.get(name)
    return entry[0] if entry else None


def suite_main(argv=None, prog: str = f"{PROG} suite") -> dict:
    from . import suite
    from .bench_loaders import BACKENDS
    from .common import add_shared_options
    ap = argparse.ArgumentParser(prog=prog, description="Run the benchmark suite. Prints markdown tables as each "
                                 "section finishes and writes suite.json, suite.md and suite.png into --out. "
                                 "Without --quick or --smoke the full suite runs (long on a CPU).")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="resnet18 at small sizes, a subset of settings")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every section runs")
    ap.add_argument("--sections", default=",".join(suite.SECTIONS),
                    help=f"comma-separated subset of {','.join(suite.SECTIONS)}")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help="loader backends for the loader and end-to-end sections (missing ones are skipped)")
    ap.add_argument("--data-dir", default=None, help="image folder (default: the built-in scenes)")
    add_shared_options(ap, threads=True, out="bench_out",
                       helps={"out": "output folder", "threads": "torch compute threads (default: torch's choice); "
                                                                 "fewer on a machine shared with others"})
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


def main(argv=None):
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("list", "-h", "--help"):
        print(listing())
        return None
    if argv[0].startswith("-"):   # options alone: the suite, as before there were names
        return suite_main(argv, prog=PROG)
    name, rest = argv[0], argv[1:]
    module = module_for(name)
    if module is None:
        print(f"{PROG}: unknown benchmark {name!r}\n\n{listing()}", file=sys.stderr)
        raise SystemExit(2)
    if module == "suite":
        return suite_main(rest)
    if from_command_line:   # the module's parser names itself after argv[0]
        sys.argv[0] = f"{PROG} {name}"
    return importlib.import_module(f"benchmarks.{module}").main(rest)


if __name__ == "__main__":
    main()
