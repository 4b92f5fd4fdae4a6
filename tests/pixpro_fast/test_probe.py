import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixpro_fast import probe
from pixpro_fast import segmentation_metrics
from pixpro_fast import probe_encoders
from pixpro_fast import probe_data
from pixpro_fast.cli import main as cli_main
from pixpro_fast.config import TrainConfig
from pixpro_fast.encoder import build_encoder
from pixpro_fast.engine import Trainer

ROOT = Path(__file__).resolve().parents[2]
K = 4           # classes of the synthetic case
BLOCK = 8       # pixels per side of one class block


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (see conftest's one_thread)."""


def block_split(n: int, seed: int, size: int = 32, stride: int = 4) -> probe_data.ProbeSplit:
    """Images made of BLOCK x BLOCK squares of random classes; the red channel encodes the
    class (class c -> 40 * c + 20), the other channels are noise; labels on the stride grid."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(K, (n, size // BLOCK, size // BLOCK), generator=gen)
    classes = cells.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)               # (n, S, S)
    images = torch.randint(256, (n, size, size, 3), generator=gen, dtype=torch.uint8)
    images[..., 0] = (40 * classes + 20).to(torch.uint8)
    return probe_data.ProbeSplit(images, classes[:, stride // 2::stride, stride // 2::stride].contiguous())


class LabelEncoder(nn.Module):
    """Features that encode the label by construction: one-hot of the class read back from
    the red channel, at stride 8 (coarser than the stride-4 labels, so the probe must upsample)."""

    def forward_stages(self, x):
        red = x[:, 0] * 0.229 + 0.485                                       # undo ImageNet normalisation
        cls = ((red * 255 - 20) / 40).round().clamp(0, K - 1).long()
        onehot = F.one_hot(cls, K).permute(0, 3, 1, 2).float()
        return {"layer4": F.avg_pool2d(onehot, 8)}


def probe_classes():
    from pipelines.scenes import CLASSES
    return CLASSES


TINY_CFG = probe.ProbeConfig(image_size=32, layers=("layer4",), train_images=16, val_images=8, steps=150,
                             pixels_per_image=64, batch_size=512, lr=5e-2)


def test_probe_reaches_high_miou_when_features_encode_the_label():
    train, val = block_split(16, 0), block_split(8, 1)
    r = probe.evaluate_encoder(LabelEncoder(), train, val, TINY_CFG, classes=tuple("abcd"))
    assert r.miou > 0.95 and r.pixel_accuracy > 0.97, r


def test_probe_is_at_chance_when_train_labels_are_shuffled():
    train, val = block_split(16, 0), block_split(8, 1)
    gen = torch.Generator().manual_seed(5)
    flat = train.labels.flatten()
    shuffled = probe_data.ProbeSplit(train.images, flat[torch.randperm(len(flat), generator=gen)].view_as(train.labels))
    r = probe.evaluate_encoder(LabelEncoder(), shuffled, val, TINY_CFG, classes=tuple("abcd"))
    # chance for 4 balanced classes: accuracy 0.25; IoU of an independent guess about 1/7
    assert r.pixel_accuracy < 0.45 and r.miou < 0.3, r


def test_logits_upsampled_equal_a_conv_on_upsampled_features():
    """The probe applies its 1x1 conv at native resolution and upsamples the logits; that
    must be the documented model: upsample every map, concatenate, 1x1 conv."""
    torch.manual_seed(0)
    feats = {"layer4": torch.randn(2, 6, 3, 3), "layer3": torch.randn(2, 4, 6, 6)}
    lp = probe.LinearProbe({"layer4": 6, "layer3": 4}, 5)
    with torch.no_grad():
        lp.bias.normal_()
    up = torch.cat([F.interpolate(feats[k], size=(12, 12), mode="bilinear", align_corners=False)
                    for k in ("layer4", "layer3")], 1)
    weight = torch.cat([lp.heads["layer4"].weight, lp.heads["layer3"].weight], 1)
    torch.testing.assert_close(lp(feats, 12), F.conv2d(up, weight, lp.bias), atol=1e-5, rtol=1e-5)


def test_miou_and_accuracy_against_a_hand_computed_confusion_matrix():
    #            pred: 0  1  2
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 255, 255])
    pred = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2, 0])
    conf = segmentation_metrics.confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[5, 1, 0], [2, 3, 0], [0, 0, 0]]          # ignored pixels left out
    # IoU0 = 5 / (6 + 7 - 5) = 0.625, IoU1 = 3 / (5 + 4 - 3) = 0.5, class 2 absent
    assert segmentation_metrics.iou_per_class(conf) == [0.625, 0.5, None]
    assert segmentation_metrics.mean_iou(conf) == pytest.approx(0.5625)
    assert segmentation_metrics.pixel_accuracy(conf) == pytest.approx(8 / 11)
    # a class absent from the ground truth stays out of the mean, but its false
    # positives still lower the IoU of the class they were taken from
    conf2 = torch.tensor([[5, 1, 1], [2, 3, 0], [0, 0, 0]])
    assert segmentation_metrics.iou_per_class(conf2) == [pytest.approx(5 / 9), 0.5, None]
    assert segmentation_metrics.mean_iou(conf2) == pytest.approx((5 / 9 + 0.5) / 2)
    with pytest.raises(ValueError, match="class ids"):
        segmentation_metrics.confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_scene_loading_keeps_image_and_labels_aligned(tmp_path):
    """A wide scene whose grey level encodes its label: after the centre crop and the two
    resizes, each label cell must agree with the image pixel at its centre."""
    from PIL import Image
    w, h = 100, 60
    classes = (torch.arange(w) // 25 % 4).expand(h, w).to(torch.uint8)      # vertical bands, 25 px wide
    Image.fromarray((classes * 60).numpy()).convert("RGB").save(tmp_path / "s.png")
    Image.fromarray(classes.numpy(), "L").save(tmp_path / "s.labels.png")
    image, labels = probe_data.load_scene(tmp_path / "s.png", 32, 8)
    assert image.shape == (32, 32, 3) and labels.shape == (8, 8)
    decoded = torch.tensor(image[2::4, 2::4, 0] / 60).round()
    agree = (decoded == torch.tensor(labels)).float().mean()
    assert agree > 0.85, (decoded, labels)
    # the window is the centre square (x in [20, 80)): a band boundary at x = 50 lies mid-window
    assert set(labels[0].tolist()) == {0, 1, 2, 3} and labels[0, 3] == 1 and labels[0, 4] == 2


def test_evaluation_is_deterministic_for_a_fixed_seed(cache):
    cfg = probe.ProbeConfig(image_size=64, layers=("layer4", "layer3"), train_images=6, val_images=4, steps=40)
    train, val = probe_data.load_probe_data(cfg, root=cache)
    a = probe.evaluate_encoder(probe_encoders.random_encoder("resnet18", 0), train, val, cfg)
    b = probe.evaluate_encoder(probe_encoders.random_encoder("resnet18", 0), train, val, cfg)
    assert (a.miou, a.pixel_accuracy, a.iou) == (b.miou, b.pixel_accuracy, b.iou)
    other = probe.evaluate_encoder(probe_encoders.random_encoder("resnet18", 1), train, val, cfg)
    assert (other.miou, other.iou) != (a.miou, a.iou)


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


@pytest.mark.parametrize("arch, args, message", [
    ("resnet18", ["--layers", "tokens"], "no feature map 'tokens'"),
    ("vit_tiny_patch16", ["--layers", "block99"], "no feature map 'block99'"),
    ("vit_tiny_patch16", ["--image-size", "100", "--label-stride", "4"], "not a multiple of the patch size"),
])
def test_eval_refuses_layers_or_sizes_the_encoder_cannot_give_before_probing(arch, args, message, monkeypatch,
                                                                              capsys):
    def no_probe(cfg):
        raise AssertionError("the probe data was loaded before the settings were checked")
    monkeypatch.setattr(probe, "load_probe_data", no_probe)
    assert cli_main(["eval", "--random-init", "--arch", arch, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_eval_refuses_an_out_that_is_a_folder_before_probing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(probe, "load_probe_data", lambda cfg: pytest.fail("probed before checking --out"))
    with pytest.raises(SystemExit) as stop:
        cli_main(["eval", "--random-init", "--arch", "resnet18", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_training_logs_probe_miou_and_eval_command_writes_json(tmp_path, cache, monkeypatch):
    """A tiny pretraining run with the online probe on, then ``train.py eval`` on its
    checkpoint, end to end in a fresh process."""
    from pipelines import build_loader
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    cfg = TrainConfig(arch="resnet18", image_size=64, proj_hidden_dim=64, proj_dim=32, batch_size=4, num_workers=0,
                      tensorboard=False, log_every=1, warmup_epochs=0.0, loader="synthetic", epochs=1,
                      out=str(tmp_path / "run"), probe_every=2, probe_images=4)
    loader = build_loader("synthetic", None, cfg.batch_size, cfg.image_size, batches_per_epoch=2, seed=0)
    result = Trainer(cfg, loader=loader).fit()
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    probed = [r for r in records if "probe_miou" in r]
    assert [r["step"] for r in probed] == [2] and 0.0 <= probed[0]["probe_miou"] <= 1.0
    assert "probe_miou" not in records[0]

    out = tmp_path / "eval.json"
    env = {**os.environ, "PIXPRO_FAST_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "eval", "--checkpoint", str(result.checkpoint),
                           "--compare-random", "--compare-colour", "--image-size", "64", "--layers", "layer4,layer3",
                           "--train-images", "6", "--val-images", "4", "--steps", "20", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    names = [r["name"] for r in payload["results"]]
    assert names == ["resnet18 pretrained", "resnet18 random init", "pixel colour"]
    assert payload["arch"] == "resnet18" and payload["pretrain_config"]["probe_every"] == 2
    for r in payload["results"]:
        assert 0.0 <= r["miou"] <= 1.0 and len(r["iou"]) == len(probe_classes())
        assert f"{100 * r['miou']:.2f}" in proc.stdout
        assert r["extra"]["probe_seeds"] == [0, 1, 2] and r["extra"]["miou_per_seed"][0] == r["miou"]
    gain = payload["gain_over_random"]
    assert gain["seeds"] == 3 and gain["distinguishable"] in (True, False)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("gain over random init: "))
    assert line == gain["line"] and "over 3 probe seeds" in line


def test_gain_verdict_against_the_probe_seed_spread():
    clear = probe.gain_verdict([0.30, 0.31, 0.29], [0.15, 0.16, 0.14])
    assert clear["distinguishable"] is True and math.isclose(clear["gain_mean"], 0.15)
    assert "+15.00" in clear["line"] and "better than random init beyond noise" in clear["line"]
    noise = probe.gain_verdict([0.1509, 0.1530, 0.1490], [0.1519, 0.1500, 0.1525])   # -0.05 points, spread ~0.3
    assert noise["distinguishable"] is False and "within noise" in noise["line"]
    worse = probe.gain_verdict([0.10, 0.10, 0.11], [0.20, 0.21, 0.20])
    assert worse["distinguishable"] is True and "worse than random init" in worse["line"]
    one = probe.gain_verdict([0.3], [0.1])
    assert one["distinguishable"] is None and "no spread" in one["line"]
    with pytest.raises(ValueError):
        probe.gain_verdict([0.3, 0.2], [0.1])


def test_probe_seeds_retrain_only_the_probe(monkeypatch):
    train, val = block_split(16, 0), block_split(8, 1)
    calls = []
    real = probe.extract_features
    monkeypatch.setattr(probe, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = probe.evaluate_encoder(LabelEncoder(), train, val, TINY_CFG, probe_seeds=3)
    assert len(calls) == 2                                    # train and val features, once
    assert r.extra["probe_seeds"] == [0, 1, 2] and len(r.extra["miou_per_seed"]) == 3
    assert r.miou == r.extra["miou_per_seed"][0] == probe.evaluate_encoder(LabelEncoder(), train, val, TINY_CFG).miou


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


def test_eval_help_describes_every_option_with_its_default(capsys):
    import re
    from pixpro_fast.cli import main as cli_main
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    out = capsys.readouterr().out
    options = re.findall(r"^  (--[\w-]+)", out, re.M)
    assert len(options) >= 15 and out.count("(default:") == len(options), out
