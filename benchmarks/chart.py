"""PNG charts: a suite run (loaders, step levers, peers, end-to-end time split), the quality table and the fine-tuning table."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _bars(ax, labels, values, title, ylabel, ref: float | None = None, ref_label: str = ""):
    if not values:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_axis_off()
        return
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    if ref is not None:
        ax.axhline(ref, color="tab:red", linestyle="--", linewidth=1, label=ref_label)
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)


def draw(result: dict, path: str | Path) -> Path:
    """Write the chart of a suite ``result`` (as written to suite.json) to ``path``."""
    sections = result.get("sections", {})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    loaders = sections.get("loaders") or {}
    rows = loaders.get("rows", [])
    _bars(axes[0, 0], [r["pipeline"] for r in rows], [r["vs_baseline"] for r in rows],
          "Loaders: images/s relative to the torchvision baseline", "x baseline", 1.0, "baseline")

    step_rows = [r for s in sections.get("step") or [] for r in s.get("rows", [])]
    labels = [f"{r['device']} {r['arch']}@{r['image_size']}\n{r['setting']}" for r in step_rows]
    _bars(axes[0, 1], labels, [r["speedup_vs_fp32_eager"] for r in step_rows],
          "PixPro step: speedup over fp32 / contiguous / eager", "x fp32 eager", 1.0, "fp32 eager")
    if step_rows:
        ax2 = axes[0, 1].twinx()
        ax2.plot(range(len(step_rows)), [r["flop_throughput_ratio"] for r in step_rows], "o", color="tab:orange",
                 label="FLOP throughput vs supervised")
        ax2.set_ylabel("PixPro / supervised FLOP/s", fontsize=8, color="tab:orange")
        ax2.legend(fontsize=7, loc="upper left")

    peer_rows = [r for s in sections.get("peers") or [] for r in s.get("rows", [])]
    _bars(axes[1, 0], [f"{r['device']} {r['arch']}@{r['image_size']}\n{r['comparison']}" for r in peer_rows],
          [r["speedup_vs_pixelcl"] for r in peer_rows], "Our step vs PixelCL's", "x PixelCL", 1.5, "target 1.5x")

    e2e = sections.get("end_to_end") or {}
    e_rows = e2e.get("rows", [])
    ax = axes[1, 1]
    if e_rows:
        names = [r["backend"] for r in e_rows]
        wait = [r["wait_fraction"] for r in e_rows]
        ax.bar(names, [1 - w for w in wait], color="tab:green", label="compute")
        ax.bar(names, wait, bottom=[1 - w for w in wait], color="tab:red", label="waiting for data")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of wall time", fontsize=8)
        ax.legend(fontsize=7)
        ax.set_title("End to end: compute vs waiting for data", fontsize=9)
    else:
        _bars(ax, [], [], "End to end", "")

    m = result.get("machine", {})
    fig.suptitle(f"pixpro_fast benchmark suite ({result.get('mode', '?')}): {m.get('cpu_count', '?')} CPU cores, "
                 f"{m.get('cpu_capability', '?')}, torch {m.get('torch', '?')}"
                 + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"), fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_quality(payload: dict, path: str | Path) -> Path:
    """Bar charts of a quality table (as written to quality.json): each method's mIoU gain
    over its random-init encoder, its mIoU, and its training-step cost relative to PixPro."""
    rows = [r for r in payload.get("rows", []) if isinstance(r["mIoU"], (int, float))]   # not the diverged
    labels = [r["method"] for r in rows]                     # the arch is in the table
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _bars(axes[0], labels, [r["gain over random init"] for r in rows],
          "Dense probe: mIoU gain over random init (points)", "mIoU points", 0.0, "random init")
    base = {b["arch"]: b["mIoU"] for b in payload.get("baseline_rows", [])}
    ref = base.get(payload.get("pretrain", {}).get("arch"))
    _bars(axes[1], labels, [r["mIoU"] for r in rows], "Dense probe: mIoU", "mIoU (%)", ref,
          f"random init {payload.get('pretrain', {}).get('arch', '')}" if ref is not None else "")
    _bars(axes[2], labels, [r["step cost vs pixpro"] for r in rows], "Training step cost relative to PixPro",
          "x PixPro step seconds", 1.0, "pixpro")
    c = payload.get("pretrain", {})
    fig.suptitle(f"Quality of every method, budget {payload.get('budget', '?')}: {c.get('steps', '?')} steps at "
                 f"{c.get('image_size', '?')} px, batch {c.get('batch_size', '?')}", fontsize=10)
    return _save(fig, path)


def draw_finetune(payload: dict, path: str | Path) -> Path:
    """One panel per label fraction of a fine-tuning table (as written to finetune.json): each
    row's k-NN, linear, head-only and fine-tune top-1 (mean over seeds, the std as error bars),
    a supervised-from-scratch row's top-1 as a dashed line."""
    import numpy as np
    fractions = payload.get("fractions", [])
    results = payload.get("results", {})
    fig, axes = plt.subplots(1, max(len(fractions), 1), figsize=(7 * max(len(fractions), 1), 4.8), squeeze=False)
    parts = [("knn", "k-NN"), ("linear", "linear"), ("head", "head-only"), ("finetune", "fine-tune")]
    for ax, f in zip(axes[0], fractions):
        names = [n for n, r in results.items() if r.get("pretrained") and "cells" in r]
        width = 0.8 / len(parts)
        for j, (key, label) in enumerate(parts):
            means, stds = [], []
            for n in names:
                vals = [100 * c[key] for c in results[n]["cells"][str(f)].values() if key in c]
                means.append(float(np.mean(vals)) if vals else 0.0)
                stds.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
            ax.bar(np.arange(len(names)) + (j - (len(parts) - 1) / 2) * width, means, width, yerr=stds,
                   label=label, capsize=2)
        for n, r in results.items():
            if not r.get("pretrained") and "cells" in r:
                vals = [100 * c["scratch"] for c in r["cells"][str(f)].values()]
                ax.axhline(float(np.mean(vals)), color="tab:red", linestyle="--", linewidth=1, label=n)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.set_title(f"label fraction {f:g} ({payload.get('counts', {}).get(str(f), '?')} images)", fontsize=9)
        ax.legend(fontsize=7)
    c = payload.get("pretrain", {})
    fig.suptitle(f"Pretrained on the scenes ({c.get('steps', '?')} steps at {c.get('image_size', '?')} px), then "
                 f"classified with labels: {payload.get('task', {}).get('name', '?')}", fontsize=10)
    return _save(fig, path)
