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

Everything is deterministic for a fixed ``seed`` on a given machine. The data is
:mod:`.probe_data`'s, the scores :mod:`.segmentation_metrics`', the encoders and their
input :mod:`.probe_encoders`', the command line :mod:`.eval_cli`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD

from .probe_data import IGNORE_INDEX, ProbeSplit, load_probe_data
from .probe_encoders import default_layers, input_stats, normalise, probe_ready
from .segmentation_metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

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
