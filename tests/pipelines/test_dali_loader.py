"""The DALI backend in CPU-only mode: box contract, recipe, crop distribution, sharding,
determinism, batch contract and bad files."""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from sample_data import jpeg_folder, random_sizes  # noqa: E402
from coordinate_plane import corner_errors, denormalise, write_coordinate_planes  # noqa: E402
from pipelines import build_loader  # noqa: E402
from pipelines import sampler  # noqa: E402
from pipelines.colour import ColourAugment  # noqa: E402
from pipelines.dali_loader import (DaliLoader, colour_matrix, decode_region, image_shape,  # noqa: E402
                                   resolve_host_crop)
from pipelines.sampler import PARAM_NAMES  # noqa: E402
from pipelines.recipe import BYOL, Recipe, ViewSpec  # noqa: E402
from pipelines.colour_cpu import LUMA  # noqa: E402
from pipelines.corrupt import CorruptImageError  # noqa: E402

P = {name: i for i, name in enumerate(PARAM_NAMES)}
# CPU-only by default; PIXPRO_TEST_DEVICE=cuda runs the same checks in DALI's GPU mode
DEVICE = torch.device(os.environ.get("PIXPRO_TEST_DEVICE", "cpu"))
PLANE_SIZES = [(90, 400), (400, 90), (131, 257), (300, 300), (64, 640), (480, 200), (97, 113), (250, 333)]
GEOMETRY = BYOL.without_colour()
OFF = ViewSpec(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def _write_images(folder: Path, n: int, seed: int = 0, sizes=(40, 120)) -> list[Path]:
    jpeg_folder(folder, n, size=random_sizes(*sizes, seed=seed), seed=seed, noise=6.0, detail=16)
    return sorted(folder.glob("img_*.jpg"))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    _write_images(folder, 96)
    return folder


@pytest.fixture(scope="module")
def planes_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("planes")
    write_coordinate_planes(folder, PLANE_SIZES)
    return folder


def _loader(data_dir, batch_size=16, image_size=32, recipe=BYOL, **kw) -> DaliLoader:
    kw.setdefault("num_workers", 2)
    kw.setdefault("device", DEVICE)
    return build_loader("dali", data_dir, batch_size=batch_size, image_size=image_size, recipe=recipe, **kw)


def _run(loader: DaliLoader, epochs) -> tuple[list, torch.Tensor, torch.Tensor]:
    """All batches of the given epochs and the concatenated params of both views."""
    batches, p1, p2 = [], [], []
    for e in epochs:
        loader.set_epoch(e)
        for b in loader:
            batches.append(b)
            p1.append(torch.from_numpy(loader.last_params[:, 0]))
            p2.append(torch.from_numpy(loader.last_params[:, 1]))
    return batches, torch.cat(p1), torch.cat(p2)


# --------------------------------------------------------------------------- the box contract

@pytest.mark.parametrize("host_crop", [None, False])
def test_coordinate_plane_corners_show_the_claimed_positions(planes_dir, host_crop):
    size = 64
    loader = _loader(planes_dir, batch_size=8, image_size=size, recipe=GEOMETRY, host_crop=host_crop)
    batches, p1, p2 = _run(loader, range(6))
    # the contract maps output pixels linearly onto window pixels; resampling maps pixel
    # centres: they differ by up to half an output pixel, plus JPEG error
    tol = 0.5 / (size - 1) + 3.0 / 255
    flips = {1: [], 2: []}
    for b in batches:
        for k, view, coords in ((1, b.view1, b.coords1), (2, b.view2, b.coords2)):
            assert coords.min() >= 0.0 and coords.max() <= 1.0
            err = corner_errors(denormalise(view, GEOMETRY.mean, GEOMETRY.std), coords)
            assert err.max() < tol, (err.max(), coords[err.argmax()])
            flips[k].append((coords[:, 0] > coords[:, 2]).cpu())
    flips = torch.cat(flips[1] + flips[2])
    assert 0 < flips.sum() < len(flips)  # both flipped and unflipped views were checked
    params = torch.cat([p1, p2])
    assert torch.equal(flips, params[:, P["flip"]] > 0.5)
    # odd aspect ratios reached the fallback (whole height of the 90x400 plane) as well as random windows
    wide = params[(params[:, P["image_height"]] == 90) & (params[:, P["image_width"]] == 400)]
    assert len(wide) > 0


# --------------------------------------------------------------------------- batch contract

def test_bad_options(small_dir, tmp_path):
    with pytest.raises(ValueError):
        _loader(small_dir, on_corrupt="ignore")
    with pytest.raises(ValueError):
        _loader(small_dir, dali_device="tpu")
    with pytest.raises(ValueError):
        _loader(small_dir, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        _loader(tmp_path / "missing")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            _loader(small_dir, dali_device="gpu")


# --------------------------------------------------------------------------- order, shards, resume

def test_two_ranks_cover_the_dataset_once_per_epoch(small_dir):
    seen = []
    for rank in range(2):
        loader = _loader(small_dir, batch_size=8, image_size=16, recipe=GEOMETRY, rank=rank, world_size=2)
        assert len(loader) == 96 // 16
        loader.set_epoch(3)
        seen.append(torch.cat([b.index for b in loader]))
    assert len(seen[0]) == len(seen[1]) == 48
    assert sorted(torch.cat(seen).tolist()) == list(range(96))
    # drop_last=False: batches of 10, the last one short, still exactly once over both ranks
    seen = []
    for rank in range(2):
        loader = _loader(small_dir, batch_size=10, image_size=16, recipe=GEOMETRY, rank=rank, world_size=2,
                         drop_last=False)
        sizes = [len(b) for b in loader]
        assert sizes == [10, 10, 10, 10, 8]
        seen.append(torch.cat([b.index for b in loader]))
    assert sorted(torch.cat(seen).tolist()) == list(range(96))


def test_epochs_are_deterministic_and_resume_is_exact(small_dir):
    loader = _loader(small_dir, batch_size=16, image_size=32)
    a, pa, _ = _run(loader, [5])
    b, pb, _ = _run(loader, [5])
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index)
        assert torch.equal(x.view1, y.view1) and torch.equal(x.view2, y.view2)
        assert torch.equal(x.coords2, y.coords2)
    c, _, _ = _run(loader, [6])
    assert not torch.equal(torch.cat([x.index for x in a]), torch.cat([x.index for x in c]))
    loader.set_epoch(5, start_batch=2)
    resumed = list(loader)
    assert [x.index.tolist() for x in resumed] == [x.index.tolist() for x in a[2:]]
    for x, y in zip(resumed, a[2:]):  # the draws depend on (seed, epoch, rank, batch) only
        assert torch.equal(x.view1, y.view1) and torch.equal(x.coords1, y.coords1)
    assert len(list(loader)) == len(loader)  # the offset applied to one pass only


# --------------------------------------------------------------------------- recipe statistics

def test_recipe_rates_and_ranges(small_dir):
    loader = _loader(small_dir, batch_size=32, image_size=32)
    batches, p1, p2 = _run(loader, range(6))
    for params, view in ((p1, BYOL.view1), (p2, BYOL.view2)):
        n = len(params)
        for name, p in (("flip", view.flip_p), ("jitter", view.jitter_p), ("grayscale", view.grayscale_p),
                        ("blur", view.blur_p), ("solarize", view.solarize_p)):
            rate = params[:, P[name]].mean().item()
            assert abs(rate - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-6, (name, rate, p)
        jit = params[:, P["jitter"]] > 0.5
        for name, strength in (("brightness", view.brightness), ("contrast", view.contrast),
                               ("saturation", view.saturation)):
            f = params[:, P[name]]
            assert (f[~jit] == 1).all()
            assert f[jit].min() >= 1 - strength - 1e-6 and f[jit].max() <= 1 + strength + 1e-6
            assert f[jit].std() > strength / 4  # actually drawn, not a constant
        hue = params[:, P["hue"]]
        assert (hue[~jit] == 0).all() and hue.abs().max() <= view.hue + 1e-6
        blur = params[:, P["blur"]] > 0.5
        sigma = params[:, P["sigma"]]
        assert (sigma[~blur] == 0).all()
        if blur.any():
            assert sigma[blur].min() >= view.blur_sigma[0] - 1e-6 and sigma[blur].max() <= view.blur_sigma[1] + 1e-6
    # grayscale views really are grey (every colour step after it keeps R = G = B)
    views = torch.cat([b.view2 for b in batches])
    gray = p2[:, P["grayscale"]] > 0.5
    x = denormalise(views, BYOL.mean, BYOL.std)
    spread = (x.amax(dim=1) - x.amin(dim=1)).flatten(1).amax(dim=1)
    assert gray.any() and spread[gray].max() < 1.5 / 255
    assert spread[~gray].median() > 5 / 255


def _flat_folder(folder: Path, colours) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(colours):
        Image.fromarray(np.full((40, 56, 3), c, dtype=np.uint8)).save(folder / f"flat_{i}.png")
    return folder


@pytest.mark.parametrize("gpu_style", [False, True])
def test_colour_steps_on_flat_images(tmp_path, gpu_style):
    """The in-pipeline colour steps (``colour='workers'``). Flat colours make every step
    predictable: jitter through its numpy model, blur is a no-op
    on a flat image, solarize inverts channels >= threshold, grayscale gives the luma."""
    colours = [(200, 100, 30), (20, 140, 250), (128, 127, 60), (90, 90, 200)]
    folder = _flat_folder(tmp_path / "flat", colours)
    jitter_only = replace(OFF, jitter_p=1.0)
    grey_blur_solarize = replace(OFF, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0, solarize_threshold=100)
    recipe = Recipe("flat", (jitter_only, grey_blur_solarize))
    loader = _loader(folder, batch_size=4, image_size=8, recipe=recipe, gpu_style=gpu_style, colour="workers")
    batches, p1, p2 = _run(loader, range(4))
    luma = np.array(LUMA)
    for b, q1 in zip(batches, p1.split(4)):
        src = np.array([colours[i] for i in b.index.tolist()], dtype=np.float64)
        got1 = denormalise(b.view1, recipe.mean, recipe.std)[:, :, 4, 4].numpy() * 255
        got2 = denormalise(b.view2, recipe.mean, recipe.std)[:, :, 4, 4].numpy() * 255
        for k in range(len(src)):
            bright, contrast = q1[k, P["brightness"]].item(), q1[k, P["contrast"]].item()
            m = src[k] @ luma
            y = np.clip(bright * (m + contrast * (src[k] - m)), 0, 255)
            y = np.clip(colour_matrix(q1[k, P["saturation"]].item(), q1[k, P["hue"]].item()) @ y, 0, 255)
            assert np.abs(got1[k] - y).max() < 3.0, (src[k], got1[k], y)
            g = src[k] @ luma
            want = 255 - g if round(g) >= 100 else g
            assert np.abs(got2[k] - want).max() < 2.0, (src[k], got2[k], want)


@pytest.mark.parametrize("host_crop", [True, False])
def test_colour_engine_finishes_the_crops(small_dir, host_crop):
    """``colour='device'``: each view is the shared colour engine's pass, with the batch's own
    draws, over the uint8 crop (cut on the host or by the graph; read back from a colour-free run)."""
    if host_crop and DEVICE.type != "cpu":
        pytest.skip("host cropping is the CPU-only mode's")
    engine = _loader(small_dir, batch_size=16, image_size=32, colour="device", host_crop=host_crop)
    geometry = _loader(small_dir, batch_size=16, image_size=32, recipe=GEOMETRY, colour="device",
                       host_crop=host_crop)
    steps = [ColourAugment(v, BYOL.mean, BYOL.std) for v in BYOL.views]
    for epoch in range(2):
        engine.set_epoch(epoch)
        geometry.set_epoch(epoch)
        batches = 0
        for a, g in zip(engine, geometry):
            assert torch.equal(a.index, g.index)
            for v in range(2):
                assert torch.equal(a.coords[v], g.coords[v])
                crop = (denormalise(g.views[v], BYOL.mean, BYOL.std) * 255).round().clamp(0, 255).to(torch.uint8)
                want = steps[v].apply(crop.to(DEVICE), sampler.colour_params(engine.last_params[:, v]))
                torch.testing.assert_close(a.views[v], want, atol=1e-5, rtol=0)
            batches += 1
        assert batches == len(engine) > 0


@pytest.mark.skipif(DEVICE.type != "cpu", reason="host cropping is the CPU-only mode's")
def test_host_crop_matches_the_graph_resize(planes_dir):
    """Views cut on the host by pipelines.resample and by DALI's resize in the graph: same
    draws and boxes, pixels within the two resamplers' rounding (both antialiased bilinear)."""
    host = _loader(planes_dir, batch_size=8, image_size=48, recipe=GEOMETRY, host_crop=True)
    graph = _loader(planes_dir, batch_size=8, image_size=48, recipe=GEOMETRY, host_crop=False)
    assert host.host_crop and not graph.host_crop
    diffs = []
    for epoch in range(3):
        host.set_epoch(epoch)
        graph.set_epoch(epoch)
        for a, g in zip(host, graph):
            assert torch.equal(a.index, g.index)
            for v in range(2):
                assert torch.equal(a.coords[v], g.coords[v])
                diffs.append((denormalise(a.views[v], GEOMETRY.mean, GEOMETRY.std)
                              - denormalise(g.views[v], GEOMETRY.mean, GEOMETRY.std)).abs() * 255)
    diffs = torch.cat([d.flatten() for d in diffs])
    assert diffs.max() <= 1.5 and diffs.mean() < 0.1, (diffs.max(), diffs.mean())


def test_host_crop_default_and_bad_value():
    assert resolve_host_crop(None, "device", "cpu") is True
    assert resolve_host_crop(None, "device", "gpu") is False
    assert resolve_host_crop(None, "workers", "cpu") is False
    with pytest.raises(ValueError, match="host_crop=True needs colour='device'"):
        resolve_host_crop(True, "workers", "cpu")


def test_colour_place_default_and_bad_value(small_dir):
    from types import SimpleNamespace
    assert _loader(small_dir, device="cpu").colour == "device"
    assert _loader(small_dir, device="cpu", colour="workers").colour == "workers"
    assert DaliLoader.default_colour(SimpleNamespace(dali_device="gpu")) == "workers"
    with pytest.raises(ValueError, match=r"colour must be one of \('auto', 'device', 'workers'\) for the dali"):
        _loader(small_dir, device="cpu", colour="pil")


# --------------------------------------------------------------------------- crop distribution

def test_crop_distribution_matches_torchvision(tmp_path):
    from torchvision.transforms import RandomResizedCrop

    shapes = [(90, 400), (120, 120), (70, 150)]
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i in range(48):
        h, w = shapes[i % len(shapes)]
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(folder / f"s_{i:02d}.jpg")
    loader = _loader(folder, batch_size=48, image_size=8, recipe=GEOMETRY)
    _, p1, p2 = _run(loader, range(12))
    params = torch.cat([p1, p2]).double()
    torch.manual_seed(0)
    scale, ratio = GEOMETRY.view1.crop_scale, GEOMETRY.view1.crop_ratio
    for h, w in shapes:
        mine = params[(params[:, P["image_height"]] == h) & (params[:, P["image_width"]] == w)]
        ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), list(scale), list(ratio))
                            for _ in range(20000)], dtype=torch.float64)  # (top, left, h, w)
        n = len(mine)
        assert n >= 300
        # windows inside the image
        assert (mine[:, P["top"]] >= 0).all() and (mine[:, P["top"]] + mine[:, P["height"]] <= h).all()
        assert (mine[:, P["left"]] >= 0).all() and (mine[:, P["left"]] + mine[:, P["width"]] <= w).all()
        features = {
            "area": (mine[:, P["height"]] * mine[:, P["width"]] / (h * w), ref[:, 2] * ref[:, 3] / (h * w)),
            "log_aspect": (torch.log(mine[:, P["width"]] / mine[:, P["height"]]), torch.log(ref[:, 3] / ref[:, 2])),
            "centre_x": (mine[:, P["left"]] + mine[:, P["width"]] / 2, ref[:, 1] + ref[:, 3] / 2),
        }
        critical = 1.95 * math.sqrt(1 / n + 1 / len(ref))  # two-sample KS at alpha = 0.001
        for name, (a, b) in features.items():
            grid = torch.cat([a, b]).unique()
            cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
            cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
            ks = (cdf_a - cdf_b).abs().max().item()
            assert ks < critical, (h, w, name, ks, critical)
    h, w = shapes[0]  # 90x400: ratio far outside (3/4, 4/3), ~10% of draws fall back
    mine = params[(params[:, P["image_height"]] == h) & (params[:, P["image_width"]] == w)]
    fallback = (mine[:, P["height"]] == 90) & (mine[:, P["width"]] == 120) & (mine[:, P["left"]] == 140)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), list(scale), list(ratio))
                        for _ in range(20000)], dtype=torch.float64)
    p_ref = ((ref[:, 2] == 90) & (ref[:, 3] == 120) & (ref[:, 1] == 140)).double().mean().item()
    p_mine = fallback.double().mean().item()
    assert p_ref > 0.02
    assert abs(p_mine - p_ref) < 4.5 * math.sqrt(p_ref * (1 - p_ref) / len(mine)), (p_mine, p_ref)


