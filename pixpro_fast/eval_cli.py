"""``train.py eval``: the dense probe of a frozen encoder on the built-in scenes (and, with
``--data``, k-NN and linear top-1 on an ImageFolder), beside a random initialisation and raw
pixel colours; a table, the gain verdict and a JSON file."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD

from .encoder import trunk_shape
from .probe import (STAGES, PixelColour, ProbeConfig, ProbeResult, check_feature_maps, evaluate_encoder,
                    gain_verdict)
from .probe_data import load_probe_data
from .probe_encoders import default_layers, encoder_from_checkpoint, probe_ready, random_encoder, recipe_stats


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def format_table(results: list[ProbeResult]) -> str:
    lines = [f"{'encoder':<28} {'mIoU':>7} {'pixel acc':>10}  " + " ".join(f"{c[:6]:>6}" for c in results[0].classes)]
    for r in results:
        per = " ".join(f"{'-':>6}" if v is None else f"{100 * v:6.1f}" for v in r.iou)
        lines.append(f"{r.name:<28} {100 * r.miou:7.2f} {100 * r.pixel_accuracy:10.2f}  {per}")
    return "\n".join(lines)


def eval_command(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="train.py eval", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Dense linear probe of a frozen encoder on the built-in scenes: trains a per-pixel linear "
                    "classifier on train-split features, reports mIoU and pixel accuracy on the val split. "
                    "With --data, also k-NN and linear top-1 accuracy on an ImageFolder's classes from pooled "
                    "frozen features.")
    ap.add_argument("--checkpoint", help="training checkpoint (its online encoder is probed)")
    ap.add_argument("--random-init", action="store_true", help="probe a randomly initialised encoder instead")
    ap.add_argument("--compare-random", action="store_true",
                    help="also probe a randomly initialised encoder of the same arch")
    ap.add_argument("--compare-colour", action="store_true", help="also probe raw pixel colours")
    ap.add_argument("--arch", help="encoder arch (required with --random-init alone; checked against a checkpoint)")
    d = ProbeConfig()
    ap.add_argument("--image-size", type=int, default=d.image_size, help="side of the probed scenes in pixels")
    ap.add_argument("--label-stride", type=int, default=d.label_stride,
                    help="labels are compared on a grid this many pixels apart")
    ap.add_argument("--layers", default=None,
                    help=f"comma-separated maps: ResNet stages ({','.join(STAGES)}; default {','.join(d.layers)}) or "
                         f"ViT ones (tokens, block1 .. blockN; default tokens)")
    ap.add_argument("--steps", type=int, default=d.steps, help="training steps of the linear probe")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="pixels per probe step")
    ap.add_argument("--lr", type=float, default=d.lr, help="learning rate of the linear probe")
    ap.add_argument("--train-images", type=int, default=d.train_images, help="scenes the probe trains on")
    ap.add_argument("--val-images", type=int, default=d.val_images, help="held-out scenes it is scored on")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the probe (and of a random-init encoder)")
    ap.add_argument("--probe-seeds", type=int, default=None,
                    help="retrain the probe with seeds seed .. seed+N-1 on the same features and judge the gain over "
                         "random init against their spread (default 3 with --compare-random, else 1)")
    ap.add_argument("--device", default="cpu", help="where features are extracted and the probe trains")
    ap.add_argument("--out", help="write the results here as JSON")
    ap.add_argument("--data", help="also classify the images of this ImageFolder (class = sub-folder) from pooled "
                                   "frozen features: k-NN and a linear classifier, top-1 on a held-out split")
    ap.add_argument("--val-data", help="held-out ImageFolder for --data; none: drawn from --data by --val-fraction")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of each class of --data held out, seeded by --seed, when no --val-data is given")
    ap.add_argument("--knn-k", type=int, default=20, help="neighbours that vote in the k-NN classifier")
    ap.add_argument("--knn-temperature", type=float, default=0.07,
                    help="k-NN vote weight exp(cosine similarity / T)")
    ap.add_argument("--skip-dense", action="store_true", help="with --data: skip the dense probe on the scenes")
    args = ap.parse_args(argv)
    if args.skip_dense and not args.data:
        ap.error("--skip-dense leaves nothing to evaluate without --data")
    if args.knn_k < 1 or not args.knn_temperature > 0:
        ap.error(f"--knn-k must be at least 1 and --knn-temperature positive, got {args.knn_k}, "
                 f"{args.knn_temperature}")
    if not args.checkpoint and not args.random_init:
        ap.error("give --checkpoint PATH, or --random-init with --arch")
    if args.random_init and not args.arch and not args.checkpoint:
        ap.error("--random-init needs --arch (or a --checkpoint to take it from)")
    probe_seeds = args.probe_seeds if args.probe_seeds is not None else (3 if args.compare_random else 1)
    if probe_seeds < 1:
        ap.error(f"--probe-seeds must be at least 1, got {probe_seeds}")
    layers = tuple(s.strip() for s in (args.layers or "").split(",") if s.strip()) or None
    bad = [s for s in layers or () if s not in STAGES and s != "tokens"
           and not (s.startswith("block") and s[5:].isdigit())]
    if bad:
        ap.error(f"unknown layer(s) {bad}; choose from {STAGES}, or tokens, block1 .. blockN for a ViT")
    try:
        cfg = ProbeConfig(image_size=args.image_size, label_stride=args.label_stride, layers=layers or d.layers,
                          steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, train_images=args.train_images,
                          val_images=args.val_images, seed=args.seed)
    except ValueError as e:
        ap.error(str(e))
    encoders: list[tuple[str, nn.Module, tuple[str, ...]]] = []
    arch = args.arch
    source = None
    method, shape, stats = None, {}, (IMAGENET_MEAN, IMAGENET_STD)
    try:
        if args.checkpoint:
            enc, arch, saved = encoder_from_checkpoint(args.checkpoint, args.arch)
            source = {"checkpoint": str(args.checkpoint), "pretrain_config": saved}
            method, shape, stats = saved.get("method"), trunk_shape(enc.state_dict(), arch), recipe_stats(saved)
            enc = probe_ready(enc, method, *stats)
            if not args.random_init:
                encoders.append((f"{arch} pretrained", enc, layers or default_layers(enc, d.layers)))
        random_init = (probe_ready(random_encoder(arch, args.seed, **shape), method, *stats)
                       if args.random_init or args.compare_random else None)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if random_init is not None:
        encoders.append((f"{arch} random init", random_init, layers or default_layers(random_init, d.layers)))
    if args.compare_colour:
        encoders.append(("pixel colour", PixelColour(), ("pixels",)))
    if args.out and Path(args.out).is_dir():
        ap.error(f"--out {args.out} is a folder; give the JSON file to write")
    try:  # layers and image size, on one blank image, before the scenes are loaded and probed
        for name, enc, enc_layers in encoders:
            check_feature_maps(enc, enc_layers, cfg.image_size)
    except (ValueError, RuntimeError) as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        return 2
    images_task = None
    if args.data:
        from .finetune import folder_task
        try:
            images_task = folder_task(args.data, cfg.image_size, 1.0, cfg.seed, args.val_data, args.val_fraction)
        except (FileNotFoundError, NotADirectoryError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    image_results = []
    if images_task is not None:
        from .image_probe import evaluate_images, format_image_table
        print(f"image probe: {len(images_task.train)} train / {len(images_task.val)} val images of "
              f"{len(images_task.classes)} classes at {cfg.image_size} px, k-NN k={args.knn_k} "
              f"T={args.knn_temperature}, linear {cfg.steps} steps", file=sys.stderr)
        for name, enc, enc_layers in encoders:
            image_results.append(evaluate_images(enc.to(args.device), images_task.train, images_task.val,
                                                 len(images_task.classes), enc_layers, name, args.knn_k,
                                                 args.knn_temperature, cfg.steps, cfg.lr, cfg.seed, args.device))
        print(format_image_table(image_results))
    if args.skip_dense:
        if args.out:
            _write_eval_json(args.out, {"arch": arch, **(source or {}), **_image_payload(images_task, image_results)})
        return 0
    print(f"probe: {cfg.train_images} train / {cfg.val_images} val scenes at {cfg.image_size} px, labels at "
          f"{cfg.label_size} px, layers {','.join(encoders[0][2])}, {cfg.steps} steps", file=sys.stderr)
    train, val = load_probe_data(cfg)
    results = []
    for name, enc, enc_layers in encoders:
        results.append(evaluate_encoder(enc.to(args.device), train, val, cfg, name, layers=enc_layers,
                                        device=args.device, probe_seeds=probe_seeds))
    print(format_table(results))
    judged = None
    if probe_seeds > 1:
        print(f"mIoU over probe seeds {cfg.seed}..{cfg.seed + probe_seeds - 1}: " + ", ".join(
            f"{r.name} {100 * _mean(r.extra['miou_per_seed']):.2f} (min {100 * min(r.extra['miou_per_seed']):.2f}, "
            f"max {100 * max(r.extra['miou_per_seed']):.2f})" for r in results))
    by_name = {r.name: r for r in results}
    pre, rnd = by_name.get(f"{arch} pretrained"), by_name.get(f"{arch} random init")
    if pre is not None and rnd is not None:
        judged = gain_verdict(pre.extra.get("miou_per_seed", [pre.miou]), rnd.extra.get("miou_per_seed", [rnd.miou]))
        print(judged["line"])
    if args.out:
        payload = {"probe_config": {**asdict(cfg), "layers": list(encoders[0][2])}, "arch": arch, **(source or {}),
                   "results": [r.to_dict() for r in results]}
        if judged is not None:
            payload["gain_over_random"] = judged
        payload.update(_image_payload(images_task, image_results))
        _write_eval_json(args.out, payload)
    return 0


def _image_payload(task, results) -> dict:
    if task is None:
        return {}
    return {"image_classification": {"classes": list(task.classes), "train_count": len(task.train),
                                     "val_count": len(task.val), **task.record,
                                     "results": [r.to_dict() for r in results]}}


def _write_eval_json(path: str | Path, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out}", file=sys.stderr)
