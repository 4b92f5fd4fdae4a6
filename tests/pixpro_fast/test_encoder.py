"""The ResNet trunk: torchvision's weights and names, zero-initialised residual branches."""
import pytest
import torch
import torch.nn as nn

from pixpro_fast.encoder import build_encoder


def test_encoder_trunk_matches_torchvision_and_loads_weights(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    trunk = build_encoder("resnet18", path).eval()
    ref.eval()
    x = torch.randn(2, 3, 64, 64)
    body = nn.Sequential(*list(ref.children())[:-2])
    torch.testing.assert_close(trunk(x), body(x))
    bad = tmp_path / "bad.pt"
    torch.save({k: v for k, v in ref.state_dict().items() if not k.startswith("layer4.1")}, bad)
    with pytest.raises(ValueError, match="missing: layer4.1"):
        build_encoder("resnet18", bad)
    with pytest.raises(ValueError, match="shape mismatch"):
        build_encoder("wide_resnet50_2", _r50_like(tmp_path))  # same keys, wider tensors
    with pytest.raises(FileNotFoundError):
        build_encoder("resnet18", tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="unknown encoder arch"):
        build_encoder("vgg16")


def _r50_like(tmp_path):
    import torchvision
    p = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), p)
    return p


def test_zero_init_residual():
    trunk = build_encoder("resnet18")
    assert all((blk.bn2.weight == 0).all() for blk in trunk.layer1)