# --------------------------------------------------------------------------- bad files

def _corrupt_set(folder: Path) -> dict[str, Path]:
    """29 good JPEGs and three bad files: a truncated JPEG and a text file (caught by the
    byte checks) and a PNG with damaged pixel data (passes them; the DALI decoder rejects it)."""
    good = _write_images(folder, 29, seed=3, sizes=(40, 80))
    data = good[0].read_bytes()
    bad = {"truncated": folder / "bad_truncated.jpg", "text": folder / "bad_text.jpg",
           "damaged": folder / "bad_damaged.png"}
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["text"].write_bytes(b"this is not an image, only a file with an image name\n" * 4)
    noise = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad["damaged"])
    png = bytearray(bad["damaged"].read_bytes())
    mid = len(png) // 2
    png[mid:mid + 64] = bytes(64)
    bad["damaged"].write_bytes(bytes(png))
    assert image_shape(bytes(png)) == (40, 50)
    return bad


def test_image_shape_reads_headers_and_rejects_damage(tmp_path):
    buf = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(buf)
    png = buf.read_bytes()
    assert image_shape(png) == (8, 9)
    for fmt, kw in (("JPEG", {"quality": 90}), ("JPEG", {"progressive": True}), ("WEBP", {})):
        Image.fromarray(np.zeros((37, 61, 3), np.uint8)).save(buf, fmt, **kw)
        assert image_shape(buf.read_bytes()) == (37, 61)
    with pytest.raises(ValueError, match="PNG"):
        image_shape(png[:-20])
    with pytest.raises(ValueError, match="not a JPEG"):
        image_shape(b"GIF89a" + b"\0" * 64)
    Image.fromarray(np.zeros((37, 61, 3), np.uint8)).save(buf, "JPEG")
    jpeg = buf.read_bytes()
    with pytest.raises(ValueError, match="JPEG"):
        image_shape(jpeg[:2] + b"\0" * 40 + jpeg[-2:])


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    folder = tmp_path / "mixed"
    bad = _corrupt_set(folder)
    loader = _loader(folder, batch_size=8, image_size=16, recipe=GEOMETRY, drop_last=False)
    bad_index = {i for i, p in enumerate(loader.paths) if Path(p) in bad.values()}
    assert len(bad_index) == 3
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert sum(len(b) for b in batches) == 32
            assert sum(b.skipped for b in batches) == 3
            used = set(torch.cat([b.index for b in batches]).tolist())
            assert not used & bad_index
    for p in bad.values():  # logged once per file, not once per epoch
        assert sum(str(p) in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kind", ["truncated", "text", "damaged"])
def test_corrupt_files_raise_naming_the_file(tmp_path, kind):
    folder = tmp_path / kind
    bad = _corrupt_set(folder)
    for other in set(bad) - {kind}:
        bad[other].unlink()
    loader = _loader(folder, batch_size=8, image_size=16, recipe=GEOMETRY, drop_last=False, on_corrupt="error")
    with pytest.raises(CorruptImageError, match=bad[kind].name):
        list(loader)


def test_a_pass_leaves_no_running_pipeline_behind(small_dir):
    """Finished or abandoned, a pass shuts its DALI pipeline down itself, even while something
    still holds the pipeline object (as a reference cycle would until the garbage collector
    runs, possibly in a later forked worker, where the shutdown hangs)."""
    from nvidia.dali.pipeline import Pipeline

    def running():
        return [p() for p in Pipeline._pipes if p() is not None and p()._pipe is not None]

    loader = _loader(small_dir, batch_size=16, image_size=32)
    before = {id(p) for p in running()}
    for abandon in (False, True):
        it = iter(loader)
        next(it)
        held = [p for p in running() if id(p) not in before]  # kept alive past the pass
        assert held
        if abandon:
            it.close()
        else:
            assert len(list(it)) == len(loader) - 1
        assert all(p._pipe is None for p in held)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("dali-crop")]
        del held


def test_decode_region_is_the_whole_pixel_union_of_the_windows():
    recipe = BYOL
    h, w = np.array([300, 97, 480]), np.array([400, 113, 200])
    params = sampler.draw(sampler.recipe_spec(recipe, 64), 64, 5, 0, np.arange(3), h, w)
    anchor, shape = decode_region(params, h, w)
    for i in range(3):
        tops, lefts = params[i, :, P["top"]], params[i, :, P["left"]]
        bottoms, rights = tops + params[i, :, P["height"]], lefts + params[i, :, P["width"]]
        y0, x0 = anchor[i]
        y1, x1 = anchor[i] + shape[i]
        assert y0 == math.floor(tops.min()) and x0 == math.floor(lefts.min())
        assert y1 == min(math.ceil(bottoms.max()), h[i]) and x1 == min(math.ceil(rights.max()), w[i])
        assert 0 <= y0 and 0 <= x0 and y1 <= h[i] and x1 <= w[i]
