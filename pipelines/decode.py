"""Decoding an image file once for all of its views, and cutting the views from it.

:func:`render_views` is the per-sample work of the torch backend's workers, and the FFCV
backend's fallback for a replaced sample: read the header, draw every view
(:mod:`pipelines.sampler`), decode at the largest JPEG DCT reduction that leaves every
window at least its view's size, cut each view with :func:`pipelines.resample.crop_resize`
(or PIL's resize for the PIL colour engine).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:  # deprecated in torchvision 0.29 in favour of torchcodec; PIL decodes where it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - depends on the torchvision version
    decode_jpeg = None

from . import resample, sampler
from .colour_pil import apply_colour, view_params
from .geometry import window_to_coords
from .image_header import DEFAULT_MAX_PIXELS, open_image
from .recipe import Recipe


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha dropped, palette expanded, CMYK / grayscale converted)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey -> 8-bit, scaled
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a * (255.0 / max(a.max(), 255.0)), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """A JPEG's pixels as (H, W, 3) uint8 through torchvision's libjpeg-turbo decoder.

    The same pixels as PIL's decode, in half the time of PIL's decode plus its copy into an
    array (PIL keeps RGB at four bytes a pixel and repacks it on the way out); torchvision
    returns a channel-first view of interleaved memory, so no copy is made here."""
    try:
        x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:  # torchvision prefixes libjpeg's message with its source location
        raise OSError(f"cannot decode JPEG data: {str(exc).rsplit(', ', 1)[-1]}") from exc
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def render_views(path: str | Path, recipe: Recipe, image_size: int, seed: int, epoch: int, sample: int,
                 reducing_gap: float | None = 2.0, colour: bool = True, spec: np.ndarray | None = None,
                 planar: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[list[np.ndarray], list[tuple[float, ...]], np.ndarray]:
    """Decode ``path`` once and produce every view of the recipe as uint8 arrays (flip
    applied), their coords per the box contract, and the (V, len(PARAM_NAMES)) draws of
    :mod:`pipelines.sampler` for key (seed, epoch, sample).

    Resampling is antialiased bilinear (PIL's filter, as torchvision's on PIL images).
    ``planar=False``: HxWx3 views from PIL's ``Image.resize``; where a window is at least
    ``reducing_gap`` times the output size it is first box-reduced by an integer factor
    (PIL's ``reducing_gap``; Pillow calls the result indistinguishable from the direct
    resize in most cases from 3.0 up, 2.0 trades a little of that for speed; None turns it
    off; with JPEG draft decoding it rarely triggers). ``planar=True`` (no colour work):
    3xHxW views from :func:`pipelines.resample.crop_resize`, the same filter in about half
    of PIL's time, in the layout the colour pass reads; an RGB or grey JPEG that needs no
    draft reduction is then decoded by :func:`decode_jpeg_rgb`. ``colour=False`` leaves the
    colour work out (the caller applies the drawn parameters itself). An image of more than
    ``max_pixels`` pixels is refused from its header, undecoded
    (:class:`pipelines.image_header.ImageTooLarge`)."""
    if planar and colour:
        raise ValueError("planar views leave the colour work to the caller: pass colour=False")
    spec = sampler.recipe_spec(recipe, image_size) if spec is None else spec
    sizes = [int(s) for s in spec[:, sampler.S["size"]]]
    data = path.read() if hasattr(path, "read") else Path(path).read_bytes()
    pixels = None
    with open_image(data, max_pixels) as img:
        width, height = img.size
        rows = np.zeros((len(recipe.views), len(sampler.PARAM_NAMES)))
        sampler.draw_sample(rows, spec, seed, epoch, sample, height, width)
        params = [view_params(r, v) for r, v in zip(rows, recipe.views)]
        scale = 1.0
        f = int(resample.decode_reduction(rows, spec[:, sampler.S["size"]])) if img.format == "JPEG" else 1
        if planar and f == 1 and img.format == "JPEG" and img.mode in ("RGB", "L") and decode_jpeg is not None:
            pixels = decode_jpeg_rgb(data)
        else:
            if f > 1:
                drafted = img.draft("RGB", (width // f, height // f))
                if drafted is not None:
                    scale = width / drafted[1][2]
            img.load()
            img = to_rgb(img)
            if planar:
                pixels = np.asarray(img)
    arrays, coords = [], []
    for p, view, size in zip(params, recipe.views, sizes):
        top, left, h, w = p.top / scale, p.left / scale, p.height / scale, p.width / scale
        if planar:
            arr = np.empty((3, size, size), dtype=np.uint8)
            resample.crop_resize(pixels, top, left, h, w, size, p.flip, arr)
        else:
            out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h),
                             reducing_gap=reducing_gap)
            if colour:
                out = apply_colour(out, p, view.solarize_threshold)
            arr = np.asarray(out)
            arr = arr[:, ::-1] if p.flip else arr
        arrays.append(arr)
        coords.append(window_to_coords(p.top, p.left, p.height, p.width, height, width, p.flip))
    return arrays, coords, rows
