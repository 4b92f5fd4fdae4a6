"""The instance-level pair losses SimCLR can train with (``pair_loss``), one function each.

Every loss takes this rank's projector outputs of the two views, ``z1`` and ``z2`` (n, d),
gathers both views from every rank with gradients, and returns the mean over this rank's
2n anchors (each embedding of either view is an anchor). With N images in the global
batch there are 2N embeddings; an anchor's positive is the other view of its image, its
negatives the 2N - 2 embeddings of the other images (both views), except for the N-pair
loss (below). Since every rank holds 2n anchors and each loss is a mean over anchors, the
mean over ranks equals the single-process loss on the concatenated batch, gradients
included (DDP averages them).

- ``infonce`` (NT-Xent): ``-log(e^{s(a,p)/t} / sum_{k != a} e^{s(a,k)/t})``, s the cosine.
- ``contrastive`` (Hadsell, Chopra, LeCun 2006), on L2-normalised embeddings with d the
  Euclidean distance (0..2): ``1/2 mean_pos d^2 + 1/2 mean_neg max(0, m - d)^2``, each
  term a mean over its own pairs (the N positive pairs, the 2N(N - 1) negative pairs), so
  that the many negatives do not drown the one positive per anchor.
- ``triplet_hard``: ``max(0, d(a,p) - min_n d(a,n) + m)`` per anchor, the hardest negative
  of the batch (batch-hard mining; there is one positive per anchor), mean over anchors;
  d the Euclidean distance between L2-normalised embeddings.
- ``triplet_all``: ``mean_n max(0, d(a,p) - d(a,n) + m)`` per anchor over all its 2N - 2
  negatives, zero terms included, mean over anchors (a mean over the non-zero terms only
  would differ from rank to rank and not add up to the global loss).
- ``npair`` (Sohn 2016, multi-class N-pair): ``log(1 + sum_n e^{f.f_n - f.f_p})`` on the
  raw (unnormalised) embeddings, no temperature, the negatives of anchor f the other
  view's embeddings of the other N - 1 images (the paper's N pairs: the positives of the
  other classes), both views taking the anchor's role; plus the paper's L2 penalty on the
  embedding norms, ``(lambda / 4) (mean ||f1||^2 + mean ||f2||^2)`` with lambda 0.002 (the
  weight and form of TensorFlow's reference ``npairs_loss``).

The similarities are computed in fp32 with autocast off: the matrices are small, and
distances of near neighbours (and the raw N-pair products) lose too much in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, world

PAIR_LOSSES = ("infonce", "contrastive", "triplet_hard", "triplet_all", "npair")
MARGIN_LOSSES = ("contrastive", "triplet_hard", "triplet_all")   # the ones that read ``pair_margin``
NPAIR_L2 = 0.002      # lambda, the weight of the embedding-norm penalty (TensorFlow's npairs_loss)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent for this rank's 2n anchors against all 2N embeddings of every rank.

    Each anchor's positive is the other view of its sample, its negatives every other
    embedding but itself. Gathering keeps gradients, so the mean over ranks of this loss
    equals the single-process loss on the concatenated batch, gradients included.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    rank, _ = world()
    n = z1.shape[0]
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    total = all1.shape[0]
    keys = torch.cat([all1, all2])                                   # (2N, d)
    anchors = torch.cat([z1, z2])                                    # (2n, d)
    logits = (anchors @ keys.t()).float() / temperature
    own = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([own, own + total])
    pos_idx = torch.cat([own + total, own])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.index_put((rows, self_idx), torch.tensor(float("-inf"), device=z1.device))
    return F.cross_entropy(logits, pos_idx)


def _normalised_distances(z1: torch.Tensor, z2: torch.Tensor):
    """Euclidean distances between this rank's 2n anchors and all 2N embeddings, after
    L2 normalisation: ``(squared (2n, 2N), distance (2n, 2N), positive index (2n,),
    negative mask (2n, 2N))``. Anchor row r is view 1 of image r for r < n, else view 2."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    rank, _ = world()
    n = z1.shape[0]
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    total = all1.shape[0]
    if total < 2:
        raise ValueError(f"a pair loss needs at least two images in the global batch, got {total}")
    keys = torch.cat([all1, all2])                                   # (2N, d)
    anchors = torch.cat([z1, z2])                                    # (2n, d)
    # ||a - k||^2 = 2 - 2 a.k for unit vectors; the sqrt's input is kept off zero so that
    # its gradient stays finite (a distance that small only occurs for the anchor itself)
    squared = (2.0 - 2.0 * anchors @ keys.t()).clamp(min=0.0)
    distance = squared.clamp(min=1e-12).sqrt()
    own = torch.arange(n, device=z1.device) + rank * n
    image = torch.cat([own, own])                                    # the image of each anchor
    pos_idx = torch.cat([own + total, own])
    key_image = torch.arange(2 * total, device=z1.device) % total
    negative = key_image[None, :] != image[:, None]                  # (2n, 2N): other images only
    return squared, distance, pos_idx, negative


