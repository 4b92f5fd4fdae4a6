"""The PIL colour engine (the torch backend's colour='pil'): each operation against
torchvision's on PIL images, the drawn order kept, and the draws read as the sampler wrote them."""
import math

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import functional as TF

from coordinate_plane import coordinate_plane
from pipelines import sampler
from pipelines.colour_pil import ViewParams, apply_colour, view_params
from pipelines.recipe import BYOL, Recipe, ViewSpec


def test_zero_strength_jitter_is_left_out():
    view = ViewSpec(jitter_p=1.0, brightness=0.0, hue=0.0)
    rows = sampler.draw(Recipe("z", (view,)), 224, 0, 0, [0], [100], [100])
    p = view_params(rows[0, 0], view)
    assert sorted(name for name, _ in p.jitter) == ["contrast", "saturation"]


@pytest.fixture(scope="module")
def photo():
    """A colourful 224x224 RGB test image with edges and smooth regions."""
    rng = np.random.default_rng(0)
    base = coordinate_plane(224, 224).astype(np.float32)
    base[..., 2] = 255 * (0.5 + 0.5 * np.sin(np.arange(224) / 9.0))[None, :]
    base[60:140, 80:170] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


def _params(**kw):
    defaults = dict(top=0, left=0, height=224, width=224, flip=False, jitter=(), grayscale=False,
                    blur_sigma=None, solarize=False)
    return ViewParams(**{**defaults, **kw})


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))


@pytest.mark.parametrize("name,factor,tv", [
    ("brightness", 1.3, TF.adjust_brightness), ("brightness", 0.6, TF.adjust_brightness),
    ("contrast", 1.4, TF.adjust_contrast), ("contrast", 0.6, TF.adjust_contrast),
    ("saturation", 0.8, TF.adjust_saturation), ("saturation", 1.2, TF.adjust_saturation),
    ("hue", 0.1, TF.adjust_hue), ("hue", -0.07, TF.adjust_hue)])
def test_jitter_ops_match_torchvision(photo, name, factor, tv):
    ours = apply_colour(photo, _params(jitter=((name, factor),)))
    d = _diff(ours, tv(photo, factor))
    assert d.max() <= 1 and d.mean() < 0.6, (name, factor, d.max(), d.mean())
    assert _diff(ours, photo).mean() > 2  # the op did something


def test_grayscale_makes_channels_equal(photo):
    out = np.asarray(apply_colour(photo, _params(grayscale=True)))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert _diff(out[..., 0], np.asarray(photo.convert("L"))).max() == 0


def test_solarize_inverts_above_threshold(photo):
    src = np.asarray(photo)
    out = np.asarray(apply_colour(photo, _params(solarize=True), solarize_threshold=128))
    assert (out == np.where(src >= 128, 255 - src, src)).all()
    assert _diff(out, TF.solarize(photo, 128)).max() == 0


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_blur_matches_gaussian(photo, sigma):
    """PIL's box-pass blur against a true Gaussian (torchvision's kernel of +-4 sigma)."""
    ours = apply_colour(photo, _params(blur_sigma=sigma))
    k = 2 * math.ceil(4 * sigma) + 1
    ref = TF.gaussian_blur(photo, k, sigma)
    inner = (slice(k, -k), slice(k, -k))
    d = _diff(ours, ref)[inner]
    assert d.mean() < 1.0 and np.percentile(d, 99) <= 4, (sigma, d.mean(), d.max())
    assert np.asarray(ours, np.float32).std() < np.asarray(photo, np.float32).std()


def test_jitter_order_is_applied_as_drawn(photo):
    a = apply_colour(photo, _params(jitter=(("brightness", 1.4), ("contrast", 0.5))))
    b = apply_colour(photo, _params(jitter=(("contrast", 0.5), ("brightness", 1.4))))
    assert _diff(a, b).mean() > 1


def test_view_params_read_the_samplers_colour_draws():
    """The PIL engine's reading of a draw row agrees with the batched engines' reading of it."""
    rows = sampler.draw(BYOL, 224, 3, 1, np.arange(64), np.full(64, 300), np.full(64, 400))
    for v, view in enumerate(BYOL.views):
        batched = sampler.colour_params(rows[:, v])
        for k in range(64):
            p = view_params(rows[k, v], view)
            assert bool(p.jitter) == bool(batched.jitter[k]) and p.grayscale == bool(batched.grayscale[k])
            assert p.solarize == bool(batched.solarize[k])
            assert (p.blur_sigma or 0.0) == pytest.approx(float(batched.blur_sigma[k]), abs=1e-6)
            for name, factor in p.jitter:
                assert factor == pytest.approx(float(getattr(batched, name)[k]), abs=1e-6)
    assert any(view_params(rows[k, 0], BYOL.views[0]).jitter for k in range(64))
