"""The CPU engine of :mod:`pipelines.colour`: the whole view recipe fused into a few passes.

On the CPU the tensor-op engine is bound by memory traffic: every elementwise op is one
pass over the batch, and hue rotation alone takes about forty. Here numba compiles, per
sample, four loops that keep a pixel's values in registers: (1) load and brightness while
summing luma for the contrast mean, (2) contrast, saturation, hue and grayscale, (3) the
two blur passes (row pass through a reflect-padded row buffer, then column pass; the
symmetric kernel's taps summed four at a time), and (4) solarize and normalisation
written straight into channels-last output. Same semantics and
float32 arithmetic as the tensor ops (and torchvision); results agree to float rounding.

Serial by design: it runs in the loader's colour thread beside FFCV's decoding threads,
and numba's default thread pool must not be entered from two threads at once.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from numba import njit


# ITU-R 601-2 luma weights exactly as torchvision's rgb_to_grayscale uses them: the one
# copy every backend reads (pipelines.colour, the torch loader's PIL path, DALI's matrices).
LUMA = (0.2989, 0.587, 0.114)

F32 = np.float32
LR, LG, LB = F32(LUMA[0]), F32(LUMA[1]), F32(LUMA[2])
ZERO, ONE, SIX, FOUR = F32(0.0), F32(1.0), F32(6.0), F32(4.0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _clamp01(v):
    return min(max(v, ZERO), ONE)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tri(k):
    """clamp(min(k, 4 - k), 0, 1) for k = (position) mod 6."""
    return min(max(min(k, FOUR - k), ZERO), ONE)


# Row helpers: the loops get whole rows as separate arrays, which is what lets LLVM
# vectorise them (indexing one array at an offset inside a bigger loop does not).

@njit(cache=True, nogil=True, error_model="numpy")
def _axpy(acc, row, a):
    for x in range(acc.shape[0]):
        acc[x] += a * row[x]


@njit(cache=True, nogil=True, error_model="numpy")
def _load_row(sr, sg, sb, wr, wg, wb, scale, b):
    for x in range(wr.shape[0]):
        wr[x] = _clamp01(b * (F32(sr[x]) * scale))
        wg[x] = _clamp01(b * (F32(sg[x]) * scale))
        wb[x] = _clamp01(b * (F32(sb[x]) * scale))


@njit(cache=True, nogil=True, error_model="numpy")
def _load_interleaved_row(s, wr, wg, wb, scale, b):
    """_load_row from one interleaved (W * 3) row: the planar split costs no extra pass.
    Its own loop, not _load_row on the row's strided channel views: those do not vectorise
    and cost as much as the planar copy this replaces."""
    for x in range(wr.shape[0]):
        wr[x] = _clamp01(b * (F32(s[3 * x]) * scale))
        wg[x] = _clamp01(b * (F32(s[3 * x + 1]) * scale))
        wb[x] = _clamp01(b * (F32(s[3 * x + 2]) * scale))


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _luma_sum(r, g, b):
    """Sum of a row's luma; fastmath lets the reduction vectorise (the order of a float sum)."""
    total = F32(0.0)
    for x in range(r.shape[0]):
        total += LR * r[x] + LG * g[x] + LB * b[x]
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _contrast_saturation_row(wr, wg, wb, c, cm, s, s1):
    for x in range(wr.shape[0]):
        r = _clamp01(c * wr[x] + cm)
        g = _clamp01(c * wg[x] + cm)
        b = _clamp01(c * wb[x] + cm)
        luma = s1 * (LR * r + LG * g + LB * b)
        wr[x] = _clamp01(s * r + luma)
        wg[x] = _clamp01(s * g + luma)
        wb[x] = _clamp01(s * b + luma)


@njit(cache=True, nogil=True, error_model="numpy")
def _hue_row(r, g, b, shift):
    """Rotate the hue of one row in place (see pipelines.colour.adjust_hue_), branch-free.

    The hue is kept in sixths of a turn: h6 lies in [-1, 5) and the shift adds 6 * shift + 6
    (in [3, 9], as |shift| <= 0.5), so two conditional subtractions of 6 bring it into
    [0, 6). That replaces a division by 6 and a floor, which kept the loop from vectorising
    well, and is 3x faster."""
    s6 = shift * SIX + SIX
    for x in range(r.shape[0]):
        rr, gg, bb = r[x], g[x], b[x]
        mx = max(rr, max(gg, bb))
        mn = min(rr, min(gg, bb))
        chroma = mx - mn
        inv = ONE / max(chroma, F32(1e-12))  # chroma 0: every numerator is 0 too
        h_b = FOUR + (rr - gg) * inv
        h_g = F32(2.0) + (bb - rr) * inv
        h_r = (gg - bb) * inv
        t = (h_r if mx == rr else (h_g if mx == gg else h_b)) + s6   # in [2, 14]
        t = t - SIX if t >= SIX else t
        t = t - SIX if t >= SIX else t
        k5 = t + F32(5.0)
        k3 = t + F32(3.0)
        k1 = t + ONE
        k5 = k5 - SIX if k5 >= SIX else k5
        k3 = k3 - SIX if k3 >= SIX else k3
        k1 = k1 - SIX if k1 >= SIX else k1
        r[x] = mx - chroma * _tri(k5)
        g[x] = mx - chroma * _tri(k3)
        b[x] = mx - chroma * _tri(k1)


