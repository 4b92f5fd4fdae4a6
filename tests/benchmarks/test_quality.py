"""The quality table of every method (benchmarks.quality) and the probe paths it needs: ViT
patch tokens as maps, and the colorization encoder fed the L channel."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixpro_fast import probe
from pixpro_fast import probe_encoders
from pixpro_fast import probe_data
from pixpro_fast.encoder import trunk_shape
from pixpro_fast.methods import METHODS
from pixpro_fast.methods.colorization import lightness_input
from pixpro_fast.vit import PATCH, ViTEncoder


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (see conftest's one_thread)."""


# --------------------------------------------------------------------------- ViT maps

def test_vit_forward_stages_are_its_tokens_laid_out_as_maps():
    """On a non-square input, position (i, j) of every map is token i * w + j: ``tokens`` is
    what ``forward`` returns, ``blockN`` the raw output of block N (checked on the last)."""
    torch.manual_seed(0)
    vit = ViTEncoder("vit_tiny_patch16", 64).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        stages = vit.forward_stages(x)
        tokens = vit(x)                                                 # (2, 2 * 3, 192)
        t = vit.vit.norm_pre(vit.embed(x)[0])
        for block in vit.vit.blocks:
            t = block(t)
    assert set(stages) == {f"block{i}" for i in range(1, 13)} | {"tokens"}
    assert stages["tokens"].shape == (2, 192, 2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(stages["tokens"][:, :, i, j], tokens[:, i * 3 + j])
            torch.testing.assert_close(stages["block12"][:, :, i, j], t[:, i * 3 + j])


def colour_block_split(n: int, seed: int, size: int = 64) -> probe_data.ProbeSplit:
    """Images of PATCH x PATCH blocks, each of a random class 0..3: class 0 dark, class k
    bright in RGB channel k - 1 (values jittered); labels on the stride-4 grid."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(4, (n, size // PATCH, size // PATCH), generator=gen)
    classes = cells.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
    images = torch.randint(0, 40, (n, size, size, 3), generator=gen)
    for k in range(3):
        images[..., k] += 180 * (classes == k + 1)
    return probe_data.ProbeSplit(images.to(torch.uint8), classes[:, 2::4, 2::4].contiguous())


def colour_reading_vit(carry: bool) -> ViTEncoder:
    """A tiny ViT whose blocks are the identity (zero residual branches), no position
    embedding, and whose token channel k is the mean of input channel k over the patch (or,
    with ``carry`` off, zero: the tokens then hold nothing about the image)."""
    vit = ViTEncoder("vit_tiny_patch16", 64, stochastic_depth=0.0)
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        for block in vit.vit.blocks:
            block.norm1.weight.fill_(1.0)
            block.norm2.weight.fill_(1.0)
        vit.vit.norm.weight.fill_(1.0)
        if carry:
            for k in range(3):
                vit.vit.patch_embed.proj.weight[k, k] = 1.0 / PATCH ** 2
    return vit


def test_a_probe_on_vit_tokens_reads_what_they_carry():
    """Probing ``tokens``: the classes are recovered from tokens that carry them (a misplaced
    token, e.g. a transposed map, would cost a quarter of the blocks), not from empty ones."""
    cfg = probe.ProbeConfig(image_size=64, layers=("tokens",), train_images=12, val_images=6, steps=200,
                            pixels_per_image=64, batch_size=512, lr=5e-2)
    train, val = colour_block_split(12, 0), colour_block_split(6, 1)
    good = probe.evaluate_encoder(colour_reading_vit(True), train, val, cfg, classes=tuple("abcd"))
    empty = probe.evaluate_encoder(colour_reading_vit(False), train, val, cfg, classes=tuple("abcd"))
    assert good.miou > 0.9 and good.pixel_accuracy > 0.95, good
    assert empty.miou < 0.3, empty
    assert probe_encoders.default_layers(colour_reading_vit(True)) == ("tokens",)


# --------------------------------------------------------------------------- the L channel

def cie_lightness_of_grey(g: torch.Tensor) -> torch.Tensor:
    """L* of the sRGB grey g (0..1), from the sRGB and CIE formulas."""
    lin = torch.where(g <= 0.04045, g / 12.92, ((g + 0.055) / 1.055) ** 2.4)
    f = torch.where(lin > (6 / 29) ** 3, lin ** (1 / 3), lin / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f - 16


GREYS = torch.tensor([30, 90, 150, 220])     # one grey level per class


class LightnessReader(nn.Module):
    """A 1-channel encoder whose features one-hot the class read from the scaled L channel
    (nearest of the classes' expected (L - 50) / 50); it refuses anything but 1 channel."""

    def forward_stages(self, x):
        assert x.shape[1] == 1, x.shape
        expected = (cie_lightness_of_grey(GREYS / 255.0) - 50) / 50
        cls = (x[:, 0, ..., None] - expected).abs().argmin(-1)
        return {"layer4": F.avg_pool2d(F.one_hot(cls, 4).permute(0, 3, 1, 2).float(), 8)}


def grey_block_split(n: int, seed: int, size: int = 32) -> probe_data.ProbeSplit:
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(4, (n, size // 8, size // 8), generator=gen)
    classes = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = GREYS[classes].to(torch.uint8)[..., None].expand(-1, -1, -1, 3).contiguous()
    return probe_data.ProbeSplit(images, classes[:, 2::4, 2::4].contiguous())


def test_colorization_encoder_is_probed_on_the_scaled_l_channel():
    """The probe feeds a colorization encoder (L - 50) / 50 of its RGB images, as training
    does: an encoder that decodes the class from exactly that input recovers it."""
    g = GREYS / 255.0
    rgb = g.view(1, 1, -1, 1).expand(1, 3, -1, 1)
    torch.testing.assert_close(lightness_input(rgb).flatten(), (cie_lightness_of_grey(g) - 50) / 50,
                               atol=1e-3, rtol=0)
    enc = probe_encoders.probe_ready(LightnessReader(), "colorization")
    assert isinstance(enc, probe_encoders.MethodInput)
    assert probe_encoders.probe_ready(LightnessReader(), "pixpro").__class__ is LightnessReader
    cfg = probe.ProbeConfig(image_size=32, layers=("layer4",), train_images=12, val_images=6, steps=150,
                            pixels_per_image=64, batch_size=512, lr=5e-2)
    r = probe.evaluate_encoder(enc, grey_block_split(12, 0), grey_block_split(6, 1), cfg, classes=tuple("abcd"))
    assert r.miou > 0.95, r
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        probe_encoders.probe_ready(LightnessReader(), "nope")


def test_random_init_baselines_are_the_weights_pretraining_starts_from(tmp_path):
    """For a 1-channel ResNet (colorization) and a ViT (LOCA): the baseline the table compares
    with equals the engine's encoder at step 0, and trunk_shape reads its shape back."""
    from pixpro_fast.config import TrainConfig
    from pixpro_fast.engine import Trainer
    for method, arch, shape in (("colorization", "resnet18", {"in_channels": 1}),
                                ("loca", "vit_tiny_patch16", {"img_size": 64})):
        cfg = TrainConfig.from_file(method).replace(
            arch=arch, image_size=64, batch_size=2, loader="synthetic", num_workers=0, tensorboard=False,
            proj_hidden_dim=32, seed=3, out=str(tmp_path / method),
            **({"num_prototypes": 16} if method == "loca" else {}))
        started = Trainer(cfg).model.online["encoder"].state_dict()
        assert trunk_shape(started, arch) == shape
        baseline = probe_encoders.random_encoder(arch, 3, **shape).state_dict()
        assert started.keys() == baseline.keys()
        assert all(torch.equal(started[k], baseline[k]) for k in started), method
        other = probe_encoders.random_encoder(arch, 4, **shape).state_dict()
        assert not all(torch.equal(started[k], other[k]) for k in started)


# --------------------------------------------------------------------------- the table

def test_unknown_method_names_fail_with_the_choices(capsys):
    from benchmarks import quality
    with pytest.raises(SystemExit) as e:
        quality.main(["--methods", "pixpro,bogus_method"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'bogus_method'" in err and "rotation" in err and "loca" in err
    assert quality.parse_methods("all") == list(METHODS)
    assert quality.parse_methods("rotation,pixpro,rotation") == ["pixpro", "rotation"]
    assert quality.parse_methods("loca")[0] == "pixpro"         # the step-cost reference runs by default
    assert quality.parse_methods("loca,rotation", reference=False) == ["loca", "rotation"]


TINY = ["--budget", "0.01", "--scenes", "32", "--batch-size", "16", "--image-size", "64", "--proj-hidden-dim", "64",
        "--workers", "0", "--precision", "fp32", "--probe-image-size", "64", "--probe-train-images", "6",
        "--probe-val-images", "4"]


def test_quality_table_of_a_resnet_a_vit_and_an_l_channel_method(tmp_path, cache, monkeypatch):
    """pixpro, loca (tiny ViT) and colorization at a tiny budget: every output is written, each
    row's gain and step cost follow from the JSON's own measurements, and a second call
    resumes everything (nothing is trained or probed again)."""
    from benchmarks import quality
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    out = tmp_path / "q"
    payload = quality.main(["--methods", "loca,colorization", *TINY, "--out", str(out)])
    saved = json.loads((out / "quality.json").read_text())
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "quality.md").read_text()
    rows = saved["rows"]
    assert [r["method"] for r in rows] == ["pixpro", "loca", "colorization"]
    assert [r["arch"] for r in rows] == ["resnet18", "vit_tiny_patch16", "resnet18 (L channel)"]
    assert {b["arch"] for b in saved["baseline_rows"]} == {"resnet18", "vit_tiny_patch16", "resnet18 (L channel)"}
    results = {r["method"]: r for r in saved["results"]}
    ref = results["pixpro"]["step_seconds"]
    for row in rows:
        assert set(quality.COLUMNS) <= set(row)
        res = results[row["method"]]
        assert res["steps"] == 2 and res["timed_steps"] == [2, 2]
        times = quality.read_step_times(out / "pretrain" / row["method"] / "step_times.jsonl", 2)
        assert res["step_seconds"] == pytest.approx(times[2])
        assert row["step cost vs pixpro"] == pytest.approx(res["step_seconds"] / ref, abs=1e-3)
        base = saved["baselines"][row["arch"]]["miou"]
        assert row["gain over random init"] == pytest.approx(100 * (res["probe"]["miou"] - base), abs=0.006)
        assert row["mIoU"] == pytest.approx(100 * res["probe"]["miou"], abs=0.006)
        assert f"| {row['method']} | {row['arch']} |" in table
    assert rows[0]["step cost vs pixpro"] == 1.0
    assert results["loca"]["probe"]["layers"] == ["tokens"]
    assert results["colorization"]["probe"]["layers"] == ["layer3", "layer4"]
    assert payload["rows"] == rows
    # pretraining starts from the baseline's weights: two steps turn them a little, where
    # two independent initialisations would sit near 90 degrees apart
    turn = results["pixpro"]["weight_turn_degrees"]
    assert set(turn) == {"conv1", "layer1", "layer2", "layer3", "layer4"}
    assert all(0.0 < deg < 20.0 for deg in turn.values()), turn

    step_files = {m: (out / "pretrain" / m / "step_times.jsonl").read_text() for m in results}
    again = quality.main(["--methods", "loca,colorization", *TINY, "--out", str(out)])
    assert again["rows"] == rows                                   # same checkpoints, cached probes
    assert {m: (out / "pretrain" / m / "step_times.jsonl").read_text() for m in results} == step_files
    # without the reference: only the method asked for, its step cost left empty
    alone = quality.main(["--methods", "colorization", "--no-reference", *TINY, "--out", str(out)])
    assert [r["method"] for r in alone["rows"]] == ["colorization"]
    assert alone["rows"][0]["step cost vs pixpro"] == "-"
    assert alone["rows"][0]["mIoU"] == rows[2]["mIoU"]


def test_set_changes_one_field_of_one_method_and_names_bad_items():
    from benchmarks import quality
    got = quality.parse_settings(["loca.base_lr=0.016", "loca.clip_grad_norm=0", "rotation.compile=true"],
                                 ["pixpro", "loca", "rotation"])
    assert got == {"loca": {"base_lr": 0.016, "clip_grad_norm": 0.0}, "rotation": {"compile": True}}
    for bad, words in (("loca.base_lr", "METHOD.FIELD=VALUE"), ("byol.base_lr=1", "'byol' is not one of"),
                       ("loca.base_lrr=1", "did you mean 'base_lr'"), ("loca.epochs=two", "not a valid int"),
                       ("loca.compile=maybe", "not true or false")):
        with pytest.raises(ValueError, match=words):
            quality.parse_settings([bad], ["pixpro", "loca"])


def test_loca_query_keeps_the_presets_fraction_of_its_scaled_grid(tmp_path):
    from types import SimpleNamespace
    from benchmarks import quality
    args = SimpleNamespace(budget=1.0, scenes=64, batch_size=16, vit_arch="vit_tiny_patch16", arch="resnet18",
                           lars_trust=0.02, proj_hidden_dim=64, precision="fp32", workers=0, seed=0, device="cpu")
    kept = {size: quality.method_config("loca", SimpleNamespace(**vars(args), image_size=size), tmp_path).query_keep
            for size in (224, 128, 64)}
    assert kept == {224: 70, 128: 23, 64: 6}     # 70 of 196 tokens: of 64, 23; of 16, 6


# --------------------------------------------------------------------------- SimCLR's pair losses

def test_pair_loss_rows_parse_to_simclr_configs_of_their_own(tmp_path):
    """``simclr:LOSS`` in --methods and ``--pair-losses`` add SimCLR rows with that pair_loss,
    each pretraining in its own folder; bad names are ValueErrors naming the choices."""
    from types import SimpleNamespace
    from benchmarks import quality
    from pixpro_fast.pair_losses import PAIR_LOSSES
    assert quality.parse_methods("simclr", pair_losses="all") == [
        "pixpro", "simclr", "simclr:contrastive", "simclr:triplet_hard", "simclr:triplet_all", "simclr:npair"]
    assert quality.parse_methods("simclr:npair,simclr:infonce,byol,simclr", reference=False,
                                 pair_losses="triplet_all,npair") == ["simclr:npair", "simclr", "byol",
                                                                      "simclr:triplet_all"]
    assert quality.parse_methods("all") == list(METHODS)            # 'all' is the registry, no variants
    for spec, pair_losses, words in (("byol:npair", None, "only simclr:PAIR_LOSS rows have a variant"),
                                     ("simclr:triplet", None, "'triplet' is not a pair_loss of simclr"),
                                     ("nope:npair", None, "unknown method"),
                                     ("simclr", "triplet", "unknown pair loss(es) 'triplet' in --pair-losses")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            quality.parse_methods(spec, pair_losses=pair_losses)
    args = SimpleNamespace(budget=1.0, scenes=64, batch_size=16, vit_arch="vit_tiny_patch16", arch="resnet18",
                           lars_trust=0.02, proj_hidden_dim=64, precision="fp32", workers=0, seed=0, image_size=64,
                           device="cpu")
    plain = quality.method_config("simclr", args, tmp_path)
    assert plain.pair_loss == "infonce" and plain.out == str(tmp_path / "pretrain" / "simclr")
    for loss in PAIR_LOSSES[1:]:
        cfg = quality.method_config(f"simclr:{loss}", args, tmp_path)
        assert cfg.method == "simclr" and cfg.pair_loss == loss
        assert cfg.out == str(tmp_path / "pretrain" / f"simclr-{loss}")
        # the rest is the plain row's: the same budget and preset
        assert {k: v for k, v in cfg.to_dict().items() if k not in ("pair_loss", "out")} == \
               {k: v for k, v in plain.to_dict().items() if k not in ("pair_loss", "out")}
    got = quality.parse_settings(["simclr:contrastive.pair_margin=1.0"], ["pixpro", "simclr:contrastive"])
    assert got == {"simclr:contrastive": {"pair_margin": 1.0}}
    assert quality.method_config("simclr:contrastive", args, tmp_path).replace(**got["simclr:contrastive"]).pair_margin == 1.0
    assert quality.describe("simclr:npair").endswith("; pair_loss npair")


def test_a_pair_loss_row_trains_and_probes_in_its_own_folder(tmp_path, cache, monkeypatch):
    from benchmarks import quality
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    out = tmp_path / "q"
    payload = quality.main(["--methods", "simclr:triplet_hard", "--no-reference", *TINY, "--out", str(out)])
    assert [r["method"] for r in payload["rows"]] == ["simclr:triplet_hard"]
    row, res = payload["rows"][0], payload["results"][0]
    assert isinstance(row["mIoU"], float) and res["steps"] == 2
    assert res["config"]["method"] == "simclr" and res["config"]["pair_loss"] == "triplet_hard"
    assert (out / "pretrain" / "simclr-triplet_hard" / "step_times.jsonl").is_file()
    assert "| simclr:triplet_hard | resnet18 |" in (out / "quality.md").read_text()
    steps = (out / "pretrain" / "simclr-triplet_hard" / "step_times.jsonl").read_text()
    # the same row asked for twice is one row, found finished: nothing trained or probed again
    again = quality.main(["--methods", "simclr:triplet_hard", "--pair-losses", "triplet_hard", "--no-reference",
                          *TINY, "--out", str(out)])
    assert again["rows"] == [row]
    assert (out / "pretrain" / "simclr-triplet_hard" / "step_times.jsonl").read_text() == steps


def test_a_gain_is_judged_against_the_probe_seed_noise_only_with_several_seeds():
    from benchmarks import quality
    one = {"miou": 0.5, "extra": {}}
    assert quality.seed_noise(one, {"miou": 0.4, "extra": {}}) == "-"
    steady = {"miou": 0.5, "extra": {"miou_per_seed": [0.50, 0.51, 0.50]}}
    base = {"miou": 0.4, "extra": {"miou_per_seed": [0.40, 0.41, 0.40]}}
    assert quality.seed_noise(steady, base) == "beyond"
    noisy = {"miou": 0.42, "extra": {"miou_per_seed": [0.30, 0.55, 0.41]}}
    assert quality.seed_noise(noisy, base) == "within"
    assert quality.seed_noise(steady, {"miou": 0.4, "extra": {"miou_per_seed": [0.4, 0.4]}}) == "-"
