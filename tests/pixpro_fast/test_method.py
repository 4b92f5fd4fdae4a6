import copy
import math

import pytest
import torch
import torch.nn as nn

from pixpro_fast import LARS, PixPro, lr_at, momentum_at, scaled_lr
from pixpro_fast.config import TrainConfig
from pixpro_fast.optim import lars_travel
from pixpro_fast.encoder import build_encoder
from pixpro_fast.heads import Conv1x1, MLP2d, PixelPropagation
from pixpro_fast.momentum import update_target
from reference import ppm_reference


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("gamma,clamp", [(2.0, 0.0), (0.5, 0.0), (1.0, -1.0), (3.0, 0.1)])
def test_ppm_matches_per_cell_reference(layers, gamma, clamp):
    torch.manual_seed(layers)
    ppm = PixelPropagation(16, layers, gamma, clamp).eval()
    x = torch.randn(3, 16, 5, 6)
    with torch.no_grad():
        ours = ppm(x)
        ref = ppm_reference(x, lambda t: ppm.transform(t), gamma, clamp)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-4)


def test_ppm_rejects_bad_settings():
    with pytest.raises(ValueError, match="0, 1 or 2"):
        PixelPropagation(8, 3)
    with pytest.raises(ValueError, match="gamma"):
        PixelPropagation(8, 1, gamma=0.0)


def test_momentum_schedule():
    assert momentum_at(0, 100) == pytest.approx(0.99)
    assert momentum_at(50, 100) == pytest.approx(0.995)
    assert momentum_at(100, 100) == pytest.approx(1.0)
    assert momentum_at(250, 100) == pytest.approx(1.0)
    assert momentum_at(25, 100, base=0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


def test_target_update_matches_per_parameter_loop():
    torch.manual_seed(0)
    online = [torch.randn(4, 3), torch.randn(7), torch.randn(2, 2, 3, 3)]
    target = [torch.randn_like(p) for p in online]
    expected = [0.97 * t + 0.03 * o for t, o in zip(target, online)]
    update_target(target, online, 0.97)
    for t, e in zip(target, expected):
        torch.testing.assert_close(t, e)


def test_lars_step_against_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))       # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([[0.6, -0.8]])
    b.grad = torch.tensor([0.5, 0.25])
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001, eps=1e-8)
    opt.step()
    # 2-D: g = [0.6 + 0.03, -0.8 + 0.04] = [0.63, -0.76]; ||g|| = sqrt(0.63^2 + 0.76^2)
    g = [0.63, -0.76]
    gn = math.sqrt(0.63 ** 2 + 0.76 ** 2)
    q = 0.001 * 5.0 / (gn + 1e-8)
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0 - 0.1 * q * g[0], 4.0 - 0.1 * q * g[1]]]))
    # 1-D: plain SGD with momentum, no decay, no scaling
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.05, -2.0 - 0.025]))
    # second step: the momentum buffer carries over
    w_before = w.detach().clone()
    w.grad = torch.tensor([[0.0, 0.0]])
    b.grad = torch.tensor([0.0, 0.0])
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.05 - 0.9 * 0.05, -2.0 - 0.025 - 0.9 * 0.025]))
    assert not torch.equal(w.detach(), w_before)


def test_lars_zero_parameter_still_moves():
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([w], lr=0.5, momentum=0.0, weight_decay=0.0).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.5))


def test_lars_travel_bounds_how_far_a_schedule_moves_the_weights():
    """A gradient that keeps one direction moves the weights (almost) as far as the bound
    says, relative to their initial norm; the bound follows the lr schedule."""
    total, warmup, peak, trust, momentum = 200, 20, 0.5, 0.0006, 0.9
    w = nn.Parameter(torch.tensor([[2.0, 0.0]]))  # 2-D: LARS scales it (1-D tensors are left plain)
    opt = LARS([w], lr=peak, momentum=momentum, weight_decay=0.0, trust_coefficient=trust)
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, peak)
        w.grad = torch.tensor([[0.0, -3.0]])
        opt.step()
    moved = float((w.detach() - torch.tensor([[2.0, 0.0]])).norm() / 2.0)
    bound = lars_travel(total, warmup, peak, trust, momentum)
    assert 0.85 * bound < moved <= 1.05 * bound, (moved, bound)
    assert lars_travel(total, warmup, 2 * peak, trust, momentum) == pytest.approx(2 * bound, rel=1e-6)
    assert lars_travel(total, warmup, peak, trust, 0.0) == pytest.approx(0.1 * bound)


def test_lr_schedule():
    assert scaled_lr(1.0, 1024) == pytest.approx(4.0)
    assert scaled_lr(1.0, 256, "sqrt") == pytest.approx(2.0)
    with pytest.raises(ValueError):
        scaled_lr(1.0, 256, "cube")
    peak = 4.0
    assert lr_at(0, 1000, 100, peak) == pytest.approx(0.04)
    assert lr_at(50, 1000, 100, peak) == pytest.approx(0.04 + (4.0 - 0.04) * 0.5)
    assert lr_at(100, 1000, 100, peak) == pytest.approx(4.0)
    assert lr_at(550, 1000, 100, peak) == pytest.approx(1e-6 + (4.0 - 1e-6) * 0.5)
    assert lr_at(1000, 1000, 100, peak) == pytest.approx(1e-6)


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


