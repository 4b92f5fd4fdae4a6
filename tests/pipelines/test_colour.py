"""Batched colour operations against per-image torchvision references.

Tolerances: every comparison is float32 arithmetic of the same formula in a different
association (lerp instead of a*x + (1-a)*y, a reciprocal instead of a division, separable
instead of 2-D convolution), so results agree to a few float32 ulps of values in [0, 1]:
1e-5 leaves two orders of magnitude of headroom while a wrong factor, channel, order,
kernel or threshold moves pixels by 1e-2 or more. Hue is compared with 2e-5: its hue
values pass through a division by the chroma.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF

from pipelines.colour import (ColourAugment, ColourParams, adjust_brightness_, adjust_contrast_,
                              adjust_hue_, adjust_saturation_, apply_colour, blur_radius, gaussian_blur_,
                              normalise, sample_colour_params, solarize_, to_grayscale_)
from pipelines.recipe import BYOL, IMAGENET_MEAN, IMAGENET_STD, ViewSpec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = 1e-5
# (device, engine) pairs that can run here: tensor ops everywhere, the fused loops on the CPU
ENGINES = [(d, "torch") for d in DEVICES] + [("cpu", "numba")]


def images(b=6, h=37, w=45, seed=0):
    """Random colourful images with flat, saturated and grey pixels mixed in (the hue edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, 3, h, w), generator=g)
    x[:, :, :5] = x[:, :1, :5]                        # grey rows: r = g = b
    x[:, 0, 5:8], x[:, 1, 5:8], x[:, 2, 5:8] = 1.0, 0.0, 0.0  # pure red, saturated
    x[:, :, 8:10, :] = torch.round(x[:, :, 8:10, :] * 4) / 4  # ties between channels
    return x


def per_image(x, fn):
    return torch.stack([fn(x[i], i) for i in range(x.shape[0])])


def close(a, b, tol=TOL):
    err = (a.float().cpu() - b.float().cpu()).abs().max().item()
    assert err <= tol, f"max abs difference {err:.3g} > {tol}"


FACTORS = torch.tensor([0.0, 0.6, 1.0, 1.25, 1.4, 1.8])
HUES = torch.tensor([-0.5, -0.1, 0.0, 0.03, 0.25, 0.5])


@pytest.mark.parametrize("device", DEVICES)
def test_brightness_contrast_saturation_match_torchvision(device):
    x = images()
    for ours, theirs in ((adjust_brightness_, TF.adjust_brightness), (adjust_contrast_, TF.adjust_contrast),
                         (adjust_saturation_, TF.adjust_saturation)):
        got = ours(x.clone().to(device), FACTORS)
        close(got, per_image(x, lambda im, i: theirs(im, FACTORS[i].item())))


@pytest.mark.parametrize("device", DEVICES)
def test_hue_matches_torchvision(device):
    x = images()
    got = adjust_hue_(x.clone().to(device), HUES)
    close(got, per_image(x, lambda im, i: TF.adjust_hue(im, HUES[i].item())), 2e-5)


def test_fused_hue_matches_torchvision_at_every_shift():
    """The fused engine's hue row (kept in sixths of a turn) at the extreme shifts +-0.5,
    zero, small and large ones, on grey, saturated and tied pixels."""
    x = images()
    b = x.shape[0]
    ones, off = torch.ones(b), torch.zeros(b, dtype=torch.bool)
    q = ColourParams(jitter=torch.ones(b, dtype=torch.bool), brightness=ones, contrast=ones, saturation=ones,
                     hue=HUES, grayscale=off, blur_sigma=torch.zeros(b), solarize=off)
    got = apply_colour(x, q, engine="numba")
    close(got, per_image(x, lambda im, i: TF.adjust_hue(im, HUES[i].item())), 2e-5)


def test_hue_is_not_the_identity():
    x = images()
    assert (adjust_hue_(x.clone(), torch.full((6,), 0.2)) - x).abs().max() > 0.3


