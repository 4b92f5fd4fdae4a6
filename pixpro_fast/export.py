"""The encoder a run shares, written and read back.

``export_checkpoint`` writes the online encoder as ``encoder.safetensors`` (torchvision
ResNet or timm ViT key names; the header's metadata says what it is, what it takes and the
call that builds it), beside a torch state_dict and, for a ResNet, a Detectron2-style pickle
(``stem.conv1``, ``res2..res5``, ``.norm``, ``.shortcut``); ``encoder_info.json`` repeats the
metadata. ``load_encoder`` returns the ready module from an export or a training checkpoint.
Nothing here unpickles objects: checkpoints load weights-only, exports are safetensors."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD

from .checkpoint import first_line, load_checkpoint, save_atomic

SAFETENSORS_NAME = "encoder.safetensors"
FORMAT = "pixpro_fast-encoder-1"
LIGHTNESS_INPUT = "the L of CIE Lab, (L - 50) / 50"


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


def detectron2_settings(arch: str, weights: Path, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    """The Detectron2 config keys a torchvision-layout ResNet needs: the stride in the 3x3
    convolutions, RGB input normalised as in pretraining (``mean`` and ``std`` of its recipe,
    on 0-255 pixels), 64 channels in res2 for the basic-block depths."""
    depth = int(arch[len("resnet"):])
    out = {"MODEL.WEIGHTS": str(weights), "MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.STRIDE_IN_1X1": False,
           "MODEL.PIXEL_MEAN": [round(255 * m, 3) for m in mean],
           "MODEL.PIXEL_STD": [round(255 * s, 3) for s in std], "INPUT.FORMAT": "RGB"}
    if depth in (18, 34):
        out["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
    return out


def timm_export_kwargs(image_size: int) -> dict:
    """``timm.create_model`` arguments for an exported ViT: the training layout (no class token),
    and ``model(x)`` pooling the patch tokens into one (B, D) vector through the final norm."""
    from .vit import timm_kwargs
    return {**timm_kwargs(image_size), "global_pool": "avg", "fc_norm": False}


def model_call(meta: dict) -> str:
    """The Python that builds the module ``meta`` describes, before its weights are loaded."""
    if meta["library"] == "timm":
        kwargs = ", ".join(f"{k}={v!r}" for k, v in json.loads(meta["timm_kwargs"]).items())
        return f"timm.create_model({meta['model']!r}, pretrained=False, {kwargs})"
    call = f"torchvision.models.{meta['model']}(weights=None); model.fc = torch.nn.Identity()"
    if int(meta["in_channels"]) != 3:
        call += (f"; model.conv1 = torch.nn.Conv2d({meta['in_channels']}, model.conv1.out_channels, "
                 f"kernel_size=7, stride=2, padding=3, bias=False)")
    return "model = " + call


def encoder_export(ckpt: dict, path: str | Path = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A training checkpoint's online encoder as (tensors under torchvision's or timm's key
    names, metadata of string values, as a safetensors header holds them)."""
    from pipelines.recipe import get_recipe

    from .encoder import ARCHS
    from .vit import VIT_ARCHS, timm_name
    state = encoder_state_from_checkpoint(ckpt, path)
    cfg = ckpt.get("config") or {}
    arch = cfg.get("arch")
    if arch not in VIT_ARCHS and arch not in ARCHS:
        raise ValueError(f"{path} does not record a known encoder arch (config 'arch': {arch!r}; "
                         f"known: {', '.join(ARCHS + tuple(VIT_ARCHS))})")
    try:
        recipe = get_recipe(cfg.get("recipe", "byol"))
    except ValueError:
        raise ValueError(f"{path} records an unknown recipe {cfg.get('recipe')!r}") from None
    size = int(cfg.get("image_size", 224))
    meta = {"format": FORMAT, "arch": arch, "method": str(cfg.get("method")), "image_size": str(size),
            "mean": json.dumps(list(recipe.mean)), "std": json.dumps(list(recipe.std))}
    if arch in VIT_ARCHS:
        tensors = {k[len("vit."):]: v for k, v in state.items() if k.startswith("vit.")}
        meta.update(library="timm", model=timm_name(arch), in_channels="3",
                    timm_kwargs=json.dumps(timm_export_kwargs(size)))
    else:
        tensors = dict(state)
        in_channels = int(state["conv1.weight"].shape[1]) if "conv1.weight" in state else 3
        meta.update(library="torchvision", model=arch, in_channels=str(in_channels))
    meta["input"] = (LIGHTNESS_INPUT if meta["in_channels"] == "1"
                     else "RGB on 0..1, normalised by mean and std")
    meta["model_call"] = model_call(meta)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta


