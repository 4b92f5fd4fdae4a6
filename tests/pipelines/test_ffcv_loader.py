"""The ffcv backend and its writer: box contract, recipe statistics, determinism, sharding,
batch contract, bad input. Skipped where FFCV is not installed.

FFCV JIT-compiles a loader's pipeline on its first batch (several seconds on 2 cores), so
the loaders are built once per module and reused through ``set_epoch``.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.batch import keep_torch_threads  # noqa: E402

with keep_torch_threads():  # importing ffcv sets torch's thread count to 1 for the whole process
    pytest.importorskip("ffcv")
# numba may complain while collecting the dispatchers of a finished loader; harmless
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

from sample_data import class_folder_size  # noqa: E402
from coordinate_plane import corner_errors, denormalise, write_coordinate_planes  # noqa: E402
from pipelines import build_loader  # noqa: E402
from pipelines import ffcv_loader as FL  # noqa: E402
from pipelines import ffcv_writer as FW  # noqa: E402
from pipelines.batch import Batch  # noqa: E402
from pipelines import sampler  # noqa: E402
from torchvision.transforms import RandomResizedCrop  # noqa: E402
from pipelines.recipe import BYOL  # noqa: E402

GEOMETRY = BYOL.without_colour()
SIZE = 64
# (height, width): odd and extreme aspects, smaller than the output, and large enough for
# DCT-scaled decoding (windows >= 2 * SIZE) to happen
PLANE_SIZES = [(300, 301), (64, 900), (900, 64), (40, 50), (700, 1000), (512, 384)]


def corner_tolerance(height: int, width: int, size: int) -> float:
    """Allowed corner error on the [0, 1] scale (same reasoning as the torch backend's test).

    The contract puts the view's corner pixels at the window's first and last pixel while a
    resampler aligns pixel edges: half an input pixel when upscaling, half an output pixel
    when downscaling; DCT-scaled decoding moves a window edge by less than one decoded
    pixel (its box is reported in the decoded image, whose pixel is up to 8 original ones,
    so the bound is in decoded pixels: at least ``size`` of them span the window). Then the
    8-bit position code and JPEG error (4 levels). A wrong flip or a window off by its own
    size gives errors of 0.1 or more.
    """
    half_pixel = 0.5 / (min(height, width) - 1) + 0.5 / (size - 1)
    return half_pixel + 1.0 / size + 4.0 / 255


@pytest.fixture(scope="module")
def plane_beton(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv_planes")
    write_coordinate_planes(root / "img", PLANE_SIZES * 3)
    out = root / "planes.beton"
    report = FW.write_beton(root / "img", out, max_resolution=0, jpeg_quality=95, num_workers=2, progress=False)
    assert report.written == 3 * len(PLANE_SIZES) and not report.skipped
    return out


@pytest.fixture(scope="module")
def geometry_loader(plane_beton):
    return FL.FFCVLoader(plane_beton, batch_size=4, image_size=SIZE, recipe=GEOMETRY, num_workers=2, seed=5)


def _collect(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return [Batch((b.view1.clone(), b.view2.clone()), b.coords, b.index, b.skipped) for b in loader]


def _same(a: Batch, b: Batch) -> bool:
    return (torch.equal(a.view1, b.view1) and torch.equal(a.view2, b.view2) and torch.equal(a.coords1, b.coords1)
            and torch.equal(a.coords2, b.coords2) and torch.equal(a.index, b.index))


# --------------------------------------------------------------------------- the box contract

def test_corners_match_coords_flips_included(geometry_loader):
    flips = scaled = 0
    for epoch in range(3):
        for batch in _collect(geometry_loader, epoch):
            assert batch.skipped == 0
            for view, coords in ((batch.view1, batch.coords1), (batch.view2, batch.coords2)):
                err = corner_errors(denormalise(view, GEOMETRY.mean, GEOMETRY.std), coords)
                for e, i, c in zip(err, batch.index, coords):
                    h, w = PLANE_SIZES[int(i) % len(PLANE_SIZES)]
                    assert e <= corner_tolerance(h, w, SIZE), (int(i), e.item(), c.tolist())
                    flips += bool(c[0] > c[2])
                    # a window of at least 2 * SIZE decoded pixels means the JPEG was DCT-scaled
                    scaled += bool(abs(c[2] - c[0]) * (w - 1) >= 2 * SIZE and abs(c[3] - c[1]) * (h - 1) >= 2 * SIZE)
    assert flips > 0 and scaled > 0


def test_wrong_coords_would_be_caught(geometry_loader):
    """The corner check is sensitive: unflipping the coords of a flipped (wide) view fails it."""
    best = None
    for batch in _collect(geometry_loader, 0):
        span = batch.coords1[:, 0] - batch.coords1[:, 2]  # positive when flipped
        k = int(span.argmax())
        if span[k] > 0.3 and (best is None or span[k] > best[0]):
            best = (float(span[k]), batch, k)
    assert best is not None, "no wide flipped view drawn"
    _, batch, k = best
    h, w = PLANE_SIZES[int(batch.index[k]) % len(PLANE_SIZES)]
    c = batch.coords1[k:k + 1][:, [2, 1, 0, 3]]
    err = corner_errors(denormalise(batch.view1[k:k + 1], GEOMETRY.mean, GEOMETRY.std), c)
    assert err.item() > 3 * corner_tolerance(h, w, SIZE)


# --------------------------------------------------------------------------- determinism and epochs

def test_same_batches_for_any_thread_count_and_resume(plane_beton, geometry_loader):
    full = _collect(geometry_loader, epoch=4)
    assert len(full) == len(geometry_loader) == (3 * len(PLANE_SIZES)) // 4
    one_thread = FL.FFCVLoader(plane_beton, batch_size=4, image_size=SIZE, recipe=GEOMETRY, num_workers=1, seed=5)
    assert all(_same(a, b) for a, b in zip(full, _collect(one_thread, epoch=4)))
    resumed = _collect(geometry_loader, epoch=4, start=2)
    assert len(resumed) == len(full) - 2 and all(_same(a, b) for a, b in zip(full[2:], resumed))
    again = list(geometry_loader)  # a pass without set_epoch follows on: the next epoch, from its start
    other = _collect(geometry_loader, epoch=5)
    assert len(again) == len(full) and all(_same(a, b) for a, b in zip(again, other))
    assert not torch.equal(torch.cat([b.index for b in full]), torch.cat([b.index for b in other]))
    with pytest.raises(ValueError):
        geometry_loader.set_epoch(0, len(geometry_loader) + 1)


def test_torch_keeps_its_thread_count(plane_beton):
    """FFCV sets torch's process-wide thread count to its worker count (on import, on
    building a Loader, on starting a pass); the loader puts the caller's back."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        loader = FL.FFCVLoader(plane_beton, batch_size=4, image_size=SIZE, recipe=GEOMETRY, num_workers=1, seed=5)
        assert torch.get_num_threads() == 3
        assert len(_collect(loader)) == len(loader)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("os_cache", [True, False])
