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
from pixpro_fast import probe_encoders
from pixpro_fast import probe_data
from pixpro_fast.config import TrainConfig
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


def test_evaluation_is_deterministic_for_a_fixed_seed(cache):
    cfg = probe.ProbeConfig(image_size=64, layers=("layer4", "layer3"), train_images=6, val_images=4, steps=40)
    train, val = probe_data.load_probe_data(cfg, root=cache)
    a = probe.evaluate_encoder(probe_encoders.random_encoder("resnet18", 0), train, val, cfg)
    b = probe.evaluate_encoder(probe_encoders.random_encoder("resnet18", 0), train, val, cfg)
    assert (a.miou, a.pixel_accuracy, a.iou) == (b.miou, b.pixel_accuracy, b.iou)
    other = probe.evaluate_encoder(probe_encoders.random_encoder("resnet18", 1), train, val, cfg)
    assert (other.miou, other.iou) != (a.miou, a.iou)


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


