"""Does pretraining help? Pretrain a small ResNet with PixPro on the built-in scenes, then
probe it (dense linear probe, :mod:`pixpro_fast.probe`) beside a randomly initialised
encoder of the same arch and the raw pixel colours.

A scene object's class sets its outline and fill pattern, never its colours, so the colour
row is the floor: what a probe gets from colour alone. The pretrained encoder should beat
the random one by a clear margin (the aim is 5 mIoU points).

    python -m benchmarks.quality                   # about ten minutes on 2 CPU cores
    python -m benchmarks.quality --epochs 2 --probe-steps 100   # a quick look

Writes quality.json and quality.md into --out; the pretraining run (checkpoints and
metrics.jsonl) goes to --out/pretrain and is resumed if it is already there.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pixpro_fast import probe
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import Trainer

from .common import markdown_table, write_json


def pretrain_config(args, out: Path) -> TrainConfig:
    """PixPro with the paper's recipe scaled to a CPU budget: small images and projector, and a LARS
    trust coefficient raised so that a few hundred steps can turn the weights (see --lars-trust)."""
    return TrainConfig(method=args.method, arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
                       epochs=args.epochs, warmup_epochs=args.warmup_epochs, base_lr=args.base_lr,
                       optimizer=args.optimizer, lars_trust=args.lars_trust, weight_decay=args.weight_decay,
                       scenes_images=args.scenes, proj_hidden_dim=args.proj_hidden_dim, precision=args.precision,
                       num_workers=args.workers, log_every=10, ckpt_every=0, keep_ckpts=1, tensorboard=False,
                       out=str(out / "pretrain"), seed=args.seed).validate()


def results_table(results: list[probe.ProbeResult], baseline: str) -> str:
    base = next(r for r in results if r.name == baseline)
    rows = [{"encoder": r.name, "mIoU": round(100 * r.miou, 2), "pixel accuracy": round(100 * r.pixel_accuracy, 2),
             "mIoU vs random init": round(100 * (r.miou - base.miou), 2)} for r in results]
    return markdown_table(rows, ["encoder", "mIoU", "pixel accuracy", "mIoU vs random init"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="pixpro")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=96, help="pretraining image size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=36)
    ap.add_argument("--warmup-epochs", type=float, default=2.0)
    ap.add_argument("--base-lr", type=float, default=1.0)
    ap.add_argument("--optimizer", default="lars")
    ap.add_argument("--lars-trust", type=float, default=0.02,
                    help="LARS trust coefficient; the paper's 0.001 barely moves the weights in a few hundred steps")
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--scenes", type=int, default=1024, help="built-in scenes used for pretraining")
    ap.add_argument("--proj-hidden-dim", type=int, default=1024)
    ap.add_argument("--precision", default="auto",
                    help="auto (bf16 where native on this device, else fp32), fp32, bf16 or fp16")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--probe-image-size", type=int, default=probe.ProbeConfig.image_size)
    ap.add_argument("--probe-layers", default="layer3,layer4", help="comma-separated stages")
    ap.add_argument("--probe-steps", type=int, default=probe.ProbeConfig.steps)
    ap.add_argument("--probe-train-images", type=int, default=probe.ProbeConfig.train_images)
    ap.add_argument("--probe-val-images", type=int, default=probe.ProbeConfig.val_images)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_out/quality")
    args = ap.parse_args(argv)
    out = Path(args.out)
    layers = tuple(s for s in args.probe_layers.split(",") if s)
    probe_cfg = probe.ProbeConfig(image_size=args.probe_image_size, layers=layers, steps=args.probe_steps,
                                  train_images=args.probe_train_images, val_images=args.probe_val_images,
                                  seed=args.seed)

    cfg = pretrain_config(args, out)
    t0 = time.perf_counter()
    fit = Trainer(cfg).fit()
    pretrain_s = time.perf_counter() - t0
    if fit.status not in ("finished", "max_steps"):
        raise SystemExit(f"pretraining stopped early ({fit.status}); run again to resume it")
    print(f"pretrained {fit.steps} steps in {pretrain_s / 60:.1f} min, last loss {fit.last_loss:.4f}")

    pretrained, arch, _ = probe.encoder_from_checkpoint(fit.checkpoint)
    initial = probe.random_encoder(arch, args.seed)  # the weights pretraining started from
    turn = probe.weight_turn(pretrained, initial)
    print("weights turned from their initialisation (degrees): "
          + ", ".join(f"{stage} {deg:.1f}" for stage, deg in turn.items()))
    train, val = probe.load_probe_data(probe_cfg)
    encoders = [(f"{arch} {args.method} {args.epochs} ep", pretrained, layers),
                (f"{arch} random init", initial, layers),
                ("pixel colour", probe.PixelColour(), ("pixels",))]
    results = []
    for name, enc, enc_layers in encoders:
        results.append(probe.evaluate_encoder(enc, train, val, probe_cfg, name, layers=enc_layers))
        print(f"  probed {name}: mIoU {100 * results[-1].miou:.2f}")
    table = results_table(results, f"{arch} random init")
    header = (f"{args.method} pretraining: {arch}, {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs over "
              f"{args.scenes} scenes ({fit.steps} steps, {pretrain_s / 60:.1f} min on {torch.get_num_threads()} "
              f"threads). Probe: {probe_cfg.train_images} train / {probe_cfg.val_images} val scenes at "
              f"{probe_cfg.image_size} px, layers {','.join(layers)}, {probe_cfg.steps} steps. Pretrained weights turned from "
              f"their initialisation by " + ", ".join(f"{s} {d:.0f}" for s, d in turn.items()) + " degrees.")
    print(header + "\n\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(header + "\n\n" + table + "\n")
    payload = {"pretrain_config": cfg.to_dict(), "pretrain_steps": fit.steps, "pretrain_seconds": pretrain_s,
               "last_loss": fit.last_loss, "weight_turn_degrees": turn, "probe_config": asdict(probe_cfg),
               "results": [r.to_dict() for r in results]}
    print("wrote", write_json(out, "quality.json", payload))
    return payload


if __name__ == "__main__":
    main()
