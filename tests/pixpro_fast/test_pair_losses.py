"""SimCLR's pair losses (pixpro_fast.pair_losses) against plain loops written from their
formulas, in float64, and the ``pair_loss`` setting from TrainConfig and the command line."""
import math

import pytest
import torch
import torch.nn.functional as F

from pixpro_fast.config import ConfigError, TrainConfig, method_fields
from pixpro_fast.methods import build_method
from pixpro_fast.pair_losses import (NPAIR_L2, PAIR_LOSSES, contrastive_loss, npair_loss, nt_xent_loss, pair_loss,
                                     triplet_all_loss, triplet_hard_loss)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (see conftest's one_thread)."""


N, D = 4, 6      # images and embedding width of the small batch


def batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=gen, dtype=torch.float64), torch.randn(N, D, generator=gen, dtype=torch.float64)


def embeddings(z1, z2):
    """The 2N embeddings in the losses' order (view 1 of every image, then view 2) and the
    image of each."""
    return [z1[i] for i in range(N)] + [z2[i] for i in range(N)], [i for i in range(N)] * 2


def dist(a, b):
    """Euclidean distance between the L2-normalised a and b (float64 tensors)."""
    return torch.sqrt(((a / a.norm() - b / b.norm()) ** 2).sum())


def ref_contrastive(z1, z2, m):
    """1/2 mean over positive pairs of d^2 + 1/2 mean over negative pairs of max(0, m - d)^2;
    each unordered pair once."""
    e, img = embeddings(z1, z2)
    pos, neg = [], []
    for a in range(2 * N):
        for b in range(a + 1, 2 * N):
            d = dist(e[a], e[b])
            if img[a] == img[b]:
                pos.append(d ** 2)
            else:
                neg.append(torch.clamp(m - d, min=0) ** 2)
    assert len(pos) == N and len(neg) == 2 * N * (N - 1)
    return 0.5 * sum(pos) / len(pos) + 0.5 * sum(neg) / len(neg)


def ref_triplet(z1, z2, m, hardest):
    e, img = embeddings(z1, z2)
    per_anchor = []
    for a in range(2 * N):
        p = next(b for b in range(2 * N) if b != a and img[b] == img[a])
        d_ap = dist(e[a], e[p])
        negatives = [b for b in range(2 * N) if img[b] != img[a]]
        if hardest:
            d_an = min((dist(e[a], e[b]) for b in negatives), key=lambda d: d.item())
            per_anchor.append(torch.clamp(d_ap - d_an + m, min=0))
        else:
            terms = [torch.clamp(d_ap - dist(e[a], e[b]) + m, min=0) for b in negatives]
            per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def ref_npair(z1, z2, lam):
    """log(1 + sum_j exp(f.g_j - f.g_i)) over anchors f of either view, g the other view,
    j over the other images; plus lambda/4 (mean ||z1||^2 + mean ||z2||^2)."""
    terms = []
    for f_view, g_view in ((z1, z2), (z2, z1)):
        for i in range(N):
            f = f_view[i]
            s = sum(torch.exp(f @ g_view[j] - f @ g_view[i]) for j in range(N) if j != i)
            terms.append(torch.log(1 + s))
    penalty = lam / 4 * (sum(z1[i] @ z1[i] for i in range(N)) / N + sum(z2[i] @ z2[i] for i in range(N)) / N)
    return sum(terms) / len(terms) + penalty


def ref_infonce(z1, z2, t):
    e, img = embeddings(z1, z2)
    cos = [[float(e[a] @ e[b] / (e[a].norm() * e[b].norm())) for b in range(2 * N)] for a in range(2 * N)]
    total = 0.0
    for a in range(2 * N):
        p = (a + N) % (2 * N)
        total += -math.log(math.exp(cos[a][p] / t) / sum(math.exp(cos[a][b] / t) for b in range(2 * N) if b != a))
    return total / (2 * N)


CASES = [
    ("contrastive", lambda z1, z2: contrastive_loss(z1, z2, 0.9), lambda z1, z2: ref_contrastive(z1, z2, 0.9)),
    ("contrastive_wide_margin", lambda z1, z2: contrastive_loss(z1, z2, 1.3),
     lambda z1, z2: ref_contrastive(z1, z2, 1.3)),
    ("triplet_hard", lambda z1, z2: triplet_hard_loss(z1, z2, 0.3), lambda z1, z2: ref_triplet(z1, z2, 0.3, True)),
    ("triplet_all", lambda z1, z2: triplet_all_loss(z1, z2, 0.3), lambda z1, z2: ref_triplet(z1, z2, 0.3, False)),
    ("npair", npair_loss, lambda z1, z2: ref_npair(z1, z2, NPAIR_L2)),
]


