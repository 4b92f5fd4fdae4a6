"""The PixPro pixel-consistency loss and the BYOL-style instance loss.

Both loss directions share one positive mask: ``M(2,1)`` is the transpose of ``M(1,2)``,
so ``L(1,2) + L(2,1)`` sums ``M(1,2)[i, j] * (<q1_i, k2_j> + <k1_i, q2_j>)``. Stacking
``[q1; k1]`` and ``[k2; q2]`` along channels turns both directions into ONE batched matmul
against one mask, with one normaliser per sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import cell_centers


def positive_mask(coords_a: torch.Tensor, coords_b: torch.Tensor, height: int, width: int,
                  pos_ratio: float = 0.7) -> torch.Tensor:
    """(B, H*W, H*W) bool: cell i of view a is positive with cell j of view b.

    Positive when the distance between the cells' centres in original-image coordinates,
    divided by the larger of the two views' cell diagonals, is below ``pos_ratio``
    (compared squared, so no square root is taken).
    """
    ax, ay, adiag = cell_centers(coords_a, height, width)
    bx, by, bdiag = cell_centers(coords_b, height, width)
    dx = ax[:, :, None] - bx[:, None, :]
    dy = ay[:, :, None] - by[:, None, :]
    limit = (pos_ratio * torch.maximum(adiag, bdiag)) ** 2
    return (dx * dx + dy * dy) < limit[:, None, None]


def pixpro_loss(pred_1: torch.Tensor, pred_2: torch.Tensor, target_1: torch.Tensor, target_2: torch.Tensor,
                coords_1: torch.Tensor, coords_2: torch.Tensor, pos_ratio: float = 0.7) -> torch.Tensor:
    """Symmetric loss ``L(1,2) + L(2,1)`` (DESIGN §1); a scalar in [-4, 4].

    ``pred_*``: PPM outputs of each view, ``target_*``: target projections, all (B, C, H, W),
    normalised or not (they are L2-normalised over channels here; normalising twice is a
    no-op). A sample with no positive pair contributes 0.
    """
    return pixpro_loss_with_stats(pred_1, pred_2, target_1, target_2, coords_1, coords_2, pos_ratio)[0]


def pixpro_loss_with_stats(pred_1, pred_2, target_1, target_2, coords_1, coords_2, pos_ratio: float = 0.7):
    """:func:`pixpro_loss` plus ``(mean positive pairs per sample, mean positive cosine)``,
    the latter two detached, for logging."""
    b, c, h, w = pred_1.shape
    mask = positive_mask(coords_1, coords_2, h, w, pos_ratio)
    q = torch.cat([F.normalize(pred_1.float(), dim=1), F.normalize(target_1.float(), dim=1)], dim=1)
    k = torch.cat([F.normalize(target_2.float(), dim=1), F.normalize(pred_2.float(), dim=1)], dim=1)
    # logits[n, i, j] = <q1_i, k2_j> + <k1_i, q2_j>   (autocast may run this matmul in bf16/fp16)
    logits = torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)).float()
    maskf = mask.to(logits.dtype)
    npos = maskf.sum(dim=(1, 2))
    per_sample = (logits * maskf).sum(dim=(1, 2)) / (npos + 1e-6)
    loss = -2.0 * per_sample.mean()
    with torch.no_grad():
        mean_cos = (per_sample.sum() / (2 * (npos > 0).sum().clamp(min=1))).detach()
    return loss, npos.mean().detach(), mean_cos


def instance_loss(pred_1: torch.Tensor, pred_2: torch.Tensor, target_1: torch.Tensor,
                  target_2: torch.Tensor) -> torch.Tensor:
    """BYOL-style ``-2 <p1, z2> - 2 <p2, z1>`` averaged over the batch; inputs (B, D), any norm."""
    p1, p2 = F.normalize(pred_1.float(), dim=1), F.normalize(pred_2.float(), dim=1)
    z1, z2 = F.normalize(target_1.float(), dim=1), F.normalize(target_2.float(), dim=1)
    return -2.0 * ((p1 * z2).sum(1).mean() + (p2 * z1).sum(1).mean())
