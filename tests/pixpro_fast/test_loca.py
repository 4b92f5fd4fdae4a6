"""LOCA: ViT encoders, patch-position labels, masking, Sinkhorn targets, one training step,
and the two-process loss."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from pixpro_fast.methods.loca import LOCA, TRAINING_DEFAULTS, patch_position_labels
from pixpro_fast.optim import adamw_param_groups
from pixpro_fast.vit import ViTEncoder, timm_kwargs, timm_name

SMALL = dict(arch="vit_tiny_patch16", reference_size=64, query_keep=10, head_hidden_dim=32,
             head_bottleneck_dim=16, num_prototypes=64)


def small_batch(b: int, seed: int = 0, focal: int = 9):
    """Random images and boxes: reference 64 px, query 0 64 px, focal 32 px; boxes overlap the reference."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, 64, 64, generator=g), torch.randn(b, 3, 64, 64, generator=g)]
    views += [torch.randn(b, 3, 32, 32, generator=g) for _ in range(focal)]
    coords = []
    for i in range(len(views)):
        lo = torch.rand(b, 2, generator=g) * 0.5
        size = 0.3 + torch.rand(b, 1, generator=g) * 0.5
        c = torch.cat([lo, lo + size], dim=1)
        if i > 0:                                             # queries flip at random
            flip = torch.rand(b, generator=g) < 0.5
            c[flip] = c[flip][:, [2, 1, 0, 3]]
        coords.append(c)
    return views, coords


# ---------------------------------------------------------------- ViT encoder

def test_vit_weights_load_into_timm_and_match():
    import timm
    enc = ViTEncoder("vit_tiny_patch16", img_size=64, stochastic_depth=0.1).eval()
    model = timm.create_model(timm_name("vit_tiny_patch16"), pretrained=False, **timm_kwargs(64)).eval()
    result = model.load_state_dict(enc.timm_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.forward_features(x), enc(x))


def test_vit_kept_tokens_and_resized_position_embedding():
    enc = ViTEncoder("vit_tiny_patch16", img_size=64, stochastic_depth=0.0).eval()
    x = torch.randn(2, 3, 64, 64)
    full = enc(x)
    assert full.shape == (2, 16, 192)
    keep = torch.arange(16).repeat(2, 1)
    torch.testing.assert_close(enc(x, keep=keep), full)
    sub = torch.tensor([[0, 5, 9], [1, 2, 15]])
    assert enc(x, keep=sub).shape == (2, 3, 192)
    # Smaller inputs use the native grid's embedding resized bilinearly.
    pos = enc.position_embedding(2, 2)
    grid = enc.vit.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(2, 2), mode="bilinear", antialias=True).permute(0, 2, 3, 1).reshape(1, 4, -1)
    torch.testing.assert_close(pos, expected)
    assert enc.feature_map(torch.randn(1, 3, 32, 48)).shape == (1, 192, 2, 3)


# ---------------------------------------------------------------- labels