def _fp32(z: torch.Tensor):
    """A context with autocast off on ``z``'s device (a no-op without autocast)."""
    return torch.autocast(device_type=z.device.type, enabled=False)


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell et al.'s margin loss: ``1/2 mean_pos d^2 + 1/2 mean_neg max(0, margin - d)^2``
    (see the module docstring for the pairs)."""
    with _fp32(z1):
        squared, distance, pos_idx, negative = _normalised_distances(z1, z2)
        rows = torch.arange(squared.shape[0], device=squared.device)
        pull = squared[rows, pos_idx]                                        # (2n,)
        push = (F.relu(margin - distance) ** 2 * negative).sum(1) / negative.sum(1)
        return 0.5 * (pull.mean() + push.mean())


def triplet_hard_loss(z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
    """``max(0, d(a,p) - min_n d(a,n) + margin)`` per anchor, mean over anchors."""
    with _fp32(z1):
        _, distance, pos_idx, negative = _normalised_distances(z1, z2)
        rows = torch.arange(distance.shape[0], device=distance.device)
        hardest = distance.masked_fill(~negative, float("inf")).amin(dim=1)
        return F.relu(distance[rows, pos_idx] - hardest + margin).mean()


def triplet_all_loss(z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean_n max(0, d(a,p) - d(a,n) + margin)`` per anchor over all its negatives, mean
    over anchors (zero terms counted)."""
    with _fp32(z1):
        _, distance, pos_idx, negative = _normalised_distances(z1, z2)
        rows = torch.arange(distance.shape[0], device=distance.device)
        terms = F.relu(distance[rows, pos_idx][:, None] - distance + margin) * negative
        return (terms.sum(1) / negative.sum(1)).mean()


def npair_loss(z1: torch.Tensor, z2: torch.Tensor, l2_weight: float = NPAIR_L2) -> torch.Tensor:
    """Sohn's multi-class N-pair loss on raw embeddings, both views as anchors, plus
    ``(l2_weight / 4) (mean ||z1||^2 + mean ||z2||^2)``.

    For anchor f (view 1 of image i) the logits are ``f . g_j`` over the view-2 embeddings
    g_j of every image j of every rank, the target j = i: the cross-entropy is
    ``log(1 + sum_{j != i} e^{f.g_j - f.g_i})``; likewise with the views swapped.
    """
    with _fp32(z1):
        z1, z2 = z1.float(), z2.float()
        rank, _ = world()
        n = z1.shape[0]
        all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
        if all1.shape[0] < 2:
            raise ValueError(f"a pair loss needs at least two images in the global batch, got {all1.shape[0]}")
        target = torch.arange(n, device=z1.device) + rank * n
        ce = 0.5 * (F.cross_entropy(z1 @ all2.t(), target) + F.cross_entropy(z2 @ all1.t(), target))
        penalty = 0.25 * l2_weight * (z1.square().sum(1).mean() + z2.square().sum(1).mean())
        return ce + penalty


def pair_loss(name: str, z1: torch.Tensor, z2: torch.Tensor, temperature: float, margin: float) -> torch.Tensor:
    """The loss named ``name`` (one of :data:`PAIR_LOSSES`); ``temperature`` is read by
    infonce only, ``margin`` by the contrastive and triplet losses."""
    if name == "infonce":
        return nt_xent_loss(z1, z2, temperature)
    if name == "contrastive":
        return contrastive_loss(z1, z2, margin)
    if name == "triplet_hard":
        return triplet_hard_loss(z1, z2, margin)
    if name == "triplet_all":
        return triplet_all_loss(z1, z2, margin)
    if name == "npair":
        return npair_loss(z1, z2)
    raise ValueError(f"unknown pair loss {name!r}; choose one of {', '.join(PAIR_LOSSES)}")