@pytest.mark.parametrize("device", DEVICES)
def test_grayscale_and_solarize_match_torchvision(device):
    x = images()
    close(to_grayscale_(x.clone().to(device)), per_image(x, lambda im, i: TF.rgb_to_grayscale(im, 3)))
    for threshold in (0.0, 128 / 255, 0.5, 1.0):
        close(solarize_(x.clone().to(device), threshold), per_image(x, lambda im, i: TF.solarize(im, threshold)))


@pytest.mark.parametrize("device", DEVICES)
def test_blur_matches_torchvision_per_sample_sigma(device):
    x = images(b=7)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.9, 1.0, 1.6, 2.0])  # radii 1, 1, 2, 3, 3, 5, 6: mixed groups
    got = gaussian_blur_(x.clone().to(device), sigma)
    close(got, per_image(x, lambda im, i: TF.gaussian_blur(im, [2 * blur_radius(sigma[i].item()) + 1] * 2,
                                                           [sigma[i].item()] * 2)))


def test_blur_radius_truncates_at_three_sigma():
    assert [blur_radius(s) for s in (0.1, 0.34, 1.0, 1.01, 2.0)] == [1, 2, 3, 4, 6]
    # the mass beyond 3 sigma is 0.27%: against a 6-sigma kernel the difference stays under 1/255
    x = images(b=2)
    sigma = torch.tensor([2.0, 1.3])
    wide = per_image(x, lambda im, i: TF.gaussian_blur(im, [2 * math.ceil(6 * sigma[i].item()) + 1] * 2,
                                                       [sigma[i].item()] * 2))
    close(gaussian_blur_(x.clone(), sigma), wide, 1 / 255)


def reference_view(im01, q: ColourParams, i: int, view: ViewSpec, mean, std):
    """One image through torchvision in our documented order."""
    if q.jitter[i]:
        im = TF.adjust_brightness(im01, q.brightness[i].item())
        im = TF.adjust_contrast(im, q.contrast[i].item())
        im = TF.adjust_saturation(im, q.saturation[i].item())
        im = TF.adjust_hue(im, q.hue[i].item())
    else:
        im = im01
    if q.grayscale[i]:
        im = TF.rgb_to_grayscale(im, 3)
    s = q.blur_sigma[i].item()
    if s > 0:
        im = TF.gaussian_blur(im, [2 * blur_radius(s) + 1] * 2, [s, s])
    if q.solarize[i]:
        im = TF.solarize(im, view.solarize_threshold / 255)
    return TF.normalize(im, mean, std)


def mixed_params(b: int) -> ColourParams:
    """Every op on some samples and off on others, with factors that clip."""
    g = torch.Generator().manual_seed(3)
    q = sample_colour_params(ViewSpec(jitter_p=0.7, grayscale_p=0.3, blur_p=0.6, solarize_p=0.4,
                                        brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4), b, g)
    assert 0 < q.jitter.sum() < b and 0 < q.grayscale.sum() < b
    assert 0 < (q.blur_sigma > 0).sum() < b and 0 < q.solarize.sum() < b
    return q


