"""ResNet trunks: a torchvision ResNet cut after ``layer4``.

The trunk keeps torchvision's attribute names (conv1, bn1, layer1..layer4), so its
state_dict keys are exactly torchvision's minus ``fc.*``: weights move both ways without a
key map. :func:`build_trunk` builds any encoder arch, ResNet or ViT, and
:func:`trunk_shape` reads its arguments back from a saved state_dict.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")


class ResNetTrunk(nn.Module):
    """conv1 .. layer4 of a torchvision ResNet; returns the (B, C, H/32, W/32) feature map."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.out_channels = resnet.fc.in_features
        self.in_channels = resnet.conv1.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps after each stage (for dense evaluation)."""
        out = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict (a safetensors file, or one saved with torch.save, unwrapping the usual
    containers and prefixes); nothing in the file can run code."""
    from .checkpoint import first_line, safe_load
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():   # an export of this project, or any safetensors file
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a bad file
            raise ValueError(f"cannot read encoder weights file {path}: {first_line(e)}") from None
    obj = safe_load(path, "encoder weights file")
    for key in ("state_dict", "model", "encoder"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state_dict (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "encoder.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def state_dict_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not load into a module whose state_dict is ``own``, in one line (the
    first few missing, unexpected and wrongly shaped keys), or None when it fits."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)

    def show(keys):
        return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
    parts = [f"missing: {show(missing)}" if missing else "",
             f"unexpected: {show(unexpected)}" if unexpected else "",
             f"shape mismatch: {show(wrong_shape)}" if wrong_shape else ""]
    return "; ".join(p for p in parts if p) or None


def build_encoder(arch: str = "resnet50", weights: str | Path | None = None,
                  zero_init_residual: bool = True, in_channels: int = 3) -> ResNetTrunk:
    """A randomly initialised ResNet trunk, or one loaded from a local state_dict file.

    ``weights`` may be a torchvision ResNet state_dict (``fc.*`` is ignored) or a trunk's.
    Keys that do not fit raise an error listing them. ``in_channels`` sets the input channels
    of ``conv1`` (1 for an encoder of the L channel); the state_dict keys stay the same.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown encoder arch {arch!r}; choose one of {ARCHS}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    resnet = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
    if in_channels != resnet.conv1.in_channels:
        old = resnet.conv1
        resnet.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                 bias=False)
        nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    trunk = ResNetTrunk(resnet)
    if weights is not None:
        state = {k: v for k, v in load_state_dict_file(weights).items() if not k.startswith("fc.")}
        own = trunk.state_dict()
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.dim() == 4 and conv1.shape[1] != in_channels:
            raise ValueError(f"weights in {weights} take {conv1.shape[1]}-channel input (conv1.weight "
                             f"{tuple(conv1.shape)}) but the encoder takes in_channels={in_channels}")
        mismatch = state_dict_mismatch(own, state)
        if mismatch:
            raise ValueError(f"weights in {weights} do not fit {arch}: {mismatch}")
        trunk.load_state_dict(state)
    return trunk


# --------------------------------------------------------------------------- any trunk, ResNet or ViT

def build_trunk(arch: str, in_channels: int = 3, img_size: int = 224) -> nn.Module:
    """A randomly initialised encoder offering ``forward_stages``: a ResNet trunk taking
    ``in_channels`` channels, or a ViT whose native position grid is ``img_size / 16``."""
    from .vit import VIT_ARCHS, ViTEncoder
    if arch in VIT_ARCHS:
        if in_channels != 3:
            raise ValueError(f"ViT encoders take 3 input channels, got in_channels={in_channels}")
        return ViTEncoder(arch, img_size)
    if arch not in ARCHS:
        raise ValueError(f"unknown encoder arch {arch!r}; choose one of {tuple(ARCHS) + tuple(VIT_ARCHS)}")
    return build_encoder(arch, in_channels=in_channels)


def trunk_shape(state: dict[str, torch.Tensor], arch: str) -> dict:
    """The ``build_trunk`` arguments an encoder state_dict was saved from: ``in_channels`` of a
    ResNet (``conv1``), ``img_size`` of a ViT (its position embedding's grid)."""
    from .vit import PATCH, VIT_ARCHS
    if arch in VIT_ARCHS:
        pos = state.get("vit.pos_embed")
        if pos is None:
            return {}
        grid = math.isqrt(pos.shape[1])
        return {"img_size": grid * PATCH} if grid * grid == pos.shape[1] else {}
    conv1 = state.get("conv1.weight")
    return {"in_channels": int(conv1.shape[1])} if conv1 is not None and conv1.dim() == 4 else {}