@njit(cache=True, nogil=True, error_model="numpy")
def _grey_row(wr, wg, wb):
    for x in range(wr.shape[0]):
        luma = LR * wr[x] + LG * wg[x] + LB * wb[x]
        wr[x] = luma
        wg[x] = luma
        wb[x] = luma


@njit(cache=True, nogil=True, error_model="numpy")
def _store_row(fr, fg, fb, o, t, m0, m1, m2, q0, q1, q2):
    """Solarize (values >= t) and normalise one row into interleaved output."""
    for x in range(fr.shape[0]):
        r, g, b = fr[x], fg[x], fb[x]
        r = ONE - r if r >= t else r
        g = ONE - g if g >= t else g
        b = ONE - b if b >= t else b
        o[3 * x] = (r - m0) * q0
        o[3 * x + 1] = (g - m1) * q1
        o[3 * x + 2] = (b - m2) * q2


@njit(cache=True, nogil=True, error_model="numpy")
def _copy(dst, src):
    for x in range(dst.shape[0]):
        dst[x] = src[x]


@njit(cache=True, nogil=True, error_model="numpy")
def _scaled(dst, row, a):
    for x in range(dst.shape[0]):
        dst[x] = a * row[x]


@njit(cache=True, nogil=True, error_model="numpy")
def _axpy_pair(acc, r1, r2, a):
    """acc += a * (r1 + r2): two taps of a symmetric kernel in one pass."""
    for x in range(acc.shape[0]):
        acc[x] += a * (r1[x] + r2[x])


@njit(cache=True, nogil=True, error_model="numpy")
def _axpy_quad(acc, r1, r2, a, r3, r4, b):
    """acc += a * (r1 + r2) + b * (r3 + r4): four taps in one pass."""
    for x in range(acc.shape[0]):
        acc[x] += a * (r1[x] + r2[x]) + b * (r3[x] + r4[x])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _reflect(i, n):
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@njit(cache=True, nogil=True, error_model="numpy")
def _blur_plane(src, dst, rowbuf, kern, radius):
    """Separable blur of one (H, W) plane with reflect padding, src -> dst (src is
    overwritten by the row pass). The kernel is symmetric, so the taps at +-j share one
    weight: each pass over a row adds four taps (two pairs), which halves the passes."""
    h, w = src.shape
    r = radius
    for y in range(h):  # rows, from a reflect-padded copy back into the row
        row = src[y]
        _copy(rowbuf[r:r + w], row)
        for j in range(1, r + 1):
            rowbuf[r - j] = row[j]
            rowbuf[r + w - 1 + j] = row[w - 1 - j]
        _scaled(row, rowbuf[r:r + w], kern[r])
        j = 1
        while j < r:
            _axpy_quad(row, rowbuf[r + j:r + j + w], rowbuf[r - j:r - j + w], kern[r + j],
                       rowbuf[r + j + 1:r + j + 1 + w], rowbuf[r - j - 1:r - j - 1 + w], kern[r + j + 1])
            j += 2
        if j == r:
            _axpy_pair(row, rowbuf[r + j:r + j + w], rowbuf[r - j:r - j + w], kern[r + j])
    for y in range(h):  # columns: weighted sums of reflected rows
        d = dst[y]
        _scaled(d, src[y], kern[r])
        j = 1
        while j < r:
            _axpy_quad(d, src[_reflect(y + j, h)], src[_reflect(y - j, h)], kern[r + j],
                       src[_reflect(y + j + 1, h)], src[_reflect(y - j - 1, h)], kern[r + j + 1])
            j += 2
        if j == r:
            _axpy_pair(d, src[_reflect(y + j, h)], src[_reflect(y - j, h)], kern[r + j])


