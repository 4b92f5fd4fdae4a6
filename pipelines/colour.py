"""The colour half of a view recipe as batched tensor operations with per-sample parameters.

Any backend that ends with a batch of RGB views (B, 3, H, W) -- uint8 on the 0..255 scale or
float on 0..1, any memory format, CPU or CUDA -- finishes the recipe here:

    params = sample_colour_params(view, batch_size, generator)   # CPU, cheap, fixable in tests
    out = apply_colour(images, params, view.solarize_threshold, mean, std)

Semantics follow torchvision's tensor functional ops on float images (each op clamps to
[0, 1]; nothing is quantised in between), in the order of the BYOL/PixPro recipe:

1. colour jitter with probability ``jitter_p``, operations in the FIXED order brightness,
   contrast, saturation, hue. torchvision's ``ColorJitter`` draws a random order per image;
   brightness, contrast and saturation are linear maps that commute exactly (up to the
   clamps), so the only order dependence dropped is where hue sits relative to contrast and
   saturation (hue rotation changes luma) and clamping effects;
2. grayscale (ITU-R 601-2 luma, 3 channels) with probability ``grayscale_p``;
3. Gaussian blur with probability ``blur_p``, sigma ~ U(blur_sigma) in pixels, reflect
   padding, kernel radius ``ceil(truncate * sigma)``;
4. solarize with probability ``solarize_p``: values >= threshold / 255 become 1 - value;
5. normalisation ``(x - mean) / std`` into a channels-last tensor of the chosen dtype.

Why parameters are drawn on the CPU: which samples take an op, and the blur kernel sizes,
decide tensor shapes; knowing them on the host costs B random numbers and avoids a device
synchronisation per batch. Each op touches only the samples that take it (gathered when
fewer than all), and blur groups samples by kernel size, so its cost follows each sample's
own sigma rather than the largest one.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from . import colour_cpu
from .colour_cpu import LUMA, blur_radius
from .output_pool import OutputPool
from .recipe import ViewSpec


# --------------------------------------------------------------------------- parameters

@dataclass
class ColourParams:
    """Per-sample colour decisions for a batch, all (B,) CPU tensors.

    Neutral values mark samples an op leaves alone: factors 1.0, hue 0.0, sigma 0.0 (no blur).
    ``jitter`` says whether the jitter block applies (its four factors are then drawn).
    """
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur_sigma: torch.Tensor
    solarize: torch.Tensor

    def __len__(self) -> int:
        return self.jitter.shape[0]

    def select(self, index: torch.Tensor | slice) -> "ColourParams":
        return ColourParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def neutral(batch_size: int) -> "ColourParams":
        """Parameters that change nothing (only normalisation happens)."""
        z = torch.zeros(batch_size)
        off = torch.zeros(batch_size, dtype=torch.bool)
        return ColourParams(off, z + 1, z + 1, z + 1, z.clone(), off.clone(), z.clone(), off.clone())


def sample_colour_params(view: ViewSpec, batch_size: int,
                         generator: torch.Generator | None = None) -> ColourParams:
    """Every colour decision of ``batch_size`` views of one spec, for using the engine on its
    own: :mod:`pipelines.sampler`'s draws (the one colour draw of the project) for samples
    0.. under a seed taken from ``generator``."""
    import numpy as np

    from . import sampler
    from .recipe import Recipe
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    n = np.arange(batch_size)
    rows = sampler.draw(Recipe("colour", (view,)), view.size, seed, 0, n, np.full(batch_size, view.size),
                        np.full(batch_size, view.size))
    return sampler.colour_params(rows[:, 0])


# --------------------------------------------------------------------------- single operations
# Each works in place on a float (n, 3, H, W) tensor on the 0..1 scale and per-sample (n,)
# parameters already on its device, and returns it.

def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor on ``device`` without stopping the host: to a GPU through pinned memory,
    since a copy from pageable memory first waits for all the work queued on the stream (in
    a training loop, the previous step), which would leave the GPU idle while the host then
    queues the colour pass and the next step."""
    t = t if dtype is None else t.to(dtype)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return to_device(values, x.device, x.dtype).view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (n, 1, H, W) of an RGB batch."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    out = r * LUMA[0]
    out.add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])
    return out


