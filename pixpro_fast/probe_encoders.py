"""Which encoder an evaluation runs, and how it is fed: a training checkpoint's online
encoder or a random initialisation (as pretraining starts it), wrapped to take the probe's
RGB images as its pretraining took its views (the recipe's mean and std, a method's own
encoder input); the default maps probed; how far training turned each stage's weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipelines import colour
from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD

from .encoder import build_trunk, trunk_shape


def normalise(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 NHWC -> float NCHW (channels-last memory), ``(x / 255 - mean) / std``."""
    return colour.normalise_uint8(images.permute(0, 3, 1, 2), mean, std)


def unnormalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The inverse of :func:`normalise`'s affine map: float NCHW on the 0..1 scale."""
    return colour.unnormalise(x, mean, std)


def input_stats(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the probe normalises ``encoder``'s images with: those a
    :class:`MethodInput` carries, else ImageNet's."""
    if isinstance(encoder, MethodInput):
        return encoder.mean, encoder.std
    return IMAGENET_MEAN, IMAGENET_STD


def recipe_stats(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a pretraining run normalised its views with: its recipe's, from a
    TrainConfig or the config dict a checkpoint holds (ImageNet's when it records none)."""
    from pipelines.recipe import get_recipe
    name = config.get("recipe") if isinstance(config, dict) else getattr(config, "recipe", None)
    if name is None:
        return IMAGENET_MEAN, IMAGENET_STD
    recipe = get_recipe(name)
    return recipe.mean, recipe.std


def encoder_from_checkpoint(path: str | Path, arch: str | None = None) -> tuple[nn.Module, str, dict]:
    """The online encoder of a training checkpoint: (encoder, arch, the checkpoint's config).

    ResNets (3 channels, or 1 for colorization's L channel) and ViTs (any native grid) are
    rebuilt from the shapes in the checkpoint. ``arch``, when given, must match the
    checkpoint's; a mismatch is an error, not a guess. The encoder takes what it took in
    training: wrap it with :func:`probe_ready` to feed it the probe's RGB images."""
    from .checkpoint import load_checkpoint
    from .encoder import state_dict_mismatch
    from .export import encoder_state_from_checkpoint
    ckpt = load_checkpoint(path)
    state = encoder_state_from_checkpoint(ckpt, path)
    config = ckpt.get("config") or {}
    saved_arch = config.get("arch")
    if saved_arch is None and arch is None:
        raise ValueError(f"{path} does not record its arch: pass --arch")
    if arch is not None and saved_arch is not None and arch != saved_arch:
        raise ValueError(f"arch mismatch: {path} holds a {saved_arch} encoder, but {arch} was requested")
    arch = arch or saved_arch
    encoder = build_trunk(arch, **trunk_shape(state, arch))
    mismatch = state_dict_mismatch(encoder.state_dict(), state)
    if mismatch:
        raise ValueError(f"the encoder in {path} does not fit {arch}: {mismatch}")
    encoder.load_state_dict(state)
    return encoder, arch, config


def random_encoder(arch: str, seed: int = 0, in_channels: int = 3, img_size: int = 224) -> nn.Module:
    """A randomly initialised encoder, as pretraining with ``seed`` starts it (ResNets with
    zero-initialised residual BN)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_trunk(arch, in_channels, img_size)


class MethodInput(nn.Module):
    """An encoder fed what its pretraining fed it: the probe's RGB normalised with the mean and
    std of the encoder's recipe (the probe normalises with them, see :func:`input_stats`), or,
    when its method has an ``encoder_input`` (RGB on 0..1 -> encoder input, e.g.
    colorization's scaled L channel), that function of the RGB on 0..1."""

    def __init__(self, encoder: nn.Module, encoder_input=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.encoder, self.encoder_input = encoder, encoder_input
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder_input is None:
            return self.encoder.forward_stages(x)
        return self.encoder.forward_stages(self.encoder_input(unnormalise(x, self.mean, self.std)))


def probe_ready(encoder: nn.Module, method: str | None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Module:
    """``encoder`` as the probe must run it: wrapped in :class:`MethodInput` when ``method``
    (a registry name) feeds its encoder something other than the normalised RGB views, or when
    its recipe's ``mean`` and ``std`` (see :func:`recipe_stats`) are not ImageNet's."""
    from .methods import METHODS
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    encoder_input = None if method is None else METHODS[method].cls.encoder_input
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if encoder_input is None and (mean, std) == (IMAGENET_MEAN, IMAGENET_STD):
        return encoder
    return MethodInput(encoder, encoder_input, mean, std)


def default_layers(encoder: nn.Module, resnet_layers: tuple[str, ...] = ("layer3", "layer4"),
                   vit_layers: tuple[str, ...] = ("tokens",)) -> tuple[str, ...]:
    """The maps probed by default: ``resnet_layers`` of a ResNet, ``vit_layers`` of a ViT."""
    from .vit import ViTEncoder
    inner = encoder.encoder if isinstance(encoder, MethodInput) else encoder
    return tuple(vit_layers) if isinstance(inner, ViTEncoder) else tuple(resnet_layers)


def weight_stage(name: str) -> str:
    """The stage a parameter belongs to: ``layer3`` of a ResNet, ``blocks.5`` or
    ``patch_embed`` of a ViT."""
    parts = name.split(".")
    if parts[0] != "vit":
        return parts[0]
    return ".".join(parts[1:3]) if parts[1] == "blocks" else parts[1]


@torch.no_grad()
def weight_turn(encoder: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Mean angle in degrees between each stage's convolution weights and the same weights
    of ``reference`` (the initialisation pretraining started from).

    Convolutions followed by BatchNorm are scale-invariant, so their direction, not their
    norm, is what training changes; a few degrees means the stage is still its random
    initialisation, whatever the loss curve says. A ViT's matrices (every weight of two or
    more dimensions but the position embedding) are grouped by block.
    """
    ref = dict(reference.named_parameters())
    angles: dict[str, list[float]] = {}
    for name, w in encoder.named_parameters():
        if w.dim() < 2 or name not in ref or name.endswith("pos_embed"):
            continue
        a, b = w.detach().double().flatten(), ref[name].detach().double().flatten()
        cos = (a @ b) / (a.norm() * b.norm()).clamp_min(1e-30)
        stage = weight_stage(name)
        angles.setdefault(stage, []).append(float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))))
    return {stage: sum(v) / len(v) for stage, v in angles.items()}
