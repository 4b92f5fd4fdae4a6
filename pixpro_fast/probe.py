"""Dense linear probe: does a frozen encoder tell the scenes' shapes apart, pixel by pixel?

Protocol (built-in scenes, :mod:`pipelines.scenes`):

- Images: shorter side resized to ``image_size`` and centre-cropped to a square (bilinear,
  antialiased), normalised with the mean and std the encoder was pretrained with (its
  recipe's, which :func:`probe_ready` attaches; ImageNet's for an encoder without them).
  Labels: the same square window resized with nearest-neighbour straight to ``image_size / label_stride`` (default stride 4), so the
  probe is scored on a label grid four times coarser than the input, like the
  stride-4 outputs of common segmentation heads.
- Features: the frozen encoder runs once per image in eval mode (BatchNorm running
  statistics) and the chosen stage maps (``layer4``, optionally ``layer3``, ...) are kept
  in memory at their native resolution, standardised per channel with train-split
  statistics (a fixed affine map: it changes no linear decision, it only makes one small
  optimisation budget fit every encoder).
- Classifier: a 1x1 convolution on the stage maps upsampled bilinearly to the label grid,
  concatenated. Upsampling and a 1x1 convolution are both linear and the bilinear weights
  sum to one, so the two commute: the classifier is applied at native resolution and only
  its K-channel logits are upsampled, which is exactly the same function and far cheaper.
  Cross-entropy, Adam, a fixed number of steps on mini-batches drawn from a fixed random
  sample of train pixels (``pixels_per_image`` label-grid positions per train image).
- Metrics on the val split (its scenes are drawn from another random stream): pixel
  accuracy and mean IoU over the classes that occur in the val ground truth, background
  included. A class absent from the ground truth is left out of the mean (its IoU is
  undefined or 0/0); its false positives still count against the classes they cover.

Everything is deterministic for a fixed ``seed`` on a given machine.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from pipelines import colour
from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD

from .encoder import build_trunk, trunk_shape

IGNORE_INDEX = 255
STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class ProbeConfig:
    image_size: int = 224
    label_stride: int = 4
    layers: tuple[str, ...] = ("layer4",)
    train_images: int = 256
    val_images: int = 128
    steps: int = 1000
    batch_size: int = 4096        # pixels per probe step
    pixels_per_image: int = 128   # training pixels drawn once per train image
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0
    scenes_seed: int = 0          # which generated scenes dataset (pipelines.scenes seed)
    feature_batch: int = 32

    def __post_init__(self):
        for name in ("label_stride", "train_images", "val_images", "steps", "batch_size", "pixels_per_image",
                     "feature_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size < 32 or self.image_size % self.label_stride:
            raise ValueError(f"image_size must be at least 32 and a multiple of label_stride={self.label_stride}, "
                             f"got {self.image_size}")
        if not self.layers:
            raise ValueError("layers must name at least one feature map")

    @property
    def label_size(self) -> int:
        return self.image_size // self.label_stride


# --------------------------------------------------------------------------- data

@dataclass
class ProbeSplit:
    """uint8 images (N, S, S, 3) and int64 label maps (N, S/stride, S/stride)."""
    images: torch.Tensor
    labels: torch.Tensor


def square_window(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square of side min(width, height), as a PIL box."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_scene(image_path: str | Path, image_size: int, label_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene resized (shorter side) and centre-cropped: (S, S, 3) uint8 image, (L, L) uint8 labels."""
    from pipelines.scenes import load_label_map
    with Image.open(image_path) as im:
        im = im.convert("RGB")
        box = square_window(*im.size)
        image = np.asarray(im.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))
    labels = Image.fromarray(load_label_map(image_path))
    if labels.size != im.size:
        raise ValueError(f"label map of {image_path} is {labels.size}, the image {im.size}")
    labels = np.asarray(labels.resize((label_size, label_size), Image.Resampling.NEAREST, box=box))
    return image, labels


