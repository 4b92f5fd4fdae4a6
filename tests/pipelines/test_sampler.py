"""The draws (pipelines.sampler) against plain-Python references: splitmix64 keyed by
(seed, epoch, sample, view, part), torchvision's RandomResizedCrop rule, and the draws'
independence from how a batch is cut."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pipelines import sampler
from pipelines.recipe import BYOL, Recipe, ViewSpec

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z: int) -> int:
    """splitmix64's finaliser, in Python integers (Steele, Lea and Flood's constants)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def uniforms(seed, epoch, sample, view, part, n):
    z = mix((seed + GAMMA) & MASK)
    for word in (epoch, sample, view * 4 + part):
        z = mix(z ^ ((word + GAMMA) & MASK))
    out = []
    for _ in range(n):
        z = (z + GAMMA) & MASK
        out.append((mix(z) >> 11) / float(1 << 53))
    return out


def rrc_window(u, height, width, scale, log_ratio):
    """torchvision's RandomResizedCrop.get_params with its randoms taken from ``u`` in turn."""
    area = height * width
    it = iter(u)
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * next(it))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * next(it))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(next(it) * (height - h + 1)), height - h)
            left = min(int(next(it) * (width - w + 1)), width - w)
            return top, left, h, w
    return None


@pytest.mark.parametrize("key", [(0, 0, 0, 0, 0), (7, 3, 12345, 2, 1), (2 ** 40, 99, 7, 9, 0)])
def test_the_stream_is_splitmix64_over_the_key(key):
    state = sampler.stream(*key)
    got = []
    for _ in range(5):   # the state crosses into Python between calls: kept unsigned, as inside numba
        u, state = sampler.next_uniform(np.uint64(state))
        got.append(u)
    assert got == uniforms(*key, 5)
    assert all(0.0 <= u < 1.0 for u in got)


@pytest.mark.parametrize("sample", range(6))
def test_windows_follow_random_resized_crop_from_the_same_uniforms(sample):
    spec = sampler.recipe_spec(BYOL, 224)
    params = sampler.draw(spec, 224, seed=5, epoch=2, samples=[sample], heights=[375], widths=[500])
    row = params[0, 0]
    v = BYOL.views[0]
    want = rrc_window(uniforms(5, 2, sample, 0, 0, 40), 375, 500, v.crop_scale,
                      (math.log(v.crop_ratio[0]), math.log(v.crop_ratio[1])))
    assert want is not None
    got = tuple(int(row[sampler.P[k]]) for k in ("top", "left", "height", "width"))
    assert got == want
    flip = uniforms(5, 2, sample, 0, 1, 1)[0] < v.flip_p
    assert row[sampler.P["flip"]] == float(flip)


def test_a_draw_depends_on_the_sample_not_on_the_batch_around_it():
    spec = sampler.recipe_spec(BYOL, 96)
    samples, heights, widths = np.arange(10), np.full(10, 300), np.full(10, 400)
    whole = sampler.draw(spec, 96, 1, 0, samples, heights, widths)
    parts = np.concatenate([sampler.draw(spec, 96, 1, 0, samples[i:i + 3], heights[i:i + 3], widths[i:i + 3])
                            for i in range(0, 10, 3)])
    assert np.array_equal(whole, parts)
    reversed_ = sampler.draw(spec, 96, 1, 0, samples[::-1], heights, widths)[::-1]
    assert np.array_equal(whole, reversed_)
    assert not np.array_equal(whole, sampler.draw(spec, 96, 1, 1, samples, heights, widths))   # next epoch


def test_a_window_that_never_fits_falls_back_to_the_centre_clamped_to_the_ratio():
    spec = sampler.recipe_spec(BYOL, 32).copy()
    spec[:, sampler.S["scale_lo"]] = spec[:, sampler.S["scale_hi"]] = 1.0           # the whole area ...
    spec[:, sampler.S["log_ratio_lo"]] = spec[:, sampler.S["log_ratio_hi"]] = math.log(2.0)   # ... at 2:1
    row = sampler.draw(spec, 32, 0, 0, [0], [100], [100])[0, 0]                     # of a square: never fits
    assert tuple(int(row[sampler.P[k]]) for k in ("top", "left", "height", "width")) == (25, 0, 50, 100)


def test_jitter_order_is_a_permutation_of_the_four_operations():
    params = sampler.draw(BYOL, 64, 3, 0, np.arange(32), np.full(32, 80), np.full(32, 80))
    orders = {sampler.jitter_order(code) for code in params[:, 0, sampler.P["jitter_order"]]}
    assert all(sorted(o) == sorted(sampler.JITTER_OPS) for o in orders)
    assert len(orders) > 4                                                          # drawn, not fixed


# --------------------------------------------------------------------------- against torchvision

def _ks(a, b) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


@pytest.mark.parametrize("hw,scale,ratio", [((375, 500), (0.08, 1.0), (3 / 4, 4 / 3)),
                                            ((64, 900), (0.08, 1.0), (3 / 4, 4 / 3)),
                                            ((300, 301), (0.2, 1.0), (0.5, 2.0))])
def test_crop_distribution_matches_torchvision(hw, scale, ratio):
    h, w = hw
    n = 3000
    img = Image.new("RGB", (w, h))
    torch.manual_seed(0)
    ref = np.array([transforms.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])
    rows = sampler.draw(Recipe("c", (ViewSpec(crop_scale=scale, crop_ratio=ratio),)), 224, 0, 0, np.arange(n),
                        np.full(n, h), np.full(n, w))[:, 0]
    ours = rows[:, [sampler.P[k] for k in ("top", "left", "height", "width")]].astype(np.int64)
    assert (ours[:, 2] + ours[:, 0] <= h).all() and (ours[:, 3] + ours[:, 1] <= w).all()
    assert (ours[:, :2] >= 0).all() and (ours[:, 2:] >= 1).all()
    critical = 1.95 * math.sqrt(2 / n)  # KS at alpha ~ 0.001
    for col in (lambda a: a[:, 2] * a[:, 3] / (h * w), lambda a: np.log(a[:, 3] / a[:, 2]),
                lambda a: (a[:, 0] + a[:, 2] / 2) / h, lambda a: (a[:, 1] + a[:, 3] / 2) / w):
        assert _ks(col(ours), col(ref)) < critical


def _window(h, w, scale, ratio, sample=0):
    rows = sampler.draw(Recipe("c", (ViewSpec(crop_scale=scale, crop_ratio=ratio),)), 224, 0, 0, [sample], [h], [w])
    return tuple(int(rows[0, 0, sampler.P[k]]) for k in ("top", "left", "height", "width"))


def test_crop_fallback_matches_torchvision():
    # no window of 99-100% area with aspect 3..4 fits a square: central crop, as torchvision
    img = Image.new("RGB", (200, 200))
    expect = transforms.RandomResizedCrop.get_params(img, [0.99, 1.0], [3.0, 4.0])
    assert _window(200, 200, (0.99, 1.0), (3.0, 4.0)) == tuple(expect)
    for h, w in ((100, 400), (400, 100), (64, 900)):  # too elongated for a 99% window: clamped aspect
        expect = transforms.RandomResizedCrop.get_params(Image.new("RGB", (w, h)), [0.99, 1.0], [3 / 4, 4 / 3])
        assert _window(h, w, (0.99, 1.0), (3 / 4, 4 / 3)) == tuple(expect)
    assert _window(100, 400, (0.99, 1.0), (3 / 4, 4 / 3)) == (0, 133, 100, 133)
