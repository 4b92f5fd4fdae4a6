"""The view plan: presets, sizes that scale with image_size, and bad input."""
import math

import numpy as np
import pytest

from pipelines import sampler
from pipelines.recipe import BYOL, LOCA, PRESETS, SINGLE, SWAV_MULTICROP, Recipe, ViewSpec, get_recipe


def test_presets_and_sizes():
    assert set(PRESETS) == {"byol", "simclr", "mocov2", "swav_multicrop", "loca", "single"}
    assert BYOL.num_views == 2 and BYOL.view1.blur_p == 1.0 and BYOL.view2.solarize_p == 0.2
    assert SWAV_MULTICROP.output_sizes(224) == (224,) * 2 + (96,) * 6
    assert SWAV_MULTICROP.output_sizes(448) == (448,) * 2 + (192,) * 6
    assert SWAV_MULTICROP.output_sizes(64) == (64,) * 2 + (32,) * 6
    assert all(v.crop_scale == (0.05, 0.14) for v in SWAV_MULTICROP.views[2:])
    assert LOCA.num_views == 11 and LOCA.views[0].flip_p == 0.0 and LOCA.views[1].solarize_p == 0.2
    assert all(v.crop_scale == (0.05, 0.32) and v.output_size(224) == 96 for v in LOCA.views[2:])
    assert SINGLE.num_views == 1 and SINGLE.views[0].jitter_p == 0.0


def test_dict_recipes_and_their_errors():
    r = get_recipe({"name": "mc", "views": [{"size": 224, "crop_scale": [0.14, 1.0], "count": 2},
                                            {"size": 96, "crop_scale": [0.05, 0.14], "count": 3}]})
    assert r.output_sizes(224) == (224, 224, 96, 96, 96) and r.views[0].crop_scale == (0.14, 1.0)
    with pytest.raises(ValueError, match="unknown view key.*'scal'"):
        Recipe.from_dict({"views": [{"scal": [0.1, 1.0]}]})
    with pytest.raises(ValueError, match="flip_p"):
        Recipe.from_dict({"views": [{"flip_p": 2.0}]})
    with pytest.raises(ValueError, match="count"):
        Recipe.from_dict({"views": [{"count": 0}]})
    with pytest.raises(ValueError, match="unknown recipe key"):
        Recipe.from_dict({"views": [{}], "colour": 1})
    with pytest.raises(ValueError, match="view size"):
        ViewSpec(size=0)
    with pytest.raises(ValueError, match="unknown augmentation recipe"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="no views"):
        Recipe("empty", ())


def _rate_ok(hits, n, p):
    return abs(hits / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_recipe_statistics_of_the_draws(name):
    recipe = PRESETS[name]
    n = 4000
    d = sampler.draw(recipe, 224, 0, 0, np.arange(n), np.full(n, 375), np.full(n, 500))
    P = sampler.P
    for v, view in enumerate(recipe.views):
        r = d[:, v]
        for field, p in (("flip", view.flip_p), ("grayscale", view.grayscale_p), ("blur", view.blur_p),
                         ("solarize", view.solarize_p)):
            assert _rate_ok(r[:, P[field]].sum(), n, p), (name, v, field)
        strong = max(view.brightness, view.contrast, view.saturation, view.hue) > 0
        assert _rate_ok(r[:, P["jitter"]].sum(), n, view.jitter_p if strong else 0.0)
        area = r[:, P["height"]] * r[:, P["width"]] / (375 * 500)
        assert area.min() >= view.crop_scale[0] * 0.9 and area.max() <= 1.0
        jit = r[:, P["jitter"]] > 0.5
        for field in ("brightness", "contrast", "saturation"):
            s = getattr(view, field)
            assert (r[~jit, P[field]] == 1).all()
            assert (r[jit, P[field]] >= max(0, 1 - s) - 1e-12).all() and (r[jit, P[field]] <= 1 + s + 1e-12).all()
        blur = r[:, P["blur"]] > 0.5
        assert (r[~blur, P["sigma"]] == 0).all()
        if blur.sum() > 100:
            lo, hi = view.blur_sigma
            assert abs(r[blur, P["sigma"]].mean() - (lo + hi) / 2) < 4.5 * (hi - lo) / math.sqrt(12 * blur.sum())
        orders = [sampler.jitter_order(c) for c in r[:, P["jitter_order"]]]
        assert all(sorted(o) == sorted(sampler.JITTER_OPS) for o in orders)
        for op in sampler.JITTER_OPS:
            assert _rate_ok(sum(o[0] == op for o in orders), n, 0.25)