def test_loading_leaves_numbas_shared_array_types_writable(plane_beton, os_cache):
    """numba interns its array types: marking one read-only in place (as FFCV's memory
    managers would) changes its hash under every dispatcher already compiled for it, and the
    next compilation there fails. A kernel compiled before the loader keeps working after."""
    import numba as nb

    @nb.njit
    def total(a):
        return a.sum()

    @nb.njit
    def call_total(a):  # typing this call lists total's compiled signatures
        return total(a)

    row = np.arange(5, dtype=np.uint8)
    assert call_total(row) == 10
    shared = [nb.typeof(row), nb.typeof(row.reshape(1, 5)), nb.typeof(row.astype(np.uint64)),
              nb.typeof(row.astype(np.uint32))]
    loader = FL.FFCVLoader(plane_beton, batch_size=4, image_size=SIZE, recipe=GEOMETRY, num_workers=1, seed=5,
                           os_cache=os_cache)
    assert len(_collect(loader)) == len(loader)
    assert all(t.mutable for t in shared), shared
    assert call_total(row.astype(np.float32)) == 10  # a second specialisation


def test_leaving_a_pass_early_then_starting_another(geometry_loader):
    geometry_loader.set_epoch(6)
    for _ in zip(range(1), geometry_loader):
        pass
    rest = _collect(geometry_loader, epoch=6)
    assert len(rest) == len(geometry_loader)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sharding_plans_cover_the_epoch(plane_beton, drop_last):
    n = 3 * len(PLANE_SIZES)  # 18 samples, 2 ranks x batch 4
    loaders = [FL.FFCVLoader(plane_beton, batch_size=4, image_size=SIZE, recipe=GEOMETRY, num_workers=1,
                             rank=r, world_size=2, drop_last=drop_last, seed=2) for r in range(2)]
    orders = [l._rank_order(3).astype(np.int64) for l in loaders]
    assert len(loaders[0]) == len(loaders[1])
    if drop_last:
        assert len(orders[0]) == len(orders[1]) == 8 and len(set(orders[0]) | set(orders[1])) == 16
    else:  # padded to 9 + 9: every sample at least once, the last batch of a rank short
        assert len(orders[0]) == len(orders[1]) == 9 and set(orders[0]) | set(orders[1]) == set(range(n))
        assert len(loaders[0]) == 3
    assert not set(orders[0][:8]) & set(orders[1][:8])


