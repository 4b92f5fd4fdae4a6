"""The PixPro pixel-consistency loss and the BYOL-style instance loss.

Both loss directions share one positive mask: ``M(2,1)`` is the transpose of ``M(1,2)``,
so ``L(1,2) + L(2,1)`` sums ``M(1,2)[i, j] * (<q1_i, k2_j> + <k1_i, q2_j>)`` over one
mask with one normaliser per sample: the mask is built once and never transposed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.geometry import cell_centers


def squared_distance_ratio(coords_a: torch.Tensor, coords_b: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, H*W): squared distance between the centres of cell i of view a and cell j of
    view b in original-image coordinates, divided by the squared larger cell diagonal."""
    ax, ay, adiag = cell_centers(coords_a, height, width)
    bx, by, bdiag = cell_centers(coords_b, height, width)
    dx = ax[:, :, None] - bx[:, None, :]
    dy = ay[:, :, None] - by[:, None, :]
    return (dx * dx + dy * dy) / (torch.maximum(adiag, bdiag) ** 2)[:, None, None]


def positive_mask(coords_a: torch.Tensor, coords_b: torch.Tensor, height: int, width: int,
                  pos_ratio: float = 0.7) -> torch.Tensor:
    """(B, H*W, H*W) bool: cell i of view a is positive with cell j of view b.

    Positive when the distance between the cells' centres in original-image coordinates,
    divided by the larger of the two views' cell diagonals, is below ``pos_ratio``
    (compared squared, so no square root is taken).
    """
    return squared_distance_ratio(coords_a, coords_b, height, width) < pos_ratio ** 2


def pixpro_loss(pred_1: torch.Tensor, pred_2: torch.Tensor, target_1: torch.Tensor, target_2: torch.Tensor,
                coords_1: torch.Tensor, coords_2: torch.Tensor, pos_ratio: float = 0.7) -> torch.Tensor:
    """Symmetric loss ``L(1,2) + L(2,1)`` (DESIGN §1); a scalar in [-4, 4].

    ``pred_*``: PPM outputs of each view, ``target_*``: target projections, all (B, C, H, W),
    normalised or not (they are L2-normalised over channels here; normalising twice is a
    no-op). A sample with no positive pair contributes 0.
    """
    return pixpro_loss_with_stats(pred_1, pred_2, target_1, target_2, coords_1, coords_2, pos_ratio)[0]


def _inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L) -> (B, L): 1 / max(||x_l||, 1e-12), the factor F.normalize applies."""
    return x.float().square().sum(dim=1).sqrt().clamp(min=1e-12).reciprocal()


def pixpro_loss_with_stats(pred_1, pred_2, target_1, target_2, coords_1, coords_2, pos_ratio: float = 0.7):
    """:func:`pixpro_loss` plus ``(mean positive pairs per sample, mean positive cosine)``,
    the latter two detached, for logging.

    The features are never normalised in memory: the matmuls take the raw maps and the
    (B, L, L) products are scaled by the outer product of inverse norms, which costs far
    less memory traffic than writing normalised copies of four (B, C, L) maps.
    """
    b, c, h, w = pred_1.shape
    mask = positive_mask(coords_1, coords_2, h, w, pos_ratio)
    p1, p2, t1, t2 = (x.flatten(2) for x in (pred_1, pred_2, target_1, target_2))
    r_p1, r_p2, r_t1, r_t2 = (_inverse_norms(x) for x in (p1, p2, t1, t2))
    # raw[n, i, j] over view-1 cells i and view-2 cells j (autocast may run these in bf16/fp16)
    raw_12 = torch.bmm(p1.transpose(1, 2), t2).float()      # <q1_i, k2_j>, direction (1,2)
    raw_21 = torch.bmm(t1.transpose(1, 2), p2).float()      # <k1_i, q2_j>, direction (2,1) transposed
    cos = (raw_12 * (r_p1[:, :, None] * r_t2[:, None, :])) + (raw_21 * (r_t1[:, :, None] * r_p2[:, None, :]))
    maskf = mask.to(cos.dtype)
    npos = maskf.sum(dim=(1, 2))
    per_sample = (cos * maskf).sum(dim=(1, 2)) / (npos + 1e-6)
    loss = -2.0 * per_sample.mean()
    with torch.no_grad():
        mean_cos = per_sample.sum() / (2 * (npos > 0).sum().clamp(min=1))
    return loss, npos.mean().detach(), mean_cos.detach()


def instance_loss(pred_1: torch.Tensor, pred_2: torch.Tensor, target_1: torch.Tensor,
                  target_2: torch.Tensor) -> torch.Tensor:
    """BYOL-style ``-2 <p1, z2> - 2 <p2, z1>`` averaged over the batch; inputs (B, D), any norm."""
    p1, p2 = F.normalize(pred_1.float(), dim=1), F.normalize(pred_2.float(), dim=1)
    z1, z2 = F.normalize(target_1.float(), dim=1), F.normalize(target_2.float(), dim=1)
    return -2.0 * ((p1 * z2).sum(1).mean() + (p2 * z1).sum(1).mean())


def pixcontrast_loss(online_1: torch.Tensor, online_2: torch.Tensor, target_1: torch.Tensor, target_2: torch.Tensor,
                     coords_1: torch.Tensor, coords_2: torch.Tensor, pos_ratio: float = 0.7, neg_ratio: float = 0.7,
                     temperature: float = 0.3) -> torch.Tensor:
    """PixContrast (the PixPro paper's pixel-level InfoNCE), symmetric over the two views.

    For cell i of one view's online projection, the positives are the cells j of the other
    view's target projection within ``pos_ratio`` (the PixPro mask) and the negatives those
    at or beyond ``neg_ratio`` (>= pos_ratio; cells in between are ignored):
    ``-log(sum_pos e^{cos/t} / (sum_pos e^{cos/t} + sum_neg e^{cos/t}))``, averaged over the
    cells that have a positive, in both directions.
    """
    if neg_ratio < pos_ratio:
        raise ValueError(f"neg_ratio ({neg_ratio}) must not be below pos_ratio ({pos_ratio})")
    b, c, h, w = online_1.shape
    ratio = squared_distance_ratio(coords_1, coords_2, h, w)        # (B, L1, L2)
    pos = ratio < pos_ratio ** 2
    keep = pos | (ratio >= neg_ratio ** 2)
    total, count = online_1.new_zeros((), dtype=torch.float32), online_1.new_zeros((), dtype=torch.float32)
    for q, k, p, kp in ((online_1, target_2, pos, keep), (online_2, target_1, pos.transpose(1, 2), keep.transpose(1, 2))):
        qn = F.normalize(q.float().flatten(2), dim=1)
        kn = F.normalize(k.float().flatten(2), dim=1)
        logits = torch.bmm(qn.transpose(1, 2), kn).float() / temperature    # (B, Lq, Lk)
        neg_inf = torch.finfo(logits.dtype).min
        num = torch.logsumexp(logits.masked_fill(~p, neg_inf), dim=2)
        den = torch.logsumexp(logits.masked_fill(~kp, neg_inf), dim=2)
        has_pos = p.any(dim=2)
        total = total + ((den - num) * has_pos).sum()
        count = count + has_pos.sum()
    return total / count.clamp(min=1)
