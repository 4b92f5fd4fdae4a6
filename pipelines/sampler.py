"""One draw for every backend: each view's window, flip and colour parameters.

Every random decision of view ``v`` of dataset sample ``i`` in epoch ``e`` comes from a
counter-based generator keyed by ``(seed, e, i, v)`` -- splitmix64's finaliser over the
key, then a Weyl sequence -- so a draw depends on neither the backend, the worker count,
the batch size nor the rank. Two streams per view: part 0 draws the crop window (it needs
the image size), part 1 the flip and colour decisions (they do not), so a backend that
decodes in one place and colours in another draws each half where it is needed.

The functions are numba-compiled and work on numpy arrays: the torch workers, DALI's
feeder and FFCV's compiled decoder call the same code.

- ``recipe_spec(recipe, image_size)``: the plan as a (V, len(SPEC_NAMES)) float64 array;
- ``draw_views(out, spec, seed, epoch, samples, heights, widths)``: fills ``out`` (B, V,
  len(PARAM_NAMES)) float64, one row per view per :data:`PARAM_NAMES`;
- ``draw(recipe, image_size, seed, epoch, samples, heights, widths)``: the same, allocating;
- ``coords_of(params)``: the (B, 4) boxes of one view's rows;
- ``colour_params(params)``: one view's rows as :class:`pipelines.colour.ColourParams`.

Crop windows follow torchvision's ``RandomResizedCrop``: ten tries of area ~ U(scale) and
log-aspect ~ U(log ratio), sizes rounded half-to-even as Python's ``round``, the first that
fits placed uniformly; else the central window with the aspect clamped into the ratio
range. Factors of colour steps not applied are
neutral (1, or 0 for hue and sigma). ``jitter_order`` encodes the random order of the four
jitter operations (base-4 digits, first operation lowest) for backends that apply jitter
in a drawn order; the others use the fixed order brightness, contrast, saturation, hue.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from .geometry import windows_to_coords

CROP_TRIES = 10
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

SPEC_NAMES = ("size", "scale_lo", "scale_hi", "log_ratio_lo", "log_ratio_hi", "flip_p", "jitter_p",
              "brightness", "contrast", "saturation", "hue", "grayscale_p", "blur_p", "sigma_lo", "sigma_hi",
              "solarize_p")
PARAM_NAMES = ("top", "left", "height", "width", "image_height", "image_width", "flip", "jitter",
               "grayscale", "blur", "solarize", "sigma", "brightness", "contrast", "saturation", "hue",
               "jitter_order")
P = {name: i for i, name in enumerate(PARAM_NAMES)}
S = {name: i for i, name in enumerate(SPEC_NAMES)}

(_TOP, _LEFT, _HEIGHT, _WIDTH, _IMAGE_H, _IMAGE_W, _FLIP, _JITTER, _GRAY, _BLUR, _SOLAR, _SIGMA, _BRIGHT, _CONTRAST,
 _SAT, _HUE, _ORDER) = range(len(PARAM_NAMES))
(_SIZE, _SCALE_LO, _SCALE_HI, _LR_LO, _LR_HI, _FLIP_P, _JITTER_P, _S_BRIGHT, _S_CONTRAST, _S_SAT, _S_HUE, _GRAY_P,
 _BLUR_P, _SIGMA_LO, _SIGMA_HI, _SOLAR_P) = range(len(SPEC_NAMES))

# --------------------------------------------------------------------------- counter-based generator

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0


@njit(cache=True, nogil=True)
def _mix(z):
    """splitmix64's finaliser: a bijective scramble of 64 bits."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def next_uniform(state):
    """(uniform in [0, 1) with 53 random bits, next state)."""
    state = state + _GAMMA
    return float(_mix(state) >> _S11) * _INV53, state


@njit(cache=True, nogil=True)
def stream(seed, epoch, sample, view, part):
    """Starting state of the draws of one (seed, epoch, sample, view, part)."""
    z = _mix(np.uint64(seed) + _GAMMA)
    z = _mix(z ^ (np.uint64(epoch) + _GAMMA))
    z = _mix(z ^ (np.uint64(sample) + _GAMMA))
    z = _mix(z ^ (np.uint64(view) * np.uint64(4) + np.uint64(part) + _GAMMA))
    return z


# --------------------------------------------------------------------------- the draws

@njit(cache=True, nogil=True)
def sample_window(state, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """torchvision's RandomResizedCrop window of a height x width image: (top, left, h, w, state)."""
    area = height * width
    for _ in range(CROP_TRIES):
        u, state = next_uniform(state)
        target_area = area * (scale_lo + (scale_hi - scale_lo) * u)
        u, state = next_uniform(state)
        aspect = math.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * u)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            u, state = next_uniform(state)
            top = min(int(u * (height - h + 1)), height - h)
            u, state = next_uniform(state)
            left = min(int(u * (width - w + 1)), width - w)
            return top, left, h, w, state
    in_ratio = width / height
    ratio_lo, ratio_hi = math.exp(log_ratio_lo), math.exp(log_ratio_hi)
    if in_ratio < ratio_lo:
        w = width
        h = max(1, min(height, int(round(w / ratio_lo))))
    elif in_ratio > ratio_hi:
        h = height
        w = max(1, min(width, int(round(h * ratio_hi))))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, state


@njit(cache=True, nogil=True)
def draw_window(out, spec, seed, epoch, sample, view, height, width):
    """Fill the window fields of ``out`` (one param row) for an image of ``height x width``."""
    st = stream(seed, epoch, sample, view, 0)
    top, left, h, w, st = sample_window(st, height, width, spec[_SCALE_LO], spec[_SCALE_HI],
                                        spec[_LR_LO], spec[_LR_HI])
    out[_TOP], out[_LEFT], out[_HEIGHT], out[_WIDTH] = top, left, h, w
    out[_IMAGE_H], out[_IMAGE_W] = height, width


