import itertools
import math

import pytest
import torch

from pipelines.lab import lab_to_rgb, rgb_to_lab
from pixpro_fast.methods import METHODS as REGISTRY
from pixpro_fast.methods.colorization import (NUM_BINS, Colorization, ab_bins, estimate_ab_prior,
                                              rebalancing_weights, soft_encode)
from pixpro_fast.methods.denoising_ae import DenoisingAE, corrupt
from pixpro_fast.methods.jigsaw import Jigsaw, jigsaw_tiles, min_pairwise_hamming, permutation_set
from pixpro_fast.methods.pretext import TileGrid, grid_for
from pixpro_fast.methods.relative_location import NEIGHBOURS, RelativeLocation, relative_location_pairs
from pixpro_fast.methods.rotation import Rotation, rotations


# --------------------------------------------------------------------------- rotation

def test_rotations_match_per_image_reference():
    x = torch.randn(3, 2, 5, 5)
    out, labels = rotations(x)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    s = 5
    for n in range(12):
        k, b = divmod(n, 3)
        ref = x[b].clone()
        for _ in range(k):   # one 90-degree counter-clockwise turn: new[i, j] = old[j, s - 1 - i]
            ref = torch.stack([torch.stack([ref[:, j, s - 1 - i] for j in range(s)], -1) for i in range(s)], -2)
        torch.testing.assert_close(out[n], ref)


def test_rotations_centre_crop_a_non_square_view():
    x = torch.randn(1, 1, 4, 6)
    out, _ = rotations(x)
    assert out.shape == (4, 1, 4, 4)
    torch.testing.assert_close(out[0], x[0, :, :, 1:5])


# --------------------------------------------------------------------------- jigsaw

def test_permutation_set_is_valid_deterministic_and_spread():
    p = permutation_set(100, seed=0)
    assert p.dtype == torch.int64 and p.shape == (100, 9)
    assert torch.equal(p.sort(1).values, torch.arange(9).expand(100, 9))
    assert len({tuple(r) for r in p.tolist()}) == 100
    assert torch.equal(p, permutation_set(100, seed=0))
    assert not torch.equal(p, permutation_set(100, seed=1))
    d = min_pairwise_hamming(p)
    print(f"min pairwise Hamming distance of 100 permutations: {d}")
    # greedy max-min: every new pick is at least as far from the set as any later pick
    assert d >= 5
    # plain check of the greedy rule on the first picks: the k-th pick maximises the distance
    # to its nearest earlier pick over all 9! permutations
    perms = torch.tensor(list(itertools.permutations(range(9))))
    for k in (1, 2, 5):
        nearest = (perms[:, None, :] != p[None, :k, :]).sum(-1).min(1).values
        assert int((p[k] != p[:k]).sum(-1).min()) == int(nearest.max())


def test_permutation_set_rejects_bad_size():
    with pytest.raises(ValueError, match="permutation set size"):
        permutation_set(0)


@pytest.mark.parametrize("grid", [grid_for(63, 70, "jigsaw"), TileGrid(square=30, cell=10, tile=10)])
def test_jigsaw_tiles_reassemble_to_the_crop_under_the_inverse_permutation(grid):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 63, 70)
    perms = permutation_set(100)
    tiles, labels, origins = jigsaw_tiles(x, perms, grid, torch.Generator().manual_seed(1))
    t = grid.tile
    for b in range(3):
        perm = perms[labels[b]].tolist()
        inverse = [perm.index(cell) for cell in range(9)]          # slot holding each cell's tile
        for cell in range(9):
            y0, x0 = origins[b, cell].tolist()
            r, c = divmod(cell, 3)
            sq_y, sq_x = origins[b, 0].tolist()
            assert abs(y0 - sq_y - r * grid.cell) <= grid.jitter and abs(x0 - sq_x - c * grid.cell) <= grid.jitter
            torch.testing.assert_close(tiles[b, inverse[cell]], x[b, :, y0:y0 + t, x0:x0 + t])
        if grid.jitter == 0:   # the tiles cover the square exactly
            rows = [torch.cat([tiles[b, inverse[3 * r + c]] for c in range(3)], -1) for r in range(3)]
            y0, x0 = origins[b, 0].tolist()
            torch.testing.assert_close(torch.cat(rows, -2), x[b, :, y0:y0 + grid.square, x0:x0 + grid.square])