def parsed_metadata(meta: dict[str, str]) -> dict:
    """The header's string values as data: numbers as numbers, lists and kwargs as JSON."""
    out = dict(meta, mean=json.loads(meta["mean"]), std=json.loads(meta["std"]), image_size=int(meta["image_size"]),
               in_channels=int(meta["in_channels"]))
    if "timm_kwargs" in meta:
        out["timm_kwargs"] = json.loads(meta["timm_kwargs"])
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the online encoder's files into ``out_dir``; returns their paths. Everything is
    checked and built in memory first, so bad input writes nothing."""
    from safetensors.torch import save as safetensors_bytes
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    ckpt = load_checkpoint(checkpoint)
    tensors, meta = encoder_export(ckpt, checkpoint)
    files: dict[str, object] = {SAFETENSORS_NAME: safetensors_bytes(tensors, metadata=meta)}
    info = dict(parsed_metadata(meta), load=f"pixpro_fast.load_encoder('{SAFETENSORS_NAME}') returns the module "
                                             f"ready; README, 'Sharing weights', shows the plain {meta['library']} call")
    if meta["library"] == "timm":
        files["encoder_timm.pth"] = tensors
    else:
        files["encoder_torchvision.pth"] = tensors
        if info["in_channels"] == 3:
            files["encoder_detectron2.pkl"] = to_detectron2(tensors)
            info["detectron2_config"] = detectron2_settings(meta["arch"], out_dir / "encoder_detectron2.pkl",
                                                            info["mean"], info["std"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, payload in files.items():
        if name.endswith(".pth"):
            paths.append(save_atomic(payload, out_dir / name))
            continue
        path = out_dir / name
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                if isinstance(payload, bytes):
                    f.write(payload)
                else:
                    pickle.dump(payload, f)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    path = out_dir / "encoder_info.json"
    path.write_text(json.dumps(info, indent=1) + "\n")
    return paths + [path]


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of an exported encoder; one-line errors for a file that
    is not one."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a bad file
        raise ValueError(f"cannot read encoder file {path}: {first_line(e)}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pixpro_fast encoder export (its header has no "
                         f"format={FORMAT!r}); load it with the library that wrote it")
    return tensors, meta


def build_exported(meta: dict[str, str], image_size: int | None = None) -> nn.Module:
    """The module ``meta`` describes, randomly initialised: a torchvision ResNet whose ``fc`` is
    an identity, or a timm ViT built for ``image_size`` (default: the size trained at)."""
    from .encoder import ARCHS
    from .vit import VIT_ARCHS, timm_name
    library, model = meta.get("library"), meta.get("model")
    if library == "timm" and model in {timm_name(a) for a in VIT_ARCHS}:
        import timm
        kwargs = json.loads(meta["timm_kwargs"])
        if image_size is not None:
            kwargs["img_size"] = image_size
        return timm.create_model(model, pretrained=False, **kwargs)
    if library == "torchvision" and model in ARCHS:
        import torchvision
        net = getattr(torchvision.models, model)(weights=None)
        net.fc = nn.Identity()
        in_channels = int(meta.get("in_channels", 3))
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        return net
    raise ValueError(f"unknown encoder in the export's metadata: library {library!r}, model {model!r}")


def load_encoder(path: str | Path, image_size: int | None = None) -> nn.Module:
    """The encoder of an export (``encoder.safetensors``, or the folder holding it) or of a
    training checkpoint, as a ready torchvision ResNet (``fc`` an identity: ``model(x)`` gives
    the pooled features) or timm ViT (``model(x)`` gives the mean patch token), in eval mode.
    Its ``pixpro_meta`` attribute holds the metadata (input, mean/std, trained size). A ViT
    for another ``image_size`` gets its position embedding resampled by timm's own rule."""
    from .encoder import state_dict_mismatch
    path = Path(path)
    if path.is_dir():
        path = path / SAFETENSORS_NAME
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"encoder file not found: {path}")
        tensors, meta = read_safetensors(path)
    else:
        tensors, meta = encoder_export(load_checkpoint(path), path)
    model = build_exported(meta, image_size)
    if meta["library"] == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn
        tensors = checkpoint_filter_fn(tensors, model)
    mismatch = state_dict_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise ValueError(f"the weights in {path} do not fit {meta['model']}: {mismatch}")
    model.load_state_dict(tensors)
    model.pixpro_meta = parsed_metadata(meta)
    return model.eval()
