"""Export the online encoder for downstream use: for a ResNet a torchvision state_dict and a
Detectron2-style pickle (``stem.conv1``, ``res2..res5``, ``.norm``, ``.shortcut``); for a ViT
a timm state_dict. ``encoder_info.json`` says what loads it (and, for the colorization
encoder, that it takes one input channel, the L of CIE Lab)."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_atomic


def encoder_state_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The online encoder's tensors under torchvision's key names (no ``fc.*``)."""
    model = ckpt["model"]
    prefix = "online.encoder."
    state = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no online encoder (keys 'online.encoder.*' missing): "
                         f"not a pixpro_fast training checkpoint")
    return state


def detectron2_key(key: str) -> str | None:
    """torchvision ResNet key -> Detectron2 ResNet key (None for tensors Detectron2 has no use for)."""
    if key.endswith("num_batches_tracked"):
        return None
    if key.startswith("conv1."):
        return "stem.conv1." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", key)
    if not m:
        raise KeyError(f"no Detectron2 name for backbone tensor {key!r}")
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{stage}.{block}.{rest}"


def to_detectron2(state: dict[str, torch.Tensor]) -> dict:
    out = {}
    for k, v in state.items():
        name = detectron2_key(k)
        if name is not None:
            out[name] = v.detach().cpu().numpy()
    return {"model": out, "__author__": "pixpro_fast", "matching_heuristics": False}


def detectron2_settings(arch: str, weights: Path) -> dict:
    """The Detectron2 config keys a torchvision-layout ResNet needs: the stride in the 3x3
    convolutions, RGB input normalised as in pretraining (on 0-255 pixels), 64 channels in
    res2 for the basic-block depths."""
    from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD
    depth = int(arch[len("resnet"):])
    out = {"MODEL.WEIGHTS": str(weights), "MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.STRIDE_IN_1X1": False,
           "MODEL.PIXEL_MEAN": [round(255 * m, 3) for m in IMAGENET_MEAN],
           "MODEL.PIXEL_STD": [round(255 * s, 3) for s in IMAGENET_STD], "INPUT.FORMAT": "RGB"}
    if depth in (18, 34):
        out["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the online encoder's files into ``out_dir``; returns their paths. Everything is
    checked and built in memory first, so bad input writes nothing."""
    from .encoder import ARCHS
    from .vit import VIT_ARCHS, timm_kwargs, timm_name
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    ckpt = load_checkpoint(checkpoint)
    state = encoder_state_from_checkpoint(ckpt, checkpoint)
    cfg = ckpt.get("config") or {}
    arch = cfg.get("arch")
    if arch not in VIT_ARCHS and arch not in ARCHS:
        raise ValueError(f"{checkpoint} does not record a known encoder arch (config 'arch': {arch!r}; "
                         f"known: {', '.join(ARCHS + tuple(VIT_ARCHS))})")
    files: dict[str, object] = {}   # name -> what to write
    if arch in VIT_ARCHS:
        files["encoder_timm.pth"] = {k[len("vit."):]: v.contiguous() for k, v in state.items() if k.startswith("vit.")}
        info = {"format": "timm", "model": timm_name(arch), "kwargs": timm_kwargs(cfg.get("image_size", 224)),
                "load": "timm.create_model(model, pretrained=False, **kwargs).load_state_dict(torch.load(path))"}
    else:
        files["encoder_torchvision.pth"] = {k: v.contiguous() for k, v in state.items()}
        files["encoder_detectron2.pkl"] = to_detectron2(state)
        in_channels = int(state["conv1.weight"].shape[1]) if "conv1.weight" in state else 3
        info = {"format": "torchvision", "model": arch, "in_channels": in_channels,
                "load": f"torchvision.models.{arch}().load_state_dict(state, strict=False) (only fc.* missing)"
                        if in_channels == 3 else
                        f"a torchvision {arch} whose conv1 takes {in_channels} channel(s) (the L of CIE Lab)"}
        if in_channels == 3 and arch.startswith("resnet"):
            info["detectron2_config"] = detectron2_settings(arch, out_dir / "encoder_detectron2.pkl")
    info["method"] = cfg.get("method")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, payload in files.items():
        if name.endswith(".pth"):
            paths.append(save_atomic(payload, out_dir / name))
            continue
        path = out_dir / name
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                pickle.dump(payload, f)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    path = out_dir / "encoder_info.json"
    path.write_text(json.dumps(info, indent=1) + "\n")
    return paths + [path]