def tiny_config(**kw):
    return TrainConfig(arch="resnet18", proj_hidden_dim=64, proj_dim=32, **kw)


def tiny_model(**kw):
    return PixPro(tiny_config(**kw))


def loss_of(m, v1, v2, c1, c2):
    return m((v1, v2), (c1, c2)).loss


def test_full_forward_backward_grads_only_online():
    torch.manual_seed(0)
    m = tiny_model(ins_loss_weight=0.5)
    v1, v2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    c1 = torch.tensor([[0.0, 0.0, 0.8, 0.8]] * 4)
    c2 = torch.tensor([[0.2, 0.2, 1.0, 1.0]] * 4)
    out = m((v1, v2), (c1, c2))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert set(out.stats) == {"pixpro_loss", "instance_loss", "positive_pairs", "positive_cosine"}
    assert out.stats["positive_pairs"] > 0
    torch.testing.assert_close(out.loss, out.stats["pixpro_loss"] + 0.5 * out.stats["instance_loss"])
    online_grads = [p.grad for p in m.online.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in online_grads)
    assert any(g.abs().sum() > 0 for g in online_grads)
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())


def test_target_initialised_equal_and_follows_momentum():
    m = tiny_model()
    for (n1, p1), (n2, p2) in zip(m.online["encoder"].named_parameters(), m.target["encoder"].named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    before = [p.clone() for p in m.target.parameters()]
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(1.0)
    m.update_target(0.9)
    online = {f"{k}.{n}": p for k in m.target for n, p in m.online[k].named_parameters()}
    target = {f"{k}.{n}": p for k, mod in m.target.items() for n, p in mod.named_parameters()}
    for (name, t), b in zip(target.items(), before):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * online[name])


def test_target_batchnorm_uses_batch_statistics_and_keeps_own_running_stats():
    torch.manual_seed(1)
    m = tiny_model()
    bn_t = m.target["encoder"].bn1
    bn_o = m.online["encoder"].bn1
    with torch.no_grad():
        bn_o.running_mean.fill_(5.0)      # online buffers must not leak into the target
    rm_before = bn_t.running_mean.clone()
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    loss_of(m, torch.randn(2, 3, 64, 64) * 3 + 1, torch.randn(2, 3, 64, 64), c, c)
    assert not torch.equal(bn_t.running_mean, rm_before)   # updated by its own forward pass
    m.update_target(0.5)
    assert (bn_t.running_mean - 5.0).abs().max() > 1.0     # buffers are not averaged
    # training-mode BN: target output normalises with the batch statistics
    x = torch.randn(3, 3, 32, 32)
    y = m.target["encoder"].bn1(m.target["encoder"].conv1(x))
    mean = y.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, bn_t.bias.detach(), atol=1e-4, rtol=0)


def test_channels_last_model_equals_contiguous():
    torch.manual_seed(2)
    m = tiny_model()
    v1, v2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.7, 0.9]])
    a = loss_of(m, v1, v2, c, c)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    m2 = copy.deepcopy(m)
    b = loss_of(m2.to(memory_format=torch.channels_last), cl(v1), cl(v2), c, c)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_matmul_path_equals_conv2d_values_and_gradients(bias):
    """On channels-last input Conv1x1 takes a matmul over channels; it must be the same
    function (and gradients) as the 1x1 convolution, and return a channels-last result."""
    torch.manual_seed(7)
    layer = Conv1x1(6, 5, bias=bias)
    x = torch.randn(2, 6, 4, 3)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = layer(x_cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    w, b = layer.weight.detach().clone().requires_grad_(), None
    if bias:
        b = layer.bias.detach().clone().requires_grad_()
    y_ref = torch.nn.functional.conv2d(x_ref, w, b)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x_cl.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.weight.grad, w.grad, atol=1e-5, rtol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, b.grad, atol=1e-5, rtol=1e-5)
    assert set(layer.state_dict()) == ({"weight", "bias"} if bias else {"weight"})


def test_concat_views_option_changes_only_batchnorm_statistics():
    torch.manual_seed(3)
    m = tiny_model()
    m_cat = copy.deepcopy(m)
    m_cat.cfg = tiny_config(concat_views=True)
    v = torch.randn(2, 3, 64, 64)
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    # identical views: per-view and joint batch statistics coincide
    torch.testing.assert_close(loss_of(m, v, v, c, c), loss_of(m_cat, v, v.clone(), c, c), atol=1e-5, rtol=1e-5)
    v2 = torch.randn(2, 3, 64, 64) * 4
    assert not torch.allclose(loss_of(m, v, v2, c, c), loss_of(m_cat, v, v2, c, c), atol=1e-4)


