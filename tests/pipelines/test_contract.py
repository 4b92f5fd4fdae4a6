"""One contract for every installed backend: N views of any size, the box contract for every
view of every preset, and the same draws (windows, flips, colour) from the one sampler."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from coordinate_plane import corner_errors, denormalise, write_coordinate_planes
from sample_data import installed_backends, loader_source
from pipelines import build_loader, get_recipe, sampler

PLANE_SIZES = [(300, 301), (64, 300), (200, 90), (150, 200), (97, 113), (250, 333), (120, 120), (180, 260)]
IMAGE_SIZE = 32
PRESETS = ["byol", "swav_multicrop", "loca", "single"]


BACKENDS = installed_backends()


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    """The coordinate planes as each installed backend reads them."""
    root = tmp_path_factory.mktemp("contract")
    write_coordinate_planes(root / "img", PLANE_SIZES)
    return {b: loader_source(b, root / "img", root / f"planes.{b}") for b in BACKENDS}


def _loader(backend, sources, recipe, **kw):
    return build_loader(backend, sources[backend], batch_size=4, image_size=IMAGE_SIZE, recipe=recipe, seed=11,
                        num_workers=0, **kw)


def _tolerance(size: int) -> float:
    """Half an output pixel (contract corners vs resampler pixel centres), half a source
    pixel, plus 8-bit position code and JPEG error."""
    return 0.5 / (size - 1) + 0.5 / 63 + 4.0 / 255


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_view_keeps_the_batch_and_box_contract(backend, preset, planes):
    recipe = get_recipe(preset).without_colour()
    loader = _loader(backend, planes, recipe)
    sizes = recipe.output_sizes(IMAGE_SIZE)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    for b in batches:
        assert b.num_views == recipe.num_views == len(b.coords) and len(b) == 4
        assert b.view1 is b.views[0] and b.coords1 is b.coords[0]
        for k, (view, coords, size) in enumerate(zip(b.views, b.coords, sizes)):
            assert view.shape == (4, 3, size, size) and view.dtype == torch.float32
            assert view.is_contiguous(memory_format=torch.channels_last)
            assert coords.shape == (4, 4) and coords.dtype == torch.float32 and coords.is_contiguous()
            assert 0 <= coords.min() and coords.max() <= 1
            err = corner_errors(denormalise(view, recipe.mean, recipe.std), coords)
            assert (err <= _tolerance(size)).all(), (backend, preset, k, err.tolist())
        assert b.index.dtype == torch.int64
    flips = torch.cat([c[:, 0] > c[:, 2] for b in batches for c in b.coords[:2]])
    if recipe.views[0].flip_p > 0:
        assert flips.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pass_yields_every_sample_once_normalised_and_kept_while_held(backend, planes):
    """len() batches, each sample of the epoch once (drop_last, a whole number of batches),
    the views normalised with the recipe's mean and std, and a batch the consumer still holds
    not overwritten by the ones after it (the loaders reuse their buffers)."""
    recipe = get_recipe("byol")
    loader = _loader(backend, planes, recipe)
    batches = list(loader)
    assert len(batches) == len(loader) == len(PLANE_SIZES) // 4
    first, kept = batches[0], batches[0].views[0].clone()
    index = torch.cat([b.index for b in batches]).tolist()
    assert sorted(index) == list(range(len(PLANE_SIZES)))
    for b in batches:
        assert b.skipped == 0 and b.index.shape == (4,)
        for v in b.views:
            x = denormalise(v, recipe.mean, recipe.std)
            assert torch.isfinite(v).all() and x.min() > -1e-3 and x.max() < 1 + 1e-3 and x.std() > 0.05
    list(loader)   # another pass
    assert torch.equal(first.views[0], kept)


def _expected(recipe, index):
    h = np.array([PLANE_SIZES[i][0] for i in index])
    w = np.array([PLANE_SIZES[i][1] for i in index])
    return sampler.draw(recipe, IMAGE_SIZE, 11, 0, index, h, w)


@pytest.mark.parametrize("preset", ["byol", "swav_multicrop"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_use_the_one_draw(backend, preset, planes):
    """Coords, flips and colour draws equal sampler.draw for the sample's key (seed, epoch,
    dataset index, view) -- so they are the same on every backend; ``last_params`` holds the
    draws of the batch just handed over (not of one a read-ahead thread made since)."""
    recipe = get_recipe(preset)
    loader = _loader(backend, planes, recipe)
    batches = 0
    for b in loader:
        want = _expected(recipe, b.index.numpy())
        for v, coords in enumerate(b.coords):
            torch.testing.assert_close(coords, sampler.coords_of(want[:, v]), atol=1e-6, rtol=0)
        got = loader.last_params
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, atol=1e-12)
        batches += 1
    assert batches > 1
    # the colour draws are real draws: factors vary, some views jittered and some not
    jit = want[:, :, sampler.P["jitter"]]
    assert got.shape == (4, recipe.num_views, len(sampler.PARAM_NAMES))
    assert 0 < jit.sum() <= jit.size


def test_draws_do_not_depend_on_batch_or_rank():
    recipe = get_recipe("swav_multicrop")
    idx = np.arange(20)
    a = sampler.draw(recipe, 224, 3, 2, idx, np.full(20, 300), np.full(20, 400))
    b = np.concatenate([sampler.draw(recipe, 224, 3, 2, idx[s], np.full(5, 300), np.full(5, 400))
                        for s in (slice(10, 15), slice(0, 5), slice(15, 20), slice(5, 10))])
    order = np.concatenate([np.arange(10, 15), np.arange(5), np.arange(15, 20), np.arange(5, 10)])
    assert np.array_equal(a[order], b)
    c = sampler.draw(recipe, 224, 3, 3, idx, np.full(20, 300), np.full(20, 400))
    assert not np.array_equal(a, c)
    # views of one sample are drawn independently
    assert len({tuple(r[:4]) for r in a[0]}) == recipe.num_views


# --------------------------------------------------------------------------- unreadable images

BAD = 5  # dataset index of the damaged image


def _damage(data: bytearray, at: int) -> None:
    junk = b"not a JPEG, only bytes in its place. " * 2
    data[at:at + 64] = junk[:64]  # the same length: nothing after it moves


@pytest.fixture(scope="module")
def damaged(planes, tmp_path_factory):
    """The planes with image BAD's bytes damaged, as each backend reads them: in a copy of the
    folder, and in a copy of the .beton (the writer leaves unreadable files out, so only a
    damaged file can hold one). Sample BAD keeps its place: items and dataset indices agree."""
    import shutil
    root = tmp_path_factory.mktemp("damaged")
    sources = {}
    for backend, source in planes.items():
        copy = root / f"{backend}.{source.name}"
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
        if copy.is_dir():
            path = sorted(copy.iterdir())[BAD]
            start, data = 0, bytearray(path.read_bytes())
        else:
            from ffcv.reader import Reader
            from pipelines.ffcv_loader import stored_image_span
            path, data = copy, bytearray(copy.read_bytes())
            start, _ = stored_image_span(Reader(str(copy)), BAD)
        _damage(data, start)
        path.write_bytes(bytes(data))
        sources[backend] = copy
    return sources


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_image_is_replaced_by_the_next_readable_one_of_the_epoch_order(backend, damaged, caplog):
    """One rule on every backend: the sample at epoch position p is replaced by the one at
    p + 1, with that one's own draws; counted in Batch.skipped, logged once per loader."""
    import logging

    from pipelines.epoch import epoch_order
    recipe = get_recipe("byol")
    loader = _loader(backend, damaged, recipe, drop_last=False)
    n = len(PLANE_SIZES)
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            batches = list(loader)
            index = torch.cat([b.index for b in batches]).numpy()
            order = epoch_order(n, 11, epoch)
            p = int(np.flatnonzero(order == BAD)[0])
            want = order.copy()
            want[p] = order[(p + 1) % n]
            assert index.tolist() == want.tolist(), (backend, epoch)
            assert sum(b.skipped for b in batches) == 1
            coords = [torch.cat([b.coords[v] for b in batches]) for v in range(recipe.num_views)]
            drawn = sampler.draw(recipe, IMAGE_SIZE, 11, epoch, want, np.array([PLANE_SIZES[i][0] for i in want]),
                                 np.array([PLANE_SIZES[i][1] for i in want]))
            for v in range(recipe.num_views):
                torch.testing.assert_close(coords[v], sampler.coords_of(drawn[:, v]), atol=1e-6, rtol=0)
            replaced = torch.cat([b.views[0] for b in batches])[p]
            assert replaced.std() > 0.1  # a real image, not a placeholder
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1, warned


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_image_in_error_mode_names_it(backend, damaged):
    from pipelines.corrupt import CorruptImageError
    loader = _loader(backend, damaged, get_recipe("byol"), drop_last=False, on_corrupt="error")
    with pytest.raises(CorruptImageError, match=re.escape(f"cannot decode image {loader.sample_name(BAD)}: ")):
        list(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pass_repeats_exactly_and_resumes_mid_epoch(backend, planes):
    """The same epoch twice gives the same batches; set_epoch(e, k) gives batches k.. of it."""
    recipe = get_recipe("swav_multicrop")
    loader = _loader(backend, planes, recipe)

    def epoch(e, start=0):
        loader.set_epoch(e, start)
        return [(b.index.clone(), [c.clone() for c in b.coords], [v.clone() for v in b.views]) for b in loader]

    def same(a, b):
        return (torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
                and all(torch.equal(x, y) for x, y in zip(a[2], b[2])))

    full = epoch(1)
    assert len(full) == 2
    again = epoch(1)
    assert all(same(a, b) for a, b in zip(full, again))
    rest = epoch(1, 1)
    assert len(rest) == 1 and same(rest[0], full[1])
    assert not same(epoch(2)[0], full[0])  # another epoch, other draws


# --------------------------------------------------------------------------- images above the pixel cap

CAP = 1_000_000


@pytest.fixture(scope="module")
def oversized(tmp_path_factory):
    """The planes plus a constant 1200 x 1200 PNG (1.44 megapixels, above CAP) as each backend
    reads them (a .beton written without a cap), and its dataset index (its item too)."""
    from PIL import Image
    from pipelines.image_folder import scan_image_folder
    root = tmp_path_factory.mktemp("oversized")
    write_coordinate_planes(root / "img", PLANE_SIZES)
    Image.new("RGB", (1200, 1200), (90, 140, 200)).save(root / "img" / "big.png")
    big = [p.name for p in scan_image_folder(root / "img").paths].index("big.png")
    return {b: loader_source(b, root / "img", root / f"big.{b}", max_pixels=0) for b in BACKENDS}, big


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_above_the_pixel_cap_is_skipped_and_named_with_its_size(backend, oversized, caplog):
    import logging
    import warnings
    from PIL import Image
    sources, big = oversized
    loader = _loader(backend, sources, get_recipe("byol"), drop_last=False, max_pixels=CAP)
    with caplog.at_level(logging.WARNING, logger="pipelines"), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        batches = list(loader)
    index = torch.cat([b.index for b in batches]).tolist()
    assert len(index) == len(PLANE_SIZES) + 1 and big not in index
    assert sum(b.skipped for b in batches) == 1
    warned = [r.getMessage() for r in caplog.records if "cap (max_pixels)" in r.getMessage()]
    assert len(warned) == 1 and loader.sample_name(big) in warned[0], warned
    assert "1200 x 1200 = 1.4 megapixels, above the 1-megapixel cap (max_pixels)" in warned[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_above_the_pixel_cap_in_error_mode_names_it(backend, oversized):
    from pipelines.corrupt import CorruptImageError
    sources, big = oversized
    loader = _loader(backend, sources, get_recipe("byol"), drop_last=False, max_pixels=CAP, on_corrupt="error")
    with pytest.raises(CorruptImageError, match=re.escape(f"{loader.sample_name(big)}: 1200 x 1200 = 1.4 megapixels")):
        list(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_default_cap_refuses_a_huge_image_from_its_header(backend, tmp_path, monkeypatch, caplog):
    """A 20 KB PNG of 12000 x 12000 pixels beside the planes is never decoded, and no library
    warns about it: a loader of the folder skips it and names it with its size; the FFCV
    writer leaves it out of the file (its report names it: test_ffcv_loader)."""
    import logging
    import warnings
    from PIL import Image, ImageFile
    from sample_data import black_png
    folder = tmp_path / "img"
    write_coordinate_planes(folder, PLANE_SIZES)
    (folder / "huge.png").write_bytes(black_png(12000, 12000))
    load = ImageFile.ImageFile.load

    def small_only(img):
        assert img.size[0] * img.size[1] <= CAP, f"decoded an image of {img.size}"
        return load(img)
    monkeypatch.setattr(ImageFile.ImageFile, "load", small_only)
    huge = "12000 x 12000 = 144.0 megapixels, above the 50-megapixel cap (max_pixels)"
    with caplog.at_level(logging.WARNING, logger="pipelines"), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        source = loader_source(backend, folder, tmp_path / "x.beton")
        loader = _loader(backend, {backend: source}, get_recipe("byol"), drop_last=False)
        batches = list(loader)
    warned = [r.getMessage() for r in caplog.records if "huge.png" in r.getMessage()]
    if loader.num_samples == len(PLANE_SIZES):   # left out of the source
        assert sum(b.skipped for b in batches) == 0 and not warned
    else:
        assert loader.num_samples == len(PLANE_SIZES) + 1 and sum(b.skipped for b in batches) == 1
        assert len(warned) == 1 and huge in warned[0], warned
