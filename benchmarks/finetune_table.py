"""Does pretraining pay on a labelled task? Every method pretrained on the built-in scenes
(the quality table's shared budget, :mod:`benchmarks.quality`), then scored on an image
classification task at each label fraction, beside the same network trained from scratch on
the labels alone:

- k-NN (cosine, k 20, T 0.07) and a linear classifier on the frozen encoder's pooled
  features (:mod:`pixpro_fast.image_probe`);
- head-only and full fine-tune: the survey's protocol (:mod:`pixpro_fast.finetune`): a
  two-layer head on the frozen encoder, then the whole network at the lower rate;
- supervised from scratch: a random encoder of the same arch, the whole network trained for
  ``--scratch-epochs`` (default head + fine-tune epochs: the same number of labelled passes).

The labelled task is ``--data`` (an ImageFolder, class = sub-folder; ``--val-data`` or a
``--val-fraction`` of it held out once, with ``--seed``) or, by default, the objects of the
built-in scenes (:func:`pipelines.scenes.ensure_objects`: every object of ``--labelled-scenes``
train scenes cropped and labelled by its shape, six classes; val: the objects of
``--val-scenes`` val scenes). At each ``--fractions`` value and each of ``--seeds`` seeds the
labelled train images are a stratified seeded subset (seed s: the subset, the head's
initialisation, the batch order and the scratch network's weights); the val split is the
same for all. Every cell is the mean over seeds with its spread; the last column judges the
fine-tune's gain over supervised training from scratch against the seeds' spread
(:func:`pixpro_fast.probe.gain_verdict`: beyond noise when |gain| > 2 x the combined spread).

The survey's numbers are the defaults (head: AdamW 3e-4, 10 epochs, batch 8; fine-tune:
3e-5, 40 epochs; scratch 50 epochs). On two CPU cores (AMD EPYC, bf16 native), the setting
recorded in benchmarks/RESULTS.md took about 45 minutes:

    python -m benchmarks finetune --methods pixpro,byol,rotation --threads 1 --workers 1 \\
        --head-epochs 3 --finetune-epochs 12 --labelled-scenes 256 --val-scenes 96 --image-size 64 \\
        --ft-image-size 48 --ft-batch-size 16
    python -m benchmarks finetune --methods pixpro --no-reference --budget 0.01 --scenes 32 --batch-size 16 \\
        --labelled-scenes 16 --val-scenes 8 --head-epochs 1 --finetune-epochs 1 --seeds 1   # smoke test

``python -m benchmarks.quality --finetune ...`` is the same command. Pretraining goes to
--out/pretrain/METHOD as in the quality table (the same --out reuses its runs), each cell's
result to --out/finetune/ROW/, reused while its settings are the same, so a run that was
cut off continues where it stopped. Writes finetune.json, finetune.md and finetune.png.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pixpro_fast import finetune, probe, probe_encoders
from pixpro_fast.encoder import trunk_shape
from pixpro_fast.image_probe import classify_features, pooled_features

from .common import markdown_table, write_json
from .quality import (add_pretrain_options, cached_result, describe, encoder_kind, pretrain, pretrain_configs,
                      row_folder)

SCRATCH = "supervised from scratch"
COLUMNS = ["method", "arch", "labels", "k-NN top-1", "linear top-1", "head-only top-1", "fine-tune top-1",
           "fine-tune gain over scratch", "verdict"]


# --------------------------------------------------------------------------- the labelled task

def labelled_task(args) -> finetune.Task:
    """The whole labelled train split and the val split: --data, or the built-in objects."""
    if args.data:
        return finetune.folder_task(args.data, args.ft_image_size, 1.0, args.seed, args.val_data, args.val_fraction)
    from pipelines.image_folder import scan_image_folder
    from pipelines.scenes import CLASSES, ensure_objects
    folders = {"--labelled-scenes": ensure_objects(args.labelled_scenes, split="train"),
               "--val-scenes": ensure_objects(args.val_scenes, split="val")}
    for flag, folder in folders.items():
        missing = [c for c in CLASSES[1:] if c not in scan_image_folder(folder).classes]
        if missing:
            raise ValueError(f"the objects of {flag} {getattr(args, flag[2:].replace('-', '_'))} scenes hold no "
                             f"{', '.join(missing)}: raise {flag}")
    return finetune.folder_task(folders["--labelled-scenes"], args.ft_image_size,
                                val_data=folders["--val-scenes"])


def parse_fractions(spec: str) -> list[float]:
    try:
        values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--fractions {spec!r}: expected comma-separated numbers in (0, 1], e.g. 0.05,1") from None
    bad = [v for v in values if not 0 < v <= 1]
    if bad or not values:
        raise ValueError(f"--fractions {spec!r}: every fraction must lie in (0, 1]")
    return sorted(set(values))


def finetune_config(args, fraction: float, seed: int) -> finetune.FinetuneConfig:
    return finetune.protocol_config(args, fraction, seed, "ft-")


# --------------------------------------------------------------------------- one cell: a row at one fraction and seed

def frozen_scores(feats: tuple[torch.Tensor, torch.Tensor], task: finetune.Task, chosen: list[int], args,
                  seed: int) -> dict[str, float]:
    f_train, f_val = feats
    knn, linear = classify_features(f_train[chosen], task.train.labels[chosen], f_val, task.val.labels,
                                    len(task.classes), args.k, args.temperature, args.linear_steps, seed=seed)
    return {"knn": knn, "linear": linear}


def trained_scores(encoder, task: finetune.Task, chosen: list[int], cfg: finetune.FinetuneConfig,
                   pretrained: bool, device: str = "cpu") -> dict[str, float]:
    """top-1 after each stage of the protocol on a copy of ``encoder``: head and finetune for
    a pretrained encoder, scratch for a random one."""
    train = finetune.subset(task.train, chosen)
    net = finetune.build_network(copy.deepcopy(encoder), task, cfg.hidden_dim, cfg.image_size, cfg.seed).to(device)
    scores = {}

    def score(stage):
        scores[stage.name] = finetune.evaluate(net, task.val, len(task.classes), task.kind)["top1"]
    finetune.run_protocol(net, train, cfg, pretrained, after_stage=score)
    return scores


# --------------------------------------------------------------------------- the table

def cell(values: list[float] | None) -> str:
    """``mean +/- std`` in points, or ``-``."""
    if not values:
        return "-"
    points = [100 * v for v in values]
    return f"{statistics.mean(points):.1f} +/- {statistics.stdev(points):.1f}" if len(points) > 1 else f"{points[0]:.1f}"


def build_rows(results: dict, fractions: list[float], counts: dict[float, int]) -> list[dict]:
    """One row per (fraction, row name): each score over seeds, and for a pretrained row the
    fine-tune's gain over its arch's scratch row with the verdict."""
    rows = []
    for f in fractions:
        for name, r in results.items():
            if "diverged" in r:
                rows.append({"method": name, "arch": r["kind"], "labels": f"{f:g} ({counts[f]})",
                             "k-NN top-1": "diverged"})
                continue
            per = [r["cells"][str(f)][str(s)] for s in r["seeds"]]
            row = {"method": name, "arch": r["kind"], "labels": f"{f:g} ({counts[f]})",
                   "k-NN top-1": cell([c["knn"] for c in per]), "linear top-1": cell([c["linear"] for c in per]),
                   "head-only top-1": cell([c["head"] for c in per if "head" in c]),
                   "fine-tune top-1": cell([c.get("finetune", c.get("scratch")) for c in per])}
            scratch = results.get(f"{SCRATCH} {r['kind']}")
            if r["pretrained"] and scratch is not None:
                base = [scratch["cells"][str(f)][str(s)]["scratch"] for s in r["seeds"]]
                judged = probe.gain_verdict([c["finetune"] for c in per], base, metric="top-1",
                                            baseline="supervised from scratch", seeds="seed", more="--seeds 3")
                row["fine-tune gain over scratch"] = (f"{100 * judged['gain_mean']:+.1f} +/- "
                                                      f"{100 * judged['gain_std']:.1f}")
                row["verdict"] = ("one seed: no verdict" if judged["distinguishable"] is None else
                                  ("better" if judged["gain_mean"] > 0 else "worse") + " beyond noise"
                                  if judged["distinguishable"] else "within noise")
                r.setdefault("verdicts", {})[str(f)] = judged
            rows.append(row)
    return rows


def header(payload: dict) -> str:
    c, t, ft = payload["pretrain"], payload["task"], payload["finetune"]
    return (f"Pretraining: every method {c['steps']} steps of batch {c['batch_size']} on {c['scenes']} scenes at "
            f"{c['image_size']} px ({c['arch']} / {c['vit_arch']}). Labelled task: {t['name']}, {t['classes']} "
            f"classes, {t['train']} train / {t['val']} val images at {ft['image_size']} px; labels: fraction "
            f"(images). Head {ft['head_epochs']} epochs at {ft['head_lr']:g}, fine-tune {ft['finetune_epochs']} at "
            f"{ft['finetune_lr']:g}, scratch {ft['scratch_epochs']} at {ft['head_lr']:g}, batch {ft['batch_size']}. "
            f"Top-1 in %, mean +/- std over seeds {payload['seeds']}; verdict: the gain against 2 x the combined "
            f"seed spread. Wall time {payload['wall_seconds'] / 60:.1f} min ({torch.get_num_threads()} threads).")


def write_outputs(out: Path, payload: dict) -> dict[str, Path]:
    from .chart import draw_finetune
    out.mkdir(parents=True, exist_ok=True)
    md = out / "finetune.md"
    md.write_text(header(payload) + "\n\n" + markdown_table(payload["rows"], COLUMNS) + "\n")
    return {"json": write_json(out, "finetune.json", payload), "md": md,
            "png": draw_finetune(payload, out / "finetune.png")}


# --------------------------------------------------------------------------- command line

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks finetune", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_pretrain_options(ap, "bench_out/finetune")
    g = ap.add_argument_group("the labelled task")
    g.add_argument("--data", help="ImageFolder of labelled images (class = sub-folder); none: the built-in objects")
    g.add_argument("--val-data", help="held-out ImageFolder with the same classes; none: --val-fraction of --data")
    g.add_argument("--val-fraction", type=float, default=0.2, help="share of each class of --data held out (seeded)")
    g.add_argument("--labelled-scenes", type=int, default=256,
                   help="train scenes whose objects are the built-in labelled set (about 3 objects each)")
    g.add_argument("--val-scenes", type=int, default=128, help="val scenes whose objects are the built-in val set")
    g.add_argument("--fractions", default="0.05,1", help="label fractions, comma-separated")
    g.add_argument("--seeds", type=int, default=2, help="seeds per fraction (subset, head, batch order, scratch)")
    g = ap.add_argument_group("evaluation (the survey's protocol; k-NN and linear as in train.py eval)")
    finetune.add_protocol_options(g, "ft-", scratch_epochs=None, image_size=None,
                                  scratch_help="epochs of supervised training from scratch (default: head + "
                                               "fine-tune epochs)",
                                  image_help="side of the labelled images (default: --image-size)")
    g.add_argument("--k", type=int, default=20, help="neighbours of the k-NN classifier")
    g.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature")
    g.add_argument("--linear-steps", type=int, default=1000, help="full-batch steps of the linear classifier")
    args = ap.parse_args(argv)
    configs = pretrain_configs(ap, args)
    if args.scratch_epochs is None:
        args.scratch_epochs = args.head_epochs + args.finetune_epochs
    pretrain_size = args.image_size
    args.ft_image_size = args.ft_image_size or pretrain_size
    if args.seeds < 1:
        ap.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.val_data and not args.data:
        ap.error("--val-data needs --data")
    try:
        fractions = parse_fractions(args.fractions)
        for f in fractions:
            finetune_config(args, f, args.seed)          # checks the numbers before any training
        task = labelled_task(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        ap.error(str(e))
    seeds = [args.seed + k for k in range(args.seeds)]
    subsets = {(f, s): finetune.stratified_subset(task.train.labels, f, s) for f in fractions for s in seeds}
    counts = {f: len(subsets[(f, seeds[0])]) for f in fractions}
    out = Path(args.out)
    start = time.perf_counter()
    print(f"labelled task: {len(task.classes)} classes, {len(task.train)} train / {len(task.val)} val images; "
          + ", ".join(f"fraction {f:g}: {counts[f]} images" for f in fractions), file=sys.stderr, flush=True)
    settings = {"fractions": fractions, "seeds": seeds, "finetune": asdict(finetune_config(args, 1.0, 0)),
                "k": args.k, "temperature": args.temperature, "linear_steps": args.linear_steps,
                "task": task.record.get("data") or "objects", "val": task.record.get("val"),
                "labelled_scenes": args.labelled_scenes, "val_scenes": args.val_scenes}

    def evaluate(name: str, encoder_for, kind: str, pretrained: bool, checkpoint: str | None) -> dict:
        """Row ``name``'s cells; ``encoder_for(seed)`` is its probe-ready encoder (a pretrained
        row: the same at every seed; scratch: a random init of that seed)."""
        layers = probe_encoders.default_layers(encoder_for(seeds[0]), ("layer4",), ("tokens",))
        feats: dict[int, tuple] = {}
        cells: dict[str, dict] = {}
        for f in fractions:
            for s in seeds:
                key = {**settings, "fraction": f, "seed": s, "layers": list(layers), "checkpoint": checkpoint,
                       "kind": kind}
                path = out / "finetune" / row_folder(name).replace(" ", "_") / f"f{f:g}_s{s}.json"

                def run():
                    encoder = encoder_for(s)
                    if id(encoder) not in feats:
                        images = [sp.batch(list(range(len(sp))))[0] for sp in (task.train, task.val)]
                        feats[id(encoder)] = tuple(pooled_features(encoder, x, layers, device=args.device)
                                                   for x in images)
                    return {**frozen_scores(feats[id(encoder)], task, subsets[(f, s)], args, s),
                            **trained_scores(encoder, task, subsets[(f, s)], finetune_config(args, f, s), pretrained,
                                              args.device)}
                t0 = time.perf_counter()
                c = cells.setdefault(str(f), {})[str(s)] = cached_result(path, key, run)
                print(f"  {name}, fraction {f:g}, seed {s}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in c.items())
                      + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        return {"kind": kind, "pretrained": pretrained, "checkpoint": checkpoint, "seeds": seeds, "cells": cells,
                "layers": list(layers)}

    def random_init(arch, method, shape, stats):
        made: dict[int, torch.nn.Module] = {}

        def encoder_for(seed):
            if seed not in made:
                made[seed] = probe_encoders.probe_ready(probe_encoders.random_encoder(arch, seed, **shape), method, *stats)
            return made[seed]
        return encoder_for

    results: dict[str, dict] = {}
    for m, cfg in configs.items():
        print(f"== {m}: {cfg.arch}, {cfg.epochs} epochs of pretraining", file=sys.stderr, flush=True)
        run = pretrain(cfg)
        kind = encoder_kind(cfg.arch, cfg.method)
        if "diverged" in run:
            print(f"  {m}: diverged ({run['diverged']})", file=sys.stderr, flush=True)
            results[m] = {"kind": kind, **run}
            continue
        trunk, arch, _ = probe_encoders.encoder_from_checkpoint(run["checkpoint"])
        stats = probe_encoders.recipe_stats(cfg)       # the scratch network reads its input as the pretrained one
        encoder = probe_encoders.probe_ready(trunk, cfg.method, *stats)
        results[m] = {"description": describe(m), **evaluate(m, lambda s: encoder, kind, True, run["checkpoint"]),
                      "pretrain": {k: v for k, v in run.items() if k != "checkpoint"}}
        if f"{SCRATCH} {kind}" not in results:    # the baseline of this encoder kind
            shape = trunk_shape(trunk.state_dict(), arch)
            results[f"{SCRATCH} {kind}"] = evaluate(f"{SCRATCH} {kind}", random_init(arch, cfg.method, shape, stats),
                                                    kind, False, None)
    # the scratch rows last in each fraction's block
    results = {k: results[k] for k in sorted(results, key=lambda k: k.startswith(SCRATCH))}
    ref = next(iter(configs.values()))
    payload = {"methods": list(configs), "seeds": seeds, "fractions": fractions, "counts": {str(f): counts[f]
                                                                                            for f in fractions},
               "wall_seconds": time.perf_counter() - start,
               "pretrain": {"steps": ref.epochs * (args.scenes // args.batch_size), "epochs": ref.epochs,
                            "scenes": args.scenes, "batch_size": args.batch_size, "image_size": pretrain_size,
                            "arch": args.arch, "vit_arch": args.vit_arch, "precision": args.precision},
               "task": {"name": args.data or f"built-in objects ({args.labelled_scenes} train / {args.val_scenes} "
                                             f"val scenes)", "classes": len(task.classes), "train": len(task.train),
                        "val": len(task.val), "record": {k: v for k, v in task.record.items()
                                                         if k != "label_subset"}},
               "finetune": {**asdict(finetune_config(args, 1.0, args.seed)), "k": args.k,
                            "temperature": args.temperature, "linear_steps": args.linear_steps},
               "results": results}
    payload["rows"] = build_rows(results, fractions, counts)
    paths = write_outputs(out, payload)
    print(header(payload) + "\n\n" + markdown_table(payload["rows"], COLUMNS))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return payload


if __name__ == "__main__":
    main()
