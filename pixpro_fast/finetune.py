"""Supervised evaluation by fine-tuning: how much does pretraining help a labelled task?

Protocol (the survey's, every number a flag of ``train.py finetune``):

1. head: the encoder frozen (no gradient, BatchNorm in eval mode, so nothing in it
   changes), a recognition head of two fully connected layers trained on top: AdamW,
   lr 3e-4, batch 8, 10 epochs;
2. fine-tune: the whole network, AdamW, lr 3e-5, 40 epochs;
3. baseline (``--random-init``): the same network from random weights trained on the
   labelled set alone: stage 1 is skipped and the whole network trains ``scratch_epochs``
   (50) at ``head_lr`` (3e-4). It runs through the same function as stage 2
   (:func:`train_stage`), so a baseline equals a stage-2-only run of the same random
   weights with the same seed and settings.

Two tasks: image classification on an ImageFolder (head: global average pool, then
Linear-ReLU-Linear; top-1 accuracy) and dense segmentation of the built-in scenes (the
dense probe's data; head: two 1x1 convolutions on the last feature map, logits upsampled
bilinearly to the label grid; mIoU and pixel accuracy). Images are resized (shorter side)
and centre-cropped, normalised with the encoder's recipe statistics; no augmentation.
Every stage reseeds torch and draws its batch order from a generator of ``seed``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from . import probe
from . import segmentation_metrics
from . import probe_encoders
from . import probe_data

TASKS = ("classify", "segment")
STATE_NAME = "finetune_state.pt"


@dataclass(frozen=True)
class FinetuneConfig:
    head_lr: float = 3e-4
    head_epochs: int = 10
    finetune_lr: float = 3e-5
    finetune_epochs: int = 40
    scratch_epochs: int = 50
    batch_size: int = 8
    weight_decay: float = 0.01     # AdamW's own default
    hidden_dim: int = 512          # width of the head's first layer
    image_size: int = 224
    label_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("head_epochs", "finetune_epochs", "scratch_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        for name in ("head_lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"--label-fraction must lie in (0, 1], got {self.label_fraction}")
        if self.image_size < 32:
            raise ValueError(f"--image-size must be at least 32, got {self.image_size}")


# --------------------------------------------------------------------------- label subsets

def stratified_subset(labels: list[int] | torch.Tensor, fraction: float, seed: int) -> list[int]:
    """Sorted indices of a seeded subset holding ``round(fraction * n_c)`` items of every class
    c (at least one, so no class is lost); the same ``seed`` gives the same subset."""
    labels = [int(v) for v in labels]
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in sorted(set(labels)):
        members = [i for i, v in enumerate(labels) if v == c]
        take = min(len(members), max(1, round(fraction * len(members))))
        order = torch.randperm(len(members), generator=gen)[:take]
        chosen.extend(members[int(j)] for j in order)
    return sorted(chosen)


# --------------------------------------------------------------------------- data

def load_square(path: str | Path, image_size: int) -> np.ndarray:
    """(S, S, 3) uint8: shorter side resized to ``image_size``, centre square (as the probe does)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        return np.asarray(im.resize((image_size, image_size), Image.Resampling.BILINEAR,
                                    box=probe_data.square_window(*im.size)))


@dataclass
class FolderSplit:
    """Images of an ImageFolder read when a batch needs them; ``labels[i]`` is the class of ``paths[i]``."""
    paths: list[Path]
    labels: torch.Tensor
    image_size: int

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.stack([load_square(self.paths[i], self.image_size) for i in idx])
        return torch.from_numpy(images), self.labels[idx]


@dataclass
class SceneSplit:
    """Scenes and label maps held in memory (the dense probe's :class:`probe_data.ProbeSplit`)."""
    data: probe_data.ProbeSplit

    def __len__(self) -> int:
        return len(self.data.images)

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.images[idx], self.data.labels[idx]


def subset(split, idx: list[int]):
    if isinstance(split, FolderSplit):
        return FolderSplit([split.paths[i] for i in idx], split.labels[idx], split.image_size)
    return SceneSplit(probe_data.ProbeSplit(split.data.images[idx], split.data.labels[idx]))


@dataclass
class Task:
    """What is learnt and scored: ``kind`` (classify or segment), the class names, the splits
    and what was drawn (val files, the label subset) for the results file."""
    kind: str
    classes: tuple[str, ...]
    train: object
    val: object
    record: dict = field(default_factory=dict)


