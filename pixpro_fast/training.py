"""Everything a training loop needs, built from one config by one call.

:func:`build_training` returns the method (on its device, in its memory format), the loader,
the optimiser over the method's online parameters, and the lr and target-momentum schedules
as methods of :class:`Training`. The engine's :class:`~pixpro_fast.engine.Trainer` is built
from it; so can be a loop of one's own::

    t = build_training(cfg)
    for step, batch in zip(range(t.total_steps), t.batches()):
        t.set_lr(step)
        with t.autocast():
            loss = t.loss(batch)
        loss.backward()
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        t.update_target(step)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from .config import ATTENTION_KERNELS, ConfigError, TrainConfig
from .hardware import resolve_precision
from .methods import build_method, method_entry
from .momentum import momentum_at
from .optim import LARS, adamw_param_groups, lr_at, scaled_lr


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else the CPU; a CUDA device on a
    machine without one is a :class:`ConfigError` naming ``device``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available on this machine; "
                                    "use auto or cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def check_sync_bn(cfg: TrainConfig, device: torch.device, world_size: int) -> None:
    """A :class:`ConfigError` naming ``sync_bn`` when it would fail: several processes on a
    device other than CUDA (PyTorch's SyncBatchNorm runs only on GPUs). In a single process
    there is nothing to synchronise and the flag is left unused on any device, so a GPU
    command tried on one CPU still runs."""
    if cfg.sync_bn and world_size > 1 and device.type != "cuda":
        raise ConfigError("sync_bn", f"needs CUDA devices: SyncBatchNorm runs only on GPUs, and these "
                                     f"{world_size} processes train on {device.type}; drop --sync-bn for CPU runs")


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def attention_kernel(name: str):
    """The context that picks the kernel of every ``scaled_dot_product_attention`` inside it
    (timm's ViT blocks, ``nn.MultiheadAttention``): ``auto`` leaves torch's choice, ``math``
    forces the plain matmul-softmax-matmul path. On a CPU torch's choice is its flash kernel,
    whose backward in bf16 is slow for the short sequences of small views (LOCA at 128 px:
    the whole step 1.25-1.4x faster with ``math``; at 224 px slower; measure with
    ``benchmarks.bench_attention``)."""
    if name == "auto":
        return contextlib.nullcontext()
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; expected one of {ATTENTION_KERNELS}")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def build_loader_for(cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1, log=None):
    """The loader ``cfg`` names (the built-in scenes when ``cfg.data`` is None). A missing or
    wrong ``--data``, a backend that cannot run here or a batch larger than the dataset is a
    :class:`ConfigError` naming the setting."""
    import pipelines
    data = cfg.data
    if data is None and cfg.loader != "synthetic":
        from pipelines.scenes import ensure_scenes
        data = str(ensure_scenes(n_images=cfg.scenes_images, seed=0))
        if log is not None:
            print(f"no --data given: using the built-in scenes dataset at {data}", file=log)
    opts = dict(device=device, seed=cfg.seed, rank=rank, world_size=world_size, on_corrupt=cfg.on_corrupt,
                max_pixels=cfg.max_pixels)
    if cfg.num_workers is not None:
        opts["num_workers"] = cfg.num_workers
    try:
        return pipelines.build_loader(cfg.loader, data, cfg.batch_size, cfg.image_size, cfg.recipe, **opts)
    except OSError as exc:
        raise ConfigError("data", f"{data!r} cannot be read by the {cfg.loader} loader: {exc}") from None
    except ImportError as exc:
        raise ConfigError("loader", f"{cfg.loader!r} cannot run on this machine: {exc}") from None
    except ValueError as exc:
        raise ConfigError(None, f"--loader {cfg.loader} --data {data} --batch-size {cfg.batch_size}: {exc}") from None


@dataclass
class Training:
    """The parts of a run and its schedules. ``method.online`` is what the optimiser trains."""

    cfg: TrainConfig
    method: torch.nn.Module
    loader: object
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str               # resolved: fp32 | bf16 | fp16
    steps_per_epoch: int         # optimiser steps per epoch (micro-batches / accum_steps)
    total_steps: int             # length of the schedules: epochs * steps_per_epoch
    stop_step: int               # where a run of this config stops: total_steps, or max_steps when smaller
    global_batch: int
    peak_lr: float
    warmup_steps: int
    sync_bn: bool = False        # resolved: BatchNorm statistics synchronised across the processes

    def lr_at(self, step: int) -> float:
        """Linear warmup to ``peak_lr``, then cosine to the end of ``total_steps``: down to
        ``cfg.final_lr`` (``warmup_cosine``) or to ``cfg.final_lr_fraction * peak_lr``
        (``warmup_cosine_relative``); see :func:`pixpro_fast.optim.lr_at`."""
        cfg = self.cfg
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, cfg.final_lr, cfg.lr_schedule,
                     cfg.final_lr_fraction)

    def set_lr(self, step: int) -> float:
        """Put the lr of ``step`` into every parameter group; returns it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def momentum_at(self, step: int) -> float:
        """Target momentum after ``step``: ``cfg.ema_momentum`` rising to 1 (cosine) or constant."""
        if self.cfg.ema_schedule == "constant":
            return self.cfg.ema_momentum
        return momentum_at(step, self.total_steps, self.cfg.ema_momentum)

    def update_target(self, step: int) -> None:
        """The momentum update of the method's target after optimiser step ``step``."""
        self.method.update_target(self.momentum_at(step))

    @contextlib.contextmanager
    def autocast(self):
        """The context of this run's forward: its autocast precision (none for fp32) and its
        attention kernel (``cfg.attention``)."""
        with autocast(self.device, self.precision), attention_kernel(self.cfg.attention):
            yield

    def loss(self, batch) -> torch.Tensor:
        """The method's loss on one batch of the loader (call inside :meth:`autocast`)."""
        return self.method(batch.views, batch.coords).loss

    def batches(self) -> Iterator:
        """The loader's batches, epoch after epoch, without end (each pass reads the next epoch);
        before each pass the method is told its epoch (counted from 0, ``method.set_epoch``)."""
        epoch = 0
        while True:
            self.method.set_epoch(epoch)
            yield from self.loader
            epoch += 1


def resolve_sync_bn(cfg: TrainConfig, device: torch.device, world_size: int) -> bool:
    """Whether BatchNorm is synchronised across processes: ``--sync-bn``/``--no-sync-bn`` as
    given (only where there is more than one process); unset, on for a multi-GPU CUDA run of
    a method whose reference implementation syncs it (its registry entry), off otherwise.
    An explicit ``--sync-bn`` that cannot run is refused by :func:`check_sync_bn`."""
    check_sync_bn(cfg, device, world_size)
    if world_size < 2:
        return False
    if cfg.sync_bn is not None:
        return cfg.sync_bn
    return device.type == "cuda" and method_entry(cfg.method).sync_bn


def build_optimizer(cfg: TrainConfig, online: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` names over ``online``'s parameters: LARS (decay and trust
    scaling on multi-dimensional parameters only), SGD (decay on all), or AdamW (no decay on
    1-D parameters: biases, norms)."""
    if cfg.optimizer == "lars":
        return LARS(online.parameters(), lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay,
                    trust_coefficient=cfg.lars_trust)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(online.parameters(), lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(adamw_param_groups(online, cfg.weight_decay), lr=lr)


def apply_optimizer_settings(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> None:
    """Put ``cfg``'s hyperparameters into an optimiser whose state was loaded from a checkpoint
    written under other values (the settings a resumed run applies)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0 if group.get("no_weight_decay") else cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.sgd_momentum
        if "trust_coefficient" in group:
            group["trust_coefficient"] = cfg.lars_trust


def build_training(cfg: TrainConfig, loader=None, device: torch.device | str | None = None, rank: int = 0,
                   world_size: int = 1, log=None) -> Training:
    """The method, loader, optimiser and schedules of ``cfg``. ``loader``: use this one instead
    of building ``cfg.loader``; ``device``: default ``cfg.device`` resolved; ``log``: a stream
    for notes (which dataset is used)."""
    cfg = cfg.validate()
    device = resolve_device(cfg.device, 0) if device is None else torch.device(device)
    precision = resolve_precision(cfg.precision, device)
    if loader is None:
        loader = build_loader_for(cfg, device, rank, world_size, log)
    steps_per_epoch = len(loader) // cfg.accum_steps
    if steps_per_epoch < 1:
        raise ConfigError("batch_size", f"{cfg.batch_size} (x accum_steps {cfg.accum_steps}) is larger than the "
                                        f"dataset: the loader yields {len(loader)} batches per epoch, fewer than "
                                        f"accum_steps; use a smaller --batch-size or more data")
    total_steps = cfg.epochs * steps_per_epoch
    global_batch = cfg.batch_size * cfg.accum_steps * world_size
    peak_lr = scaled_lr(cfg.base_lr, global_batch, cfg.lr_scaling)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    sync_bn = resolve_sync_bn(cfg, device, world_size)
    method = build_method(cfg)
    if sync_bn:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg, method.online, peak_lr)
    stop_step = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    return Training(cfg, method, loader, optimizer, device, precision, steps_per_epoch, total_steps, stop_step,
                    global_batch, peak_lr, warmup_steps, sync_bn)
