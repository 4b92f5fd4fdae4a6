"""Data pipelines: image files -> the views of a view plan, each with its crop box.

``build_loader`` is the single entry point; each backend lives in its own module and is
imported only when asked for, so a missing optional library (DALI, FFCV) matters only to
those who choose it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .batch import Batch, Loader
from .corrupt import CorruptImageError
from .image_header import DEFAULT_MAX_PIXELS
from .recipe import (BYOL, LOCA, MOCOV2, PRESETS, SIMCLR, SINGLE, SWAV_MULTICROP, Recipe, ViewSpec,
                     get_recipe)

# backend name -> (module, factory function, pip extra that provides its library)
BACKENDS = {
    "torch": ("pipelines.torch_loader", "build_torch_loader", None),
    "dali": ("pipelines.dali_loader", "build_dali_loader", "dali"),
    "ffcv": ("pipelines.ffcv_loader", "build_ffcv_loader", "ffcv"),
    "synthetic": ("pipelines.synthetic", "build_synthetic_loader", None),
}


def build_loader(backend: str, data_dir: str | Path | None, batch_size: int, image_size: int = 224,
                 recipe: Recipe | str | dict = BYOL, **options) -> Loader:
    """Build a loader yielding one :class:`Batch` of the recipe's views per step.

    ``recipe``: a :class:`Recipe`, a preset name (:data:`PRESETS`) or a recipe dict
    (:meth:`Recipe.from_dict`); its view sizes scale with ``image_size``.

    Common options every backend accepts: ``device`` (training device), ``num_workers``
    (CPU workers decoding in parallel; None: one per core, 0: no pool), ``seed``, ``rank``,
    ``world_size``, ``drop_last`` (default True), ``on_corrupt`` ('skip' counts and replaces
    unreadable images, 'error' raises), ``max_pixels`` (an image whose header declares more
    pixels is unreadable, never decoded; default :data:`DEFAULT_MAX_PIXELS`, 0: no cap). The
    decoding backends also take ``colour`` (where the colour steps run) and the other options
    of :class:`pipelines.view_plan_loader.ViewPlanLoader`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}; choose one of {sorted(BACKENDS)}")
    recipe = get_recipe(recipe)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    module_name, factory, extra = BACKENDS[backend]
    module = importlib.import_module(module_name)
    return getattr(module, factory)(data_dir=data_dir, batch_size=batch_size, image_size=image_size,
                                    recipe=recipe, **options)


__all__ = ["Batch", "Loader", "Recipe", "ViewSpec", "BYOL", "SIMCLR", "MOCOV2", "SWAV_MULTICROP",
           "LOCA", "SINGLE", "PRESETS", "get_recipe", "build_loader", "BACKENDS", "CorruptImageError",
           "DEFAULT_MAX_PIXELS"]
