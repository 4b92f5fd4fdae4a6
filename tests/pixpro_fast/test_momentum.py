"""The momentum target: the cosine momentum schedule and the fused update against a loop."""
import math

import pytest
import torch

from pixpro_fast import momentum_at
from pixpro_fast.momentum import update_target


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
