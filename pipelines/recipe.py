"""The two-view augmentation recipe as one data object that every backend translates.

Numbers live here only. ``BYOL`` is the PixPro recipe (asymmetric blur / solarize);
``SIMCLR`` and ``MOCOV2`` are the usual recipes of those methods, symmetric between views.
Blur sigma is in pixels of the output view (as the reference applies it after the resize).
"""
from __future__ import annotations

from dataclasses import dataclass, replace, asdict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewRecipe:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: int = 128  # on the 0..255 scale: pixels >= threshold are inverted

    def __post_init__(self):
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")

    def without_colour(self) -> "ViewRecipe":
        """Geometry only: crop and flip, no jitter, grayscale, blur or solarize."""
        return replace(self, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


@dataclass(frozen=True)
class Recipe:
    name: str
    view1: ViewRecipe
    view2: ViewRecipe
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def views(self) -> tuple[ViewRecipe, ViewRecipe]:
        return (self.view1, self.view2)

    def without_colour(self) -> "Recipe":
        return replace(self, name=self.name + "-geometry", view1=self.view1.without_colour(),
                       view2=self.view2.without_colour())

    def to_dict(self) -> dict:
        return asdict(self)


BYOL = Recipe("byol", ViewRecipe(blur_p=1.0, solarize_p=0.0), ViewRecipe(blur_p=0.1, solarize_p=0.2))
_simclr_view = ViewRecipe(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5, solarize_p=0.0)
SIMCLR = Recipe("simclr", _simclr_view, _simclr_view)
_mocov2_view = ViewRecipe(crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                          blur_p=0.5, solarize_p=0.0)
MOCOV2 = Recipe("mocov2", _mocov2_view, _mocov2_view)

PRESETS: dict[str, Recipe] = {r.name: r for r in (BYOL, SIMCLR, MOCOV2)}


def get_recipe(name: str) -> Recipe:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation recipe {name!r}; choose one of {sorted(PRESETS)}") from None
