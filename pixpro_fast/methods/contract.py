"""The one contract every objective fulfils, PixPro included.

A method is an ``nn.Module`` with

- ``online``: a ModuleDict, everything the optimiser trains;
- ``target``: a ModuleDict of momentum (EMA) copies of some online modules, possibly empty,
  updated only by :meth:`Method.update_target`;
- ``num_views``: how many views it needs (``None``: any number of at least ``min_views``);
  the view plan it trains on by default is its registry entry's (:mod:`.registry`);
- ``forward(views, coords)``: the views of one batch (a tuple, one (B, 3, H, W) tensor per
  view of the plan, possibly of different sizes) and their crop boxes (a tuple of (B, 4)
  tensors, the box contract of ``pipelines.geometry``); returns a :class:`MethodOutput`;
- ``before_optimizer_step(step)`` / ``after_optimizer_step()``: hooks around the optimiser
  step, no-ops unless a method needs them (SwAV freezes its prototypes early, normalises them
  after the step);
- ``set_epoch(epoch)``: told the 0-based epoch before the first forward of each epoch's
  batches (a resumed run: of the epoch it resumes in); a no-op unless a method changes with
  the epoch (SwAV starts its queue at ``swav_queue_start_epoch``).

- ``encoder_input``: ``None`` when the encoder takes the views as they come (normalised
  RGB), else a function from RGB on the 0..1 scale to what the encoder sees (colorization's
  scaled L channel): what a probe of the trained encoder must feed it.

``MethodOutput.stats`` holds detached scalars that mean something for that method (positive
pairs for the pixel-level ones, accuracy for a classifier pretext task ...): what does not
apply is absent, never a placeholder.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from ..momentum import paired_parameters, update_target


@dataclass
class MethodOutput:
    loss: torch.Tensor                                   # scalar, what the backward pass starts from
    stats: dict[str, torch.Tensor] = field(default_factory=dict)   # detached scalars, logged per step


class Method(nn.Module):
    """Base class: empty online/target dicts, the momentum update, no-op hooks, a view check."""

    num_views: int | None = 2
    min_views: int = 1
    encoder_input = None

    def __init__(self):
        super().__init__()
        self.online = nn.ModuleDict()
        self.target = nn.ModuleDict()

    @classmethod
    def from_config(cls, cfg) -> "Method":
        """The method with the fields it reads from a TrainConfig (by default it takes the config)."""
        return cls(cfg)

    def make_target(self, *names: str) -> None:
        """Momentum copies of the named online modules, initialised equal, never trained."""
        for name in names:
            self.target[name] = copy.deepcopy(self.online[name])
        for p in self.target.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``theta_k = m * theta_k + (1 - m) * theta_q`` over every target module."""
        if len(self.target):
            update_target(*paired_parameters(self.online, self.target), momentum)

    def before_optimizer_step(self, step: int) -> None:
        pass

    def after_optimizer_step(self) -> None:
        pass

    def set_epoch(self, epoch: int) -> None:
        pass

    def check_views(self, count: int) -> None:
        """A ValueError naming the method when a view plan has the wrong number of views."""
        name = type(self).__name__
        if self.num_views is not None and count != self.num_views:
            raise ValueError(f"{name} needs a view plan of {self.num_views} view(s), got {count}")
        if count < self.min_views:
            raise ValueError(f"{name} needs at least {self.min_views} views, got {count}")

    def forward(self, views: Sequence[torch.Tensor], coords: Sequence[torch.Tensor]) -> MethodOutput:
        raise NotImplementedError