def folder_task(data: str | Path, image_size: int, label_fraction: float = 1.0, seed: int = 0,
                val_data: str | Path | None = None, val_fraction: float = 0.2) -> Task:
    """An ImageFolder task; ValueError / FileNotFoundError in one line for a folder without
    class sub-folders, a class with no image after the split, or val classes that differ."""
    from pipelines.image_folder import scan_image_folder
    images = scan_image_folder(data)
    if not images.classes:
        raise ValueError(f"{data} has no class sub-folders: put each class's images in {data}/<class>/")
    if len(images.classes) < 2:
        raise ValueError(f"{data} has one class ({images.classes[0]}): classification needs at least two")
    keep = [i for i, v in enumerate(images.labels) if v >= 0]   # files directly under the root have no class
    paths, labels = [images.paths[i] for i in keep], [images.labels[i] for i in keep]
    record = {"unlabelled_files_ignored": len(images) - len(keep)}
    if val_data is not None:
        held = scan_image_folder(val_data)
        if held.classes != images.classes:
            raise ValueError(f"--val-data {val_data} has classes {list(held.classes)}, --data {list(images.classes)}")
        val_paths, val_labels = [p for p, v in zip(held.paths, held.labels) if v >= 0], \
            [v for v in held.labels if v >= 0]
        train_idx = list(range(len(paths)))
        record["val"] = {"data": str(val_data)}
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
        val_idx = set(stratified_subset(labels, val_fraction, seed))
        train_idx = [i for i in range(len(paths)) if i not in val_idx]
        val_paths, val_labels = [paths[i] for i in sorted(val_idx)], [labels[i] for i in sorted(val_idx)]
        record["val"] = {"fraction": val_fraction, "seed": seed,
                         "files": [p.relative_to(images.root).as_posix() for p in val_paths]}
    train_labels = [labels[i] for i in train_idx]
    hint = "" if val_data is not None else " after the split (add images, or change --val-fraction)"
    for name, split_labels in (("train", train_labels), ("val", val_labels)):
        empty = [c for k, c in enumerate(images.classes) if k not in set(split_labels)]
        if empty:
            raise ValueError(f"class {empty[0]!r} has no image in the {name} split{hint}")
    chosen = (stratified_subset(train_labels, label_fraction, seed) if label_fraction < 1
              else list(range(len(train_idx))))
    train_paths = [paths[train_idx[i]] for i in chosen]
    record["label_subset"] = {"fraction": label_fraction, "seed": seed, "count": len(chosen),
                              "files": [p.relative_to(images.root).as_posix() for p in train_paths]}
    record["data"] = str(data)
    return Task("classify", images.classes,
                FolderSplit(train_paths, torch.tensor([train_labels[i] for i in chosen]), image_size),
                FolderSplit(list(val_paths), torch.tensor(val_labels), image_size), record)


def scenes_task(image_size: int, train_images: int = 256, val_images: int = 128, label_stride: int = 4,
                label_fraction: float = 1.0, seed: int = 0, root: str | Path | None = None) -> Task:
    """Dense segmentation of the built-in scenes, the dense probe's splits; ``label_fraction``
    keeps a seeded subset of the train scenes (one stratum: a scene holds several classes)."""
    from pipelines.scenes import CLASSES
    if image_size % label_stride:
        raise ValueError(f"--image-size must be a multiple of {label_stride} (the label grid's stride), "
                         f"got {image_size}")
    if train_images < 1 or val_images < 1:
        raise ValueError(f"--train-images and --val-images must be at least 1, got {train_images}, {val_images}")
    train = probe_data.load_scenes_split("train", train_images, image_size, label_stride, 0, root)
    val = probe_data.load_scenes_split("val", val_images, image_size, label_stride, 0, root)
    chosen = stratified_subset([0] * train_images, label_fraction, seed)
    record = {"train_images": train_images, "val_images": val_images, "label_stride": label_stride,
              "label_subset": {"fraction": label_fraction, "seed": seed, "count": len(chosen), "indices": chosen}}
    return Task("segment", tuple(CLASSES), subset(SceneSplit(train), chosen), SceneSplit(val), record)


# --------------------------------------------------------------------------- the network

