"""Objectives selected by ``--method``: each a small module on the shared encoder, view plan
and training engine, fulfilling the contract of :mod:`.contract` (``forward(views, coords)
-> MethodOutput``, ``online``, ``target``, ``update_target``, optimiser hooks).

A new method is one module, one line in :data:`METHODS` and one bundled preset
(``configs/NAME.json``)."""
from __future__ import annotations

from .byol import BYOL
from .colorization import Colorization
from .contract import Method, MethodOutput
from .denoising_ae import DenoisingAE
from .jigsaw import Jigsaw
from .loca import LOCA
from .mocov2 import MoCoV2
from .pixpro import PixPro
from .relative_location import RelativeLocation
from .rotation import Rotation
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

# name -> (class, one-line description). The pixel-level family shares the PixPro module;
# its members differ by loss weights, set in their bundled presets.
METHODS: dict[str, tuple[type[Method], str]] = {
    "pixpro": (PixPro, "pixel propagation consistency (PixPro)"),
    "pixpro_ins": (PixPro, "PixPro plus the BYOL-style instance branch"),
    "pixcontrast": (PixPro, "pixel-level InfoNCE between views (PixContrast)"),
    "byol": (BYOL, "instance-level: predictor regresses a momentum target"),
    "simsiam": (SimSiam, "instance-level: predictor + stop-gradient, no target"),
    "simclr": (SimCLR, "instance-level: NT-Xent (or another pair loss, --pair-loss) with negatives from every rank"),
    "mocov2": (MoCoV2, "instance-level: momentum keys and a queue of negatives"),
    "swav": (SwAV, "instance-level: swapped prediction of Sinkhorn cluster codes"),
    "loca": (LOCA, "ViT: patch positions of query views inside a masked reference, plus cluster targets (LOCA)"),
    "rotation": (Rotation, "pretext: which of four rotations a view shows"),
    "jigsaw": (Jigsaw, "pretext: the permutation of a 3 x 3 grid of tiles"),
    "relative_location": (RelativeLocation, "pretext: where a neighbouring tile sits around the centre tile"),
    "colorization": (Colorization, "pretext: the ab colour channels from the L channel (1-channel encoder)"),
    "denoising_ae": (DenoisingAE, "pretext: reconstruct the clean view from a corrupted one"),
}


def build_method(cfg) -> Method:
    """The objective named by ``cfg.method`` (a TrainConfig)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHODS)}")
    return METHODS[cfg.method][0].from_config(cfg)


__all__ = ["METHODS", "Method", "MethodOutput", "build_method"]
