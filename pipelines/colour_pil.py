"""The colour half of a view on uint8 PIL images: torchvision's semantics on PIL images.

The torch backend's ``colour='pil'`` engine (per view, in the workers): look-up tables and
blends as ``ImageEnhance`` does them, jitter in the drawn random order, PIL's box-pass
Gaussian blur. The same draws as every engine (:mod:`pipelines.sampler`); the batched
float engines of :mod:`pipelines.colour` apply jitter in a fixed order instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from . import sampler
from .colour_cpu import LUMA
from .recipe import ViewSpec


# --------------------------------------------------------------------------- per-view draws

@dataclass(frozen=True)
class ViewParams:
    """Every random decision for one view, for the PIL colour ops. ``jitter`` lists
    (operation, factor) in the order applied (empty when colour jitter is not applied; an
    operation of zero strength is left out); ``blur_sigma`` is None for no blur."""
    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: tuple[tuple[str, float], ...]
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def view_params(row: np.ndarray, view: ViewSpec) -> ViewParams:
    """One view's row of :mod:`pipelines.sampler` draws as :class:`ViewParams`."""
    p = {name: row[i] for name, i in sampler.P.items()}
    jitter: tuple[tuple[str, float], ...] = ()
    if p["jitter"] > 0.5:
        strength = {"brightness": view.brightness, "contrast": view.contrast, "saturation": view.saturation,
                    "hue": view.hue}
        jitter = tuple((name, float(p[name])) for name in sampler.jitter_order(p["jitter_order"]) if strength[name] > 0)
    return ViewParams(int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"]), bool(p["flip"] > 0.5), jitter,
                      bool(p["grayscale"] > 0.5), float(p["sigma"]) if p["blur"] > 0.5 else None,
                      bool(p["solarize"] > 0.5))


# --------------------------------------------------------------------------- uint8 colour ops

_IDENTITY = np.arange(256, dtype=np.float64)


def _lut(values: np.ndarray) -> list[int]:
    """float table -> uint8 table with PIL's blend semantics (clip, then truncate)."""
    return np.clip(values, 0, 255).astype(np.uint8).tolist() * 3


def _grey_mean(img: Image.Image) -> int:
    """Mean of the ITU-R 601 luma, as ImageEnhance.Contrast uses, from one RGB histogram."""
    hist = np.asarray(img.histogram(), dtype=np.float64).reshape(3, 256)
    means = hist @ _IDENTITY / max(hist[0].sum(), 1.0)
    return int(means @ np.array(LUMA) + 0.5)


def adjust_brightness(img: Image.Image, factor: float) -> Image.Image:
    return img.point(_lut(_IDENTITY * factor))


def adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    mean = _grey_mean(img)
    return img.point(_lut(mean + factor * (_IDENTITY - mean)))


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    return Image.blend(img.convert("L").convert("RGB"), img, factor)


def adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    """Rotate the HSV hue by ``factor`` turns (|factor| <= 0.5), on uint8 as torchvision does for PIL."""
    shift = int(factor * 255)
    if shift == 0:
        return img
    h, s, v = img.convert("HSV").split()
    h = h.point([(i + shift) % 256 for i in range(256)])
    return Image.merge("HSV", (h, s, v)).convert("RGB")


_ADJUST = {"brightness": adjust_brightness, "contrast": adjust_contrast,
           "saturation": adjust_saturation, "hue": adjust_hue}


def _solarize_lut(threshold: int) -> list[int]:
    return [i if i < threshold else 255 - i for i in range(256)] * 3


def apply_colour(img: Image.Image, params: ViewParams, solarize_threshold: int = 128) -> Image.Image:
    """Jitter (in the drawn order), grayscale, blur and solarize of an RGB view."""
    for name, factor in params.jitter:
        img = _ADJUST[name](img, factor)
    if params.grayscale:
        img = img.convert("L").convert("RGB")
    if params.blur_sigma is not None:
        img = img.filter(ImageFilter.GaussianBlur(params.blur_sigma))
    if params.solarize:
        img = img.point(_solarize_lut(solarize_threshold))
    return img