def test_grid_scales_down_and_rejects_small_views():
    assert grid_for(300, 256, "jigsaw") == TileGrid()
    g = grid_for(64, 64, "jigsaw")
    assert (g.square, g.cell, g.tile) == (63, 21, 15)
    with pytest.raises(ValueError, match="too small for the 3x3 tile grid"):
        grid_for(24, 64, "jigsaw")


def test_jigsaw_tiles_are_normalised_each():
    m = Jigsaw("resnet18", num_permutations=100, tile_dim=16, hidden_dim=32)
    tiles, labels = m.task(torch.randn(2, 3, 64, 64))
    assert tiles.shape == (2, 9, 3, 15, 15) and labels.shape == (2,)
    torch.testing.assert_close(tiles.mean((-2, -1)), torch.zeros(2, 9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tiles.std((-2, -1)), torch.ones(2, 9, 3), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- relative location

@pytest.mark.parametrize("all_neighbours", [False, True])
def test_relative_location_labels_match_tile_geometry(all_neighbours):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 80, 72)
    grid = grid_for(80, 72, "relative_location")
    centre, neighbour, labels, origins = relative_location_pairs(x, grid, all_neighbours,
                                                                 torch.Generator().manual_seed(3))
    per = 8 if all_neighbours else 1
    assert labels.shape == (4 * per,)
    # where each label says the neighbour is, written out: (row step, column step)
    direction = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1), 6: (1, 0), 7: (1, 1)}
    t = grid.tile
    for n in range(4 * per):
        b = n // per
        cy, cx = origins[b, 4].tolist()
        k = int(labels[n])
        cell = NEIGHBOURS[k]
        ny, nx = origins[b, cell].tolist()
        dy, dx = direction[k]
        # a neighbour's tile lies in the cell one step away: its offset from the centre tile is
        # the step times the cell size, give or take the jitter
        assert abs((ny - cy) - dy * grid.cell) <= grid.jitter and abs((nx - cx) - dx * grid.cell) <= grid.jitter
        torch.testing.assert_close(centre[n], x[b, :, cy:cy + t, cx:cx + t])
        torch.testing.assert_close(neighbour[n], x[b, :, ny:ny + t, nx:nx + t])
    if all_neighbours:
        assert labels.tolist() == list(range(8)) * 4


def test_colour_drop_keeps_one_channel():
    m = RelativeLocation("resnet18", colour="drop", hidden_dim=32)
    x = torch.randn(2, 3, 64, 64)
    pairs, _ = m.task(x)
    small = pairs.flatten(0, 1).std((-2, -1))           # (2N, 3)
    big = small.max(1).values
    assert ((small < 0.05 * big[:, None]).sum(1) == 2).all()


# --------------------------------------------------------------------------- colorization

# b bins per a column of the reference implementation's 313 points (pts_in_hull.npy), a = -90 .. 100
REFERENCE_COLUMN_COUNTS = [5, 8, 10, 12, 14, 15, 16, 16, 17, 18, 18, 18, 19, 20, 19, 20, 20, 19, 19, 10]


def test_ab_bins_are_the_reference_313():
    bins = ab_bins()
    assert bins.shape == (NUM_BINS, 2) == (313, 2)
    assert torch.equal(bins, ab_bins()) and torch.equal(bins, ab_bins(levels=8))
    assert torch.equal(bins, torch.round(bins / 10) * 10)
    points = [tuple(p) for p in bins.int().tolist()]
    assert points == sorted(set(points))                                   # sorted by a, then b; no repeats
    assert (bins[:, 0].min(), bins[:, 0].max(), bins[:, 1].min(), bins[:, 1].max()) == (-90, 100, -110, 100)
    assert {(-90, 50), (100, 0), (0, 0)} <= set(points)                    # two rim bins outside sRGB, the greys
    columns = [sum(1 for a, _ in points if a == column) for column in range(-90, 101, 10)]
    assert columns == REFERENCE_COLUMN_COUNTS
    for column in range(-90, 101, 10):                                     # each column one run of b
        b = sorted(q for a, q in points if a == column)
        assert b == list(range(b[0], b[-1] + 1, 10))