def brute_force_labels(ref_px, q_px, ref_flip, q_flip, query_grid, reference_grid, size):
    """Paint a reference_grid**2 index map onto the reference window of a (size x size) raster
    (nearest resize, flipped with the view), then read it under each query patch centre."""
    raster = torch.full((size, size), -1, dtype=torch.long)
    left, top, w, h = ref_px
    index = torch.arange(reference_grid ** 2).view(reference_grid, reference_grid)
    if ref_flip:
        index = index.flip(1)
    raster[top:top + h, left:left + w] = index.repeat_interleave(h // reference_grid, 0).repeat_interleave(
        w // reference_grid, 1)
    ql, qt, qw, qh = q_px
    out = []
    for r in range(query_grid):
        for c in range(query_grid):
            x = ql + (c + 0.5) * qw / query_grid
            if q_flip:
                x = ql + qw - (c + 0.5) * qw / query_grid
            y = qt + (r + 0.5) * qh / query_grid
            out.append(int(raster[int(y), int(x)]))
    return out


def test_patch_position_labels_match_brute_force():
    g = torch.Generator().manual_seed(3)
    size, rg, qg = 240, 4, 3
    rows_q, rows_r, expected = [], [], []
    for _ in range(64):
        m = int(torch.randint(8, 20, (1,), generator=g))
        rw, rh = rg * m, rg * int(torch.randint(8, 20, (1,), generator=g))
        rl, rt = int(torch.randint(0, size - rw, (1,), generator=g)), int(torch.randint(0, size - rh, (1,), generator=g))
        k = 2 * int(torch.randint(2, 12, (1,), generator=g)) + 1            # odd: centres on half pixels
        qw, qh = qg * k, qg * (2 * int(torch.randint(2, 12, (1,), generator=g)) + 1)
        ql, qt = int(torch.randint(0, size - qw, (1,), generator=g)), int(torch.randint(0, size - qh, (1,), generator=g))
        rf, qf = bool(torch.rand(1, generator=g) < 0.5), bool(torch.rand(1, generator=g) < 0.5)
        r = [rl / size, rt / size, (rl + rw) / size, (rt + rh) / size]
        q = [ql / size, qt / size, (ql + qw) / size, (qt + qh) / size]
        if rf:
            r[0], r[2] = r[2], r[0]
        if qf:
            q[0], q[2] = q[2], q[0]
        rows_r.append(r)
        rows_q.append(q)
        expected.append(brute_force_labels((rl, rt, rw, rh), (ql, qt, qw, qh), rf, qf, qg, rg, size))
    labels = patch_position_labels(torch.tensor(rows_q), torch.tensor(rows_r), qg, rg)
    expected = torch.tensor(expected)
    assert labels.dtype == torch.int64 and labels.shape == (64, qg * qg)
    assert (expected == -1).any() and (expected >= 0).any()            # some queries partly outside
    partly = ((expected == -1).any(1) & (expected >= 0).any(1)).sum()
    assert partly > 0
    torch.testing.assert_close(labels, expected)


def test_identical_views_label_each_patch_with_itself_and_flip_mirrors():
    box = torch.tensor([[0.2, 0.1, 0.8, 0.7]])
    assert patch_position_labels(box, box, 4, 4).tolist() == [list(range(16))]
    flipped = box[:, [2, 1, 0, 3]]
    mirrored = torch.arange(16).view(4, 4).flip(1).flatten()
    assert patch_position_labels(flipped, box, 4, 4)[0].tolist() == mirrored.tolist()


def test_labels_from_the_loaders_boxes_point_at_the_same_pixels(cache):
    """End to end through the torch loader's ``loca`` plan (colour off): the reference patch a
    query patch's label names has nearly its mean colour; a random reference patch, or the
    label read with the query's flip ignored, does not."""
    import dataclasses
    from pipelines import build_loader, get_recipe
    from pipelines.scenes import ensure_scenes
    plan = get_recipe("loca")
    plan = dataclasses.replace(plan, views=tuple(v.without_colour() for v in plan.views))
    folder = ensure_scenes(n_images=16, seed=0, root=cache, workers=1)
    batch = next(iter(build_loader("torch", folder, batch_size=16, image_size=128, recipe=plan, seed=3,
                                   num_workers=0)))
    ref, rg = batch.views[0].float(), batch.views[0].shape[-1] // 16
    ref_means = F.avg_pool2d(ref, 16).flatten(2)                                  # (B, 3, rg*rg)
    g = torch.Generator().manual_seed(0)
    for k in (1, 2):                                                              # query 0, a focal query
        query, coords = batch.views[k].float(), batch.coords[k]
        qg = query.shape[-1] // 16
        means = F.avg_pool2d(query, 16).flatten(2)                                # (B, 3, qg*qg)

        def gap(labels, rows=slice(None)):
            """Mean colour distance of each valid query patch to the reference patch it is labelled with."""
            named = ref_means[rows].gather(2, labels.clamp(min=0)[:, None].expand(-1, 3, -1))
            return (means[rows] - named).abs().mean(1)[labels >= 0].mean().item()

        labels = patch_position_labels(coords, batch.coords[0], qg, rg)
        shuffled = torch.where(labels >= 0, torch.randint(0, rg * rg, labels.shape, generator=g), labels)
        flipped = coords[:, 0] > coords[:, 2]
        assert flipped.any() and (~flipped).any()
        unflipped = patch_position_labels(coords[flipped][:, [2, 1, 0, 3]], batch.coords[0][flipped], qg, rg)
        assert gap(labels) < 0.4 * gap(shuffled)
        assert gap(labels[flipped], flipped) < 0.6 * gap(unflipped, flipped)


# ---------------------------------------------------------------- masking

def test_masking_keeps_the_stated_token_counts():
    torch.manual_seed(0)
    model = LOCA("vit_tiny_patch16", reference_size=224, head_hidden_dim=32, head_bottleneck_dim=16,
                 num_prototypes=64)
    assert (model.query_keep, model.reference_keep) == (70, 39)
    masks = model.draw_masks(8, 196, generator=torch.Generator().manual_seed(1))
    assert masks.query_keep.shape == (8, 70)
    for row in masks.query_keep:
        assert len(set(row.tolist())) == 70 and 0 <= row.min() and row.max() < 196
    assert len({tuple(r.tolist()) for r in masks.query_keep}) == 8          # a random subset per sample
    assert ((masks.reference_start >= 0) & (masks.reference_start <= 196 - 39)).all()

    lengths = []
    hook = model.online["encoder"].vit.blocks.register_forward_hook(lambda m, i, o: lengths.append(("s", o.shape[1])))
    hook_t = model.target["encoder"].vit.blocks.register_forward_hook(lambda m, i, o: lengths.append(("t", o.shape[1])))
    views = [torch.randn(1, 3, 224, 224), torch.randn(1, 3, 224, 224)] + [torch.randn(1, 3, 96, 96)] * 9
    coords = [torch.tensor([[0.1, 0.1, 0.9, 0.9]])] * 11
    out = model(views, coords)
    hook.remove(), hook_t.remove()
    assert sorted(lengths) == sorted([("t", 196), ("s", 70), ("s", 36)])    # teacher sees the whole reference
    assert out.stats["query_tokens_kept"] == 70 and out.stats["reference_tokens_kept"] == 39


# ---------------------------------------------------------------- Sinkhorn


# ---------------------------------------------------------------- training step

def test_one_step_changes_only_online_weights():
    torch.manual_seed(0)
    model = LOCA(**SMALL)
    views, coords = small_batch(2)
    online0 = {k: v.clone() for k, v in model.online.state_dict().items()}
    target0 = {k: v.clone() for k, v in model.target.state_dict().items()}
    opt = torch.optim.AdamW(adamw_param_groups(model.online, 0.1), lr=1e-3)
    out = model(views, coords)
    assert torch.isfinite(out.loss)
    for name in ("position_accuracy", "valid_fraction", "prediction_entropy", "target_entropy"):
        assert torch.isfinite(out.stats[name])
    assert 0 < out.stats["valid_fraction"] <= 1
    out.loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    opt.step()
    changed = [k for k, v in model.online.state_dict().items() if not torch.equal(v, online0[k])]
    assert "encoder.vit.pos_embed" in changed and "position.predictor.weight" in changed
    assert "cluster.prototypes" in changed
    assert all(torch.equal(v, target0[k]) for k, v in model.target.state_dict().items())
    model.update_target(0.5)
    assert not torch.equal(model.target["encoder"].vit.pos_embed, target0["encoder.vit.pos_embed"])


def test_adamw_groups_skip_decay_on_1d_parameters():
    model = LOCA(**SMALL)
    decay, no_decay = adamw_param_groups(model.online, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.online.parameters()))
    assert TRAINING_DEFAULTS["clip_grad_norm"] == 1.0 and TRAINING_DEFAULTS["warmup_epochs"] == 15


