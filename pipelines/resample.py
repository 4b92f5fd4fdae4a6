"""Crop + resize of one view window, antialiased bilinear, as PIL's ``Image.resize``.

The view's pixels are those of ``Image.resize((S, S), BILINEAR, box=window, reducing_gap=None)``
(a triangle filter whose support widens with the down-scaling factor, so a large window is
averaged, not sampled; torchvision's antialiased resize is the same filter), to within one
level of rounding: PIL rounds to uint8 between its two passes, this keeps float32.

Why not PIL or OpenCV: on 224 px views from ImageNet-sized photos, PIL's resize takes
0.5-1.3 ms a view and OpenCV's area resampling (FFCV's) 0.6-1.2 ms whenever it shrinks by a
non-integer factor. Two numba passes take 0.2-0.4 ms: the vertical one runs along whole
rows (vectorised) and stores its result transposed per channel, so that the horizontal one
also runs along contiguous memory; the second store writes the planar (3, S, S) view the
colour pass reads, with the flip folded in. Per call it allocates its own scratch, so it is
safe in FFCV's decoding threads and in DataLoader workers alike.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import sampler
from .colour_cpu import _axpy  # acc += w * row, vectorised

F32 = np.float32
_HEIGHT, _WIDTH = sampler.P["height"], sampler.P["width"]


@njit(cache=True, nogil=True, error_model="numpy")
def axis_taps(start, length, in_size, out_size, first, weights):
    """Triangle-filter taps mapping [start, start + length) of an axis of ``in_size``
    pixels onto ``out_size`` outputs: output o is sum_k weights[o, k] * in[first[o] + k]
    (weights past an output's support are 0). PIL's coefficient rule: the support is
    max(scale, 1) input pixels each side of the output's centre, clipped to the image."""
    scale = length / out_size
    support = max(scale, 1.0)
    inv = 1.0 / support
    kmax = weights.shape[1]
    for o in range(out_size):
        centre = start + (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        total = 0.0
        for k in range(kmax):
            w = 0.0
            if k < hi - lo:
                w = max(0.0, 1.0 - abs((k + lo - centre + 0.5) * inv))
            weights[o, k] = w
            total += w
        for k in range(kmax):
            weights[o, k] = weights[o, k] / total if total > 0.0 else 0.0
        first[o] = lo


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _max_taps(length, out_size):
    return 2 * int(math.ceil(max(length / out_size, 1.0))) + 2


@njit(cache=True, nogil=True, error_model="numpy")
def _add_row(acc, row, w):
    for x in range(acc.shape[0]):
        acc[x] += w * F32(row[x])


@njit(cache=True, nogil=True, error_model="numpy")
def crop_resize(image, top, left, height, width, size, flip, out):
    """image (H, W, 3) uint8 C-contiguous; window (top, left, height, width) in pixels,
    floats allowed -> out (3, size, size) uint8, mirrored left-right when ``flip``."""
    h_img, w_img = image.shape[0], image.shape[1]
    ky, kx = _max_taps(height, size), _max_taps(width, size)
    fy, wy = np.empty(size, np.int64), np.empty((size, ky), np.float32)
    fx, wx = np.empty(size, np.int64), np.empty((size, kx), np.float32)
    axis_taps(top, height, h_img, size, fy, wy)
    axis_taps(left, width, w_img, size, fx, wx)
    x0 = fx[0]
    x1 = min(fx[size - 1] + kx, w_img)
    span = x1 - x0
    rows = image.reshape(h_img, w_img * 3)
    acc = np.empty(span * 3, np.float32)
    columns = np.empty((3, span, size), np.float32)  # vertical result, transposed per channel
    for y in range(size):
        acc[:] = 0.0
        for k in range(ky):
            w = wy[y, k]
            if w != 0.0:
                _add_row(acc, rows[fy[y] + k, x0 * 3:x1 * 3], w)
        for x in range(span):
            columns[0, x, y] = acc[3 * x]
            columns[1, x, y] = acc[3 * x + 1]
            columns[2, x, y] = acc[3 * x + 2]
    col = np.empty(size, np.float32)
    for c in range(3):
        for x in range(size):
            col[:] = 0.0
            base = fx[x] - x0
            for k in range(kx):
                w = wx[x, k]
                if w != 0.0:
                    _axpy(col, columns[c, base + k], w)
            xo = size - 1 - x if flip else x
            for y in range(size):
                out[c, y, xo] = np.uint8(min(max(col[y] + F32(0.5), F32(0.0)), F32(255.0)))


@njit(cache=True, nogil=True)
def decode_reduction(rows, sizes):
    """The JPEG DCT reduction (1, 2, 4 or 8) a decoder may use for one sample: the largest
    that keeps every view's window (``rows``: the sample's draws, one row per view) at
    least its output size (``sizes``), so no view is enlarged from a reduced decode."""
    f = 1
    while f < 8:
        for v in range(rows.shape[0]):
            if min(rows[v, _HEIGHT], rows[v, _WIDTH]) < 2 * f * sizes[v]:
                return f
        f *= 2
    return f