class FinetuneNet(nn.Module):
    """An encoder (anything with ``forward_stages``) and a two-layer head on its ``layer`` map:
    pooled then Linear-ReLU-Linear for ``classify``, 1x1 conv-ReLU-1x1 conv upsampled to
    ``label_size`` for ``segment``. Takes uint8 NHWC images and normalises them itself."""

    def __init__(self, encoder: nn.Module, layer: str, channels: int, num_classes: int, kind: str,
                 hidden_dim: int = 512, label_size: int | None = None):
        super().__init__()
        if kind not in TASKS:
            raise ValueError(f"unknown task {kind!r}; choose one of {TASKS}")
        self.encoder, self.layer, self.kind, self.label_size = encoder, layer, kind, label_size
        self.mean, self.std = probe_encoders.input_stats(encoder)
        if kind == "classify":
            self.head = nn.Sequential(nn.Linear(channels, hidden_dim), nn.ReLU(inplace=True),
                                      nn.Linear(hidden_dim, num_classes))
        else:
            self.head = nn.Sequential(nn.Conv2d(channels, hidden_dim, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(hidden_dim, num_classes, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = probe_encoders.normalise(images, self.mean, self.std).to(next(self.head.parameters()).device)
        return self.encoder.forward_stages(x)[self.layer]

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        if self.kind == "classify":
            return self.head(feats.float().mean((2, 3)))
        logits = self.head(feats.float())
        size = (self.label_size, self.label_size)
        return logits if logits.shape[-2:] == size else F.interpolate(logits, size=size, mode="bilinear",
                                                                      align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))


def inner_encoder(encoder: nn.Module) -> nn.Module:
    """The trunk itself, without the :class:`probe_encoders.MethodInput` wrapper."""
    return encoder.encoder if isinstance(encoder, probe_encoders.MethodInput) else encoder


def build_network(encoder: nn.Module, task: Task, hidden_dim: int, image_size: int, seed: int,
                  label_stride: int = 4) -> FinetuneNet:
    """``encoder`` (probe-ready) with a head seeded by ``seed``; the map is layer4 of a ResNet,
    the final tokens of a ViT. The channel count comes from one blank image."""
    layer = probe_encoders.default_layers(encoder, ("layer4",), ("tokens",))[0]
    blank = probe.extract_features(encoder, torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8), (layer,))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FinetuneNet(encoder, layer, blank[layer].shape[1], len(task.classes), task.kind, hidden_dim,
                           image_size // label_stride if task.kind == "segment" else None)


# --------------------------------------------------------------------------- training

@dataclass(frozen=True)
class Stage:
    name: str
    lr: float
    epochs: int
    freeze_encoder: bool


def protocol_stages(cfg: FinetuneConfig, pretrained: bool) -> list[Stage]:
    """head then fine-tune for a pretrained encoder; one whole-network stage (``scratch_epochs``
    at ``head_lr``) for the supervised baseline."""
    if not pretrained:
        return [Stage("scratch", cfg.head_lr, cfg.scratch_epochs, False)]
    return [Stage("head", cfg.head_lr, cfg.head_epochs, True),
            Stage("finetune", cfg.finetune_lr, cfg.finetune_epochs, False)]


def train_stage(net: FinetuneNet, train, stage: Stage, batch_size: int, weight_decay: float, seed: int,
                log=None, resume: dict | None = None, on_epoch=None) -> list[float]:
    """Train ``net`` for ``stage.epochs`` on ``train``; the mean loss of each epoch.

    With ``freeze_encoder`` only the head learns: the encoder runs without gradient in eval
    mode, so its weights and BatchNorm statistics stay as they were. ``on_epoch(point)`` gets
    a resume point after every epoch (:func:`resume_point`); ``resume``, such a point, goes
    on from there as if the run had not stopped (``net`` already holds its weights)."""
    from .checkpoint import set_rng_state
    gen = torch.Generator()
    params = list(net.head.parameters()) if stage.freeze_encoder else list(net.parameters())
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=weight_decay)
    if resume is None:
        torch.manual_seed(seed)
        gen.manual_seed(seed)
        losses, first = [], 0
    else:
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["batch_order"])
        set_rng_state(resume["rng"])
        losses, first = list(resume["losses"]), int(resume["epoch"])
    net.train()
    if stage.freeze_encoder:
        net.encoder.eval()
    for epoch in range(first, stage.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            images, labels = train.batch(order[start:start + batch_size])
            labels = labels.to(next(net.head.parameters()).device)
            if stage.freeze_encoder:
                with torch.no_grad():
                    feats = net.features(images)
                logits = net.classify(feats)
            else:
                logits = net(images)
            loss = F.cross_entropy(logits, labels, ignore_index=probe_data.IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(images), count + len(images)
        losses.append(total / count)
        if log is not None:
            log(f"{stage.name} epoch {epoch + 1}/{stage.epochs}: loss {losses[-1]:.4f}")
        if on_epoch is not None:
            on_epoch(resume_point(net, opt, gen, stage, epoch + 1, losses))
    return losses


def resume_point(net: FinetuneNet, opt, gen: torch.Generator, stage: Stage, epoch: int, losses: list[float]) -> dict:
    """What a stage needs to go on after ``epoch`` epochs: tensors, numbers and strings only,
    so it loads weights-only."""
    from .checkpoint import rng_state
    return {"stage": stage.name, "epoch": epoch, "losses": list(losses),
            "net": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "optimizer": opt.state_dict(), "batch_order": gen.get_state(), "rng": rng_state()}


def run_protocol(net: FinetuneNet, train, cfg: FinetuneConfig, pretrained: bool, log=None,
                 after_stage=None, resume: dict | None = None, on_epoch=None) -> dict[str, list[float]]:
    """Every stage of :func:`protocol_stages` in turn (one with 0 epochs is skipped); each
    stage's epoch losses. ``after_stage(stage)`` runs after each stage that trained.

    ``resume`` (a point ``on_epoch`` was given, plus ``"done"``: the losses of the stages
    finished before it) loads its weights into ``net`` and goes on from there."""
    stages = [s for s in protocol_stages(cfg, pretrained) if s.epochs]
    losses = {}
    first = 0
    if resume is not None:
        names = [s.name for s in stages]
        if resume["stage"] not in names:
            raise ValueError(f"the saved run stopped in stage {resume['stage']!r}, which these settings do not run")
        first = names.index(resume["stage"])
        losses = dict(resume.get("done", {}))
        net.load_state_dict(resume["net"])
    for i, stage in enumerate(stages):
        if i < first:
            continue

        def saved(point, done=dict(losses)):
            if on_epoch is not None:
                on_epoch({**point, "done": done})
        losses[stage.name] = train_stage(net, train, stage, cfg.batch_size, cfg.weight_decay, cfg.seed, log,
                                         resume if i == first else None, saved)
        if after_stage is not None:
            after_stage(stage)
    return losses


@torch.no_grad()
def evaluate(net: FinetuneNet, val, num_classes: int, kind: str, batch_size: int = 32) -> dict[str, float]:
    """top-1 accuracy (classify) or mIoU and pixel accuracy (segment) on ``val``, eval mode."""
    was = net.training
    net.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    try:
        for start in range(0, len(val), batch_size):
            images, labels = val.batch(list(range(start, min(start + batch_size, len(val)))))
            conf += segmentation_metrics.confusion_matrix(net(images).argmax(1).cpu(), labels, num_classes)
    finally:
        net.train(was)
    if kind == "classify":
        return {"top1": segmentation_metrics.pixel_accuracy(conf)}
    return {"miou": segmentation_metrics.mean_iou(conf), "pixel_accuracy": segmentation_metrics.pixel_accuracy(conf),
            "iou": segmentation_metrics.iou_per_class(conf)}


# --------------------------------------------------------------------------- the encoder and its export

def load_start(checkpoint: str | Path | None, arch: str | None, seed: int) -> tuple[nn.Module, str, dict, bool]:
    """(probe-ready encoder, arch, pretraining config, pretrained?) from a checkpoint, or a
    random init of ``arch`` seeded with ``seed``, with the checkpoint loaders of the probe."""
    if checkpoint is not None:
        enc, arch, saved = probe_encoders.encoder_from_checkpoint(checkpoint, arch)
        return probe_encoders.probe_ready(enc, saved.get("method"), *probe_encoders.recipe_stats(saved)), arch, saved, True
    if arch is None:
        raise ValueError("--random-init needs --arch")
    return probe_encoders.random_encoder(arch, seed), arch, {"arch": arch}, False


def export_finetuned(net: FinetuneNet, arch: str, pretrain_config: dict, out_dir: Path) -> list[Path]:
    """The fine-tuned encoder as ``encoder.safetensors`` (the export format, so
    :func:`pixpro_fast.load_encoder` reads it) and the head's state_dict as ``head.pt``."""
    from safetensors.torch import save_file

    from .checkpoint import save_atomic
    from .export import SAFETENSORS_NAME, encoder_export
    state = {f"online.encoder.{k}": v for k, v in inner_encoder(net.encoder).state_dict().items()}
    config = {k: pretrain_config[k] for k in ("recipe", "method", "image_size") if k in pretrain_config}
    tensors, meta = encoder_export({"model": state, "config": {**config, "arch": arch}}, "the fine-tuned network")
    meta["finetuned"] = "true"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SAFETENSORS_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    head = save_atomic({k: v.detach().cpu() for k, v in net.head.state_dict().items()}, out_dir / "head.pt")
    return [path, head]


# --------------------------------------------------------------------------- command line

def add_protocol_options(ap, sizes_prefix: str = "", scratch_epochs: int | None = FinetuneConfig.scratch_epochs,
                         scratch_help: str = "epochs of the --random-init run",
                         image_size: int | None = FinetuneConfig.image_size,
                         image_help: str = "side of the (centre-cropped) images") -> None:
    """The protocol's options, the survey's numbers as defaults: declared once, for ``train.py
    finetune`` and the fine-tuning table. ``sizes_prefix`` (``ft-``) names the batch and image
    size flags where a command's own ``--batch-size`` and ``--image-size`` mean something else."""
    d = FinetuneConfig()
    ap.add_argument("--head-lr", type=float, default=d.head_lr, help="AdamW lr of the head stage (and of scratch)")
    ap.add_argument("--head-epochs", type=int, default=d.head_epochs, help="epochs of the head stage")
    ap.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help="AdamW lr of the whole-network stage")
    ap.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs, help="epochs of the whole-network stage")
    ap.add_argument("--scratch-epochs", type=int, default=scratch_epochs, help=scratch_help)
    ap.add_argument(f"--{sizes_prefix}batch-size", type=int, default=d.batch_size, help="images per step")
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    ap.add_argument("--hidden-dim", type=int, default=d.hidden_dim, help="width of the head's first layer")
    ap.add_argument(f"--{sizes_prefix}image-size", type=int, default=image_size, help=image_help)


