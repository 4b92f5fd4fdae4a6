
import pytest
import torch

from pipelines.lab import lab_to_rgb, rgb_to_lab


def lab_of_one_pixel(r, g, b):
    """sRGB -> Lab (D65) for one pixel, written from the formulas."""
    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    rl, gl, bl = linear(r), linear(g), linear(b)
    x = 0.4124564 * rl + 0.3575761 * gl + 0.1804375 * bl
    y = 0.2126729 * rl + 0.7151522 * gl + 0.0721750 * bl
    z = 0.0193339 * rl + 0.1191920 * gl + 0.9503041 * bl
    xn = 0.4124564 + 0.3575761 + 0.1804375
    yn = 0.2126729 + 0.7151522 + 0.0721750
    zn = 0.0193339 + 0.1191920 + 0.9503041

    def f(t):
        d = 6 / 29
        return t ** (1 / 3) if t > d ** 3 else t / (3 * d * d) + 4 / 29
    fx, fy, fz = f(x / xn), f(y / yn), f(z / zn)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


@pytest.mark.parametrize("rgb,lab", [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
    ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0)),
])
def test_known_colours(rgb, lab):
    out = rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)).flatten().tolist()
    assert out == pytest.approx(lab, abs=0.01)


def test_matches_per_pixel_formula_and_round_trips():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.01  # the linear segment of the sRGB curve
    lab = rgb_to_lab(rgb)
    for b in range(2):
        for i in range(5):
            for j in range(4):
                ref = lab_of_one_pixel(*rgb[b, :, i, j].tolist())
                assert lab[b, :, i, j].tolist() == pytest.approx(ref, abs=1e-9)
    torch.testing.assert_close(lab_to_rgb(lab), rgb, atol=1e-10, rtol=0)
    rgb32 = rgb.float()
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb32)), rgb32, atol=1e-4, rtol=0)
    assert lab[:, 0].min() >= 0 and lab[:, 0].max() <= 100


def test_out_of_gamut_is_clipped_unless_asked():
    lab = torch.tensor([50.0, 120.0, -120.0]).view(1, 3, 1, 1)
    raw = lab_to_rgb(lab, clip=False)
    assert raw.min() < 0 or raw.max() > 1
    clipped = lab_to_rgb(lab)
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        rgb_to_lab(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lab_to_rgb(torch.rand(1, 1, 4, 4))
