"""Small shared pieces of the benchmark scripts: timing, tables, JSON, machine description."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_shared_options(ap: argparse.ArgumentParser, *, batch_size: int | None = None, image_size: int | None = None,
                       device: str | None = None, rounds: int | None = None, threads: bool = False,
                       out: str | None = None, helps: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """Add the options many benchmarks share (``--batch-size``, ``--image-size``, ``--device``,
    ``--rounds``, ``--threads``, ``--out``), each with this benchmark's default. An option whose
    default is None is left out; ``threads=True`` adds ``--threads`` (default: torch's count).
    ``helps`` replaces an option's help text, keyed by its dest (``rounds``, ``out``, ...)."""
    helps = helps or {}
    options = [("--batch-size", batch_size, int, "images per batch"),
               ("--image-size", image_size, int, "side of each view in pixels"),
               ("--device", device, str, "cpu or cuda"),
               ("--rounds", rounds, int, "timed rounds, the median reported")]
    for flag, default, kind, text in options:
        if default is not None:
            dest = flag[2:].replace("-", "_")
            ap.add_argument(flag, type=kind, default=default, help=f"{helps.get(dest, text)} (default: {default})")
    if threads:
        ap.add_argument("--threads", type=int, default=None,
                        help=helps.get("threads", "torch intra-op threads (default: torch's)"))
    if out is not None:
        ap.add_argument("--out", default=out, help=f"{helps.get('out', 'folder for the JSON result')} (default: {out})")
    return ap


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def batches_forever(loader):
    """The loader's batches across epoch ends (``set_epoch`` where the loader has it), so a
    timed run can be longer than one pass over a small folder."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from iter(loader)
        epoch += 1


def steady_rate(arrivals: list[float], batch_size: int) -> float:
    """Images/sec a loader sustains, from the times its batches arrived: the least-squares
    slope of arrival time over batch index. Loader workers finish their batches in bursts
    (each of W workers delivers one at about the same moment), so a clock stopped after a few
    batches measures a burst, not the rate; the slope over several bursts does not."""
    n = len(arrivals)
    if n < 2:
        raise ValueError("need at least two arrival times")
    mean_i, mean_t = (n - 1) / 2, sum(arrivals) / n
    cov = sum((i - mean_i) * (t - mean_t) for i, t in enumerate(arrivals))
    var = sum((i - mean_i) ** 2 for i in range(n))
    slope = cov / var   # seconds per batch
    if slope <= 0:
        raise ValueError("arrival times must increase")
    return batch_size / slope


def time_interleaved(fns: dict[str, Callable[[], object]], device="cpu", warmup: int = 2,
                     iters: int = 10, on_round: Callable[[dict, int], None] | None = None) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation (A, B, A, B, ...) so
    that a noisy machine slows every contender alike: the ratios stay fair. ``on_round``
    gets the medians so far and the rounds done after each round, so that a long run cut
    off part-way still leaves its numbers."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for done in range(1, iters + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if on_round is not None and done < iters:
            on_round(_medians(times), done)
    return _medians(times)


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def device_label(device) -> str:
    """The device a rate was measured on, by name where it has one (a GPU's model)."""
    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(d)
    return d.type


def rate_columns(rows: list[dict], device, rates: dict[str, str]) -> tuple[list[dict], list[str]]:
    """The rows with each rate (``{key: label}``, images/sec) also under a column that names the
    device, e.g. ``images/s (cpu)``; returns the rows and those column names."""
    where = device_label(device)
    names = {key: f"{label} ({where})" for key, label in rates.items()}
    rows = [{**r, **{name: r[key] for key, name in names.items() if key in r}} for r in rows]
    return rows, list(names.values())


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def table_with_skips(rows: list[dict], columns: list[str], skipped: dict[str, str]) -> str:
    """A markdown table followed by one line per skipped row and why."""
    out = markdown_table(rows, columns)
    for name, why in skipped.items():
        out += f"\n\n{name}: skipped ({why})"
    return out


def write_json(out_dir: str | Path, name: str, payload: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    payload = {"machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path
