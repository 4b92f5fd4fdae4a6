"""The PixPro training step on synthetic tensors (no loader), beside a supervised step.

For each arch, every setting of precision (fp32, bf16, fp16) x memory format (contiguous,
channels-last) x eager / torch.compile is timed side by side in one interleaved run:

- the PixPro step is the engine's own (:meth:`pixpro_fast.engine.Trainer.train_one_step`):
  forward of both views through the online and (no-grad) target branches, the loss,
  backward, the LARS step and the momentum update;
- the supervised step is the same torchvision ResNet with its ``fc`` head, cross-entropy
  and SGD with momentum, on one view of the same batch size.

FLOPs per image are counted with :class:`torch.utils.flop_counter.FlopCounterMode` for both
steps (a PixPro "image" is one sample with its two views), so each row reports the PixPro
step's FLOP throughput relative to the supervised step's: above 1 means the PixPro step
keeps the hardware at least as busy as plain supervised training does. Each row also gives
its speedup over the fp32 / contiguous / eager PixPro step of the same run and its model
FLOP utilisation against a large ``torch.matmul`` timed on the same device in the same run:
a bf16 matmul where the device has native bf16 (on a GPU, MFU against its achievable bf16
matmul rate), else an fp32 one; the column says which (``mfu_vs_bf16_matmul`` or
``mfu_vs_fp32_matmul``), and ``mfu_reference`` in the result.

A precision the device only emulates (bf16 on a CPU without bf16 instructions, fp16 on
most CPUs; see :mod:`pixpro_fast.hardware`) is listed as skipped, with why, unless
``--emulated``.

    python -m benchmarks.bench_step --arch resnet18 --image-size 64 --batch-size 32
    python -m benchmarks.bench_step --device cuda --arch resnet50 --image-size 224 --batch-size 128 --levers bf16

``--levers`` times the step's levers one by one, each a row beside the compiled step it
changes: both views through the encoder in one call (``--concat-views``: shared BatchNorm
statistics, so not the published method), ``torch.compile`` with ``max-autotune`` and, on a
GPU, ``reduce-overhead`` (CUDA graphs), the whole step compiled as one graph (``whole-step``:
forward, backward, optimiser and momentum update, :mod:`pixpro_fast.step`; on a GPU also
replayed as CUDA graphs) and twice the batch (``batch-x2``; images/sec per row, so the
rates compare). ``--only max-autotune`` (say) times one lever beside
the step it changes, so that a slow compilation runs as its own job. Every lever row is held to
the same supervised step (the precision's channels-last step compiled in the default mode),
compiled once.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import Trainer
from pixpro_fast.training import autocast
from pixpro_fast.hardware import emulated_reason, native_precisions
from pixpro_fast.methods.pixpro import PixPro
from pipelines.synthetic import SyntheticLoader

from .common import add_shared_options, markdown_table, rate_columns, sync, time_interleaved, write_json

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class StepSetting:
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    compile_mode: str = "default"   # a lever: max-autotune, reduce-overhead (CUDA graphs)
    concat_views: bool = False      # a lever: both views in one encoder call (changes BN statistics)
    whole_step: bool = False        # a lever: the whole step (backward, optimiser, momentum) compiled as one graph
    batch_scale: int = 1            # a lever: this many times the batch per step

    @property
    def memory_format(self) -> str:
        return "channels-last" if self.channels_last else "contiguous"

    @property
    def mode(self) -> str:
        return "compiled" if self.compiled else "eager"

    @property
    def name(self) -> str:
        name = f"{self.precision}/{self.memory_format}/{self.mode}"
        if self.whole_step:
            name += " whole-step"
        if self.compiled and self.compile_mode != "default":
            name += f" {self.compile_mode}"
        if self.batch_scale != 1:
            name += f" batch x{self.batch_scale}"
        return name + (" +concat-views" if self.concat_views else "")


BASELINE = StepSetting("fp32", False, False)


def settings_grid(precisions=PRECISIONS, compiled: str = "channels-last") -> list[StepSetting]:
    """All eager settings, plus compiled ones: 'none', 'best' (bf16 channels-last only),
    'channels-last' (every precision, channels-last) or 'all'."""
    eager = [StepSetting(p, cl, False) for p in precisions for cl in (False, True)]
    if compiled == "none":
        extra = []
    elif compiled == "best":
        extra = [StepSetting("bf16", True, True)]
    elif compiled == "channels-last":
        extra = [StepSetting(p, True, True) for p in precisions]
    elif compiled == "all":
        extra = [dataclasses.replace(s, compiled=True) for s in eager]
    else:
        raise ValueError(f"compiled must be none, best, channels-last or all, got {compiled!r}")
    return eager + extra


LEVERS = ("concat-views", "max-autotune", "reduce-overhead", "whole-step", "batch-x2")


def lever_settings(precision: str, device: str, levers: tuple[str, ...] | None = None) -> list[StepSetting]:
    """One row per lever on top of the channels-last compiled step of ``precision``: the two
    views in one encoder call, eager and compiled ('concat-views'); compile modes 'max-autotune'
    and, on a GPU, 'reduce-overhead' (CUDA graphs of the model's kernels); 'whole-step': the
    forward, backward, optimiser and momentum update compiled as one graph
    (:mod:`pixpro_fast.step`), and on a GPU the same replayed as CUDA graphs; 'batch-x2': twice
    the batch per step. ``levers`` picks some (default: all), so that the slow-to-compile ones
    can run as their own job."""
    levers = LEVERS if levers is None else tuple(levers)
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever(s) {', '.join(unknown)}; the levers are {', '.join(LEVERS)}")
    best = StepSetting(precision, True, True)
    rows = [best]
    if "concat-views" in levers:
        rows += [dataclasses.replace(best, compiled=False, concat_views=True), dataclasses.replace(best, concat_views=True)]
    if "max-autotune" in levers:
        rows.append(dataclasses.replace(best, compile_mode="max-autotune"))
    if "reduce-overhead" in levers and str(device).startswith("cuda"):
        rows.append(dataclasses.replace(best, compile_mode="reduce-overhead"))
    if "whole-step" in levers:
        rows.append(dataclasses.replace(best, whole_step=True))
        if str(device).startswith("cuda"):
            rows.append(dataclasses.replace(best, whole_step=True, compile_mode="reduce-overhead"))
    if "batch-x2" in levers:
        rows.append(dataclasses.replace(best, batch_scale=2))
    return rows


def supervised_setting(s: StepSetting) -> StepSetting:
    """The supervised step a PixPro setting is compared with: the same precision, memory format
    and compilation, in the default compile mode and with its one view. The lever rows thus share
    one reference step (compiled once) and differ only in what the lever does to PixPro."""
    return dataclasses.replace(s, concat_views=False, compile_mode="default", whole_step=False, batch_scale=1)


# -- the two steps ------------------------------------------------------------------------

def pixpro_step(arch: str, image_size: int, batch_size: int, setting: StepSetting, device: str = "cpu",
                proj_hidden_dim: int = 4096):
    """A closure running one engine training step on a fixed synthetic batch (``batch_size``
    times the setting's ``batch_scale``)."""
    batch_size *= setting.batch_scale
    cfg = TrainConfig(arch=arch, image_size=image_size, batch_size=batch_size, proj_hidden_dim=proj_hidden_dim,
                      device=device, precision=setting.precision, channels_last=setting.channels_last,
                      compile=setting.compiled, compile_mode=setting.compile_mode, compile_step=setting.whole_step,
                      concat_views=setting.concat_views, tensorboard=False, epochs=1000, warmup_epochs=0.0,
                      out="bench_out/unused", resume=False)
    loader = SyntheticLoader(batch_size, image_size, device=device, batches_per_epoch=1)
    trainer = Trainer(cfg, loader=loader)
    batch = next(iter(loader))
    if not setting.channels_last:
        batch = batch.replace(views=tuple(v.contiguous() for v in batch.views))

    def step():
        trainer.train_one_step([batch])
    return step


def supervised_step(arch: str, image_size: int, batch_size: int, setting: StepSetting, device: str = "cpu",
                    num_classes: int = 1000):
    """A closure running one plain supervised step (ResNet + fc, cross-entropy, SGD) on one view."""
    dev = torch.device(device)
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=setting.precision == "fp16")
    forward = torch.compile(model, mode=setting.compile_mode) if setting.compiled else model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(dev).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(dev)

    def step():
        with autocast(dev, setting.precision):
            loss = F.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return step


# -- FLOPs and the matmul rate ------------------------------------------------------------

MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def pixpro_flops_per_image(arch: str, image_size: int, batch_size: int = 2, proj_hidden_dim: int = 4096) -> float:
    """FLOPs of one PixPro forward + backward per sample (both views, both branches, PPM, loss)."""
    torch.manual_seed(0)
    model = PixPro(TrainConfig(arch=arch, proj_hidden_dim=proj_hidden_dim))
    loader = SyntheticLoader(batch_size, image_size, batches_per_epoch=1)
    b = next(iter(loader))
    return _count(lambda: model(b.views, b.coords).loss.backward()) / batch_size


def supervised_flops_per_image(arch: str, image_size: int, batch_size: int = 2, num_classes: int = 1000) -> float:
    """FLOPs of one supervised forward + backward (ResNet + fc + cross-entropy) per image."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (batch_size,))
    return _count(lambda: F.cross_entropy(model(x), y).backward()) / batch_size


def matmul_flops_per_sec(device: str = "cpu", dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                         iters: int = 7) -> float:
    """Achieved FLOP/s of a large square ``torch.matmul``: the practical peak the step is held to."""
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 1024)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    times = []
    for i in range(iters + 2):
        sync(dev)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(dev)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / sorted(times)[len(times) // 2]


# -- the section ----------------------------------------------------------------------------

def run(arch: str = "resnet18", image_size: int = 64, batch_size: int = 32, settings: list[StepSetting] | None = None,
        device: str = "cpu", warmup: int = 2, iters: int = 5, proj_hidden_dim: int = 4096,
        matmul_n: int | None = None, emulated: bool = False, log=print, on_partial=None) -> dict:
    """Time every setting's PixPro and supervised steps in one interleaved run; one row per setting.
    A precision this device only emulates is listed as skipped, with why, unless ``emulated``.
    ``on_partial`` gets the result of the rounds timed so far after each round but the last
    (marked ``"partial": true``, with ``"rounds"``)."""
    settings = list(settings or settings_grid())
    if BASELINE not in settings:
        settings.insert(0, BASELINE)
    skipped = []
    if not emulated:
        for s in list(settings):
            reason = emulated_reason(s.precision, device)
            if reason:
                settings.remove(s)
                skipped.append({"setting": s.name, "reason": reason})
                log(f"  step {arch} {s.name}: skipped ({reason})")
    flops_pix = pixpro_flops_per_image(arch, image_size, proj_hidden_dim=proj_hidden_dim)
    flops_sup = supervised_flops_per_image(arch, image_size)
    reference = mfu_reference(device)
    matmul = {p: matmul_flops_per_sec(device, MATMUL_DTYPES[p], matmul_n) for p in dict.fromkeys((reference, "fp32"))}

    fns = {}
    for s in settings:
        sup_key = ("supervised", supervised_setting(s))
        try:
            pix = pixpro_step(arch, image_size, batch_size, s, device, proj_hidden_dim)
            sup = fns.get(sup_key) or supervised_step(arch, image_size, batch_size, s, device)
            t0 = time.perf_counter()
            pix(), sup()   # first call: compiles where compiled, fails early where unsupported
            log(f"  step {arch} {image_size}px {s.name}: ready in {time.perf_counter() - t0:.1f}s")
        except Exception as exc:  # an unsupported setting on this device is reported, not fatal
            skipped.append({"setting": s.name, "reason": f"{type(exc).__name__}: {exc}"[:300]})
            log(f"  step {arch} {s.name}: skipped ({skipped[-1]['reason']})")
            continue
        fns[("pixpro", s)] = pix
        fns[sup_key] = sup
    if ("pixpro", BASELINE) not in fns:
        raise RuntimeError(f"the fp32 eager baseline step failed on {device}: {skipped}")

    def result(times: dict) -> dict:
        base = times[("pixpro", BASELINE)]
        rows = []
        for s in settings:
            if ("pixpro", s) not in times:
                continue
            t_pix, t_sup = times[("pixpro", s)], times[("supervised", supervised_setting(s))]
            pix_batch = batch_size * s.batch_scale
            pix_rate = flops_pix * pix_batch / t_pix
            sup_rate = flops_sup * batch_size / t_sup
            rows.append({
                "device": device, "arch": arch, "image_size": image_size, "batch_size": pix_batch,
                "setting": s.name, "precision": s.precision, "memory_format": s.memory_format, "mode": s.mode,
                "compile_mode": s.compile_mode if s.compiled else None, "concat_views": s.concat_views,
                "whole_step": s.whole_step, "supervised_batch_size": batch_size,
                "pixpro_step_s": t_pix, "supervised_step_s": t_sup, "supervised_setting": supervised_setting(s).name,
                "pixpro_images_per_s": pix_batch / t_pix, "supervised_images_per_s": batch_size / t_sup,
                "speedup_vs_fp32_eager": (pix_batch / t_pix) / (batch_size / base),
                "flop_throughput_ratio": pix_rate / sup_rate,
                "pixpro_flops_per_s": pix_rate, "supervised_flops_per_s": sup_rate,
                f"mfu_vs_{reference}_matmul": pix_rate / matmul[reference],
                f"supervised_mfu_vs_{reference}_matmul": sup_rate / matmul[reference],
            })
        return {"device": device, "arch": arch, "image_size": image_size, "batch_size": batch_size,
                "proj_hidden_dim": proj_hidden_dim, "warmup": warmup, "iters": iters,
                "flops_per_image": {"pixpro": flops_pix, "supervised": flops_sup, "ratio": flops_pix / flops_sup},
                "matmul_flops_per_s": matmul, "mfu_reference": reference, "rows": rows, "skipped": skipped}

    def partial(times: dict, rounds: int) -> None:
        if on_partial is not None:
            on_partial({**result(times), "partial": True, "rounds": rounds})

    return result(time_interleaved(fns, device, warmup=warmup, iters=iters, on_round=partial))


def mfu_reference(device: str) -> str:
    """The matmul precision MFU is held to: bf16 only where it is native on ``device`` (an
    emulated bf16 matmul is slow, so a utilisation against it would flatter the step)."""
    return "bf16" if "bf16" in native_precisions(device) else "fp32"


def table(result: dict) -> str:
    rows, rates = rate_columns(result["rows"], result["device"], {"pixpro_images_per_s": "PixPro images/s",
                                                                  "supervised_images_per_s": "supervised images/s"})
    mfu = f"mfu_vs_{result.get('mfu_reference', 'bf16')}_matmul"
    cols = ["device", "arch", "image_size", "setting", *rates, "speedup_vs_fp32_eager", "flop_throughput_ratio", mfu]
    return markdown_table(rows, cols)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    add_shared_options(ap, batch_size=32, image_size=64, device="cpu", out="bench_out")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--compiled", default="best", choices=["none", "best", "channels-last", "all"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--emulated", action="store_true",
                    help="also time precisions this device only emulates (slow; skipped by default)")
    ap.add_argument("--levers", metavar="PRECISION", default=None,
                    help="instead of the grid: the fp32 eager baseline, the channels-last compiled step of this "
                         "precision and one row per lever on top of it (concat-views, compile modes)")
    ap.add_argument("--only", metavar="LEVERS", default=None,
                    help=f"with --levers: a comma-separated subset of {', '.join(LEVERS)} (default: all)")
    args = ap.parse_args(argv)
    only = tuple(n.strip() for n in args.only.split(",") if n.strip()) if args.only else None
    if only is not None and not args.levers:
        ap.error("--only needs --levers")
    if args.levers:
        try:
            settings = lever_settings(args.levers, args.device, only)
        except ValueError as e:   # an unknown lever, named by lever_settings
            ap.error(f"--only: {e}")
    else:
        settings = settings_grid(tuple(args.precisions.split(",")), args.compiled)
    result = run(args.arch, args.image_size, args.batch_size, settings, args.device, iters=args.iters,
                 emulated=args.emulated, on_partial=lambda partial: write_json(args.out, "step.json", partial))
    print(table(result))
    print("wrote", write_json(args.out, "step.json", result))
    return result


if __name__ == "__main__":
    main()
