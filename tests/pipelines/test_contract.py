"""One contract for every installed backend: N views of any size, the box contract for every
view of every preset, and the same draws (windows, flips, colour) from the one sampler."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from coordinate_plane import corner_errors, denormalise, write_coordinate_planes
from sample_data import installed_backends
from pipelines import build_loader, get_recipe, sampler

PLANE_SIZES = [(300, 301), (64, 300), (200, 90), (150, 200), (97, 113), (250, 333), (120, 120), (180, 260)]
IMAGE_SIZE = 32
PRESETS = ["byol", "swav_multicrop", "loca", "single"]


BACKENDS = installed_backends()


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    write_coordinate_planes(root / "img", PLANE_SIZES)
    beton = None
    if "ffcv" in BACKENDS:
        from pipelines import ffcv_writer as FW
        beton = root / "planes.beton"
        FW.write_beton(root / "img", beton, max_resolution=0, jpeg_quality=95, num_workers=1, progress=False)
    return root / "img", beton


def _loader(backend, planes, recipe, **kw):
    folder, beton = planes
    extra = {"torch": {"num_workers": 0}, "dali": {"num_workers": 1}, "ffcv": {"num_workers": 1, "scale_decode": False}}
    return build_loader(backend, beton if backend == "ffcv" else folder, batch_size=4, image_size=IMAGE_SIZE,
                        recipe=recipe, seed=11, **extra[backend], **kw)


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
        got = np.stack([np.asarray(p) for p in got], axis=1) if isinstance(got, tuple) else np.asarray(got)
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
    """The planes with image BAD's bytes damaged: in a copy of the folder, and in a copy of the
    .beton (the writer leaves unreadable files out, so only a damaged file can hold one)."""
    import shutil
    folder, beton = planes
    root = tmp_path_factory.mktemp("damaged")
    copy = root / "img"
    shutil.copytree(folder, copy)
    path = sorted(copy.iterdir())[BAD]
    data = bytearray(path.read_bytes())
    _damage(data, 0)
    path.write_bytes(bytes(data))
    broken = None
    if beton is not None:
        from ffcv.reader import Reader
        from pipelines.ffcv_loader import FFCVLoader, stored_image_span
        reader = Reader(str(beton))
        sample = int(np.flatnonzero(FFCVLoader._index_column(reader) == BAD)[0])
        ptr, _ = stored_image_span(reader, sample)
        data = bytearray(beton.read_bytes())
        _damage(data, ptr)
        broken = root / "damaged.beton"
        broken.write_bytes(bytes(data))
    return copy, broken, path.name


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_image_is_replaced_by_the_next_readable_one_of_the_epoch_order(backend, damaged, caplog):
    """One rule on every backend: the sample at epoch position p is replaced by the one at
    p + 1, with that one's own draws; counted in Batch.skipped, logged once per loader."""
    import logging

    from pipelines.epoch import epoch_order
    folder, beton, _ = damaged
    recipe = get_recipe("byol")
    loader = _loader(backend, (folder, beton), recipe, drop_last=False)
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
    folder, beton, name = damaged
    loader = _loader(backend, (folder, beton), get_recipe("byol"), drop_last=False, on_corrupt="error")
    with pytest.raises(CorruptImageError, match=f"sample {BAD} of" if backend == "ffcv" else name):
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
def oversized(planes, tmp_path_factory):
    """The planes plus a constant 1200 x 1200 PNG (1.44 megapixels, above CAP): in a copy of
    the folder and in a .beton written without a cap; and its dataset index."""
    import shutil
    from PIL import Image
    from pipelines.image_folder import scan_image_folder
    folder, beton = planes
    root = tmp_path_factory.mktemp("oversized")
    copy = root / "img"
    shutil.copytree(folder, copy)
    Image.new("RGB", (1200, 1200), (90, 140, 200)).save(copy / "big.png")
    big = [p.name for p in scan_image_folder(copy).paths].index("big.png")
    if beton is not None:
        from pipelines import ffcv_writer as FW
        beton = root / "oversized.beton"
        FW.write_beton(copy, beton, max_resolution=0, jpeg_quality=95, num_workers=1, progress=False, max_pixels=0)
    return copy, beton, big


def _big_name(backend, big):
    return f"sample {big} of" if backend == "ffcv" else "big.png"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_above_the_pixel_cap_is_skipped_and_named_with_its_size(backend, oversized, caplog):
    import logging
    import warnings
    from PIL import Image
    folder, beton, big = oversized
    loader = _loader(backend, (folder, beton), get_recipe("byol"), drop_last=False, max_pixels=CAP)
    with caplog.at_level(logging.WARNING, logger="pipelines"), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        batches = list(loader)
    index = torch.cat([b.index for b in batches]).tolist()
    assert len(index) == len(PLANE_SIZES) + 1 and big not in index
    assert sum(b.skipped for b in batches) == 1
    warned = [r.getMessage() for r in caplog.records if "cap (max_pixels)" in r.getMessage()]
    assert len(warned) == 1 and _big_name(backend, big) in warned[0], warned
    assert "1200 x 1200 = 1.4 megapixels, above the 1-megapixel cap (max_pixels)" in warned[0]
    if backend == "ffcv":  # the decoder's scratch memory is sized for the images within the cap
        assert loader.decoder.scratch_pixels == max(h * w for h, w in PLANE_SIZES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_above_the_pixel_cap_in_error_mode_names_it(backend, oversized):
    from pipelines.corrupt import CorruptImageError
    folder, beton, big = oversized
    loader = _loader(backend, (folder, beton), get_recipe("byol"), drop_last=False, max_pixels=CAP,
                     on_corrupt="error")
    with pytest.raises(CorruptImageError, match=f"{_big_name(backend, big)}.*: 1200 x 1200 = 1.4 megapixels"):
        list(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_default_cap_refuses_a_huge_image_from_its_header(backend, planes, tmp_path, monkeypatch, caplog):
    """A 20 KB PNG of 12000 x 12000 pixels beside the planes is never decoded, and no library
    warns about it: the torch and DALI loaders skip it, the FFCV writer leaves it out."""
    import logging
    import shutil
    import warnings
    from PIL import Image, ImageFile
    from sample_data import black_png
    folder = tmp_path / "img"
    shutil.copytree(planes[0], folder)
    (folder / "huge.png").write_bytes(black_png(12000, 12000))
    load = ImageFile.ImageFile.load

    def small_only(img):
        assert img.size[0] * img.size[1] <= CAP, f"decoded an image of {img.size}"
        return load(img)
    monkeypatch.setattr(ImageFile.ImageFile, "load", small_only)
    huge = "12000 x 12000 = 144.0 megapixels, above the 50-megapixel cap (max_pixels)"
    with caplog.at_level(logging.WARNING, logger="pipelines"), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if backend == "ffcv":
            from pipelines import ffcv_writer as FW
            report = FW.write_beton(folder, tmp_path / "x.beton", max_resolution=0, num_workers=1, progress=False)
            assert report.skipped == [(str(folder / "huge.png"), huge)]
            assert report.written == len(PLANE_SIZES)
            return
        batches = list(_loader(backend, (folder, None), get_recipe("byol"), drop_last=False))
    assert sum(b.skipped for b in batches) == 1
    warned = [r.getMessage() for r in caplog.records if "huge.png" in r.getMessage()]
    assert len(warned) == 1 and huge in warned[0], warned