@njit(cache=True, nogil=True, error_model="numpy")
def colour_batch(src, interleaved, scale, jitter, bright, contrast, saturation, hue, grey, sigma, radius,
                 solarize, threshold, mean, std, out, work, blurred, rowbuf):
    """src (n, 3, H, W), or (n, H, W, 3) when ``interleaved``, uint8 or float (times ``scale``
    gives 0..1); out (n, H, W, 3) float32. work / blurred: (3, H, W) float32 scratch; rowbuf:
    (W + 2 * max radius,)."""
    n, h, w = out.shape[0], out.shape[1], out.shape[2]
    m0, m1, m2 = mean[0], mean[1], mean[2]
    q0, q1, q2 = ONE / std[0], ONE / std[1], ONE / std[2]
    for i in range(n):
        jit = jitter[i]
        # (1) load and brightness; luma sum for the contrast mean
        b = bright[i] if jit else ONE
        total = 0.0
        for y in range(h):
            if interleaved:
                _load_interleaved_row(src[i, y].reshape(-1), work[0, y], work[1, y], work[2, y], scale, b)
            else:
                _load_row(src[i, 0, y], src[i, 1, y], src[i, 2, y], work[0, y], work[1, y], work[2, y], scale, b)
            if jit:
                total += _luma_sum(work[0, y], work[1, y], work[2, y])
        # (2) contrast, saturation, hue, grayscale
        c = contrast[i]
        cm = F32(1.0 - float(c)) * F32(total / (h * w))
        s = saturation[i]
        s1 = F32(1.0 - float(s))
        shift = hue[i]
        for y in range(h):
            wr, wg, wb = work[0, y], work[1, y], work[2, y]
            if jit:
                _contrast_saturation_row(wr, wg, wb, c, cm, s, s1)
                if shift != ZERO:
                    _hue_row(wr, wg, wb, shift)
            if grey[i]:
                _grey_row(wr, wg, wb)
        # (3) blur
        final = work
        if sigma[i] > ZERO:
            rad = radius[i]
            kern = np.empty(2 * rad + 1, dtype=np.float32)
            total_k = F32(0.0)
            for j in range(2 * rad + 1):
                z = F32(j - rad) / sigma[i]
                kern[j] = F32(math.exp(F32(-0.5) * (z * z)))
                total_k += kern[j]
            for j in range(2 * rad + 1):
                kern[j] = kern[j] / total_k
            for ch in range(3):
                _blur_plane(work[ch], blurred[ch], rowbuf, kern, rad)
            final = blurred
        # (4) solarize, normalise, channels-last store
        t = threshold if solarize[i] else F32(2.0)  # nothing reaches 2: no inversion
        for y in range(h):
            _store_row(final[0, y], final[1, y], final[2, y], out[i, y].reshape(-1), t, m0, m1, m2, q0, q1, q2)


def blur_radius(sigma: float, truncate: float = 3.0) -> int:
    """Kernel radius of a Gaussian blur of ``sigma`` pixels: ``ceil(truncate * sigma)``, at least 1."""
    return max(1, int(math.ceil(truncate * sigma)))


def apply(images: torch.Tensor, params, solarize_threshold: int, mean, std, blur_truncate: float,
          out: torch.Tensor) -> torch.Tensor:
    """Fill ``out`` (B, 3, H, W) float32 channels-last on the CPU; see :func:`pipelines.colour.apply_colour`."""
    b, _, h, w = images.shape
    if images.dtype not in (torch.uint8, torch.float32):
        images = images.float()
    scale = F32(1.0 / 255.0) if images.dtype == torch.uint8 else F32(1.0)
    # the inner loops read rows: planar (B, 3, H, W) as it is, channels-last memory as (B, H, W, 3)
    # rows split into planes on the way in (no transposing copy), anything else copied planar
    interleaved = not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last)
    src = (images.detach().permute(0, 2, 3, 1).numpy() if interleaved
           else np.ascontiguousarray(images.detach().numpy()))
    sig = params.blur_sigma.numpy().astype(np.float32)
    radius = np.array([blur_radius(float(s), blur_truncate) if s > 0 else 0 for s in sig], dtype=np.int64)
    work = np.empty((3, h, w), dtype=np.float32)
    blurred = np.empty((3, h, w), dtype=np.float32)
    rowbuf = np.empty(w + 2 * int(radius.max(initial=0)) + 2, dtype=np.float32)
    f32 = lambda t: t.numpy().astype(np.float32)
    colour_batch(src, interleaved, scale, params.jitter.numpy(), f32(params.brightness), f32(params.contrast),
                 f32(params.saturation), f32(params.hue), params.grayscale.numpy(), sig, radius,
                 params.solarize.numpy(), F32(solarize_threshold / 255.0), np.asarray(mean, dtype=np.float32),
                 np.asarray(std, dtype=np.float32), out.permute(0, 2, 3, 1).numpy(), work, blurred, rowbuf)
    return out
