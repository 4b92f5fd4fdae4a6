"""The encoders an evaluation runs: a checkpoint's (clear errors), how they are fed, how far
training turned them."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixpro_fast import probe
from pixpro_fast import probe_encoders
from pixpro_fast.cli import main as cli_main
from pixpro_fast.config import TrainConfig
from pixpro_fast.encoder import build_encoder


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        probe_encoders.encoder_from_checkpoint(tmp_path / "missing.pt")
    path = tmp_path / "r18.pt"
    enc = build_encoder("resnet18")
    torch.save({"model": {f"online.encoder.{k}": v for k, v in enc.state_dict().items()},
                "config": {"arch": "resnet18"}}, path)
    with pytest.raises(ValueError, match="arch mismatch: .* holds a resnet18 encoder, but resnet34"):
        probe_encoders.encoder_from_checkpoint(path, "resnet34")
    torch.save({"model": {f"online.encoder.{k}": v for k, v in enc.state_dict().items()},
                "config": {"arch": "resnet34"}}, path)          # the file lies about its arch
    with pytest.raises(ValueError, match="does not fit resnet34: ") as err:
        probe_encoders.encoder_from_checkpoint(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400     # a line, not load_state_dict's dump
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="holds no online encoder"):   # the real reason, not "pass --arch"
        probe_encoders.encoder_from_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="label_stride must be at least 1"):
        probe.ProbeConfig(label_stride=0)


def test_weight_turn_measures_the_angle_from_a_reference():
    """Zero for a copy, unchanged by rescaling (BatchNorm makes the norm irrelevant), and the
    constructed angle where one stage's weights are rotated towards an orthogonal direction."""
    base = probe_encoders.random_encoder("resnet18", 0)
    moved = copy.deepcopy(base)
    assert all(deg < 1e-3 for deg in probe_encoders.weight_turn(moved, base).values())
    with torch.no_grad():
        for name, w in moved.named_parameters():
            if w.dim() != 4:
                continue
            if name.startswith("layer2"):
                d = torch.randn_like(w)
                d -= (d.flatten() @ w.flatten()) / w.flatten().square().sum() * w  # orthogonal to w
                d *= w.norm() / d.norm()
                w.copy_(w * math.cos(math.radians(30)) + d * math.sin(math.radians(30)))
            else:
                w.mul_(3.0)
    turn = probe_encoders.weight_turn(moved, base)
    assert turn["layer2"] == pytest.approx(30.0, abs=1e-3)
    assert all(deg < 1e-3 for stage, deg in turn.items() if stage != "layer2")


OTHER_MEAN, OTHER_STD = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)       # a recipe's stats other than ImageNet's


class InputRecorder(nn.Module):
    """Records what the probe feeds it; its one "feature" is the first input channel."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward_stages(self, x):
        self.seen.append(x.clone())
        return {"layer4": F.avg_pool2d(x[:, :1], 4)}


def test_probe_feeds_an_encoder_images_normalised_with_its_recipes_stats(monkeypatch):
    from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Recipe
    from pixpro_fast.methods.colorization import lightness_input
    images = torch.randint(256, (3, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x01 = images.permute(0, 3, 1, 2).double() / 255

    def fed(encoder, recorder):
        probe.extract_features(encoder, images, ("layer4",), batch_size=2)
        return torch.cat(recorder.seen).double()

    def plain(mean, std):
        return (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    rec = InputRecorder()
    torch.testing.assert_close(fed(probe_encoders.probe_ready(rec, "pixpro", OTHER_MEAN, OTHER_STD), rec),
                               plain(OTHER_MEAN, OTHER_STD), atol=1e-5, rtol=0)
    rec = InputRecorder()
    assert probe_encoders.probe_ready(rec, "pixpro") is rec                          # ImageNet's stats: the bare encoder
    torch.testing.assert_close(fed(rec, rec), plain(IMAGENET_MEAN, IMAGENET_STD), atol=1e-5, rtol=0)
    # colorization: the scaled L channel of the same pixels, whichever stats the probe used
    for stats in ((IMAGENET_MEAN, IMAGENET_STD), (OTHER_MEAN, OTHER_STD)):
        rec = InputRecorder()
        torch.testing.assert_close(fed(probe_encoders.probe_ready(rec, "colorization", *stats), rec),
                                   lightness_input(x01.float()).double(), atol=1e-4, rtol=0)
    # the stats come from the recipe a checkpoint's config names (ImageNet's when it names none)
    assert probe_encoders.recipe_stats({}) == (IMAGENET_MEAN, IMAGENET_STD)
    assert probe_encoders.recipe_stats({"recipe": "byol"}) == (IMAGENET_MEAN, IMAGENET_STD)
    monkeypatch.setitem(PRESETS, "byol", Recipe("byol", PRESETS["byol"].views, OTHER_MEAN, OTHER_STD))
    assert probe_encoders.recipe_stats({"recipe": "byol"}) == (OTHER_MEAN, OTHER_STD)
    assert probe_encoders.recipe_stats(TrainConfig(recipe="byol")) == (OTHER_MEAN, OTHER_STD)