def test_bad_input_says_what_loca_needs():
    with pytest.raises(ValueError, match="LOCA needs a ViT encoder.*resnet50"):
        LOCA(arch="resnet50")
    model = LOCA(**SMALL)
    views, coords = small_batch(1)
    with pytest.raises(ValueError, match="LOCA needs a view plan of 11 views.*got 2"):
        model(views[:2], coords[:2])
    with pytest.raises(ValueError, match="64 px reference"):
        model([F.interpolate(views[0], size=32)] + views[1:], coords)


# ---------------------------------------------------------------- two processes

def _loss_and_grads(model, views, coords, masks):
    model.zero_grad()
    out = model(views, coords, masks=masks)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.online.named_parameters() if p.grad is not None}


def _model_and_batch(b: int):
    """A seeded small LOCA without stochastic depth, a batch of ``b`` and fixed masks."""
    torch.manual_seed(0)
    model = LOCA(stochastic_depth=0.0, **SMALL)
    views, coords = small_batch(b)
    return model, views, coords, model.draw_masks(b, 16, generator=torch.Generator().manual_seed(5))


def _assert_same_loss_and_grads(got, want):
    (loss, grads), (want_loss, want_grads) = got, want
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def _rank_worker(rank, world_size, init_file, result_file):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model, views, coords, masks = _model_and_batch(4)
    rows = slice(2 * rank, 2 * rank + 2)
    loss, grads = _loss_and_grads(model, [v[rows] for v in views], [c[rows] for c in coords], masks[rows])
    dist.all_reduce(loss)
    for g in grads.values():               # what DistributedDataParallel does: average the gradients
        dist.all_reduce(g)
        g /= world_size
    if rank == 0:
        torch.save({"loss": loss / world_size, "grads": grads}, result_file)
    dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_concatenated_batch():
    import torch.multiprocessing as mp
    model, views, coords, masks = _model_and_batch(4)
    loss, grads = _loss_and_grads(model, views, coords, masks)
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.spawn(_rank_worker, args=(2, init_file, result_file), nprocs=2, join=True)
        result = torch.load(result_file)
    _assert_same_loss_and_grads((result["loss"], result["grads"]), (loss, grads))


