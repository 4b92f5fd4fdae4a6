"""How much of LOCA's position task is there to find at initialisation, and how fast does its
head find it? On the built-in scenes, through the torch loader's ``loca`` plan (reference and
query 0 only), at ``--image-size``:

- matching: each query-0 patch matched, with no training, to its most cosine-similar
  reference patch, by mean-pooled pixels and by the final tokens of a random-init ViT; the
  rows give how often that is the patch its label names (exact) or one of its 3 x 3
  neighbours, with the recipe's colour work off and on. Chance is one in ``grid**2``.
- head: LOCA's position head (cross-attention block, LayerNorm, linear) trained alone on
  those frozen random tokens (every reference token as keys and values, AdamW), its loss and
  accuracy every ``--log-every`` steps. The loss starts near ln(grid**2).

Prints two tables and writes JSON; asserts nothing.

    python -m benchmarks.loca_position --image-size 128 --head-steps 300     # about 3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn.functional as F

from benchmarks.common import add_shared_options, markdown_table, write_json
from pipelines import build_loader, get_recipe
from pipelines.scenes import ensure_scenes
from pixpro_fast.methods.loca import PositionHead, patch_position_labels
from pixpro_fast.vit import PATCH, VIT_ARCHS, ViTEncoder


def two_view_plan(colour: bool):
    """The ``loca`` plan's reference and query 0, with or without their colour work."""
    plan = get_recipe("loca")
    views = plan.views[:2] if colour else tuple(v.without_colour() for v in plan.views[:2])
    return dataclasses.replace(plan, views=views)


def patch_means(views: torch.Tensor) -> torch.Tensor:
    """(B, grid**2, 3 * 16) pixels of each 16 px patch, mean-pooled 4 x 4."""
    pooled = F.avg_pool2d(views.float(), PATCH // 4)                               # (B, 3, 4g, 4g)
    b, c, h, w = pooled.shape
    cells = pooled.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(b, (h // 4) * (w // 4), c * 16)


def matching_accuracy(query: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, grid: int):
    """(exact, within one patch) of cosine nearest-neighbour matching over the valid labels."""
    sim = F.normalize(query, dim=-1) @ F.normalize(reference, dim=-1).transpose(1, 2)
    pred, valid = sim.argmax(-1), labels >= 0
    near = ((pred // grid - labels // grid).abs() <= 1) & ((pred % grid - labels % grid).abs() <= 1)
    return (pred == labels)[valid].float().mean().item(), near[valid].float().mean().item()


def batches(folder, plan, batch_size: int, image_size: int, seed: int):
    """The loader's batches, epoch after epoch."""
    loader = build_loader("torch", folder, batch_size=batch_size, image_size=image_size, recipe=plan, seed=seed,
                          num_workers=0)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@torch.no_grad()
def matching_rows(folder, encoder, image_size: int, batch_size: int, seed: int) -> list[dict]:
    grid, rows = image_size // PATCH, []
    for colour in (False, True):
        batch = next(batches(folder, two_view_plan(colour), batch_size, image_size, seed))
        labels = patch_position_labels(batch.coords[1], batch.coords[0], grid, grid)
        features = {"pixels": (patch_means(batch.views[1]), patch_means(batch.views[0])),
                    "random ViT tokens": (encoder(batch.views[1]), encoder(batch.views[0]))}
        for name, (q, r) in features.items():
            exact, near = matching_accuracy(q, r, labels, grid)
            rows.append({"colour": "on" if colour else "off", "features": name, "exact": exact,
                         "within_one_patch": near, "chance": 1 / grid ** 2,
                         "valid_patches": int((labels >= 0).sum())})
    return rows


def head_rows(folder, encoder, arch: str, image_size: int, batch_size: int, steps: int, lr: float,
              log_every: int, seed: int) -> list[dict]:
    grid = image_size // PATCH
    dim, _, heads = VIT_ARCHS[arch]
    torch.manual_seed(seed)
    head = PositionHead(dim, heads, 4 * dim, grid * grid)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    rows, loss_sum, hits, count = [], 0.0, 0, 0
    for step, batch in enumerate(batches(folder, two_view_plan(False), batch_size, image_size, seed), start=1):
        with torch.no_grad():
            reference, query = encoder(batch.views[0]), encoder(batch.views[1])
        labels = patch_position_labels(batch.coords[1], batch.coords[0], grid, grid).flatten()
        valid = labels >= 0
        logits = head(query, reference).flatten(0, 1)[valid]
        loss = F.cross_entropy(logits, labels[valid])
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += loss.item() * int(valid.sum())
        hits += int((logits.argmax(-1) == labels[valid]).sum())
        count += int(valid.sum())
        if step % log_every == 0 or step == steps:
            rows.append({"steps": step, "loss": loss_sum / count, "accuracy": hits / count,
                         "chance_loss": math.log(grid * grid)})
            loss_sum, hits, count = 0.0, 0, 0
        if step == steps:
            return rows
    return rows


def run(image_size: int = 128, arch: str = "vit_tiny_patch16", scenes: int = 1024, batch_size: int = 32,
        head_steps: int = 300, lr: float = 1e-3, log_every: int = 25, seed: int = 1, cache=None) -> dict:
    if image_size % PATCH:
        raise ValueError(f"--image-size must be a multiple of {PATCH}, got {image_size}")
    folder = ensure_scenes(n_images=scenes, seed=0, root=cache, workers=1)
    torch.manual_seed(seed)
    encoder = ViTEncoder(arch, image_size, 0.0).eval().requires_grad_(False)
    return {"benchmark": "loca_position", "image_size": image_size, "arch": arch, "scenes": scenes,
            "batch_size": batch_size, "lr": lr,
            "matching": matching_rows(folder, encoder, image_size, batch_size, seed),
            "head": head_rows(folder, encoder, arch, image_size, batch_size, head_steps, lr, log_every, seed)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.loca_position", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_shared_options(ap, batch_size=32, image_size=128, out="bench_out/loca_position")
    ap.add_argument("--arch", default="vit_tiny_patch16", choices=sorted(VIT_ARCHS))
    ap.add_argument("--scenes", type=int, default=1024)
    ap.add_argument("--head-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        result = run(args.image_size, args.arch, args.scenes, args.batch_size, args.head_steps, args.lr,
                     args.log_every, args.seed)
    except ValueError as e:
        ap.error(str(e))
    print(f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {args.scenes} scenes")
    print(markdown_table(result["matching"], ["colour", "features", "exact", "within_one_patch", "chance",
                                              "valid_patches"]))
    print()
    print(markdown_table(result["head"], ["steps", "loss", "accuracy", "chance_loss"]))
    print(f"wrote {write_json(args.out, 'loca_position.json', result)}")
    return result


if __name__ == "__main__":
    main()