def test_quasi_random_order_is_a_deterministic_permutation():
    pages = np.repeat(np.arange(10), 7)[np.random.default_rng(0).permutation(70)]
    a = FL.quasi_random_order(pages, seed=1, epoch=2, window=8)
    assert sorted(a.tolist()) == list(range(70))
    assert np.array_equal(a, FL.quasi_random_order(pages, seed=1, epoch=2, window=8))
    assert not np.array_equal(a, FL.quasi_random_order(pages, seed=1, epoch=3, window=8))
    # nearly sequential on disk: a window of 8 samples touches few pages
    touched = [len(set(pages[a[i:i + 8]])) for i in range(0, 64, 8)]
    assert max(touched) <= 3


def test_quasi_random_loader_plan(plane_beton):
    loader = FL.FFCVLoader(plane_beton, batch_size=4, image_size=SIZE, recipe=GEOMETRY, num_workers=1,
                           order="quasi_random")
    order = loader._rank_order(0).astype(np.int64)
    assert len(order) == 16 and len(set(order.tolist())) == 16


# --------------------------------------------------------------------------- recipe statistics

def test_window_sampler_matches_the_torchvision_distribution():
    """The shared numba sampler against torchvision's RandomResizedCrop."""
    n, (h, w) = 4000, (375, 500)
    lr = (math.log(3 / 4), math.log(4 / 3))
    ours, state = [], sampler.stream(0, 0, 0, 0, 0)
    for _ in range(n):
        # keep the state uint64 between calls, as inside the compiled decoder
        top, left, ch, cw, state = sampler.sample_window(np.uint64(state), h, w, 0.08, 1.0, *lr)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        ours.append((ch * cw / (h * w), cw / ch, (top + ch / 2) / h))
    torch.manual_seed(0)
    ref = []
    for _ in range(n):
        top, left, ch, cw = RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
        ref.append((ch * cw / (h * w), cw / ch, (top + ch / 2) / h))
    ours, ref = np.array(ours), np.array(ref)
    for k in range(3):
        qs = np.linspace(0.05, 0.95, 10)
        assert np.abs(np.quantile(ours[:, k], qs) - np.quantile(ref[:, k], qs)).max() < 0.05, k


@pytest.fixture(scope="module")
def full_loader(folder_beton):
    return build_loader("ffcv", folder_beton, batch_size=8, image_size=32, recipe=BYOL, num_workers=2, seed=3)


