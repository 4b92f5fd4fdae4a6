"""The numba crop + resize against PIL's antialiased bilinear resize of the same box."""
import numpy as np
import pytest
from PIL import Image

from pipelines import resample


def _photo_like(h, w, seed=0):
    """Smooth gradients plus fine noise: both the averaging and the sampling show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _pil(image, top, left, height, width, size, flip):
    box = (left, top, left + width, top + height)
    out = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box,
                                                   reducing_gap=None))
    return out[:, ::-1] if flip else out


# (image h, w), window (top, left, height, width), output size: shrinking by 1.4x and 6x,
# enlarging, fractional windows, windows on every border, very thin images
CASES = [
    ((375, 500), (20, 40, 318, 318), 224),
    ((375, 500), (0, 0, 375, 500), 224),
    ((375, 500), (10.5, 33.25, 120.0, 97.5), 224),
    ((375, 500), (300, 420, 75, 80), 96),
    ((512, 512), (0, 0, 512, 512), 64),
    ((64, 900), (0, 100, 64, 700), 96),
    ((900, 64), (5, 0, 880, 64), 32),
    ((40, 50), (0, 0, 40, 50), 224),
]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shape,window,size", CASES)
def test_matches_pil_bilinear_of_the_box(shape, window, size, flip):
    image = _photo_like(*shape)
    out = np.empty((3, size, size), np.uint8)
    resample.crop_resize(image, *map(float, window), size, flip, out)
    ref = _pil(image, *window, size, flip).astype(int)
    diff = np.abs(out.transpose(1, 2, 0).astype(int) - ref)
    # PIL rounds to uint8 between its passes; this keeps float32
    assert diff.max() <= 1, diff.max()
    assert diff.mean() < 0.25


def test_a_wrong_window_or_missing_flip_differs():
    image = _photo_like(375, 500)
    out = np.empty((3, 96, 96), np.uint8)
    resample.crop_resize(image, 20.0, 40.0, 200.0, 250.0, 96, False, out)
    got = out.transpose(1, 2, 0).astype(int)
    assert np.abs(got - _pil(image, 20, 40, 200, 250, 96, False)).max() <= 1
    assert np.abs(got - _pil(image, 20, 41, 200, 250, 96, False)).mean() > 2  # one pixel off
    assert np.abs(got - _pil(image, 20, 40, 200, 250, 96, True)).mean() > 10


def test_taps_are_normalised_and_stay_in_the_image():
    first = np.empty(50, np.int64)
    weights = np.empty((50, 12), np.float32)
    resample.axis_taps(3.5, 200.0, 210, 50, first, weights)
    assert np.allclose(weights.sum(1), 1, atol=1e-6)
    last_used = np.array([first[o] + np.flatnonzero(weights[o]).max() for o in range(50)])
    assert first.min() >= 0 and last_used.max() < 210
    assert np.all(np.diff(first) >= 0)


def test_decode_reduction_is_the_largest_that_keeps_every_window_at_least_its_size():
    from pipelines import sampler
    rng = np.random.default_rng(2)
    hi, wi = sampler.P["height"], sampler.P["width"]
    seen = set()
    for _ in range(300):
        rows = np.zeros((3, len(sampler.PARAM_NAMES)))
        rows[:, hi] = rng.integers(20, 3000, 3)
        rows[:, wi] = rng.integers(20, 3000, 3)
        sizes = rng.choice([32, 96, 224], 3)
        want = max(f for f in (1, 2, 4, 8)
                   if f == 1 or all(min(r[hi], r[wi]) >= f * s for r, s in zip(rows, sizes)))
        got = resample.decode_reduction(rows, sizes)
        assert got == want
        seen.add(got)
    assert seen == {1, 2, 4, 8}
