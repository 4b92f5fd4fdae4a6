"""The shipped PixPro loss against the straightforward per-direction form, forward + backward.

The straightforward form is the loss as usually written: for each direction, cell centres
from the boxes, square-root distances, its own mask, and one bmm; the two directions added.
Usage: ``python -m benchmarks.bench_loss [--device cuda] [--out bench_out]``.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pixpro_fast.loss import pixpro_loss
from .common import add_shared_options, default_device, markdown_table, time_interleaved, write_json


def straightforward_direction(q, k, coord_q, coord_k, pos_ratio=0.7):
    n, c, h, w = q.shape
    q = F.normalize(q, dim=1).view(n, c, -1)
    k = F.normalize(k, dim=1).view(n, c, -1)
    xs = torch.arange(w, dtype=coord_q.dtype, device=q.device).view(1, 1, -1).repeat(1, h, 1)
    ys = torch.arange(h, dtype=coord_q.dtype, device=q.device).view(1, -1, 1).repeat(1, 1, w)
    qbw = ((coord_q[:, 2] - coord_q[:, 0]) / w).view(-1, 1, 1)
    qbh = ((coord_q[:, 3] - coord_q[:, 1]) / h).view(-1, 1, 1)
    kbw = ((coord_k[:, 2] - coord_k[:, 0]) / w).view(-1, 1, 1)
    kbh = ((coord_k[:, 3] - coord_k[:, 1]) / h).view(-1, 1, 1)
    max_diag = torch.max(torch.sqrt(qbw ** 2 + qbh ** 2), torch.sqrt(kbw ** 2 + kbh ** 2))
    qx = (xs + 0.5) * qbw + coord_q[:, 0].view(-1, 1, 1)
    qy = (ys + 0.5) * qbh + coord_q[:, 1].view(-1, 1, 1)
    kx = (xs + 0.5) * kbw + coord_k[:, 0].view(-1, 1, 1)
    ky = (ys + 0.5) * kbh + coord_k[:, 1].view(-1, 1, 1)
    dist = torch.sqrt((qx.view(-1, h * w, 1) - kx.view(-1, 1, h * w)) ** 2
                      + (qy.view(-1, h * w, 1) - ky.view(-1, 1, h * w)) ** 2) / max_diag
    mask = (dist < pos_ratio).float().detach()
    logit = torch.bmm(q.transpose(1, 2), k)
    per = (logit * mask).sum(-1).sum(-1) / (mask.sum(-1).sum(-1) + 1e-6)
    return -2 * per.mean()


def straightforward_loss(p1, p2, t1, t2, c1, c2, pos_ratio=0.7):
    return straightforward_direction(p1, t2, c1, c2, pos_ratio) + straightforward_direction(p2, t1, c2, c1, pos_ratio)


def random_coords(b, device, gen):
    lo = torch.rand(b, 2, generator=gen) * 0.5
    size = 0.3 + torch.rand(b, 2, generator=gen) * 0.5
    c = torch.cat([lo, lo + size], 1)
    flip = torch.rand(b, generator=gen) < 0.5
    c[flip] = c[flip][:, [2, 1, 0, 3]]
    return c.to(device)


def run(device="cpu", batches=(64, 128), maps=(7, 14), channels=256, iters=10, compiled=False) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        for hw in maps:
            ts = [torch.randn(b, channels, hw, hw, generator=gen).to(device).requires_grad_() for _ in range(4)]
            c1, c2 = random_coords(b, device, gen), random_coords(b, device, gen)
            impls = {"straightforward": straightforward_loss, "shipped": pixpro_loss}
            if compiled:
                impls["shipped+compile"] = torch.compile(pixpro_loss, dynamic=False)
            vals = {name: float(fn(*ts, c1, c2)) for name, fn in impls.items()}

            def fwd_bwd(fn):
                return lambda: fn(*ts, c1, c2).backward()
            times = time_interleaved({name: fwd_bwd(fn) for name, fn in impls.items()}, device, warmup=3, iters=iters)
            row = {"device": str(device), "B": b, "map": f"{hw}x{hw}", "C": channels,
                   "straightforward_ms": times["straightforward"] * 1e3, "shipped_ms": times["shipped"] * 1e3,
                   "speedup": times["straightforward"] / times["shipped"],
                   "max_abs_value_diff": abs(vals["shipped"] - vals["straightforward"])}
            if compiled:
                row["compiled_ms"] = times["shipped+compile"] * 1e3
                row["compiled_speedup"] = times["straightforward"] / times["shipped+compile"]
            rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(ap, device=default_device(), out="bench_out")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also time the shipped loss under torch.compile")
    args = ap.parse_args(argv)
    rows = run(args.device, iters=args.iters, compiled=args.compile)
    cols = ["device", "B", "map", "C", "straightforward_ms", "shipped_ms", "speedup", "max_abs_value_diff"]
    if args.compile:
        cols += ["compiled_ms", "compiled_speedup"]
    print(markdown_table(rows, cols))
    print("wrote", write_json(args.out, "loss.json", {"rows": rows}))
    return rows


if __name__ == "__main__":
    main()