def test_ab_bins_follow_their_rule():
    """A grid point is a bin exactly when its 20 x 20 square (Chebyshev distance <= 10) meets
    the convex hull of the sRGB gamut's ab projection. Reference: the hull's support function
    in 1440 directions against the square's, over the grid around the gamut."""
    v = torch.linspace(0, 1, 17, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb).reshape(3, -1)[1:].T                              # the whole cube, not only its faces
    theta = torch.arange(1440, dtype=torch.float64) * (2 * math.pi / 1440)
    u = torch.stack([theta.cos(), theta.sin()], 1)
    support = (ab @ u.T).amax(0) + 10 * u.abs().sum(1)
    r = torch.arange(-150, 151, 10, dtype=torch.float64)
    grid = torch.stack([t.reshape(-1) for t in torch.meshgrid(r, r, indexing="ij")], 1)
    want = grid[((grid @ u.T) <= support + 1e-6).all(1)]
    torch.testing.assert_close(ab_bins().double(), want, rtol=0, atol=0)
    # inside the sRGB gamut for no L: a bin of the rim, kept because a neighbour cell meets the hull
    for lightness in range(0, 101, 5):
        raw = lab_to_rgb(torch.tensor([float(lightness), 100.0, 0.0]).view(1, 3, 1, 1), clip=False)
        assert (raw < -1e-6).any() or (raw > 1 + 1e-6).any()


@pytest.mark.parametrize("k", [5, 10])
def test_soft_encoding_matches_per_pixel_reference_and_sums_to_one(k):
    bins = ab_bins()
    torch.manual_seed(0)
    ab = torch.randn(2, 2, 3, 4) * 40
    enc = soft_encode(ab, bins, k=k, sigma=5.0)
    assert enc.shape == (2, bins.shape[0], 3, 4)
    torch.testing.assert_close(enc.sum(1), torch.ones(2, 3, 4))
    assert ((enc > 0).sum(1) == k).all()
    for b in range(2):
        for i in range(3):
            for j in range(4):
                a, bb = ab[b, :, i, j].tolist()
                dists = sorted((((a - p) ** 2 + (bb - q) ** 2) ** 0.5, n) for n, (p, q) in enumerate(bins.tolist()))[:k]
                ws = [math.exp(-d * d / (2 * 5.0 ** 2)) for d, _ in dists]
                ref = torch.zeros(bins.shape[0])
                for (d, n), w in zip(dists, ws):
                    ref[n] = w / sum(ws)
                torch.testing.assert_close(enc[b, :, i, j], ref, atol=1e-5, rtol=1e-4)


def test_colorization_neighbours_setting_reaches_the_targets():
    from pixpro_fast.config import ConfigError, TrainConfig
    from pixpro_fast.methods import build_method
    cfg = TrainConfig.from_file("colorization").replace(arch="resnet18")
    assert cfg.colorization_neighbours == 5
    torch.manual_seed(0)
    ab = torch.randn(1, 2, 2, 3) * 30
    for k in (5, 10):
        m = build_method(cfg.replace(colorization_neighbours=k))
        assert m.k == k
        target = m.targets(ab)
        assert ((target > 0).sum(1) == k).all()
        torch.testing.assert_close(target, soft_encode(ab, m.bins, k=k, sigma=5.0))
    with pytest.raises(ConfigError, match="colorization_neighbours must be at most 313"):
        cfg.replace(colorization_neighbours=314)
    with pytest.raises(ConfigError, match="colorization_neighbours 10 is a setting of colorization only"):
        TrainConfig.from_file("rotation").replace(colorization_neighbours=10)
    with pytest.raises(ValueError, match="num_neighbours must be between 1 and the 313 ab bins"):
        Colorization("resnet18", num_neighbours=0)