def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul_(_per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast_(x: torch.Tensor, factor: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Blend with the mean luma of each image. ``clamp=False`` is exact when every factor <= 1."""
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x.lerp_(mean.expand_as(x), 1.0 - _per_sample(factor, x))
    return x.clamp_(0.0, 1.0) if clamp else x


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Blend with the luma image. ``clamp=False`` is exact when every factor <= 1."""
    x.lerp_(grey(x).expand_as(x), 1.0 - _per_sample(factor, x))
    return x.clamp_(0.0, 1.0) if clamp else x


def adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` turns, without building H, S, V planes.

    HSV keeps each pixel's max and min channel; with ``c = max - min`` and the rotated hue
    ``h'`` in sixths, channel n (R: 5, G: 3, B: 1) is ``max - c * clamp(min(k, 4 - k), 0, 1)``
    for ``k = (n + h') mod 6`` -- the branch-free form of torchvision's six-sector
    hsv -> rgb table, fed by the same rgb -> hue formulas. Sector choices are made with
    0/1 float masks and lerps, and ``mod`` with ``frac``: ``torch.where`` and ``remainder``
    are many times slower than plain arithmetic on the CPU.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    # chroma 0 means r = g = b: every numerator below is then 0 too
    inv6 = chroma.clamp(min=1e-12).reciprocal_().mul_(1.0 / 6.0)
    hue = (r - g).mul_(inv6).add_(4.0 / 6.0)                                            # max is b only
    hue.lerp_((b - r).mul_(inv6).add_(2.0 / 6.0), torch.eq(maxc, g, out=torch.empty_like(maxc)))  # max is g (not r)
    hue.lerp_((g - b).mul_(inv6), torch.eq(maxc, r, out=torch.empty_like(maxc)))        # max is r
    # in turns, shifted; + 1 keeps the argument of frac positive (|shift| <= 0.5, hue >= -1/6)
    hue.add_(_per_sample(shift, x).view(-1, 1, 1) + 1.0)
    for n, channel in ((5.0, r), (3.0, g), (1.0, b)):
        k = torch.frac(hue + n / 6.0).mul_(6.0)
        t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.addcmul(maxc, chroma, t, value=-1.0, out=channel)
    return x


def to_grayscale_(x: torch.Tensor) -> torch.Tensor:
    return x.copy_(grey(x).expand_as(x))


def solarize_(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert values >= ``threshold`` (on the 0..1 scale): ``x + m * (1 - 2x)`` with a 0/1 mask."""
    mask = torch.ge(x, threshold, out=torch.empty_like(x))
    return x.addcmul_(mask, 1.0 - 2.0 * x)


def gaussian_kernels(sigma: torch.Tensor, radius: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(n, 2 * radius + 1) normalised Gaussian kernels, one per sigma."""
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    s = to_device(sigma, torch.device(device or "cpu"), dtype).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) with per-sample sigma and one common radius.

    Reflect padding on both axes, then a horizontal and a vertical pass: the arithmetic of
    torchvision's ``gaussian_blur`` with kernel size ``2 * radius + 1``. Returns a new
    tensor. On CUDA the passes are depthwise convolutions; on the CPU they are
    ``2 * radius + 1`` shifted multiply-adds each, several times faster there than
    PyTorch's CPU depthwise convolution for these kernel sizes.
    """
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, radius, x.dtype, x.device)  # (n, K)
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    if x.device.type != "cpu":
        k = k.repeat_interleave(c, dim=0)
        y = F.conv2d(padded.view(1, n * c, h + 2 * radius, w + 2 * radius), k.view(n * c, 1, 1, -1), groups=n * c)
        return F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)
    taps = k.view(n, -1, 1, 1, 1).unbind(1)  # each (n, 1, 1, 1)
    rows = padded[..., 0:w] * taps[0]
    for j in range(1, len(taps)):
        rows.addcmul_(padded[..., j:j + w], taps[j])
    out = rows[:, :, 0:h] * taps[0]
    for j in range(1, len(taps)):
        out.addcmul_(rows[:, :, j:j + h], taps[j])
    return out


def gaussian_blur_(x: torch.Tensor, sigma: torch.Tensor, truncate: float = 3.0) -> torch.Tensor:
    """Blur every sample with its own sigma (a CPU tensor) in place, at its own kernel size:
    one sample at a time on the CPU, samples grouped by kernel size elsewhere."""
    radii = [blur_radius(s, truncate) for s in sigma.tolist()]
    if x.device.type == "cpu":
        for i, radius in enumerate(radii):
            x[i:i + 1] = gaussian_blur(x[i:i + 1], sigma[i:i + 1], radius)
        return x
    for radius in sorted(set(radii)):
        members = [i for i, r in enumerate(radii) if r == radius]
        if len(members) == len(radii):
            x.copy_(gaussian_blur(x, sigma, radius))
        else:
            idx = to_device(torch.tensor(members), x.device)
            x.index_copy_(0, idx, gaussian_blur(x.index_select(0, idx), sigma[members], radius))
    return x


# --------------------------------------------------------------------------- the whole view

def _on_subset(x: torch.Tensor, mask: torch.Tensor, fn) -> None:
    """Run ``fn(sub, members)`` on the samples where ``mask`` (CPU bool) holds, in place."""
    members = mask.nonzero().flatten()
    if len(members) == 0:
        return
    if len(members) == len(mask):
        fn(x, slice(None))
        return
    idx = to_device(members, x.device)
    sub = x.index_select(0, idx)
    fn(sub, members)
    x.index_copy_(0, idx, sub)


def colour_(x: torch.Tensor, params: ColourParams, solarize_threshold: int = 128,
            blur_truncate: float = 3.0) -> torch.Tensor:
    """Steps 1-4 of the module docstring, in place on a planar float (B, 3, H, W) on 0..1."""
    p = params

    def jitter(sub, members):
        q = p.select(members)
        adjust_brightness_(sub, q.brightness)
        adjust_contrast_(sub, q.contrast, clamp=bool((q.contrast > 1).any()))
        adjust_saturation_(sub, q.saturation, clamp=bool((q.saturation > 1).any()))
        if bool((q.hue != 0).any()):
            adjust_hue_(sub, q.hue)

    _on_subset(x, p.jitter, jitter)
    _on_subset(x, p.grayscale, lambda sub, _: to_grayscale_(sub))
    _on_subset(x, p.blur_sigma > 0, lambda sub, m: gaussian_blur_(sub, p.blur_sigma[m], blur_truncate))
    _on_subset(x, p.solarize, lambda sub, _: solarize_(sub, solarize_threshold / 255.0))
    return x


def _channel_values(values, x: torch.Tensor) -> torch.Tensor:
    """Per-channel numbers (a sequence, or a tensor of C values in any shape) as a float32
    (1, C, 1, 1) tensor on ``x``'s device."""
    if isinstance(values, torch.Tensor):
        return values.to(device=x.device, dtype=torch.float32).reshape(1, -1, 1, 1)
    return to_device(torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, -1, 1, 1), x.device)


def normalise(x01: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / std`` of a 0..1 float batch into a channels-last tensor of ``dtype``.

    ``mean`` and ``std``: three numbers (a recipe's) or tensors of three values. The one
    normalisation of the project: the loaders' colour pass, the methods that rebuild a view
    from its pixel values, the probe. :func:`unnormalise` is its inverse."""
    b, c, h, w = x01.shape
    if out is None:
        out = torch.empty((b, c, h, w), dtype=dtype, device=x01.device, memory_format=torch.channels_last)
    if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
        m, s = _channel_values(mean, x01), _channel_values(std, x01)
        scale, shift = s.reciprocal(), -m / s
    else:
        dev = x01.device
        scale = to_device(torch.tensor([1.0 / s for s in std], dtype=torch.float32).view(1, c, 1, 1), dev)
        shift = to_device(torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, c, 1, 1), dev)
    torch.addcmul(shift, x01, scale, out=out)
    return out


def normalise_uint8(views: torch.Tensor, mean, std) -> torch.Tensor:
    """:func:`normalise` of uint8 views (B, 3, H, W) on any device, in any memory format:
    float32 channels-last, ``(x / 255 - mean) / std``.

    Works on the (B*H, W*3) view of the interleaved pixels with per-channel constants tiled
    along a row: broadcasting a 3-vector over an innermost dimension of 3 would defeat
    vectorisation."""
    b, c, h, w = views.shape
    nhwc = views.permute(0, 2, 3, 1).contiguous()   # a no-op for channels-last memory
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).repeat(w)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).repeat(w)
    x = nhwc.reshape(b * h, w * c).float()
    torch.addcmul(to_device(shift, x.device), x, to_device(scale, x.device), out=x)
    return x.view(b, h, w, c).permute(0, 3, 1, 2)  # NHWC memory = channels-last NCHW


def unnormalise(x: torch.Tensor, mean, std, clamp: bool = True) -> torch.Tensor:
    """The inverse of :func:`normalise`: ``x * std + mean``, float32 on the 0..1 scale (clamped
    to [0, 1] unless ``clamp`` is False), in ``x``'s memory format. ``x``: (B, C, H, W)."""
    x01 = x.float() * _channel_values(std, x) + _channel_values(mean, x)
    return x01.clamp_(0.0, 1.0) if clamp else x01


ENGINES = ("auto", "torch", "numba")


def resolve_engine(engine: str, device: torch.device, dtype: torch.dtype) -> str:
    """'auto' is the fused numba engine for float32 output on the CPU, else tensor ops."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    return "numba" if device.type == "cpu" and dtype == torch.float32 else "torch"


def apply_colour(images: torch.Tensor, params: ColourParams, solarize_threshold: int = 128,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dtype: torch.dtype = torch.float32,
                 chunk: int | None = None, blur_truncate: float = 3.0, engine: str = "auto",
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Colour-augment and normalise a batch of RGB views.

    ``images``: (B, 3, H, W) uint8 (0..255) or float (0..1), any memory format and device;
    it is not modified. Returns ``dtype`` (B, 3, H, W) in channels-last memory on the same
    device. ``engine``: 'torch' (tensor ops, any device), 'numba' (fused CPU loops, see
    :mod:`pipelines.colour_cpu`; float32 output) or 'auto'. For the tensor-op engine,
    ``chunk`` processes that many samples at a time through one reused buffer: the default,
    4 on the CPU, keeps the working set in cache (a fresh batch-sized buffer per step costs
    more in page faults and memory traffic than the arithmetic); the whole batch at once on
    a GPU. ``out``: a channels-last buffer of the output's shape, dtype and device to write
    into (see :class:`OutputPool`), else a new one.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, got shape {tuple(images.shape)}")
    if len(params) != images.shape[0]:
        raise ValueError(f"{len(params)} parameter rows for a batch of {images.shape[0]}")
    b, c, h, w = images.shape
    if out is None:
        out = torch.empty(images.shape, dtype=dtype, device=images.device, memory_format=torch.channels_last)
    elif (out.shape != images.shape or out.dtype != dtype or out.device != images.device
          or not out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"out must be a channels-last {dtype} tensor of shape {tuple(images.shape)} on "
                         f"{images.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if resolve_engine(engine, images.device, dtype) == "numba":
        if images.device.type != "cpu" or dtype != torch.float32:
            raise ValueError("the numba engine works on CPU tensors and writes float32")
        return colour_cpu.apply(images, params, solarize_threshold, mean, std, blur_truncate, out)
    if chunk is None:
        chunk = 4 if images.device.type == "cpu" else b
    chunk = max(1, min(chunk, b))
    work = torch.empty((chunk, c, h, w), dtype=torch.float32, device=images.device)  # reused by every chunk
    for start in range(0, b, chunk):
        stop = min(start + chunk, b)
        x = work[:stop - start]
        x.copy_(images[start:stop])  # planar float copy; the input stays untouched
        if images.dtype == torch.uint8:
            x.mul_(1.0 / 255.0)
        colour_(x, params.select(slice(start, stop)), solarize_threshold, blur_truncate)
        normalise(x, mean, std, dtype, out=out[start:stop])
    return out


class ColourAugment:
    """One view's colour recipe bound to its normalisation: ``aug(images, generator)``.

    ``reuse_outputs``: write CPU outputs into an :class:`OutputPool` (loaders turn it on)."""

    def __init__(self, view: ViewSpec, mean, std, dtype: torch.dtype = torch.float32,
                 chunk: int | None = None, engine: str = "auto", reuse_outputs: bool = False):
        self.view, self.mean, self.std, self.dtype, self.chunk = view, tuple(mean), tuple(std), dtype, chunk
        self.engine = engine
        self.pool = OutputPool() if reuse_outputs else None

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ColourParams:
        return sample_colour_params(self.view, batch_size, generator)

    def apply(self, images: torch.Tensor, params: ColourParams) -> torch.Tensor:
        out = None
        if self.pool is not None and images.device.type == "cpu":
            out = self.pool.take(images.shape, self.dtype, images.device)
        return apply_colour(images, params, self.view.solarize_threshold, self.mean, self.std,
                            self.dtype, self.chunk, engine=self.engine, out=out)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], generator))