@pytest.mark.parametrize("device,engine", ENGINES)
@pytest.mark.parametrize("dtype_in", [torch.uint8, torch.float32])
def test_full_view_matches_torchvision_chain(device, engine, dtype_in):
    b = 16
    x01 = images(b=b, h=32, w=40, seed=1)
    x01 = (x01 * 255).round() / 255  # representable exactly as uint8
    q = mixed_params(b)
    view = ViewSpec()
    want = per_image(x01, lambda im, i: reference_view(im, q, i, view, IMAGENET_MEAN, IMAGENET_STD))
    src = (x01 * 255).round().to(torch.uint8) if dtype_in == torch.uint8 else x01
    src = src.to(device).contiguous(memory_format=torch.channels_last)
    got = apply_colour(src, q, view.solarize_threshold, IMAGENET_MEAN, IMAGENET_STD, engine=engine)
    assert got.shape == (b, 3, 32, 40) and got.dtype == torch.float32 and got.device.type == device
    assert got.is_contiguous(memory_format=torch.channels_last)
    close(got, want, 4 * TOL / min(IMAGENET_STD))  # normalisation scales errors by 1/std


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_colour_pass_copies_only_from_pinned_memory(monkeypatch):
    """Every host-to-GPU copy of the pass (per-sample factors, subsets, blur sigmas,
    normalisation constants) comes from pinned memory: a copy from pageable memory would
    first wait for all the GPU work queued before it (the previous training step)."""
    src = (images(b=16, h=32, w=40, seed=1) * 255).round().to(torch.uint8).cuda()
    copies = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda":
            copies.append(self.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    apply_colour(src, mixed_params(16), 128, IMAGENET_MEAN, IMAGENET_STD, engine="torch")
    torch.cuda.synchronize()
    assert copies and all(copies), copies


def test_chunking_and_input_layout_do_not_change_the_result():
    b = 11
    x = (images(b=b, seed=2) * 255).round().to(torch.uint8)
    q = mixed_params(b)
    ref = apply_colour(x, q, chunk=b, engine="torch")
    nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # interleaved memory
    for chunk in (1, 3, 8):
        close(apply_colour(nhwc, q, chunk=chunk, engine="torch"), ref, 0.0)
    fused = apply_colour(x, q, engine="numba")
    close(apply_colour(nhwc, q, engine="numba"), fused, 0.0)   # rows split into planes on the way in
    cropped = x[:, :, 2:].contiguous()  # neither layout: strided views of either are copied planar
    close(apply_colour(nhwc[:, :, 2:], q, engine="numba"), apply_colour(cropped, q, engine="numba"), 0.0)
    close(apply_colour(x[:, :, 2:], q, engine="numba"), apply_colour(cropped, q, engine="numba"), 0.0)
    close(fused, ref, 4 * TOL / min(IMAGENET_STD))


def test_fused_engine_is_the_cpu_default_and_refuses_what_it_cannot_do():
    from pipelines.colour import resolve_engine
    assert resolve_engine("auto", torch.device("cpu"), torch.float32) == "numba"
    assert resolve_engine("auto", torch.device("cpu"), torch.bfloat16) == "torch"
    assert resolve_engine("auto", torch.device("cuda"), torch.float32) == "torch"
    with pytest.raises(ValueError):
        apply_colour(images(b=2), ColourParams.neutral(2), dtype=torch.bfloat16, engine="numba")
    with pytest.raises(ValueError):
        apply_colour(images(b=2), ColourParams.neutral(2), engine="fast")
    # every blur size the recipe can draw, on an image barely larger than the largest kernel
    x = images(b=6, h=14, w=15)
    q = ColourParams.neutral(6)
    q.blur_sigma[:] = torch.tensor([0.1, 0.4, 0.8, 1.2, 1.5, 2.0])
    want = per_image(x, lambda im, i: TF.gaussian_blur(im, [2 * blur_radius(q.blur_sigma[i].item()) + 1] * 2,
                                                       [q.blur_sigma[i].item()] * 2))
    close(apply_colour(x, q, engine="numba"), want)


@pytest.mark.parametrize("device,engine", ENGINES)
def test_input_is_not_modified_and_neutral_params_only_normalise(device, engine):
    x = images(b=4).to(device)
    before = x.clone()
    got = apply_colour(x, ColourParams.neutral(4), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), engine=engine)
    assert torch.equal(x, before)
    close(got, TF.normalize(x.cpu(), (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)), 4 * TOL)


