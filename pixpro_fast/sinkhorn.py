"""Sinkhorn-Knopp balancing of soft cluster assignments, one function for SwAV and LOCA.

Both references run the same rounds: divide each prototype's column by its sum over every
rank's samples, then each sample's row by its sum, so that each sample ends with an
assignment summing to 1 and the prototypes move towards equal shares. SwAV's
``distributed_sinkhorn`` (main_swav.py) also divides the whole matrix by its total first and
each prototype by K and each sample by B within a round, and multiplies by B at the end:
scalings of the whole matrix, which no later normalisation sees, so the result is the same.
What the two differ in is where they start: SwAV from ``exp(scores / eps)`` (``eps``
given), LOCA (scenic's ``utils.sinkhorn``) from the teacher's softmax, whose rows already sum
to 1 (weights given). A per-sample scaling before the first round does change the result of
a few rounds, so the start is the caller's.
"""
from __future__ import annotations

import torch

from .distributed import all_reduce_max, all_reduce_sum


@torch.no_grad()
def sinkhorn(x: torch.Tensor, *, iters: int = 3, eps: float | None = None) -> torch.Tensor:
    """Balanced soft assignments (N, K) of this rank's N samples to K prototypes, in fp32.

    ``eps`` None: ``x`` holds non-negative weights (LOCA: the teacher's softmax). ``eps``
    given: ``x`` holds scores and the weights are ``exp(x / eps)`` (SwAV), each prototype's
    column first shifted by its largest score over every rank: a per-prototype factor, which
    the first column normalisation removes exactly, so that no column overflows or vanishes
    (``exp(x / eps)`` itself overflows fp32 for cosine scores once eps < 0.0113; a sample
    whose every score lies more than ``87 * eps`` below the prototype's best still underflows).
    Then ``iters`` rounds of: each prototype's column divided by its sum over all ranks' rows,
    each row divided by its sum. Rows of the result sum to 1.
    """
    if eps is None:
        q = x.float().clone()
    else:
        z = x.float() / eps
        q = torch.exp(z - all_reduce_max(z.max(dim=0, keepdim=True).values))
    for _ in range(iters):
        q /= all_reduce_sum(q.sum(dim=0, keepdim=True))
        q /= q.sum(dim=1, keepdim=True)
    return q