def protocol_config(args, label_fraction: float, seed: int, sizes_prefix: str = "") -> FinetuneConfig:
    """The :class:`FinetuneConfig` of :func:`add_protocol_options`' flags (ValueError naming a bad one)."""
    size = sizes_prefix.replace("-", "_")
    return FinetuneConfig(args.head_lr, args.head_epochs, args.finetune_lr, args.finetune_epochs,
                          args.scratch_epochs, getattr(args, f"{size}batch_size"), args.weight_decay,
                          args.hidden_dim, getattr(args, f"{size}image_size"), label_fraction, seed)


def finetune_command(argv: list[str]) -> int:
    from .cli import _Parser, error_line
    from .training import resolve_device
    d = FinetuneConfig()
    ap = _Parser(prog="train.py finetune", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                 description="Supervised evaluation: train a two-layer head on the frozen encoder of --checkpoint, "
                             "then fine-tune the whole network at a lower rate; or, with --random-init, train the "
                             "same network from random weights (--scratch-epochs at --head-lr, no head stage). "
                             "Classification of an ImageFolder (--data; top-1) or, without --data, segmentation "
                             "of the built-in scenes (mIoU, pixel accuracy).")
    ap.add_argument("--checkpoint", help="training checkpoint whose online encoder is fine-tuned")
    ap.add_argument("--random-init", action="store_true", help="the supervised baseline: a random encoder of --arch")
    ap.add_argument("--arch", help="encoder arch (required with --random-init; checked against a checkpoint)")
    ap.add_argument("--data", help="ImageFolder of labelled images (class = sub-folder); none: the scenes")
    ap.add_argument("--val-data",
                    help="held-out ImageFolder with the same classes; none: drawn from --data by --val-fraction")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of each class of --data held out when no --val-data is given (seeded)")
    ap.add_argument("--train-images", type=int, default=256, help="scenes to train on (segmentation)")
    ap.add_argument("--val-images", type=int, default=128, help="scenes to score on (segmentation)")
    ap.add_argument("--label-fraction", type=float, default=d.label_fraction,
                    help="train on a stratified, seeded subset of this share of the labelled train split")
    add_protocol_options(ap)
    ap.add_argument("--seed", type=int, default=d.seed,
                    help="seed of the subsets, the head, batch order (and a random init)")
    ap.add_argument("--device", default="cpu", help="where the network trains (auto: a GPU when there is one)")
    ap.add_argument("--out", required=True, help="output folder: results.json, encoder.safetensors, head.pt")
    ap.add_argument("--resume", action="store_true",
                    help=f"go on from the {STATE_NAME} an interrupted run with the same settings left in --out")
    args = ap.parse_args(argv)
    if bool(args.checkpoint) == bool(args.random_init):
        ap.error("give --checkpoint PATH, or --random-init with --arch")
    if args.val_data and not args.data:
        ap.error("--val-data needs --data (without --data the task is the scenes, with their own val split)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out} is a file; give a folder")
    try:
        cfg = protocol_config(args, args.label_fraction, args.seed)
        device = resolve_device(args.device)
        encoder, arch, saved, pretrained = load_start(args.checkpoint, args.arch, args.seed)
        if args.data:
            task = folder_task(args.data, cfg.image_size, cfg.label_fraction, cfg.seed, args.val_data,
                               args.val_fraction)
        else:
            task = scenes_task(cfg.image_size, args.train_images, args.val_images, 4, cfg.label_fraction, cfg.seed)
        net = build_network(encoder, task, cfg.hidden_dim, cfg.image_size, cfg.seed).to(device)
        identity = {"config": asdict(cfg), "checkpoint": args.checkpoint, "arch": arch, "data": args.data,
                    "val_data": args.val_data, "val_fraction": args.val_fraction, "train_images": args.train_images,
                    "val_images": args.val_images}
        resume = load_resume_state(out, identity) if args.resume else None
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2

    def log(line):
        print(line, file=sys.stderr)
    metrics = dict(resume["metrics"]) if resume else {}

    def save(point):
        from .checkpoint import save_atomic
        out.mkdir(parents=True, exist_ok=True)
        save_atomic({"identity": identity, "metrics": dict(metrics), "point": point}, out / STATE_NAME)

    def score(stage):
        metrics[stage.name] = evaluate(net, task.val, len(task.classes), task.kind)
        log(f"after {stage.name}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics[stage.name].items()
                                                 if isinstance(v, float)))
    log(f"finetune: {task.kind}, {len(task.train)} train / {len(task.val)} val, {arch} "
        f"{'pretrained' if pretrained else 'random init'}")
    t0 = time.perf_counter()
    if resume:
        log(f"resuming in stage {resume['point']['stage']} after epoch {resume['point']['epoch']}")
    losses = run_protocol(net, task.train, cfg, pretrained, log, score, resume and resume["point"], save)
    seconds = time.perf_counter() - t0
    final = metrics[list(metrics)[-1]] if metrics else evaluate(net, task.val, len(task.classes), task.kind)
    paths = export_finetuned(net.cpu(), arch, saved, out)
    payload = {"task": task.kind, "arch": arch, "pretrained": pretrained, "checkpoint": args.checkpoint,
               "config": asdict(cfg), "classes": list(task.classes), "train_count": len(task.train),
               "val_count": len(task.val), **task.record,
               "stages": [asdict(s) for s in protocol_stages(cfg, pretrained) if s.epochs],
               "losses": losses, "metrics_after_stage": metrics, "final": final, "seconds": seconds,
               "files": [p.name for p in paths]}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(", ".join(f"{k} {100 * v:.2f}" for k, v in final.items() if isinstance(v, float)))
    (out / STATE_NAME).unlink(missing_ok=True)
    log(f"wrote {out / 'results.json'}")
    return 0


def load_resume_state(out: Path, identity: dict) -> dict:
    """The state an interrupted run left in ``out``; ValueError naming the first setting that
    differs from ``identity`` (a resumed run must be the same computation)."""
    from .checkpoint import safe_load
    path = out / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {STATE_NAME} in {out} (the run finished, or never started)")
    state = safe_load(path, "fine-tuning state")
    saved = state.get("identity", {}) if isinstance(state, dict) else {}
    flat_saved, flat_now = {**saved.get("config", {}), **saved}, {**identity["config"], **identity}
    for key in flat_now:
        if key != "config" and flat_saved.get(key) != flat_now[key]:
            raise ValueError(f"--resume: {key} was {flat_saved.get(key)!r} in the saved run, now {flat_now[key]!r}; "
                             f"give the same settings, or drop --resume to start again")
    return state
