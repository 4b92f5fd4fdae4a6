"""Plain references written straight from the formulas in DESIGN.md §1: loops, float64."""
from __future__ import annotations

import math

import torch


def cell_centre(coords, r, c, h, w):
    x_a, y_a, x_b, y_b = [float(v) for v in coords]
    bw, bh = (x_b - x_a) / w, (y_b - y_a) / h
    return x_a + (c + 0.5) * bw, y_a + (r + 0.5) * bh, math.sqrt(bw * bw + bh * bh)


def mask_reference(coords_a, coords_b, h, w, pos_ratio=0.7):
    """Loop over every cell pair of every sample."""
    n = coords_a.shape[0]
    out = torch.zeros(n, h * w, h * w, dtype=torch.bool)
    for s in range(n):
        for i in range(h * w):
            xa, ya, da = cell_centre(coords_a[s], i // w, i % w, h, w)
            for j in range(h * w):
                xb, yb, db = cell_centre(coords_b[s], j // w, j % w, h, w)
                out[s, i, j] = math.sqrt((xa - xb) ** 2 + (ya - yb) ** 2) / max(da, db) < pos_ratio
    return out


def one_direction_reference(q, k, mask):
    """L(A,B) = -2 mean_n [sum_ij M(i,j) <q_i, k_j> / (sum_ij M(i,j) + 1e-6)], q/k normalised."""
    n, c = q.shape[:2]
    q = torch.nn.functional.normalize(q.double().flatten(2), dim=1)
    k = torch.nn.functional.normalize(k.double().flatten(2), dim=1)
    per = []
    for s in range(n):
        total = (q[s].sum() + k[s].sum()) * 0.0  # keeps the graph when no pair is positive
        for i in range(q.shape[2]):
            row = mask[s, i]
            if row.any():
                total = total + (k[s][:, row] * q[s][:, i:i + 1]).sum()
        per.append(total / (mask[s].double().sum() + 1e-6))
    return -2.0 * torch.stack(per).mean()


def pixpro_loss_reference(p1, p2, t1, t2, c1, c2, pos_ratio=0.7):
    h, w = p1.shape[2:]
    m12 = mask_reference(c1, c2, h, w, pos_ratio)
    m21 = mask_reference(c2, c1, h, w, pos_ratio)
    return one_direction_reference(p1, t2, m12) + one_direction_reference(p2, t1, m21)


def ppm_reference(x, transform, gamma=2.0, clamp=0.0):
    """y_i = sum_j max(cos(x_i, x_j), clamp) ** gamma * normalize(g(x))_j, cell by cell."""
    n, c, h, w = x.shape
    g = transform(x).double().flatten(2)
    x = x.double().flatten(2)
    out = torch.zeros_like(x)
    for s in range(n):
        gn = g[s] / g[s].norm(dim=0, keepdim=True).clamp(min=1e-12)
        xn = x[s] / x[s].norm(dim=0, keepdim=True).clamp(min=1e-12)
        for i in range(h * w):
            sim = (xn[:, i:i + 1] * xn).sum(0).clamp(min=clamp)
            if gamma < 1:
                sim = sim + 1e-6
            out[s, :, i] = (gn * sim ** gamma).sum(1)
    return out.view(n, c, h, w)
