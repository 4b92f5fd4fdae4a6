"""The crop-box contract (pipelines.geometry) against values worked out by hand."""
import pytest
import torch

from pipelines.geometry import cell_centers, flip_coords, window_to_coords, windows_to_coords


def test_a_window_maps_its_first_and_last_pixel_centres():
    # a 101 x 201 image: pixel centres span 0..100 rows and 0..200 columns
    assert window_to_coords(10, 20, 41, 81, 101, 201) == pytest.approx((20 / 200, 10 / 100, 100 / 200, 50 / 100))
    assert window_to_coords(0, 0, 101, 201, 101, 201) == pytest.approx((0.0, 0.0, 1.0, 1.0))   # the whole image
    x_a, y_a, x_b, y_b = window_to_coords(10, 20, 41, 81, 101, 201, flipped=True)
    assert (x_a, x_b) == pytest.approx((100 / 200, 20 / 200)) and x_a > x_b


def test_batched_windows_equal_the_single_ones():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randint(2, 500, (16,), generator=g), torch.randint(2, 500, (16,), generator=g)
    top, left = (torch.rand(16, generator=g) * h / 2).floor(), (torch.rand(16, generator=g) * w / 2).floor()
    height, width = (h - top).clamp(min=1), (w - left).clamp(min=1)
    flipped = torch.rand(16, generator=g) < 0.5
    batched = windows_to_coords(top, left, height, width, h, w, flipped)
    assert batched.dtype == torch.float32 and batched.shape == (16, 4)
    for i in range(16):
        one = window_to_coords(float(top[i]), float(left[i]), float(height[i]), float(width[i]), int(h[i]), int(w[i]),
                               bool(flipped[i]))
        torch.testing.assert_close(batched[i], torch.tensor(one, dtype=torch.float32))


def test_flip_swaps_the_x_ends_and_is_its_own_inverse():
    c = torch.tensor([[0.1, 0.2, 0.7, 0.9]])
    assert flip_coords(c)[0].tolist() == pytest.approx([0.7, 0.2, 0.1, 0.9])
    assert torch.equal(flip_coords(flip_coords(c)), c)


def test_cell_centres_split_the_box_into_equal_cells_row_major():
    coords = torch.tensor([[0.0, 0.0, 1.0, 0.5]])             # 2 x 4 cells of 0.25 x 0.25
    cx, cy, diag = cell_centers(coords, 2, 4)
    assert cx[0].tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875] * 2)
    assert cy[0].tolist() == pytest.approx([0.125] * 4 + [0.375] * 4)
    assert diag.tolist() == pytest.approx([(2 * 0.25 ** 2) ** 0.5])
    fcx, fcy, fdiag = cell_centers(flip_coords(coords), 2, 4)  # a flipped view: columns run right to left
    assert fcx[0].tolist() == pytest.approx([0.875, 0.625, 0.375, 0.125] * 2)
    assert torch.equal(fcy, cy) and torch.allclose(fdiag, diag)