def test_prior_and_rebalancing_weights():
    bins = ab_bins()
    torch.manual_seed(0)
    batches = [torch.rand(2, 3, 8, 8) for _ in range(2)]
    for b in batches:                       # three pixels in four grey
        b[:, :, :6] = b[:, :1, :6]
    raw = estimate_ab_prior(batches, bins, sigma=0)
    counts = torch.zeros(bins.shape[0])
    from pipelines.lab import rgb_to_lab
    for b in batches:
        lab = rgb_to_lab(b)
        for n in range(2):
            for i in range(8):
                for j in range(8):
                    counts[((bins - lab[n, 1:, i, j]) ** 2).sum(1).argmin()] += 1
    torch.testing.assert_close(raw, counts / counts.sum())
    prior = estimate_ab_prior(batches, bins)
    assert prior.shape == (bins.shape[0],) == (313,)
    assert abs(float(prior.sum()) - 1) < 1e-5 and (prior >= 0).all()
    smoothed = torch.zeros(313, dtype=torch.float64)                         # Gaussian (sigma 5) over bin distance
    centres = bins.double()
    for i in range(313):
        square = ((centres - centres[i]) ** 2).sum(1)
        smoothed[i] = (torch.exp(-square / (2 * 5.0 ** 2)) * raw.double()).sum()
    torch.testing.assert_close(prior, (smoothed / smoothed.sum()).float())
    rim = bins.tolist().index([100.0, 0.0])                                 # outside sRGB: never a pixel's nearest bin
    assert raw[rim] == 0
    grey_index = int((bins == 0).all(1).nonzero())
    assert int(prior.argmax()) == grey_index
    w = rebalancing_weights(prior, 0.5)
    assert abs(float((prior * w).sum()) - 1) < 1e-5
    q = prior.numel()
    torch.testing.assert_close(w / w[0], ((0.5 * prior + 0.5 / q) ** -1) / (0.5 * prior[0] + 0.5 / q) ** -1)
    assert w[grey_index] == w.min()          # the common colour weighs least
    scale = 1 / float((prior / (0.5 * prior + 0.5 / q)).sum())
    assert float(w[rim]) <= scale * q / 0.5 + 1e-3                        # the uniform share caps a rim bin's weight
    m = Colorization("resnet18", decoder_dim=16)
    m.set_prior(prior)
    torch.testing.assert_close(m.class_weights, w)
    with pytest.raises(ValueError, match="no non-empty|at least one"):
        estimate_ab_prior([], bins)


def test_colorization_rejects_a_three_channel_checkpoint(tmp_path):
    import torchvision
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="3-channel input.*in_channels=1"):
        Colorization("resnet18", encoder_weights=str(path))
    m = Colorization("resnet18", decoder_dim=16)
    assert m.export_encoder().conv1.in_channels == 1 and m.export_encoder().in_channels == 1


# --------------------------------------------------------------------------- denoising autoencoder

def test_corruptions():
    x = torch.rand(4, 3, 32, 32) * 0.9 + 0.1
    g = torch.Generator().manual_seed(0)
    masked = corrupt(x, "masking", p=0.3, generator=g)
    dropped = (masked == 0).float().mean()
    assert 0.27 < float(dropped) < 0.33
    kept = masked != 0
    torch.testing.assert_close(masked[kept], x[kept])
    noisy = corrupt(x, "gaussian", sigma=0.2, generator=g)
    assert abs(float((noisy - x).std()) - 0.2) < 0.01
    with pytest.raises(ValueError, match="noise must be one of"):
        corrupt(x, "salt")


def test_export_encoder_is_the_encoder_alone():
    m = DenoisingAE("resnet18", decoder_dim=16)
    enc = m.export_encoder()
    assert enc is m.online["encoder"]
    assert not any(k.startswith("decoder") or "net." in k for k in enc.state_dict())


# --------------------------------------------------------------------------- every method

METHODS = [
    (Rotation, {}),
    (Jigsaw, dict(num_permutations=100, tile_dim=32, hidden_dim=64)),
    (RelativeLocation, dict(hidden_dim=64)),
    (RelativeLocation, dict(hidden_dim=64, colour="drop", all_neighbours=True)),
    (Colorization, dict(decoder_dim=32)),
    (Colorization, dict(decoder_dim=32, mode="regression")),
    (DenoisingAE, dict(decoder_dim=32)),
    (DenoisingAE, dict(decoder_dim=32, noise="gaussian", sigma=0.2)),
]


