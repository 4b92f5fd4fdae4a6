"""Decoding a file once for all its views: the views sit where their boxes say, on every
format, with or without DCT-reduced decoding; torchvision's JPEG decoder gives PIL's pixels."""
import numpy as np
import pytest
import torch
from PIL import Image

from coordinate_plane import corner_errors, corner_tolerance, write_coordinate_planes
from pipelines import resample
from pipelines.colour_pil import view_params
from pipelines.decode import decode_jpeg, decode_jpeg_rgb, render_views
from pipelines.recipe import BYOL

GEOMETRY = BYOL.without_colour()
# (height, width): odd and extreme aspects, smaller than the output, and large enough
# that JPEG draft decoding (1/2 .. 1/8 scale) is used for most crops at 64 px
PLANE_SIZES = [(300, 301), (64, 900), (900, 64), (40, 50), (1000, 1400)]


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    root = tmp_path_factory.mktemp("planes")
    return {fmt: write_coordinate_planes(root / fmt, PLANE_SIZES, fmt) for fmt in ("JPEG", "PNG")}


def _views01(arrays):
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("planar", [False, True])
def test_corners_match_coords(planes, fmt, size, planar):
    """PIL's resize and the planar numba one both put each view where its coords say."""
    flips = drafts = 0
    for path, (h, w) in zip(planes[fmt], PLANE_SIZES):
        tol = corner_tolerance(h, w, size, fmt == "JPEG")
        for k in range(12):
            arrays, coords, rows = render_views(path, GEOMETRY, size, 0, 0, k, colour=False, planar=planar)
            if planar:
                arrays = [a.transpose(1, 2, 0) for a in arrays]
            params = [view_params(r, v) for r, v in zip(rows, GEOMETRY.views)]
            coords = torch.tensor(coords)
            err = corner_errors(_views01(arrays), coords)
            assert (err <= tol).all(), (path.name, k, err.tolist(), tol, params)
            for p, c in zip(params, coords):
                assert (c[0] > c[2]) == p.flip
                flips += p.flip
            drafts += fmt == "JPEG" and resample.decode_reduction(rows, np.full(len(rows), size)) > 1
    assert flips > 0
    if fmt == "JPEG" and size == 64:
        assert drafts > 0


def test_wrong_coords_would_be_caught(planes):
    """The corner check is sensitive: the unflipped coords of a flipped view fail it."""
    path, (h, w) = planes["PNG"][0], PLANE_SIZES[0]
    for k in range(20):
        arrays, coords, rows = render_views(path, GEOMETRY, 64, 0, 0, k)
        params = [view_params(r, v) for r, v in zip(rows, GEOMETRY.views)]
        if params[0].flip:
            c = torch.tensor(coords[:1])[:, [2, 1, 0, 3]]
            assert corner_errors(_views01(arrays[:1]), c).item() > 5 * corner_tolerance(h, w, 64, False)
            return
    pytest.fail("no flipped view drawn")


@pytest.mark.skipif(decode_jpeg is None, reason="this torchvision has no decode_jpeg")
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_torchvision_jpeg_decode_gives_pils_pixels(tmp_path, mode):
    rng = np.random.default_rng(4)
    path = tmp_path / f"photo_{mode}.jpg"
    Image.fromarray(rng.integers(0, 255, (75, 101, 3), dtype=np.uint8)).convert(mode).save(path, quality=85)
    with Image.open(path) as img:
        want = np.asarray(img.convert("RGB"))
    got = decode_jpeg_rgb(path.read_bytes())
    assert got.shape == (75, 101, 3) and got.flags["C_CONTIGUOUS"]
    assert np.abs(got.astype(int) - want).max() <= 1
    with pytest.raises(OSError, match="cannot decode JPEG data: .*truncated"):
        decode_jpeg_rgb(path.read_bytes()[:400])
