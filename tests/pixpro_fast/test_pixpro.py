"""The PixPro method: gradients only online, the target's initialisation, momentum and
BatchNorm statistics, channels-last, both views in one call."""
import copy

import torch

from pixpro_fast import PixPro
from pixpro_fast.config import TrainConfig


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