@pytest.mark.parametrize("cls,kwargs", METHODS, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_one_step_changes_the_weights(cls, kwargs):
    torch.manual_seed(0)
    m = cls("resnet18", **kwargs)
    assert m.num_views == 1
    assert [e.recipe for e in REGISTRY.values() if e.cls is cls] == ["single"]   # its entry's view plan
    before = {k: v.detach().clone() for k, v in m.online.named_parameters()}
    opt = torch.optim.SGD(m.online.parameters(), lr=0.1)
    out = m((torch.randn(4, 3, 64, 64),), (torch.zeros(4, 4),))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.stats.values())
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    after = dict(m.online.named_parameters())
    assert not torch.equal(before["encoder.conv1.weight"], after["encoder.conv1.weight"].detach())
    changed = [k for k in before if not k.startswith("encoder.") and not torch.equal(before[k], after[k].detach())]
    assert changed, "no head or decoder parameter moved"


@pytest.mark.parametrize("cls", [Rotation, Jigsaw, RelativeLocation, Colorization, DenoisingAE])
def test_more_than_one_view_is_rejected(cls):
    kwargs = dict(num_permutations=100) if cls is Jigsaw else {}
    m = cls("resnet18", **kwargs)
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="needs a view plan of 1 view"):
        m((x, x), None)


@pytest.mark.parametrize("cls", [Jigsaw, RelativeLocation])
def test_tile_tasks_reject_small_views(cls):
    kwargs = dict(num_permutations=100) if cls is Jigsaw else {}
    m = cls("resnet18", **kwargs)
    with pytest.raises(ValueError, match="too small for the 3x3 tile grid"):
        m((torch.randn(2, 3, 20, 64),), None)


def test_colorization_targets_stay_fp32_under_autocast():
    m = Colorization("resnet18", decoder_dim=16)
    x = torch.randn(2, 3, 32, 32)
    ref_l, ref_ab = m.task(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l, ab = m.task(x)
    assert l.dtype == torch.float32 and ab.dtype == torch.float32
    torch.testing.assert_close(ab, ref_ab)
    torch.testing.assert_close(l, ref_l)


def test_each_tasks_options_come_from_its_own_config_fields():
    from pixpro_fast.config import ConfigError, TrainConfig
    from pixpro_fast.methods import build_method

    def build(method, **fields):
        return build_method(TrainConfig.from_file(method).replace(arch="resnet18", **fields))

    assert build("jigsaw", jigsaw_permutations=100).permutations.shape == (100, 9)
    assert build("jigsaw").permutations.shape == (1000, 9) and build("jigsaw").grayscale_p == 0.66
    rl = build("relative_location", relative_location_colour="drop", tile_grayscale_p=0.5)
    assert (rl.colour, rl.grayscale_p) == ("drop", 0.5)
    assert build("colorization", colorization_mode="regression").mode == "regression"
    dae = build("denoising_ae", denoising_noise="gaussian", denoising_sigma=0.25)
    assert (dae.noise, dae.sigma) == ("gaussian", 0.25)
    with pytest.raises(ConfigError, match="jigsaw_permutations 100 is a setting of jigsaw only"):
        TrainConfig.from_file("rotation").replace(jigsaw_permutations=100)
    with pytest.raises(ConfigError, match="colorization_mode must be one of classification, regression"):
        TrainConfig.from_file("colorization").replace(colorization_mode="lab")


def test_relative_location_preset_keeps_a_short_run_from_diverging(tmp_path, monkeypatch, one_thread, cache):
    """At the quality table's setting (resnet18, 64 px, batch 32, peak lr 0.0125) the unclipped
    wide BN neck drives the loss well above chance within 24 steps; the preset's clipping keeps it near."""
    import json
    import math

    from pixpro_fast.config import TrainConfig
    from pixpro_fast.engine import Trainer

    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    preset = TrainConfig.from_file("relative_location")
    assert preset.clip_grad_norm > 0
    cfg = preset.replace(arch="resnet18", image_size=64, batch_size=32, scenes_images=256,
                         epochs=3, warmup_epochs=0.2, base_lr=0.1, num_workers=0, device="cpu", precision="fp32",
                         compile=False, log_every=4, ckpt_every=0, tensorboard=False, out=str(tmp_path / "run"))
    Trainer(cfg, log_stream=open(tmp_path / "log.txt", "w")).fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    assert max(losses) < math.log(8) + 0.5, losses


# --------------------------------------------------------------------------- the recipe's normalisation

OTHER_MEAN, OTHER_STD = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)       # not ImageNet's


