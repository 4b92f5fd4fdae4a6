"""Sinkhorn-Knopp balancing against two plain references: SwAV's (exp(scores / eps), rows then
columns) and LOCA's (the teacher's probabilities, columns then rows)."""
import torch
import torch.nn.functional as F

from pixpro_fast.sinkhorn import sinkhorn


def sinkhorn_reference(scores, eps, iters):
    q = torch.exp(scores.double() / eps).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(b):
            q[:, c] = q[:, c] / q[:, c].sum() / b
    return (q * b).t()


def test_sinkhorn_matches_plain_loop_and_balances_prototypes():
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(12, 5, generator=gen).clamp(-1, 1)
    codes = sinkhorn(scores, iters=3, eps=0.05)
    torch.testing.assert_close(codes.double(), sinkhorn_reference(scores, 0.05, 3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(codes.sum(1), torch.ones(12), atol=1e-5, rtol=0)
    many = sinkhorn(scores, iters=50, eps=0.5)   # converged: every prototype gets an equal share
    torch.testing.assert_close(many.sum(0), torch.full((5,), 12 / 5), atol=1e-3, rtol=0)


def test_one_sinkhorn_serves_swav_and_loca():
    """SwAV's start exp(s / eps) and LOCA's start (weights, the teacher's softmax) run the
    same rounds: weights w given directly equal scores log(w) with eps 1. A per-sample scale
    of the start changes a few rounds' result, so the two starts stay distinct. A small eps
    whose plain exp(s / eps) overflows fp32 still gives the float64 reference's codes."""
    gen = torch.Generator().manual_seed(6)
    probs = torch.softmax(torch.randn(20, 7, generator=gen) / 0.3, dim=1)
    torch.testing.assert_close(sinkhorn(probs, iters=3), sinkhorn(probs.log(), iters=3, eps=1.0), atol=1e-6, rtol=1e-5)
    rescaled = probs * torch.linspace(0.5, 2.0, 20)[:, None]
    assert not torch.allclose(sinkhorn(probs, iters=3), sinkhorn(rescaled, iters=3), atol=1e-3)
    scores = 0.3 + 0.7 * torch.rand(12, 5, generator=gen)
    scores[0, 0] = 1.0
    assert not torch.isfinite(torch.exp(scores / 0.01)).all()
    torch.testing.assert_close(sinkhorn(scores, iters=3, eps=0.01).double(), sinkhorn_reference(scores, 0.01, 3),
                               atol=1e-5, rtol=1e-4)


def plain_sinkhorn(p, iters):
    x = p.double().clone()
    for _ in range(iters):
        for j in range(x.shape[1]):
            x[:, j] = x[:, j] / x[:, j].sum()
        for i in range(x.shape[0]):
            x[i] = x[i] / x[i].sum()
    return x


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(60, 12, generator=g) * 3 / 0.5, dim=1)
    q = sinkhorn(probs, iters=3)
    torch.testing.assert_close(q.double(), plain_sinkhorn(probs, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(1), torch.ones(60))                       # each row an assignment
    before = (probs.sum(0) - 5).abs().max()
    assert (q.sum(0) - 5).abs().max() < before                                  # columns move to 60 / 12
    converged = sinkhorn(probs, iters=300)
    torch.testing.assert_close(converged.sum(0), torch.full((12,), 5.0), rtol=1e-3, atol=1e-3)
