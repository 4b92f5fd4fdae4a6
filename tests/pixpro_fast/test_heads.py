"""The heads: the pixel propagation module against a per-cell reference, the 1x1 convolution's
matmul path, the 2-D MLP."""
import pytest
import torch

from pixpro_fast.heads import Conv1x1, MLP2d, PixelPropagation
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


def test_mlp2d_shape():
    assert MLP2d(8, 16, 4)(torch.randn(2, 8, 3, 3)).shape == (2, 4, 3, 3)