def test_a_recipe_with_other_stats_reaches_the_method(monkeypatch):
    from pipelines.recipe import PRESETS, SINGLE, Recipe
    from pixpro_fast.config import TrainConfig
    from pixpro_fast.methods import build_method
    cfg = TrainConfig.from_file("denoising_ae").replace(arch="resnet18")
    assert build_method(cfg).mean.flatten().tolist() == pytest.approx(PRESETS["single"].mean)
    monkeypatch.setitem(PRESETS, "single", Recipe("single", SINGLE.views, OTHER_MEAN, OTHER_STD))
    m = build_method(cfg)
    assert m.mean.flatten().tolist() == pytest.approx(OTHER_MEAN) and m.std.flatten().tolist() == pytest.approx(OTHER_STD)


@pytest.mark.parametrize("cls,kwargs", [
    (Colorization, dict(decoder_dim=16)),
    (DenoisingAE, dict(decoder_dim=16, noise="gaussian", sigma=0.1)),
    (DenoisingAE, dict(decoder_dim=16, noise="masking", mask_p=0.3)),
    (Jigsaw, dict(num_permutations=10, tile_dim=8, hidden_dim=8, grayscale_p=0.5)),
    (RelativeLocation, dict(hidden_dim=8, grayscale_p=0.5)),
], ids=["colorization", "denoising-gaussian", "denoising-masking", "jigsaw", "relative_location"])
def test_tasks_see_the_same_pixels_whatever_the_recipes_stats(cls, kwargs):
    """Views of one image normalised with ImageNet's stats and with other ones: a task built
    with the matching stats recovers the same 0..1 RGB and builds the same input from it."""
    from pipelines.colour import normalise
    from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD
    torch.manual_seed(0)
    x01 = torch.rand(2, 3, 48, 48)
    imagenet = cls("resnet18", **kwargs)
    other = cls("resnet18", mean=OTHER_MEAN, std=OTHER_STD, **kwargs)
    v_imagenet, v_other = normalise(x01, IMAGENET_MEAN, IMAGENET_STD), normalise(x01, OTHER_MEAN, OTHER_STD)
    torch.testing.assert_close(imagenet.to_unit(v_imagenet), x01, atol=1e-5, rtol=0)
    torch.testing.assert_close(other.to_unit(v_other), x01, atol=1e-5, rtol=0)
    torch.testing.assert_close(other.from_unit(x01), v_other)
    if cls is Colorization:
        (l1, ab1), (l2, ab2) = imagenet.task(v_imagenet), other.task(v_other)
        torch.testing.assert_close(l1, l2, atol=1e-4, rtol=0)
        torch.testing.assert_close(ab1, ab2, atol=1e-3, rtol=0)
        return
    a = imagenet.task(v_imagenet, generator=torch.Generator().manual_seed(1))
    b = other.task(v_other, generator=torch.Generator().manual_seed(1))
    if cls is DenoisingAE:      # the same noise on the same pixels, each normalised with its own stats
        from pipelines.colour import unnormalise
        noisy = unnormalise(a, IMAGENET_MEAN, IMAGENET_STD, clamp=False)       # gaussian noise leaves 0..1
        torch.testing.assert_close(noisy, unnormalise(b, OTHER_MEAN, OTHER_STD, clamp=False), atol=1e-5, rtol=0)
        assert not torch.allclose(noisy, x01)
    elif cls is Jigsaw:         # tiles standardised one by one: no trace of either normalisation
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)
        assert torch.equal(a[1], b[1])
    else:                       # the pairs, some made grey, each in its method's normalisation
        unit = lambda m, pairs: m.to_unit(pairs.flatten(0, 1))
        torch.testing.assert_close(unit(imagenet, a[0]), unit(other, b[0]), atol=1e-5, rtol=0)
        assert torch.equal(a[1], b[1])
