"""LARS against hand computation, the lr schedules (LOCA's against scenic's factors), how far
a LARS schedule can move the weights."""
import math

import pytest
import torch
import torch.nn as nn

from pixpro_fast import LARS, lr_at, scaled_lr
from pixpro_fast.config import TrainConfig
from pixpro_fast.optim import lars_travel


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


def _three_updates(make, capturable):
    """Three optimiser steps on a small model with fixed gradients and a changing lr; its
    weights after each, and the optimiser."""
    from pixpro_fast.optim import capturable_update, prepare_capturable
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    opt = make(model)
    lr = torch.tensor(0.0)
    if capturable:
        prepare_capturable(opt)
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
    out = []
    for step, (rate, gs) in enumerate(zip((0.05, 0.1, 0.02), grads)):
        for p, g in zip(model.parameters(), gs):
            p.grad = g.clone()
        if capturable:
            lr.fill_(rate)
            capturable_update(opt, lr)
        else:
            for group in opt.param_groups:
                group["lr"] = rate
            opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out, opt


@pytest.mark.parametrize("name", ["lars", "sgd", "sgd_no_momentum", "adamw"])
def test_capturable_update_equals_the_optimisers_own_step(name):
    """The update a compiled step captures (lr a tensor, state made up front) against the
    optimiser's own step() (PyTorch's SGD and AdamW, our LARS): the same weights after each
    of three steps, the same state."""
    from pixpro_fast.optim import adamw_param_groups, capturable_problem
    makers = {
        "lars": lambda m: LARS(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02),
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3),
        "sgd_no_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-3),
        "adamw": lambda m: torch.optim.AdamW(adamw_param_groups(m, 0.05), lr=0.1),
    }
    assert capturable_problem(makers[name](nn.Linear(2, 2))) is None
    want, ref = _three_updates(makers[name], capturable=False)
    got, opt = _three_updates(makers[name], capturable=True)
    for step_want, step_got in zip(want, got):
        for a, b in zip(step_want, step_got):
            # float32 bias corrections and step size where the optimiser computes them in Python doubles
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for p_ref, p in zip(ref.state, opt.state):
        for key, value in ref.state[p_ref].items():
            torch.testing.assert_close(torch.as_tensor(opt.state[p][key]).float().cpu(),
                                       torch.as_tensor(value).float(), msg=key)


def test_optimisers_a_captured_update_cannot_stand_in_for_are_named():
    from pixpro_fast.optim import capturable_problem
    p = [nn.Parameter(torch.zeros(2))]
    assert "nesterov" in capturable_problem(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True))
    assert "amsgrad" in capturable_problem(torch.optim.AdamW(p, lr=0.1, amsgrad=True))
    assert "RMSprop" in capturable_problem(torch.optim.RMSprop(p, lr=0.1))
