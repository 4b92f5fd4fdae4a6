"""Objectives selected by ``--method``: each a small module on the shared encoder, view plan
and training engine, fulfilling the contract of :mod:`.contract` (``forward(views, coords)
-> MethodOutput``, ``online``, ``target``, ``update_target``, optimiser and epoch hooks).

A new method is one module whose class carries a :func:`~.registry.register_method` entry
(its description, reference settings, own settings, encoder kind), imported below."""
from __future__ import annotations

from .contract import Method, MethodOutput
from .registry import METHODS, MethodEntry, methods_reading, register_method

# imported in the order the registry lists them (--help, the quality table)
from .pixpro import PixPro  # noqa: E402,I001
from .byol import BYOL  # noqa: E402
from .simsiam import SimSiam  # noqa: E402
from .simclr import SimCLR  # noqa: E402
from .mocov2 import MoCoV2  # noqa: E402
from .swav import SwAV  # noqa: E402
from .loca import LOCA  # noqa: E402
from .rotation import Rotation  # noqa: E402
from .jigsaw import Jigsaw  # noqa: E402
from .relative_location import RelativeLocation  # noqa: E402
from .colorization import Colorization  # noqa: E402
from .denoising_ae import DenoisingAE  # noqa: E402


def method_entry(name: str) -> MethodEntry:
    """The registry entry of ``name``; a ValueError listing the methods when there is none."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg) -> Method:
    """The objective named by ``cfg.method`` (a TrainConfig)."""
    return method_entry(cfg.method).cls.from_config(cfg)


__all__ = ["METHODS", "MethodEntry", "Method", "MethodOutput", "build_method", "method_entry", "methods_reading",
           "register_method", "PixPro", "BYOL", "SimSiam", "SimCLR", "MoCoV2", "SwAV", "LOCA", "Rotation", "Jigsaw",
           "RelativeLocation", "Colorization", "DenoisingAE"]
