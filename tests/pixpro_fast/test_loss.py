import pytest
import torch

from pipelines.geometry import flip_coords
from pixpro_fast.loss import instance_loss, pixpro_loss, pixpro_loss_with_stats, positive_mask
from reference import mask_reference, pixpro_loss_reference

BOXES = {
    "partial": ([0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.95]),
    "full": ([0.2, 0.3, 0.8, 0.9], [0.2, 0.3, 0.8, 0.9]),
    "disjoint": ([0.0, 0.0, 0.3, 0.3], [0.6, 0.6, 1.0, 1.0]),
    "flipped": ([0.7, 0.1, 0.1, 0.8], [0.2, 0.2, 0.9, 0.9]),
    "nested": ([0.0, 0.0, 1.0, 1.0], [0.4, 0.4, 0.6, 0.55]),
}


def make_coords(batch, gen):
    """A batch mixing every box situation plus random (sometimes flipped) boxes."""
    names = list(BOXES)
    c1, c2 = [], []
    for s in range(batch):
        if s < len(names) and batch > 1:
            a, b = BOXES[names[s]]
        else:
            lo = torch.rand(2, 2, generator=gen) * 0.5
            size = 0.2 + torch.rand(2, 2, generator=gen) * 0.5
            a = [lo[0, 0], lo[0, 1], lo[0, 0] + size[0, 0], lo[0, 1] + size[0, 1]]
            b = [lo[1, 0], lo[1, 1], lo[1, 0] + size[1, 0], lo[1, 1] + size[1, 1]]
            if torch.rand(1, generator=gen) < 0.5:
                a = [a[2], a[1], a[0], a[3]]
        c1.append(torch.tensor([float(v) for v in a]))
        c2.append(torch.tensor([float(v) for v in b]))
    return torch.stack(c1), torch.stack(c2)


@pytest.mark.parametrize("hw", [(7, 7), (8, 8), (14, 14), (5, 9)])
@pytest.mark.parametrize("batch", [1, 5])
def test_loss_matches_plain_reference_values_and_gradients(hw, batch):
    gen = torch.Generator().manual_seed(hash((hw, batch)) % 1000)
    h, w = hw
    c1, c2 = make_coords(batch, gen)
    tensors = [torch.randn(batch, 16, h, w, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(4)]
    ref = pixpro_loss_reference(*tensors, c1, c2)
    ref_grads = torch.autograd.grad(ref, tensors)
    ours_in = [t.detach().float().requires_grad_() for t in tensors]
    ours = pixpro_loss(*ours_in, c1, c2)
    grads = torch.autograd.grad(ours, ours_in)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("hw", [(7, 7), (6, 10)])
def test_positive_mask_matches_loop_and_is_transposed_in_reverse(hw):
    gen = torch.Generator().manual_seed(3)
    c1, c2 = make_coords(8, gen)
    m = positive_mask(c1, c2, *hw)
    assert m.dtype == torch.bool and m.shape == (8, hw[0] * hw[1], hw[0] * hw[1])
    assert torch.equal(m, mask_reference(c1, c2, *hw))
    assert torch.equal(positive_mask(c2, c1, *hw), m.transpose(1, 2))


def test_mask_cases():
    full = torch.tensor([BOXES["full"][0]])
    m = positive_mask(full, full, 7, 7)
    assert m.diagonal(dim1=1, dim2=2).all()  # every cell is positive with itself
    # neighbouring cells are one cell apart: distance 1 cell-width > 0.7 diag? width/diag = 1/sqrt(2) ~ 0.707 > 0.7
    assert m.sum() == 49
    a, b = torch.tensor([BOXES["disjoint"][0]]), torch.tensor([BOXES["disjoint"][1]])
    assert not positive_mask(a, b, 7, 7).any()


def test_no_positive_pairs_contributes_zero_not_nan():
    a, b = torch.tensor([BOXES["disjoint"][0]]), torch.tensor([BOXES["disjoint"][1]])
    ts = [torch.randn(1, 8, 7, 7, requires_grad=True) for _ in range(4)]
    loss = pixpro_loss(*ts, a, b)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(t.grad).all() and (t.grad == 0).all() for t in ts)


def test_flip_of_both_views_with_mirrored_features_leaves_loss_unchanged():
    gen = torch.Generator().manual_seed(5)
    c1, c2 = make_coords(4, gen)
    ts = [torch.randn(4, 8, 7, 7, generator=gen) for _ in range(4)]
    base = pixpro_loss(*ts, c1, c2)
    mirrored = [t.flip(-1) for t in ts]
    flipped = pixpro_loss(*mirrored, flip_coords(c1), flip_coords(c2))
    torch.testing.assert_close(base, flipped, atol=1e-5, rtol=1e-5)
    # flipping one view's coords without mirroring its features changes which cells pair up
    assert not torch.allclose(base, pixpro_loss(*ts, flip_coords(c1), c2))


def test_identical_normalised_features_reach_minus_four():
    c = torch.tensor([[0.1, 0.1, 0.9, 0.9]])
    x = torch.randn(1, 8, 1, 1).expand(1, 8, 7, 7).contiguous()  # the same vector at every cell
    assert pixpro_loss(x, x, x, x, c, c).item() == pytest.approx(-4.0, abs=1e-5)


def test_loss_stats():
    c = torch.tensor([BOXES["full"][0]] * 2)
    x = torch.randn(2, 8, 1, 1).expand(2, 8, 7, 7).contiguous()
    loss, npos, cos = pixpro_loss_with_stats(x, x, x, x, c, c)
    assert npos.item() == 49 and cos.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_autocast_close_to_fp32(dtype, atol):
    # Inputs are normalised and the masked sums run in fp32; only the matmul is low precision,
    # whose products carry ~2^-8 (bf16) or ~2^-11 (fp16) relative error in each term.
    gen = torch.Generator().manual_seed(1)
    c1, c2 = make_coords(8, gen)
    ts = [torch.randn(8, 256, 7, 7, generator=gen) for _ in range(4)]
    ref = pixpro_loss(*ts, c1, c2)
    with torch.autocast("cpu", dtype=dtype):
        low = pixpro_loss(*[t.to(dtype) for t in ts], c1, c2)
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) < atol


def test_channels_last_equals_contiguous():
    gen = torch.Generator().manual_seed(2)
    c1, c2 = make_coords(4, gen)
    ts = [torch.randn(4, 32, 7, 7, generator=gen) for _ in range(4)]
    cl = [t.contiguous(memory_format=torch.channels_last) for t in ts]
    torch.testing.assert_close(pixpro_loss(*ts, c1, c2), pixpro_loss(*cl, c1, c2), atol=1e-6, rtol=1e-6)


def test_loss_under_torch_compile_matches_eager():
    gen = torch.Generator().manual_seed(4)
    c1, c2 = make_coords(4, gen)
    ts = [torch.randn(4, 32, 7, 7, generator=gen) for _ in range(4)]
    compiled = torch.compile(pixpro_loss, dynamic=False)
    torch.testing.assert_close(compiled(*ts, c1, c2), pixpro_loss(*ts, c1, c2), atol=1e-5, rtol=1e-5)


def test_instance_loss_reference():
    gen = torch.Generator().manual_seed(6)
    p1, p2, z1, z2 = [torch.randn(6, 16, generator=gen) for _ in range(4)]
    ref = 0.0
    for a, b in ((p1, z2), (p2, z1)):
        for s in range(6):
            ref += -2.0 * float(a[s] @ b[s] / (a[s].norm() * b[s].norm())) / 6
    assert instance_loss(p1, p2, z1, z2).item() == pytest.approx(ref, abs=1e-5)