def _rate_ok(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_recipe_statistics_through_the_loader(full_loader):
    flips = [0, 0]
    grey = [0, 0]
    areas = []
    n = 0
    for epoch in range(12):
        for b in _collect(full_loader, epoch):
            n += len(b)
            for v, (view, coords) in enumerate(((b.view1, b.coords1), (b.view2, b.coords2))):
                flips[v] += int((coords[:, 0] > coords[:, 2]).sum())
                spread = view.float().amax(dim=(2, 3)) - view.float().amin(dim=(2, 3))
                x = denormalise(view, BYOL.mean, BYOL.std)
                same = ((x[:, 0] - x[:, 1]).abs().amax(dim=(1, 2)) < 1e-4) & ((x[:, 1] - x[:, 2]).abs().amax(dim=(1, 2)) < 1e-4)
                grey[v] += int((same & (spread.amax(dim=1) > 0)).sum())
                areas += ((coords[:, 2] - coords[:, 0]).abs() * (coords[:, 3] - coords[:, 1]).abs()).tolist()
    assert n == 12 * 24
    for v, view in enumerate(BYOL.views):
        assert _rate_ok(flips[v], n, view.flip_p), (v, flips[v], n)
        # a grayscale view has r == g == b after normalisation is undone; other views almost never do
        assert _rate_ok(grey[v], n, view.grayscale_p), (v, grey[v], n)
    # crop areas (normalised as the contract does) against torchvision's sampler on the same images
    areas = np.array(areas)
    torch.manual_seed(0)
    ref = []
    for i in range(24):
        h, w = class_folder_size(i)
        for _ in range(100):
            top, left, ch, cw = RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
            ref.append((ch - 1) / (h - 1) * (cw - 1) / (w - 1))
    ref = np.array(ref)
    assert areas.min() >= 0.03 and areas.max() <= 1.0
    assert abs(areas.mean() - ref.mean()) < 4.5 * math.sqrt(areas.var() / len(areas) + ref.var() / len(ref))


# --------------------------------------------------------------------------- batch contract

def test_indices_are_positions_in_the_folder_listing(full_loader, folder):
    """The writer keeps each image's place in the folder (unreadable files included) as the
    sample's dataset index."""
    assert len(full_loader) == 3  # 24 readable images, batch 8, drop_last
    seen = torch.cat([b.index for b in _collect(full_loader, 0)]).tolist()
    names = [p.name for p in FW.scan_image_folder(folder).paths]
    assert len(set(seen)) == 24 and all(names[i].startswith("img_") for i in seen)


def test_build_loader_options_and_dtype(folder_beton):
    loader = build_loader("ffcv", folder_beton, batch_size=5, image_size=24, recipe=GEOMETRY, num_workers=1,
                          drop_last=False, dtype=torch.bfloat16, batches_ahead=1, os_cache=False)
    assert len(loader) == 5
    sizes = [len(b) for b in _collect(loader, 0)]
    assert sizes == [5, 5, 5, 5, 4]
    b = next(iter(loader))
    assert b.view1.dtype == torch.bfloat16 and b.view1.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- writer


def test_clear_errors(tmp_path, folder):
    with pytest.raises(IsADirectoryError, match="ffcv_writer"):
        build_loader("ffcv", folder, batch_size=2)
    with pytest.raises(FileNotFoundError, match="ffcv_writer"):
        build_loader("ffcv", tmp_path / "missing.beton", batch_size=2)


def test_decoder_scratch_memory_is_sized_for_the_images_within_the_loaders_cap(tmp_path):
    from sample_data import jpeg_folder
    folder = jpeg_folder(tmp_path / "img", 3, (40, 50), (8, 8))
    Image.new("RGB", (1200, 1200), (90, 140, 200)).save(folder / "big.png")
    FW.write_beton(folder, tmp_path / "x.beton", max_resolution=0, num_workers=1, progress=False, max_pixels=0)
    loader = FL.FFCVLoader(tmp_path / "x.beton", batch_size=2, image_size=32, recipe=GEOMETRY, num_workers=1,
                           max_pixels=1_000_000)
    batches = list(loader)
    assert sum(b.skipped for b in batches) <= 1   # the big one, where the epoch reached it
    assert loader.decoder.scratch_pixels == 56 * 66   # the largest of the JPEGs, not the PNG
