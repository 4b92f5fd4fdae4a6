"""Exports and load_encoder: the safetensors file and its header, the module it rebuilds, and
the plain timm call the README shows, run exactly as written."""
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torchvision

from pipelines import build_loader
from pixpro_fast import load_encoder
from pixpro_fast.checkpoint import load_checkpoint
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import Trainer
from pixpro_fast.export import SAFETENSORS_NAME, encoder_state_from_checkpoint, export_checkpoint
from pixpro_fast.probe_encoders import encoder_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def trained_checkpoint(tmp_path: Path, method: str, arch: str, image_size: int) -> Path:
    """One step of ``method`` from its preset on the synthetic loader: a checkpoint of a real run."""
    cfg = TrainConfig.from_file(method)
    small = {"num_prototypes": 16} if method == "loca" else {}
    cfg = cfg.replace(arch=arch, image_size=image_size, batch_size=2, max_steps=1, proj_hidden_dim=32, proj_dim=16,
                      loader="synthetic", tensorboard=False, precision="fp32", num_workers=0,
                      out=str(tmp_path / f"run_{method}"), **small)
    loader = build_loader("synthetic", None, 2, image_size, cfg.recipe, batches_per_epoch=2)
    return Trainer(cfg, loader=loader).fit().checkpoint


@pytest.fixture(scope="module")
def loca_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loca")
    ckpt = trained_checkpoint(tmp, "loca", "vit_tiny_patch16", 96)
    export_checkpoint(ckpt, tmp / "exported")
    return ckpt, tmp / "exported"


def readme_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"README has {len(found)} python blocks with {containing!r}"
    return found[0]


def test_the_readme_timm_call_loads_a_vit_export_at_224_and_at_the_trained_size(loca_export, monkeypatch):
    ckpt, exported = loca_export
    monkeypatch.chdir(exported.parent)         # the README reads exported/encoder.safetensors
    scope: dict = {}
    exec(readme_block("checkpoint_filter_fn"), scope)   # exactly as written; raises on any missing key
    trained = load_checkpoint(ckpt)["model"]["online.encoder.vit.pos_embed"]
    assert torch.equal(scope["trained_size"].pos_embed, trained)
    assert scope["model"].pos_embed.shape == (1, 196, 192)       # resampled to 224 px
    ours = load_encoder(exported, image_size=224)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(scope["model"].eval()(x), ours(x), atol=1e-5)
    # the metadata's model_call builds the same module
    call = json.loads((exported / "encoder_info.json").read_text())["model_call"]
    import timm
    built = eval(call, {"timm": timm})         # our own export's string, in a test
    assert built.state_dict().keys() == scope["trained_size"].state_dict().keys()


def test_load_encoder_gives_the_trained_vit_from_export_and_checkpoint(loca_export):
    ckpt, exported = loca_export
    from_export, from_ckpt = load_encoder(exported / SAFETENSORS_NAME), load_encoder(ckpt)
    encoder, _, _ = encoder_from_checkpoint(ckpt)             # the project's own trunk
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        tokens = encoder.eval()(x)                            # (B, N, D), after the final norm
        assert torch.allclose(from_export(x), tokens.mean(1), atol=1e-5)
        assert torch.equal(from_export(x), from_ckpt(x))
    meta = from_export.pixpro_meta
    assert meta["method"] == "loca" and meta["image_size"] == 96 and meta["library"] == "timm"
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta == {k: v for k, v in json.loads((exported / "encoder_info.json").read_text()).items() if k != "load"}


@pytest.mark.parametrize("method", ["pixpro", "colorization"])
def test_a_resnet_export_loads_as_a_torchvision_resnet(tmp_path, method):
    ckpt = trained_checkpoint(tmp_path, method, "resnet18", 64)
    paths = export_checkpoint(ckpt, tmp_path / "exported")
    assert tmp_path / "exported" / SAFETENSORS_NAME in paths
    model = load_encoder(tmp_path / "exported")
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    trained = encoder_state_from_checkpoint(load_checkpoint(ckpt))
    for k, v in trained.items():
        assert torch.equal(model.state_dict()[k], v), k
    meta = model.pixpro_meta
    channels = 1 if method == "colorization" else 3
    assert meta["in_channels"] == channels and model.conv1.in_channels == channels
    assert ("CIE Lab" in meta["input"]) == (method == "colorization")
    from safetensors.torch import load_file
    plain = torchvision.models.resnet18()
    if channels == 3:   # what a torchvision user does with the file: only fc is missing
        missing, unexpected = plain.load_state_dict(load_file(str(tmp_path / "exported" / SAFETENSORS_NAME)),
                                                    strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_a_bad_export_file_is_one_line(tmp_path, loca_export):
    _, exported = loca_export
    good = (exported / SAFETENSORS_NAME).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    header = json.loads(good[8:8 + int.from_bytes(good[:8], "little")])
    header["__metadata__"]["model"] = "os.system"
    forged = json.dumps(header).encode()
    forged += b" " * (-len(forged) % 8)
    (tmp_path / "forged.safetensors").write_bytes(len(forged).to_bytes(8, "little") + forged
                                                 + good[8 + int.from_bytes(good[:8], "little"):])
    for name, message in [("cut.safetensors", "cannot read encoder file"),
                          ("other.safetensors", "not a pixpro_fast encoder export"),
                          ("forged.safetensors", "unknown encoder in the export's metadata"),
                          ("missing.safetensors", "encoder file not found")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
            load_encoder(tmp_path / name)
        assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "marker")
