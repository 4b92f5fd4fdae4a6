"""Objectives selected by ``--method``: each a small module on the shared encoder, two-view
pipeline and training engine. ``build_method(cfg)`` returns an nn.Module whose forward takes
``(view1, view2, coords1, coords2, return_stats)``, with ``online`` (what the optimiser
trains), ``target`` (momentum copies, possibly empty) and ``update_target(momentum)``."""
from __future__ import annotations

import torch.nn as nn

from ..model import PixPro
from .byol import BYOL
from .mocov2 import MoCoV2
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

# name -> (class, one-line description). The pixel-level family shares the PixPro module;
# its members differ by loss weights, set in their bundled configs.
METHODS: dict[str, tuple[type, str]] = {
    "pixpro": (PixPro, "pixel propagation consistency (PixPro)"),
    "pixpro_ins": (PixPro, "PixPro plus the BYOL-style instance branch"),
    "pixcontrast": (PixPro, "pixel-level InfoNCE between views (PixContrast)"),
    "byol": (BYOL, "instance-level: predictor regresses a momentum target"),
    "simsiam": (SimSiam, "instance-level: predictor + stop-gradient, no target"),
    "simclr": (SimCLR, "instance-level: NT-Xent with negatives from every rank"),
    "mocov2": (MoCoV2, "instance-level: momentum keys and a queue of negatives"),
    "swav": (SwAV, "instance-level: swapped prediction of Sinkhorn cluster codes"),
}


def build_method(cfg) -> nn.Module:
    """The objective named by ``cfg.method`` (a TrainConfig)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[cfg.method][0]
    if cls is PixPro:
        return PixPro(cfg.model_config())
    return cls(cfg)