@pytest.mark.parametrize("name, ours, ref", CASES, ids=[c[0] for c in CASES])
def test_pair_loss_and_gradient_match_a_plain_loop(name, ours, ref):
    """Value and gradient of each loss against its formula written as loops over anchors and
    pairs, in float64 (the losses compute in float32)."""
    for seed in (0, 1):
        z1, z2 = batch(seed)
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        expected = ref(a, b)
        ga, gb = torch.autograd.grad(expected, (a, b))
        x, y = z1.float().requires_grad_(), z2.float().requires_grad_()
        got = ours(x, y)
        gx, gy = torch.autograd.grad(got, (x, y))
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7), name
        assert expected.item() > 0, name                   # the case is not all zero (inactive hinges)
        torch.testing.assert_close(gx.double(), ga, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(gy.double(), gb, atol=1e-6, rtol=1e-4)


def test_infonce_is_nt_xent_and_the_hardest_triplet_bounds_the_mean():
    z1, z2 = batch(2)
    x, y = z1.float(), z2.float()
    assert pair_loss("infonce", x, y, 0.2, 0.5).item() == pytest.approx(ref_infonce(z1, z2, 0.2), rel=1e-5)
    assert torch.equal(pair_loss("infonce", x, y, 0.2, 0.5), nt_xent_loss(x, y, 0.2))
    # per anchor, the hardest negative's hinge is the largest of its hinges
    for m in (0.0, 0.3, 1.0):
        assert triplet_hard_loss(x, y, m) >= triplet_all_loss(x, y, m)
    # a margin beyond every distance: every triplet active, the mean is d(a,p) - mean d(a,n) + m
    assert triplet_all_loss(x, y, 5.0) - triplet_all_loss(x, y, 4.0) == pytest.approx(1.0, rel=1e-5)
    # equal views and negatives beyond the margin: nothing to pull or push
    e = torch.eye(N, D)
    assert contrastive_loss(e, e.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert triplet_hard_loss(e, e.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown pair loss 'nope'"):
        pair_loss("nope", x, y, 0.2, 0.5)
    with pytest.raises(ValueError, match="at least two images"):
        contrastive_loss(x[:1], y[:1], 0.5)


def test_pair_losses_compute_in_fp32_under_autocast():
    z1, z2 = batch(3)
    x, y = z1.float(), z2.float()
    for name in PAIR_LOSSES[1:]:
        plain = pair_loss(name, x, y, 0.2, 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = pair_loss(name, x, y, 0.2, 0.5)
        assert mixed.dtype == torch.float32
        assert mixed.item() == pytest.approx(plain.item(), rel=1e-6), name


# --------------------------------------------------------------------------- the setting

def small_simclr(**changes):
    return TrainConfig.from_file("simclr").replace(arch="resnet18", image_size=64, proj_hidden_dim=32, proj_dim=16,
                                                   **changes)


def test_the_setting_reaches_simclr_and_other_methods_refuse_it():
    assert {"pair_loss", "pair_margin", "temperature"} <= set(method_fields("simclr"))
    assert "pair_loss" not in method_fields("mocov2")
    assert TrainConfig.from_file("simclr").pair_loss == "infonce"        # the default keeps NT-Xent
    torch.manual_seed(0)
    views = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    for name, margin in (("triplet_hard", 0.3), ("contrastive", 1.0), ("npair", 0.5), ("infonce", 0.5)):
        model = build_method(small_simclr(pair_loss=name, pair_margin=margin)).eval()
        assert model.pair_loss == name
        with torch.no_grad():
            out = model(views, None)
            on = model.online
            z = [on["projector"](F.adaptive_avg_pool2d(on["encoder"](v), 1).flatten(1)) for v in views]
            expected = pair_loss(name, z[0], z[1], model.cfg.temperature, margin)
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6), name
    with pytest.raises(ConfigError, match="pair_loss 'triplet_hard' is a setting of simclr only; method 'byol'"):
        TrainConfig.from_file("byol").replace(pair_loss="triplet_hard")
    with pytest.raises(ConfigError, match="pair_margin 0.3 is a setting of simclr only; method 'mocov2'"):
        TrainConfig.from_file("mocov2").replace(pair_margin=0.3)
    with pytest.raises(ConfigError, match="pair_margin 1.0 is read by pair_loss contrastive, triplet_hard, "
                                          "triplet_all only; pair_loss 'npair'"):
        small_simclr(pair_loss="npair", pair_margin=1.0)
    with pytest.raises(ConfigError, match="pair_loss must be one of infonce, contrastive, triplet_hard"):
        small_simclr(pair_loss="triplet")


def test_pair_loss_flag_trains_simclr_and_is_refused_for_another_method(tmp_path, capsys):
    from pixpro_fast.checkpoint import list_checkpoints, load_checkpoint
    from pixpro_fast.cli import main
    common = ["--loader", "synthetic", "--arch", "resnet18", "--image-size", "64", "--batch-size", "4",
              "--proj-hidden-dim", "32", "--proj-dim", "16", "--max-steps", "1", "--precision", "fp32",
              "--no-tensorboard"]
    assert main(["--method", "simclr", "--pair-loss", "triplet_hard", "--pair-margin", "0.3", *common,
                 "--out", str(tmp_path / "run")]) == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["config"]["pair_loss"] == "triplet_hard" and state["config"]["pair_margin"] == 0.3
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--method", "byol", "--pair-loss", "triplet_hard", *common, "--out", str(tmp_path / "byol")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--pair-loss 'triplet_hard' is a setting of simclr only; method 'byol' does not read it" in err
    assert not (tmp_path / "byol").exists()
