"""Our PixPro step beside the ``pixel-level-contrastive-learning`` package's (PixelCL), on
the same CPU/GPU, ResNet, batch and image size, timed in alternation in one run.

PixelCL is built as its README shows (``hidden_layer_pixel='layer4'``, instance layer -2,
projection 256, ``use_pixpro=True``, PPM 1 layer, gamma 2, distance 0.7) with the projector
hidden width set to ours (4096) and Adam (lr 1e-4) as in its README; our step is the
engine's (LARS, momentum update). PixelCL's ``forward`` takes one batch and cuts both views
out of it; its kornia augmentations are replaced by the identity for the like-for-like rows
(our step receives views that a loader already augmented), and kept in one extra row
("as shipped"). PixelCL always also runs its BYOL instance branch (a small MLP on pooled
features); ours runs without one (``ins_loss_weight`` 0, the PixPro default).

Rows: both sides under the same precision and memory format, and ours at its fastest
setting against PixelCL as its README runs it (fp32, contiguous, augmentations on).

    python -m benchmarks.bench_peers --arch resnet18 --image-size 64 --batch-size 32
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
import warnings

import torch
import torch.nn as nn
import torchvision

from pixpro_fast.training import autocast
from pixpro_fast.hardware import resolve_precision

from .bench_step import StepSetting, pixpro_step
from .common import add_shared_options, markdown_table, rate_columns, time_interleaved, write_json

PACKAGE = "pixel_level_contrastive_learning"
PIP_NAME = "pixel-level-contrastive-learning"


def pixelcl_missing() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    for mod in (PACKAGE, "kornia", "einops"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} not installed (pip install {PIP_NAME}, or the 'bench' extra)"
    try:
        importlib.import_module(PACKAGE)
    except Exception as exc:   # installed but broken (e.g. a missing kornia dependency)
        return f"{PIP_NAME} does not import: {type(exc).__name__}: {exc}"
    return None


def pixelcl_step(arch: str, image_size: int, batch_size: int, setting: StepSetting, device: str = "cpu",
                 proj_hidden_dim: int = 4096, augment: bool = False):
    """A closure running one PixelCL training step: forward, backward, Adam, moving average."""
    from pixel_level_contrastive_learning import PixelCL
    dev = torch.device(device)
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).to(dev)
    kwargs = {} if augment else {"augment_fn": nn.Identity(), "augment_fn2": nn.Identity()}
    with warnings.catch_warnings():   # its constructor runs a forward that warns about torch.meshgrid
        warnings.simplefilter("ignore")
        learner = PixelCL(net, image_size=image_size, hidden_layer_pixel="layer4", hidden_layer_instance=-2,
                          projection_size=256, projection_hidden_size=proj_hidden_dim, moving_average_decay=0.99,
                          ppm_num_layers=1, ppm_gamma=2, distance_thres=0.7, use_pixpro=True,
                          cutout_ratio_range=(0.6, 0.8), **kwargs).to(dev, memory_format=fmt)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=setting.precision == "fp16")
    forward = torch.compile(learner) if setting.compiled else learner
    images = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    images = images.to(dev).contiguous(memory_format=fmt)

    def step():
        with autocast(dev, setting.precision):
            loss = forward(images)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        learner.update_moving_average()
    return step


def run(arch: str = "resnet18", image_size: int = 64, batch_size: int = 32, device: str = "cpu",
        settings: list[StepSetting] | None = None, best: StepSetting | None = None,
        warmup: int = 2, iters: int = 5, proj_hidden_dim: int = 4096, log=print) -> dict:
    """One interleaved run: ours and PixelCL under each setting, plus ours-best vs PixelCL as shipped.
    ``best`` defaults to channels-last eager in the precision ``auto`` picks on ``device``."""
    best = best or StepSetting(resolve_precision("auto", device), True, False)
    missing = pixelcl_missing()
    common = {"arch": arch, "image_size": image_size, "batch_size": batch_size, "device": device,
              "proj_hidden_dim": proj_hidden_dim}
    if missing:
        log(f"  peers: skipped ({missing})")
        return {**common, "skipped": missing, "rows": []}
    settings = list(settings or [StepSetting("fp32", False, False), best])
    shipped = StepSetting("fp32", False, False)
    fns = {}
    for s in dict.fromkeys(settings + [best]):
        fns[("ours", s)] = pixpro_step(arch, image_size, batch_size, s, device, proj_hidden_dim)
    for s in settings:
        fns[("pixelcl", s)] = pixelcl_step(arch, image_size, batch_size, s, device, proj_hidden_dim)
    fns[("pixelcl_shipped", shipped)] = pixelcl_step(arch, image_size, batch_size, shipped, device,
                                                    proj_hidden_dim, augment=True)
    t0 = time.perf_counter()
    for fn in fns.values():
        fn()
    log(f"  peers {arch} {image_size}px: ready in {time.perf_counter() - t0:.1f}s")
    times = time_interleaved(fns, device, warmup=warmup, iters=iters)
    rows = []
    for s in settings:
        ours, theirs = times[("ours", s)], times[("pixelcl", s)]
        rows.append({"comparison": f"same setting: {s.name}", "ours_setting": s.name, "pixelcl_setting": s.name,
                     "pixelcl_augment": False, "ours_step_s": ours, "pixelcl_step_s": theirs,
                     "speedup_vs_pixelcl": theirs / ours})
    ours, theirs = times[("ours", best)], times[("pixelcl_shipped", shipped)]
    rows.append({"comparison": "ours fastest vs PixelCL as shipped", "ours_setting": best.name,
                 "pixelcl_setting": shipped.name + " +kornia augmentations", "pixelcl_augment": True,
                 "ours_step_s": ours, "pixelcl_step_s": theirs, "speedup_vs_pixelcl": theirs / ours})
    for r in rows:
        r.update(common, ours_images_per_s=batch_size / r["ours_step_s"],
                 pixelcl_images_per_s=batch_size / r["pixelcl_step_s"])
    return {**common, "optimisers": {"ours": "LARS (engine)", "pixelcl": "Adam lr 1e-4 (its README)"},
            "warmup": warmup, "iters": iters, "rows": rows, "skipped": None}


def table(result: dict) -> str:
    if result.get("skipped"):
        return f"PixelCL comparison skipped: {result['skipped']}"
    rows, rates = rate_columns(result["rows"], result["device"],
                               {"ours_images_per_s": "ours images/s", "pixelcl_images_per_s": "PixelCL images/s"})
    return markdown_table(rows, ["device", "arch", "image_size", "batch_size", "comparison", *rates,
                                 "speedup_vs_pixelcl"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    add_shared_options(ap, batch_size=32, image_size=64, device="cpu", out="bench_out")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    result = run(args.arch, args.image_size, args.batch_size, args.device, iters=args.iters)
    print(table(result))
    print("wrote", write_json(args.out, "peers.json", result))
    return result


if __name__ == "__main__":
    main()