def test_mlp2d_shape():
    assert MLP2d(8, 16, 4)(torch.randn(2, 8, 3, 3)).shape == (2, 4, 3, 3)


def scenic_compound_lr(step, base_lr, warmup_steps, steps_per_cycle, alpha):
    """scenic.train_lib.lr_schedules.compound_lr_scheduler for LOCA's factors
    'constant * cosine_decay * linear_warmup' (configs/loca_imnet1k_base16.py: no total_steps,
    t_mul, m_mul, warmup_alpha or start_decay_step), re-derived factor by factor."""
    ratio = base_lr                                                      # constant
    total_steps = steps_per_cycle                                        # cosine_decay
    adjusted_step = max(0.0, step - warmup_steps)
    cycle = steps_per_cycle - int(warmup_steps / (total_steps / steps_per_cycle))
    if cycle > 0:
        progress = adjusted_step / float(cycle)
        progress -= math.floor(progress)                                 # t_mul == 1: restart each cycle
        cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))
        ratio *= (1 - alpha) * cosine + alpha
    if warmup_steps > 0:                                                 # linear_warmup, from 0
        ratio *= min(1.0, step / warmup_steps)
    return ratio


@pytest.mark.parametrize("total,warmup", [(100 * 1251, 15 * 1251), (100, 10), (37, 5)])
def test_warmup_cosine_relative_is_scenics_schedule(total, warmup):
    """LOCA's schedule against scenic's factors: ImageNet at batch 1024 (1251 steps an epoch,
    15 of 100 epochs of warmup) and short runs; optax evaluates it at the update count, 0 first,
    as the engine does with its step. ``final_lr`` is not read (given absurd here)."""
    peak, alpha = 1e-3, 0.01
    steps = sorted({0, warmup // 2, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 2, total - 1})
    for step in steps:
        want = scenic_compound_lr(step, peak, warmup, total, alpha)
        got = lr_at(step, total, warmup, peak, 123.0, "warmup_cosine_relative", alpha)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-18), step
    assert lr_at(0, total, warmup, peak, 0.0, "warmup_cosine_relative") == 0.0
    assert lr_at(warmup, total, warmup, peak, 0.0, "warmup_cosine_relative") == pytest.approx(peak)
    # scenic's cycle would begin again at total_steps, a step its loop never trains: here the end holds
    assert lr_at(total, total, warmup, peak, 0.0, "warmup_cosine_relative", alpha) == pytest.approx(alpha * peak)
    assert lr_at(total + 7, total, warmup, peak, 0.0, "warmup_cosine_relative", alpha) == pytest.approx(alpha * peak)


@pytest.mark.parametrize("batch", [8, 128, 1024])
def test_loca_preset_lr_never_rises_after_the_warmup(batch):
    """At every batch size (peak 7.8e-6 at batch 8) the preset's lr climbs to the peak, then
    only falls, to 1% of the peak."""
    cfg = TrainConfig.from_file("loca")
    peak = scaled_lr(cfg.base_lr, batch, cfg.lr_scaling)
    per_epoch = 40
    total, warmup = cfg.epochs * per_epoch, int(round(cfg.warmup_epochs * per_epoch))
    lrs = [lr_at(s, total, warmup, peak, cfg.final_lr, cfg.lr_schedule, cfg.final_lr_fraction) for s in range(total + 1)]
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))
    assert lrs[warmup] == pytest.approx(peak) and max(lrs) == lrs[warmup]
    assert all(b <= a for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert lrs[-1] == pytest.approx(0.01 * peak) and lrs[-2] > lrs[-1]


def test_retired_schedule_and_unread_final_rates_are_refused_by_name():
    from pixpro_fast.config import ConfigError, resume_differences
    with pytest.raises(ValueError, match="no longer offered.*warmup_cosine_relative"):
        lr_at(0, 100, 10, 1e-3, 1e-5, "warmup_times_cosine")
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at(0, 100, 10, 1e-3, 1e-5, "step")
    loca = TrainConfig.from_file("loca")
    with pytest.raises(ConfigError, match="lr_schedule 'warmup_times_cosine'.*no longer offered.*new --out"):
        loca.replace(lr_schedule="warmup_times_cosine")
    with pytest.raises(ConfigError, match="final_lr 1e-05 is read by --lr-schedule warmup_cosine only"):
        loca.replace(final_lr=1e-5)
    with pytest.raises(ConfigError, match="final_lr_fraction 0.1 is read by --lr-schedule warmup_cosine_relative"):
        TrainConfig(final_lr_fraction=0.1).validate()
    assert loca.replace(final_lr_fraction=0.1).final_lr_fraction == 0.1
    # a checkpoint written under the old schedule: refused, saying why
    old = dict(loca.to_dict(), lr_schedule="warmup_times_cosine")
    diffs = resume_differences(old, loca)
    assert len(diffs) == 1 and diffs[0].startswith("lr_schedule: checkpoint has 'warmup_times_cosine'")
    assert "no longer offered" in diffs[0]