def load_scenes_split(split: str, n_images: int, image_size: int, label_stride: int = 4, scenes_seed: int = 0,
                      root: str | Path | None = None) -> ProbeSplit:
    """The first ``n_images`` scenes of ``split`` ('train' or 'val'), generated on first use."""
    from pipelines.scenes import ensure_scenes
    folder = ensure_scenes(n_images=n_images, seed=scenes_seed, root=root, split=split)
    names = json.loads((folder / "manifest.json").read_text())["images"]
    label_size = image_size // label_stride
    images = np.empty((n_images, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty((n_images, label_size, label_size), dtype=np.uint8)
    for i, name in enumerate(names[:n_images]):
        images[i], labels[i] = load_scene(folder / name, image_size, label_size)
    return ProbeSplit(torch.from_numpy(images), torch.from_numpy(labels).long())


def load_probe_data(cfg: ProbeConfig, root: str | Path | None = None) -> tuple[ProbeSplit, ProbeSplit]:
    return (load_scenes_split("train", cfg.train_images, cfg.image_size, cfg.label_stride, cfg.scenes_seed, root),
            load_scenes_split("val", cfg.val_images, cfg.image_size, cfg.label_stride, cfg.scenes_seed, root))


def normalise(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 NHWC -> float NCHW (channels-last memory), ``(x / 255 - mean) / std``."""
    return colour.normalise_uint8(images.permute(0, 3, 1, 2), mean, std)


def unnormalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The inverse of :func:`normalise`'s affine map: float NCHW on the 0..1 scale."""
    return colour.unnormalise(x, mean, std)


def input_stats(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the probe normalises ``encoder``'s images with: those a
    :class:`MethodInput` carries, else ImageNet's."""
    if isinstance(encoder, MethodInput):
        return encoder.mean, encoder.std
    return IMAGENET_MEAN, IMAGENET_STD


def recipe_stats(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a pretraining run normalised its views with: its recipe's, from a
    TrainConfig or the config dict a checkpoint holds (ImageNet's when it records none)."""
    from pipelines.recipe import get_recipe
    name = config.get("recipe") if isinstance(config, dict) else getattr(config, "recipe", None)
    if name is None:
        return IMAGENET_MEAN, IMAGENET_STD
    recipe = get_recipe(name)
    return recipe.mean, recipe.std


# --------------------------------------------------------------------------- features

class PixelColour(nn.Module):
    """A stand-in encoder whose only "feature" is the normalised colour, averaged over each
    4x4 cell: the floor a probe must clear to show it learned more than colour."""

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": F.avg_pool2d(x, 4)}


def check_feature_maps(encoder: nn.Module, layers: tuple[str, ...], image_size: int) -> None:
    """ValueError naming the problem unless ``encoder`` takes ``image_size`` px images and gives
    every map of ``layers`` (one blank image through it)."""
    extract_features(encoder, torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8), layers)


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, layers: tuple[str, ...], batch_size: int = 32,
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Run ``encoder.forward_stages`` in eval mode over uint8 NHWC ``images`` normalised with
    its :func:`input_stats`; float32 CPU maps."""
    mean, std = input_stats(encoder)
    was_training = encoder.training
    encoder.eval()
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    try:
        for start in range(0, len(images), batch_size):
            x = normalise(images[start:start + batch_size], mean, std).to(device)
            stages = encoder.forward_stages(x)
            for name in layers:
                if name not in stages:
                    raise ValueError(f"the encoder has no feature map {name!r}; it offers {sorted(stages)}")
                out[name].append(stages[name].float().cpu())
    finally:
        encoder.train(was_training)
    return {name: torch.cat(maps) for name, maps in out.items()}


def channel_stats(features: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std over images and positions (std floored so dead channels stay 0)."""
    stats = {}
    for name, f in features.items():
        flat = f.transpose(0, 1).reshape(f.shape[1], -1).double()
        mean, std = flat.mean(1), flat.std(1)
        stats[name] = (mean.float().view(1, -1, 1, 1), std.clamp_min(1e-6).float().view(1, -1, 1, 1))
    return stats


def standardise(features: dict[str, torch.Tensor], stats) -> dict[str, torch.Tensor]:
    return {name: (f - stats[name][0]) / stats[name][1] for name, f in features.items()}


# --------------------------------------------------------------------------- the classifier

class LinearProbe(nn.Module):
    """A 1x1 convolution over the concatenation of bilinearly upsampled feature maps,
    computed as per-map 1x1 convolutions whose logits are upsampled and summed (the same
    function, see the module docstring)."""

    def __init__(self, channels: dict[str, int], num_classes: int):
        super().__init__()
        self.names = list(channels)
        self.heads = nn.ModuleDict({name: nn.Conv2d(c, num_classes, 1, bias=False) for name, c in channels.items()})
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, features: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        logits = self.bias.view(1, -1, 1, 1)
        for name in self.names:
            z = self.heads[name](features[name])
            if z.shape[-2:] != (size, size):
                z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
            logits = logits + z
        return logits


def sample_pixels(features: dict[str, torch.Tensor], labels: torch.Tensor, per_image: int,
                  gen: torch.Generator, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pixels: ``per_image`` random label-grid positions of every image (ignored
    pixels dropped), with the bilinearly upsampled features there: X (P, sum C), y (P,)."""
    n, size = len(labels), labels.shape[-1]
    per_image = min(per_image, size * size)
    names = list(features)
    xs, ys = [], []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        up = torch.cat([F.interpolate(features[k][start:stop], size=(size, size), mode="bilinear",
                                      align_corners=False) if features[k].shape[-1] != size else features[k][start:stop]
                        for k in names], dim=1).flatten(2)                                  # (b, C, L*L)
        pos = torch.stack([torch.randperm(size * size, generator=gen)[:per_image] for _ in range(stop - start)])
        x = torch.gather(up, 2, pos.unsqueeze(1).expand(-1, up.shape[1], -1))               # (b, C, per_image)
        y = torch.gather(labels[start:stop].flatten(1), 1, pos)
        xs.append(x.transpose(1, 2).reshape(-1, up.shape[1]))
        ys.append(y.reshape(-1))
    x, y = torch.cat(xs), torch.cat(ys)
    keep = y != IGNORE_INDEX
    return x[keep], y[keep]


@contextlib.contextmanager
def single_thread():
    """Run small tensor ops on one thread: for matrices this small, a second intra-op
    thread only adds synchronisation, which on a busy machine costs far more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_probe(features: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, steps: int,
                batch_size: int = 4096, lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0,
                pixels_per_image: int = 128) -> LinearProbe:
    """Fit a :class:`LinearProbe` on (already standardised) features against label maps.

    The classifier is trained on a fixed random sample of pixels (features upsampled to
    the label grid at those positions, held as one matrix), in mini-batches of pixels:
    the same model as the dense one, at a fraction of the cost per step."""
    gen = torch.Generator().manual_seed(seed)
    x, y = sample_pixels(features, labels, pixels_per_image, gen)
    if len(y) == 0:
        raise ValueError("no labelled pixels to train the probe on")
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    with single_thread():
        for _ in range(steps):
            idx = torch.randint(len(y), (min(batch_size, len(y)),), generator=gen)
            loss = F.cross_entropy(linear(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    probe = LinearProbe({k: v.shape[1] for k, v in features.items()}, num_classes)
    with torch.no_grad():
        offset = 0
        for k, v in features.items():
            c = v.shape[1]
            probe.heads[k].weight.copy_(linear.weight[:, offset:offset + c].view(num_classes, c, 1, 1))
            offset += c
        probe.bias.copy_(linear.bias)
    probe.eval()
    return probe


@torch.no_grad()
def predict(probe: LinearProbe, features: dict[str, torch.Tensor], size: int, batch_size: int = 64) -> torch.Tensor:
    n = len(next(iter(features.values())))
    return torch.cat([probe({k: v[i:i + batch_size] for k, v in features.items()}, size).argmax(1)
                      for i in range(0, n, batch_size)])


# --------------------------------------------------------------------------- metrics

def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; IGNORE_INDEX pixels skipped."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != IGNORE_INDEX
    pred, target = pred[keep], target[keep]
    if len(target) and (target.min() < 0 or target.max() >= num_classes or pred.min() < 0
                        or pred.max() >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor) -> list[float | None]:
    """IoU = TP / (TP + FP + FN) per class; None for a class with no ground-truth pixels."""
    conf = conf.double()
    tp = conf.diag()
    gt, predicted = conf.sum(1), conf.sum(0)
    return [None if gt[c] == 0 else float(tp[c] / (gt[c] + predicted[c] - tp[c])) for c in range(len(conf))]


def mean_iou(conf: torch.Tensor) -> float:
    present = [v for v in iou_per_class(conf) if v is not None]
    if not present:
        raise ValueError("the confusion matrix holds no ground-truth pixels")
    return sum(present) / len(present)


def pixel_accuracy(conf: torch.Tensor) -> float:
    total = int(conf.sum())
    if total == 0:
        raise ValueError("the confusion matrix holds no ground-truth pixels")
    return float(conf.diag().sum()) / total


# --------------------------------------------------------------------------- evaluation

@dataclass
class ProbeResult:
    name: str
    miou: float
    pixel_accuracy: float
    iou: list[float | None]
    classes: list[str]
    layers: list[str]
    feature_seconds: float
    probe_seconds: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_features(train_feats: dict[str, torch.Tensor], train_labels: torch.Tensor,
                      val_feats: dict[str, torch.Tensor], val_labels: torch.Tensor, num_classes: int,
                      cfg: ProbeConfig) -> tuple[torch.Tensor, LinearProbe]:
    """Standardise, train the probe, return the val confusion matrix (and the probe)."""
    stats = channel_stats(train_feats)
    train_feats, val_feats = standardise(train_feats, stats), standardise(val_feats, stats)
    probe = train_probe(train_feats, train_labels, num_classes, cfg.steps, cfg.batch_size, cfg.lr,
                        cfg.weight_decay, cfg.seed, cfg.pixels_per_image)
    pred = predict(probe, val_feats, val_labels.shape[-1])
    return confusion_matrix(pred, val_labels, num_classes), probe


def evaluate_encoder(encoder: nn.Module, train: ProbeSplit, val: ProbeSplit, cfg: ProbeConfig, name: str = "encoder",
                     classes: tuple[str, ...] | None = None, layers: tuple[str, ...] | None = None,
                     device: str | torch.device = "cpu", probe_seeds: int = 1) -> ProbeResult:
    """Freeze ``encoder`` (it is not modified), probe it, score it on ``val``.

    ``probe_seeds`` > 1 retrains the linear probe with seeds ``cfg.seed`` .. ``cfg.seed + n - 1``
    on the same features (extracted once); the result is the first seed's, and
    ``extra["miou_per_seed"]`` holds every seed's mIoU."""
    from pipelines.scenes import CLASSES
    classes = tuple(classes or CLASSES)
    layers = tuple(layers or cfg.layers)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train_feats = extract_features(encoder, train.images, layers, cfg.feature_batch, device)
    val_feats = extract_features(encoder, val.images, layers, cfg.feature_batch, device)
    t1 = time.perf_counter()
    confs = [evaluate_features(train_feats, train.labels, val_feats, val.labels, len(classes),
                               dataclasses.replace(cfg, seed=cfg.seed + k))[0] for k in range(max(probe_seeds, 1))]
    t2 = time.perf_counter()
    conf = confs[0]
    extra = ({"probe_seeds": [cfg.seed + k for k in range(len(confs))], "miou_per_seed": [mean_iou(c) for c in confs]}
             if len(confs) > 1 else {})
    return ProbeResult(name, mean_iou(conf), pixel_accuracy(conf), iou_per_class(conf), list(classes), list(layers),
                       t1 - t0, t2 - t1, extra)


def gain_verdict(pretrained: list[float], random_init: list[float], metric: str = "mIoU",
                 baseline: str = "random init", seeds: str = "probe seed", more: str = "--probe-seeds 3") -> dict:
    """Is the pretrained encoder's gain over a baseline (random init) more than seed noise?

    Both lists hold one score (a fraction) per seed (the same seeds, in order). The gain is
    the mean of the per-seed differences; the noise is the combined seed-to-seed spread,
    sqrt(std(pretrained)^2 + std(baseline)^2) (sample std). Rule: distinguishable when
    |gain| > 2 x that spread; with one seed there is no spread, so no verdict. ``metric``,
    ``baseline``, ``seeds`` and ``more`` (how to get more seeds) word the line."""
    if len(pretrained) != len(random_init) or not pretrained:
        raise ValueError("need one score per seed for both encoders, at least one seed")
    gains = [p - r for p, r in zip(pretrained, random_init)]
    n = len(gains)
    mean = sum(gains) / n

    def std(xs):
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    spread = math.sqrt(std(pretrained) ** 2 + std(random_init) ** 2)
    head = (f"gain over {baseline}: {100 * mean:+.2f} +/- {100 * std(gains):.2f} {metric} points over {n} {seeds}"
            f"{'s' if n > 1 else ''} (min {100 * min(gains):+.2f}, max {100 * max(gains):+.2f})")
    if n < 2:
        distinguishable, said = None, f"one {seeds}: no spread to judge it against ({more})"
    elif abs(mean) > 2 * spread:
        distinguishable = True
        said = (f"{'better' if mean > 0 else 'worse'} than {baseline} beyond noise "
                f"(|gain| > 2 x combined seed spread {100 * spread:.2f})")
    else:
        distinguishable = False
        said = (f"within noise: not distinguishable from {baseline} "
                f"(|gain| <= 2 x combined seed spread {100 * spread:.2f})")
    return {"gain_mean": mean, "gain_std": std(gains), "gain_min": min(gains), "gain_max": max(gains),
            "combined_spread": spread, "seeds": n, "distinguishable": distinguishable, "line": f"{head}; {said}"}


# --------------------------------------------------------------------------- encoders

def encoder_from_checkpoint(path: str | Path, arch: str | None = None) -> tuple[nn.Module, str, dict]:
    """The online encoder of a training checkpoint: (encoder, arch, the checkpoint's config).

    ResNets (3 channels, or 1 for colorization's L channel) and ViTs (any native grid) are
    rebuilt from the shapes in the checkpoint. ``arch``, when given, must match the
    checkpoint's; a mismatch is an error, not a guess. The encoder takes what it took in
    training: wrap it with :func:`probe_ready` to feed it the probe's RGB images."""
    from .checkpoint import load_checkpoint
    from .encoder import state_dict_mismatch
    from .export import encoder_state_from_checkpoint
    ckpt = load_checkpoint(path)
    state = encoder_state_from_checkpoint(ckpt, path)
    config = ckpt.get("config") or {}
    saved_arch = config.get("arch")
    if saved_arch is None and arch is None:
        raise ValueError(f"{path} does not record its arch: pass --arch")
    if arch is not None and saved_arch is not None and arch != saved_arch:
        raise ValueError(f"arch mismatch: {path} holds a {saved_arch} encoder, but {arch} was requested")
    arch = arch or saved_arch
    encoder = build_trunk(arch, **trunk_shape(state, arch))
    mismatch = state_dict_mismatch(encoder.state_dict(), state)
    if mismatch:
        raise ValueError(f"the encoder in {path} does not fit {arch}: {mismatch}")
    encoder.load_state_dict(state)
    return encoder, arch, config


def random_encoder(arch: str, seed: int = 0, in_channels: int = 3, img_size: int = 224) -> nn.Module:
    """A randomly initialised encoder, as pretraining with ``seed`` starts it (ResNets with
    zero-initialised residual BN)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_trunk(arch, in_channels, img_size)


class MethodInput(nn.Module):
    """An encoder fed what its pretraining fed it: the probe's RGB normalised with the mean and
    std of the encoder's recipe (the probe normalises with them, see :func:`input_stats`), or,
    when its method has an ``encoder_input`` (RGB on 0..1 -> encoder input, e.g.
    colorization's scaled L channel), that function of the RGB on 0..1."""

    def __init__(self, encoder: nn.Module, encoder_input=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.encoder, self.encoder_input = encoder, encoder_input
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder_input is None:
            return self.encoder.forward_stages(x)
        return self.encoder.forward_stages(self.encoder_input(unnormalise(x, self.mean, self.std)))


def probe_ready(encoder: nn.Module, method: str | None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Module:
    """``encoder`` as the probe must run it: wrapped in :class:`MethodInput` when ``method``
    (a registry name) feeds its encoder something other than the normalised RGB views, or when
    its recipe's ``mean`` and ``std`` (see :func:`recipe_stats`) are not ImageNet's."""
    from .methods import METHODS
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    encoder_input = None if method is None else METHODS[method].cls.encoder_input
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if encoder_input is None and (mean, std) == (IMAGENET_MEAN, IMAGENET_STD):
        return encoder
    return MethodInput(encoder, encoder_input, mean, std)


def default_layers(encoder: nn.Module, resnet_layers: tuple[str, ...] = ("layer3", "layer4"),
                   vit_layers: tuple[str, ...] = ("tokens",)) -> tuple[str, ...]:
    """The maps probed by default: ``resnet_layers`` of a ResNet, ``vit_layers`` of a ViT."""
    from .vit import ViTEncoder
    inner = encoder.encoder if isinstance(encoder, MethodInput) else encoder
    return tuple(vit_layers) if isinstance(inner, ViTEncoder) else tuple(resnet_layers)


def weight_stage(name: str) -> str:
    """The stage a parameter belongs to: ``layer3`` of a ResNet, ``blocks.5`` or
    ``patch_embed`` of a ViT."""
    parts = name.split(".")
    if parts[0] != "vit":
        return parts[0]
    return ".".join(parts[1:3]) if parts[1] == "blocks" else parts[1]


@torch.no_grad()
def weight_turn(encoder: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Mean angle in degrees between each stage's convolution weights and the same weights
    of ``reference`` (the initialisation pretraining started from).

    Convolutions followed by BatchNorm are scale-invariant, so their direction, not their
    norm, is what training changes; a few degrees means the stage is still its random
    initialisation, whatever the loss curve says. A ViT's matrices (every weight of two or
    more dimensions but the position embedding) are grouped by block.
    """
    ref = dict(reference.named_parameters())
    angles: dict[str, list[float]] = {}
    for name, w in encoder.named_parameters():
        if w.dim() < 2 or name not in ref or name.endswith("pos_embed"):
            continue
        a, b = w.detach().double().flatten(), ref[name].detach().double().flatten()
        cos = (a @ b) / (a.norm() * b.norm()).clamp_min(1e-30)
        stage = weight_stage(name)
        angles.setdefault(stage, []).append(float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))))
    return {stage: sum(v) / len(v) for stage, v in angles.items()}


# --------------------------------------------------------------------------- online monitoring

class OnlineProbe:
    """A small cached probe for use during training: ``OnlineProbe(...)(encoder) -> mIoU``.

    The scenes are loaded once; each call deep-copies the encoder (so the training copy's
    mode, BatchNorm buffers and graph are untouched) and probes the copy without gradients."""

    def __init__(self, n_images: int = 64, image_size: int = 128, layers: tuple[str, ...] = ("layer4",),
                 steps: int = 200, device: str | torch.device = "cpu", root: str | Path | None = None,
                 method: str | None = None, vit_layers: tuple[str, ...] = ("tokens",),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = tuple(mean), tuple(std)
        self.cfg = ProbeConfig(image_size=image_size, layers=layers, train_images=n_images, val_images=n_images,
                               steps=steps)
        self.device, self.method, self.vit_layers = device, method, tuple(vit_layers)
        self.train, self.val = load_probe_data(self.cfg, root)

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        enc = probe_ready(copy.deepcopy(encoder).float(), self.method, self.mean, self.std)
        result = evaluate_encoder(enc, self.train, self.val, self.cfg, layers=default_layers(enc, self.cfg.layers,
                                                                                             self.vit_layers),
                                  device=self.device)
        return {"probe_miou": result.miou, "probe_pixel_accuracy": result.pixel_accuracy}


# --------------------------------------------------------------------------- command line

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