# ---------------------------------------------------------------- attention kernel

def test_math_attention_gives_the_same_loss_and_gradients():
    from pixpro_fast.training import attention_kernel
    model, views, coords, masks = _model_and_batch(2)
    by_default = _loss_and_grads(model, views, coords, masks)
    with attention_kernel("math"):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        by_math = _loss_and_grads(model, views, coords, masks)
    assert torch.backends.cuda.flash_sdp_enabled()           # restored on leaving
    _assert_same_loss_and_grads(by_math, by_default)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        attention_kernel("flash")


@pytest.mark.parametrize("attention", ["auto", "math"])
def test_the_engine_runs_the_forward_under_the_configured_attention_kernel(attention, tmp_path):
    from pipelines.recipe import get_recipe
    from pipelines.synthetic import SyntheticLoader
    from pixpro_fast.config import TrainConfig
    from pixpro_fast.engine import Trainer
    cfg = TrainConfig.from_file("loca").replace(
        arch="vit_tiny_patch16", image_size=64, batch_size=2, device="cpu", precision="fp32", attention=attention,
        proj_hidden_dim=32, num_prototypes=64, tensorboard=False, resume=False,
        out=str(tmp_path))
    loader = SyntheticLoader(2, 64, get_recipe(cfg.recipe), device="cpu", batches_per_epoch=1)
    trainer = Trainer(cfg, loader=loader)
    seen = []
    trainer.model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.flash_sdp_enabled()))
    trainer.train_one_step([next(iter(loader))])
    assert seen == [attention == "auto"]