def test_output_dtype_option():
    x = images(b=3)
    got = apply_colour(x, ColourParams.neutral(3), dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    close(got, x, 1 / 128)  # bf16 has 8 significant bits


@pytest.mark.parametrize("device,engine", ENGINES)
def test_jitter_order_is_brightness_contrast_saturation_hue(device, engine):
    """Hue before saturation gives a different image; we must match b, c, s, h exactly."""
    x = images(b=1)
    q = ColourParams.neutral(1)
    q.jitter[:] = True
    q.saturation[:] = 0.3
    q.hue[:] = 0.3
    got = apply_colour(x.to(device), q, engine=engine)
    ours = TF.adjust_hue(TF.adjust_saturation(x[0], 0.3), 0.3)
    other = TF.adjust_saturation(TF.adjust_hue(x[0], 0.3), 0.3)
    assert (ours - other).abs().max() > 0.05
    close(got[0], ours, 2e-5)


def test_sampled_rates_and_ranges():
    b = 40_000
    view = BYOL.view2
    q = sample_colour_params(view, b, torch.Generator().manual_seed(0))

    def rate_ok(mask, p):
        sd = math.sqrt(p * (1 - p) / b)
        assert abs(mask.float().mean().item() - p) <= 5 * sd + 1e-12, (mask.float().mean().item(), p)

    rate_ok(q.jitter, view.jitter_p)
    rate_ok(q.grayscale, view.grayscale_p)
    rate_ok(q.blur_sigma > 0, view.blur_p)
    rate_ok(q.solarize, view.solarize_p)
    j = q.jitter
    for name, s in (("brightness", view.brightness), ("contrast", view.contrast), ("saturation", view.saturation)):
        f = getattr(q, name)
        assert torch.all(f[~j] == 1.0)
        assert f[j].min() >= 1 - s and f[j].max() <= 1 + s
        assert abs(f[j].mean().item() - 1.0) < 5 * (2 * s / math.sqrt(12)) / math.sqrt(j.sum().item())
    assert torch.all(q.hue[~j] == 0) and q.hue[j].abs().max() <= view.hue
    sig = q.blur_sigma[q.blur_sigma > 0]
    assert sig.min() >= view.blur_sigma[0] and sig.max() <= view.blur_sigma[1]
    # draws are independent: grayscale does not depend on jitter
    rate_ok(q.grayscale[j], view.grayscale_p)


def test_view_recipe_probabilities_zero_and_one():
    q = sample_colour_params(BYOL.view1, 1000, torch.Generator().manual_seed(1))
    assert bool((q.blur_sigma > 0).all()) and not bool(q.solarize.any())
    q = sample_colour_params(BYOL.view1.without_colour(), 1000, torch.Generator().manual_seed(1))
    assert not (q.jitter.any() or q.grayscale.any() or q.solarize.any() or (q.blur_sigma > 0).any())


def test_generator_makes_draws_reproducible():
    a = sample_colour_params(BYOL.view1, 64, torch.Generator().manual_seed(7))
    b = sample_colour_params(BYOL.view1, 64, torch.Generator().manual_seed(7))
    c = sample_colour_params(BYOL.view1, 64, torch.Generator().manual_seed(8))
    assert torch.equal(a.brightness, b.brightness) and torch.equal(a.blur_sigma, b.blur_sigma)
    assert not torch.equal(a.brightness, c.brightness)


def test_colour_augment_binds_recipe():
    aug = ColourAugment(BYOL.view2, BYOL.mean, BYOL.std)
    x = (images(b=5) * 255).to(torch.uint8)
    out = aug(x, torch.Generator().manual_seed(0))
    q = aug.sample(5, torch.Generator().manual_seed(0))
    close(out, apply_colour(x, q, BYOL.view2.solarize_threshold, BYOL.mean, BYOL.std), 0.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="RGB"):
        apply_colour(torch.zeros(2, 1, 8, 8), ColourParams.neutral(2))
    with pytest.raises(ValueError, match="parameter rows"):
        apply_colour(torch.zeros(2, 3, 8, 8), ColourParams.neutral(3))


def test_normalise_layout():
    x = torch.rand(2, 3, 5, 6)
    out = normalise(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert out.is_contiguous(memory_format=torch.channels_last)
    close(out, TF.normalize(x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)))


def test_pooled_outputs_are_not_overwritten_while_a_consumer_keeps_them():
    view = ViewSpec(jitter_p=1.0, blur_p=0.0)
    aug = ColourAugment(view, (0.5,) * 3, (0.25,) * 3, reuse_outputs=True)
    plain = ColourAugment(view, (0.5,) * 3, (0.25,) * 3)
    gen = torch.Generator().manual_seed(0)
    kept, want = [], []
    for _ in range(12):  # more batches than the pool keeps
        x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=gen)
        params = aug.sample(3, gen)
        kept.append(aug.apply(x, params))
        want.append(plain.apply(x, params))
    for got, ref in zip(kept, want):
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
