"""The crop-box contract shared by every loader, the loss and the tests.

A view's ``coords`` row is ``(x_a, y_a, x_b, y_b)``: the position in the ORIGINAL image of
the view's top-left output pixel (a) and of its bottom-right output pixel (b), each
normalised by ``(width - 1)`` / ``(height - 1)`` so that pixel centres of the original span
[0, 1]. A horizontal flip swaps ``x_a`` and ``x_b`` (then ``x_a > x_b``).
"""
from __future__ import annotations

import torch


def window_to_coords(top: float, left: float, height: float, width: float,
                     image_height: int, image_width: int, flipped: bool = False) -> tuple[float, float, float, float]:
    """Coordinates of a crop window ``[top, top+height) x [left, left+width)`` in pixels.

    The window's first and last pixel rows/columns are ``top`` and ``top + height - 1``.
    """
    sx = 1.0 / max(image_width - 1, 1)
    sy = 1.0 / max(image_height - 1, 1)
    x_a, x_b = left * sx, (left + width - 1) * sx
    y_a, y_b = top * sy, (top + height - 1) * sy
    if flipped:
        x_a, x_b = x_b, x_a
    return (x_a, y_a, x_b, y_b)


def windows_to_coords(top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
                      image_height: torch.Tensor, image_width: torch.Tensor,
                      flipped: torch.Tensor | None = None) -> torch.Tensor:
    """Batched :func:`window_to_coords`; every argument is a (B,) tensor. Returns (B, 4) float32."""
    f = lambda t: torch.as_tensor(t, dtype=torch.float64)
    top, left, height, width = f(top), f(left), f(height), f(width)
    sx = 1.0 / (f(image_width) - 1).clamp(min=1)
    sy = 1.0 / (f(image_height) - 1).clamp(min=1)
    x_a, x_b = left * sx, (left + width - 1) * sx
    y_a, y_b = top * sy, (top + height - 1) * sy
    if flipped is not None:
        flipped = torch.as_tensor(flipped, dtype=torch.bool)
        x_a, x_b = torch.where(flipped, x_b, x_a), torch.where(flipped, x_a, x_b)
    return torch.stack([x_a, y_a, x_b, y_b], dim=-1).to(torch.float32)


def flip_coords(coords: torch.Tensor) -> torch.Tensor:
    """Coordinates of the horizontally flipped view: x_a and x_b swap."""
    return coords[..., [2, 1, 0, 3]]


def cell_centers(coords: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres of the cells of an (height x width) feature map, in original-image coordinates.

    Returns ``(cx, cy, diag)``: cx and cy of shape (B, height*width) in row-major cell order,
    and the cell diagonal (B,). Cell (r, c) spans ``[x_a + c*bw, x_a + (c+1)*bw]`` with
    ``bw = (x_b - x_a) / width`` (negative for flipped views), as in the reference method.
    """
    coords = coords.float()
    bw = (coords[:, 2] - coords[:, 0]) / width
    bh = (coords[:, 3] - coords[:, 1]) / height
    cols = torch.arange(width, device=coords.device, dtype=coords.dtype) + 0.5
    rows = torch.arange(height, device=coords.device, dtype=coords.dtype) + 0.5
    cx = coords[:, 0, None] + cols[None, :] * bw[:, None]           # (B, W)
    cy = coords[:, 1, None] + rows[None, :] * bh[:, None]           # (B, H)
    cx = cx[:, None, :].expand(-1, height, -1).reshape(coords.shape[0], -1)
    cy = cy[:, :, None].expand(-1, -1, width).reshape(coords.shape[0], -1)
    diag = torch.sqrt(bw * bw + bh * bh)
    return cx, cy, diag
