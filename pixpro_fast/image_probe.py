"""Image classification with a frozen encoder: k-NN and a linear classifier on pooled features.

The encoder runs once per image in eval mode (as the dense probe runs it, see
:func:`probe.extract_features`); each chosen map is averaged over positions and the maps
concatenated. Two classifiers of the val images, scored by top-1 accuracy:

- k-NN as solo-learn and lightly report it: cosine similarity to every train feature, the
  ``k`` (20) most similar vote for their class with weight ``exp(sim / T)`` (T 0.07), the
  class with the largest summed weight wins;
- linear: features standardised with train statistics, one linear layer, cross-entropy,
  Adam, full batch, a fixed number of steps from a seeded initialisation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import probe


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 256) -> torch.Tensor:
    """The class of every query row: temperature-weighted votes of its ``k`` nearest train rows
    by cosine similarity (weights ``exp(sim / temperature)``, summed per class, argmax)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be at least 1 and temperature positive, got k={k}, temperature={temperature}")
    bank = F.normalize(train_feats.double(), dim=1)
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(query_feats), chunk):
        sim = F.normalize(query_feats[start:start + chunk].double(), dim=1) @ bank.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, train_labels[idx].long(), (top / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def train_linear(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int, steps: int = 1000,
                 lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> nn.Module:
    """A linear classifier of standardised features (the standardisation folded into it)."""
    mean = train_feats.mean(0)
    std = train_feats.std(0).clamp_min(1e-6) if len(train_feats) > 1 else torch.ones_like(mean)
    x = (train_feats - mean) / std
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(linear(x), train_labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():   # W((f - m) / s) + b == (W / s) f + (b - W (m / s))
        folded = nn.Linear(x.shape[1], num_classes)
        folded.weight.copy_(linear.weight / std)
        folded.bias.copy_(linear.bias - linear.weight @ (mean / std))
    return folded.eval()


def pooled_features(encoder: nn.Module, images: torch.Tensor, layers: tuple[str, ...], batch_size: int = 32,
                    device="cpu") -> torch.Tensor:
    """(N, sum C): each map of ``layers`` averaged over positions, concatenated."""
    maps = probe.extract_features(encoder, images, layers, batch_size, device)
    return torch.cat([maps[name].mean((2, 3)) for name in layers], dim=1)


@dataclass
class ImageProbeResult:
    name: str
    knn_top1: float
    linear_top1: float
    k: int
    temperature: float
    layers: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_images(encoder: nn.Module, train, val, num_classes: int, layers: tuple[str, ...], name: str = "encoder",
                    k: int = 20, temperature: float = 0.07, steps: int = 1000, lr: float = 1e-2, seed: int = 0,
                    device="cpu") -> ImageProbeResult:
    """k-NN and linear top-1 of ``val`` from frozen features; ``train`` and ``val`` offer
    ``batch(indices) -> (uint8 NHWC images, labels)`` (see :class:`finetune.FolderSplit`)."""
    train_images, train_labels = train.batch(list(range(len(train))))
    val_images, val_labels = val.batch(list(range(len(val))))
    f_train = pooled_features(encoder, train_images, layers, device=device)
    f_val = pooled_features(encoder, val_images, layers, device=device)
    knn, linear = classify_features(f_train, train_labels, f_val, val_labels, num_classes, k, temperature, steps,
                                    lr, seed)
    return ImageProbeResult(name, knn, linear, k, temperature, list(layers))


def classify_features(f_train: torch.Tensor, train_labels: torch.Tensor, f_val: torch.Tensor,
                      val_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                      steps: int = 1000, lr: float = 1e-2, seed: int = 0) -> tuple[float, float]:
    """(k-NN top-1, linear top-1) of the val features from the train features."""
    knn = knn_classify(f_train, train_labels, f_val, num_classes, k, temperature)
    with probe.single_thread():
        linear = train_linear(f_train, train_labels, num_classes, steps, lr, seed=seed)
        with torch.no_grad():
            lin = linear(f_val).argmax(1)
    return float((knn == val_labels).double().mean()), float((lin == val_labels).double().mean())


def format_image_table(results: list[ImageProbeResult]) -> str:
    lines = [f"{'encoder':<28} {'k-NN top-1':>11} {'linear top-1':>13}"]
    lines += [f"{r.name:<28} {100 * r.knn_top1:11.2f} {100 * r.linear_top1:13.2f}" for r in results]
    return "\n".join(lines)
