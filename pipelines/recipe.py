"""The view plan: a recipe is a tuple of view specs that every backend translates.

Numbers live here only. Each :class:`ViewSpec` holds one view's output size, crop scale and
ratio, flip probability and colour probabilities; the recipe adds the normalisation.

Sizes are written in pixels at the 224 px base resolution and scale with the training
``image_size`` (:meth:`ViewSpec.output_size`): a view of the base size becomes exactly
``image_size``; any other size is scaled by ``image_size / 224`` and rounded to a multiple
of 16 (at least 16), so 96 px multi-crop views stay encoder-friendly at every resolution
(96 at 224, 192 at 448, 32 at 64). Blur sigma is in pixels of the output view (the
reference applies it after the resize).

Presets: ``byol`` (the PixPro recipe, asymmetric blur / solarize), ``simclr``, ``mocov2``,
``swav_multicrop`` (2 x 224 + 6 x 96, SwAV's colour distortion), ``loca`` (a reference
view, a query view and nine focal queries), ``single`` (one geometry-only view for pretext
tasks that do their own work on the device).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASE_SIZE = 224
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class ViewSpec:
    size: int = BASE_SIZE  # output side in pixels at the 224 px base resolution
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
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"view size must be a positive number of pixels, got {self.size!r}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if not 0 <= self.solarize_threshold <= 256:
            raise ValueError(f"solarize_threshold must lie in [0, 256], got {self.solarize_threshold}")

    def output_size(self, image_size: int = BASE_SIZE) -> int:
        """This view's side in pixels when training at ``image_size`` (see the module docstring)."""
        if self.size == BASE_SIZE:
            return int(image_size)
        return max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(self.size * image_size / BASE_SIZE / SIZE_MULTIPLE))

    def without_colour(self) -> "ViewSpec":
        """Geometry only: crop and flip, no jitter, grayscale, blur or solarize."""
        return replace(self, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)



_VIEW_KEYS = tuple(f.name for f in fields(ViewSpec))
_TUPLE_KEYS = ("crop_scale", "crop_ratio", "blur_sigma")


@dataclass(frozen=True)
class Recipe:
    name: str
    views: tuple[ViewSpec, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        views = tuple(self.views)
        object.__setattr__(self, "views", views)
        if not views:
            raise ValueError(f"recipe {self.name!r} has no views")
        for k, v in enumerate(views):
            if not isinstance(v, ViewSpec):
                raise ValueError(f"recipe {self.name!r}: view {k} is a {type(v).__name__}, not a ViewSpec")
        for key in ("mean", "std"):
            value = tuple(float(x) for x in getattr(self, key))
            if len(value) != 3:
                raise ValueError(f"recipe {self.name!r}: {key} needs 3 channel values, got {value}")
            object.__setattr__(self, key, value)
        if min(self.std) <= 0:
            raise ValueError(f"recipe {self.name!r}: std must be positive, got {self.std}")

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def view1(self) -> ViewSpec:
        return self.views[0]

    @property
    def view2(self) -> ViewSpec:
        return self.views[1]

    def output_sizes(self, image_size: int = BASE_SIZE) -> tuple[int, ...]:
        return tuple(v.output_size(image_size) for v in self.views)

    def without_colour(self) -> "Recipe":
        return replace(self, name=self.name + "-geometry", views=tuple(v.without_colour() for v in self.views))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Recipe":
        """A recipe from plain data: ``{"name", "views": [view dict, ...], "mean", "std"}``.

        A view dict holds :class:`ViewSpec` fields plus an optional ``count`` (repeat that view);
        an unknown key is a ValueError naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"a recipe must be a dict, got {type(d).__name__}")
        unknown = set(d) - {"name", "views", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown recipe key(s) {sorted(unknown)}; accepted: name, views, mean, std")
        name = str(d.get("name", "custom"))
        if not isinstance(d.get("views"), (list, tuple)) or not d["views"]:
            raise ValueError(f"recipe {name!r}: 'views' must be a non-empty list of view dicts")
        views = []
        for k, raw in enumerate(d["views"]):
            if not isinstance(raw, dict):
                raise ValueError(f"recipe {name!r}: view {k} must be a dict, got {type(raw).__name__}")
            bad = set(raw) - set(_VIEW_KEYS) - {"count"}
            if bad:
                raise ValueError(f"recipe {name!r}: unknown view key(s) {sorted(bad)} in view {k}; "
                                 f"accepted: count, {', '.join(_VIEW_KEYS)}")
            kw = {key: tuple(val) if key in _TUPLE_KEYS else val for key, val in raw.items() if key != "count"}
            count = raw.get("count", 1)
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"recipe {name!r}: view {k} count must be a positive integer, got {count!r}")
            try:
                spec = ViewSpec(**kw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"recipe {name!r}, view {k}: {exc}") from None
            views += [spec] * count
        return Recipe(name, tuple(views), tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD)))


# ----------------------------------------------------------------------------- presets

BYOL = Recipe("byol", (ViewSpec(blur_p=1.0, solarize_p=0.0), ViewSpec(blur_p=0.1, solarize_p=0.2)))
_simclr_view = ViewSpec(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5, solarize_p=0.0)
SIMCLR = Recipe("simclr", (_simclr_view, _simclr_view))
_mocov2_view = ViewSpec(crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                        blur_p=0.5, solarize_p=0.0)
MOCOV2 = Recipe("mocov2", (_mocov2_view, _mocov2_view))
# SwAV: colour distortion of strength 1 (jitter 0.8/0.8/0.8/0.2 at p 0.8, grayscale 0.2),
# Gaussian blur p 0.5 with sigma in [0.1, 2], no solarize, on every crop
_swav_colour = dict(jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, grayscale_p=0.2,
                    blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.0)
SWAV_MULTICROP = Recipe("swav_multicrop", (ViewSpec(size=224, crop_scale=(0.14, 1.0), **_swav_colour),) * 2
                        + (ViewSpec(size=96, crop_scale=(0.05, 0.14), **_swav_colour),) * 6)
# LOCA: view 0 is the reference (no flip), view 1 the query, views 2..10 the focal queries.
# The colour numbers (jitter 0.4/0.4/0.2/0.1 at p 0.8, grayscale 0.2, solarize 0.2 on the
# query, no blur) are still to be checked against the reference implementation.
_loca_colour = dict(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2,
                    blur_p=0.0, solarize_p=0.0)
LOCA = Recipe("loca", (ViewSpec(size=224, crop_scale=(0.32, 1.0), flip_p=0.0, **_loca_colour),
                       ViewSpec(size=224, crop_scale=(0.32, 1.0), **{**_loca_colour, "solarize_p": 0.2}))
              + (ViewSpec(size=96, crop_scale=(0.05, 0.32), **_loca_colour),) * 9)
SINGLE = Recipe("single", (ViewSpec().without_colour(),))

PRESETS: dict[str, Recipe] = {r.name: r for r in (BYOL, SIMCLR, MOCOV2, SWAV_MULTICROP, LOCA, SINGLE)}


def get_recipe(name: "str | Recipe | dict") -> Recipe:
    """A preset by name, a recipe as it is, or one built from a dict (:meth:`Recipe.from_dict`)."""
    if isinstance(name, Recipe):
        return name
    if isinstance(name, dict):
        return Recipe.from_dict(name)
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown augmentation recipe {name!r}; choose one of {sorted(PRESETS)}") from None
