"""The hand-written CondInstanceNorm++ autograd function against autograd of the plain formula."""

import pytest
import torch
import torch.nn.functional as F

from ncsn import CondInstanceNormPlusPlus
from ncsn.nets.cond_norm import CondInstanceNormFunction, cond_instance_norm, reference_formula


def inputs(channels_last: bool, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 6, generator=gen, dtype=dtype) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(3, 5, generator=gen, dtype=dtype) for _ in range(3)]
    return [t.requires_grad_() for t in (x, *params)]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [False, True])
def test_gradients_match_finite_differences(channels_last, activation):
    args = inputs(channels_last)
    assert torch.autograd.gradcheck(lambda *a: CondInstanceNormFunction.apply(*a, activation), args)


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_and_no_grad_path_match_the_plain_formula(channels_last):
    x, gamma, alpha, beta = inputs(channels_last)
    expected = F.elu(reference_formula(x, gamma, alpha, beta))
    assert torch.allclose(CondInstanceNormFunction.apply(x, gamma, alpha, beta, True), expected, atol=1e-12)
    with torch.no_grad():
        x_copy = x.detach().clone()
        assert torch.allclose(cond_instance_norm(x_copy, gamma, alpha, beta, True), expected, atol=1e-12)
        assert torch.equal(x_copy, x.detach())  # the no-grad path writes over its own buffer, never over x


def test_module_layouts_agree_in_float32():
    torch.manual_seed(0)
    norm = CondInstanceNormPlusPlus(6, 4)
    with torch.no_grad():
        norm.embed.weight.normal_()
    x = torch.randn(2, 6, 5, 5) * 3 + 2
    y = torch.tensor([1, 3])
    out = norm(x, y, activation=True)
    out_cl = norm(x.contiguous(memory_format=torch.channels_last), y, activation=True)
    assert torch.allclose(out, out_cl, atol=1e-5)


def test_bfloat16_channels_last_planes_keep_float32_statistics():
    x, gamma, alpha, beta = (t.detach().float() for t in inputs(channels_last=True))
    expected = reference_formula(x, gamma, alpha, beta)
    with torch.no_grad():
        out = cond_instance_norm(x.to(torch.bfloat16), gamma, alpha, beta)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.float(), expected, atol=0.05)  # bf16 input rounding only