@njit(cache=True, nogil=True)
def draw_decisions(out, spec, seed, epoch, sample, view):
    """Fill the flip and colour fields of ``out`` (one param row): a fixed number of draws."""
    st = stream(seed, epoch, sample, view, 1)
    u = np.empty(13)
    for k in range(13):
        u[k], st = next_uniform(st)
    out[_FLIP] = 1.0 if u[0] < spec[_FLIP_P] else 0.0
    strong = spec[_S_BRIGHT] > 0 or spec[_S_CONTRAST] > 0 or spec[_S_SAT] > 0 or spec[_S_HUE] > 0
    jitter = u[1] < spec[_JITTER_P] and strong
    out[_JITTER] = 1.0 if jitter else 0.0
    for k, (field, strength_at) in enumerate(((_BRIGHT, _S_BRIGHT), (_CONTRAST, _S_CONTRAST), (_SAT, _S_SAT))):
        s = spec[strength_at]
        lo = max(0.0, 1.0 - s)
        out[field] = lo + (1.0 + s - lo) * u[2 + k] if jitter else 1.0
    out[_HUE] = spec[_S_HUE] * (2.0 * u[5] - 1.0) if jitter else 0.0
    order = np.arange(4)
    for i in range(3, 0, -1):  # Fisher-Yates
        j = min(int(u[9 - i] * (i + 1)), i)
        order[i], order[j] = order[j], order[i]
    out[_ORDER] = order[0] + 4 * order[1] + 16 * order[2] + 64 * order[3]
    out[_GRAY] = 1.0 if u[9] < spec[_GRAY_P] else 0.0
    blur = u[10] < spec[_BLUR_P]
    out[_BLUR] = 1.0 if blur else 0.0
    out[_SIGMA] = spec[_SIGMA_LO] + (spec[_SIGMA_HI] - spec[_SIGMA_LO]) * u[11] if blur else 0.0
    out[_SOLAR] = 1.0 if u[12] < spec[_SOLAR_P] else 0.0


@njit(cache=True, nogil=True)
def draw_sample(out, spec, seed, epoch, sample, height, width):
    """Every view of one sample: ``out`` (V, len(PARAM_NAMES)), ``spec`` (V, len(SPEC_NAMES))."""
    for v in range(spec.shape[0]):
        draw_window(out[v], spec[v], seed, epoch, sample, v, height, width)
        draw_decisions(out[v], spec[v], seed, epoch, sample, v)


@njit(cache=True, nogil=True)
def draw_views(out, spec, seed, epoch, samples, heights, widths):
    """Every view of a batch: ``out`` (B, V, len(PARAM_NAMES)); ``samples``, ``heights``, ``widths`` (B,)."""
    for b in range(samples.shape[0]):
        draw_sample(out[b], spec, seed, epoch, samples[b], heights[b], widths[b])


# --------------------------------------------------------------------------- Python side

def recipe_spec(recipe, image_size: int) -> np.ndarray:
    """The view plan as the (V, len(SPEC_NAMES)) float64 array the draws read."""
    rows = []
    for v in recipe.views:
        rows.append([v.output_size(image_size), v.crop_scale[0], v.crop_scale[1], math.log(v.crop_ratio[0]),
                     math.log(v.crop_ratio[1]), v.flip_p, v.jitter_p, v.brightness, v.contrast, v.saturation,
                     v.hue, v.grayscale_p, v.blur_p, v.blur_sigma[0], v.blur_sigma[1], v.solarize_p])
    return np.ascontiguousarray(rows, dtype=np.float64)


def draw(recipe, image_size: int, seed: int, epoch: int, samples, heights, widths) -> np.ndarray:
    """(B, V, len(PARAM_NAMES)) float64: every view of the given dataset samples."""
    samples = np.ascontiguousarray(samples, dtype=np.int64).reshape(-1)
    heights = np.ascontiguousarray(heights, dtype=np.int64).reshape(-1)
    widths = np.ascontiguousarray(widths, dtype=np.int64).reshape(-1)
    spec = recipe_spec(recipe, image_size) if not isinstance(recipe, np.ndarray) else recipe
    out = np.zeros((len(samples), spec.shape[0], len(PARAM_NAMES)))
    draw_views(out, spec, int(seed), int(epoch), samples, heights, widths)
    return out


def coords_of(params) -> torch.Tensor:
    """(B, 4) float32 boxes of one view's param rows (B, len(PARAM_NAMES))."""
    p = torch.as_tensor(np.asarray(params), dtype=torch.float64)
    return windows_to_coords(p[:, _TOP], p[:, _LEFT], p[:, _HEIGHT], p[:, _WIDTH], p[:, _IMAGE_H], p[:, _IMAGE_W],
                             p[:, _FLIP] > 0.5)


def jitter_order(code: float) -> tuple[str, ...]:
    """The jitter operations in their drawn order, from a ``jitter_order`` field."""
    c = int(code)
    return tuple(JITTER_OPS[(c >> (2 * k)) & 3] for k in range(4))


def colour_params(params):
    """One view's param rows (B, len(PARAM_NAMES)) as :class:`pipelines.colour.ColourParams`."""
    from .colour import ColourParams
    p = torch.as_tensor(np.asarray(params), dtype=torch.float64)
    f = lambda k: p[:, k].float()
    return ColourParams(p[:, _JITTER] > 0.5, f(_BRIGHT), f(_CONTRAST), f(_SAT), f(_HUE), p[:, _GRAY] > 0.5,
                        f(_SIGMA), p[:, _SOLAR] > 0.5)
