"""Data pipelines: image files -> two augmented views with their crop boxes.

``build_loader`` is the single entry point; each backend lives in its own module and is
imported only when asked for, so a missing optional library (DALI, FFCV) matters only to
those who choose it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .batch import Batch, Loader
from .recipe import BYOL, MOCOV2, PRESETS, SIMCLR, Recipe, ViewRecipe, get_recipe

# backend name -> (module, factory function, pip extra that provides its library)
BACKENDS = {
    "torch": ("pipelines.torch_loader", "build_torch_loader", None),
    "dali": ("pipelines.dali_loader", "build_dali_loader", "dali"),
    "ffcv": ("pipelines.ffcv_loader", "build_ffcv_loader", "ffcv"),
    "synthetic": ("pipelines.synthetic", "build_synthetic_loader", None),
}


def build_loader(backend: str, data_dir: str | Path | None, batch_size: int, image_size: int = 224,
                 recipe: Recipe | str = BYOL, **options) -> Loader:
    """Build a two-view loader.

    Common options every backend accepts: ``device`` (training device), ``num_workers``,
    ``seed``, ``rank``, ``world_size``, ``drop_last`` (default True), ``on_corrupt``
    ('skip' counts and replaces unreadable images, 'error' raises).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    module_name, factory, extra = BACKENDS[backend]
    module = importlib.import_module(module_name)
    return getattr(module, factory)(data_dir=data_dir, batch_size=batch_size, image_size=image_size,
                                    recipe=recipe, **options)


__all__ = ["Batch", "Loader", "Recipe", "ViewRecipe", "BYOL", "SIMCLR", "MOCOV2", "PRESETS", "get_recipe",
           "build_loader", "BACKENDS"]
