"""The method registry: one entry per ``--method`` name, declared beside its class with
:func:`register_method`, owning everything about the method: the class, a one-line
description, its reference settings (the values ``TrainConfig(method=NAME)`` and
``train.py --method NAME`` start from: view plan, encoder, optimiser, schedule ...), the
TrainConfig fields only it (and some other methods) reads, its encoder kind and whether its
reference implementation synchronises BatchNorm across GPUs."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

ENCODER_KINDS = ("resnet", "resnet_l", "vit")   # a 3-channel ResNet, a ResNet of the L channel, a ViT


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)   # TrainConfig fields: the reference settings
    settings: tuple[str, ...] = ()   # the method-specific TrainConfig fields this method reads
    encoder: str = "resnet"          # one of ENCODER_KINDS
    sync_bn: bool = False            # its reference syncs BatchNorm in multi-GPU runs
    positive: tuple[str, ...] = ()   # settings that must stay above zero (the loss term defining it)

    @property
    def recipe(self) -> str:
        """The view plan it trains on unless told otherwise."""
        return self.defaults.get("recipe", "byol")


METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, description: str, *, defaults: Mapping[str, Any] | None = None,
                    settings: tuple[str, ...] = (), encoder: str = "resnet", sync_bn: bool = False,
                    positive: tuple[str, ...] = ()):
    """Class decorator: adds the entry ``name`` for the decorated class (a class may carry
    several entries that differ in their settings, e.g. PixPro's family)."""
    if encoder not in ENCODER_KINDS:
        raise ValueError(f"method {name!r}: encoder must be one of {ENCODER_KINDS}, got {encoder!r}")

    def add(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = MethodEntry(name, cls, description, MappingProxyType(dict(defaults or {})), tuple(settings),
                                    encoder, sync_bn, tuple(positive))
        return cls
    return add


def methods_reading(setting: str) -> tuple[str, ...]:
    """The methods whose entry names ``setting`` among their own settings."""
    return tuple(name for name, entry in METHODS.items() if setting in entry.settings)


def method_specific_settings() -> frozenset[str]:
    """Every field some method declares as its own (the others are read by all methods)."""
    return frozenset(s for entry in METHODS.values() for s in entry.settings)
