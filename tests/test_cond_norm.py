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


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [False, True])
def test_second_derivatives_match_gradgradcheck(channels_last, activation):
    """A backward pass that builds a graph (create_graph=True) is differentiated exactly, in float64."""
    args = inputs(channels_last)
    assert torch.autograd.gradgradcheck(lambda *a: CondInstanceNormFunction.apply(*a, activation), args)


def test_sliced_score_matching_gradients_match_the_plain_formula(monkeypatch):
    """ssm_loss differentiates the input gradient: the fused norm must give the plain formula's parameter gradients."""
    from ncsn import CondRefineNetDilated, ScoreModel, geometric_sigmas, ssm_loss
    from ncsn.nets import layers

    torch.manual_seed(0)
    net = ScoreModel(CondRefineNetDilated(1, 4, 10), geometric_sigmas(1.0, 0.01, 10)).double()
    with torch.no_grad():
        for p in net.parameters():  # away from the initialisation's symmetries (beta = 0, gamma ~ 1)
            p.add_(0.1 * torch.randn_like(p))
    x, sigma = torch.rand(3, 1, 8, 8, dtype=torch.float64), net.sigmas[[0, 4, 9]].float()
    v = torch.randn(1, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def grads():
        net.zero_grad()
        ssm_loss(lambda inp, s: net(inp.double(), s), x, sigma, projections=v).sum().backward()
        return [p.grad.clone() for p in net.parameters()]

    fused = grads()

    def plain(x, gamma, alpha, beta, activation=False):
        out = reference_formula(x, gamma, alpha, beta)
        return F.elu(out) if activation else out

    monkeypatch.setattr(layers, "cond_instance_norm", plain)
    expected = grads()
    worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(fused, expected) if b.norm() > 0)
    assert worst < 1e-5, worst  # the projections and outputs pass through float32: ~1e-7 rounding, amplified a little


# bf16 (autocast) numerics. Planes with large means (100 +- 30) and unit spread are where subtracting a mean late, or
# keeping statistics in bf16, goes wrong. Inputs and the incoming gradient are bf16-representable, so the float32
# reference sees the same numbers; what remains is bf16 rounding of a few results (unit roundoff 2^-9), hence a
# tolerance of 2^-7 of the largest magnitude. Statistics or products taken in bf16 miss it by 4-40x.
BF16_TOLERANCE = 2.0**-7


def bf16_case(channels_last: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 8, 8, generator=gen) + 100 + 30 * torch.randn(4, 6, 1, 1, generator=gen)
    x = x.bfloat16().float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(4, 6, generator=gen) for _ in range(3)]
    grad = torch.randn(4, 6, 8, 8, generator=gen).bfloat16().float()
    return x, params, grad


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [False, True])
def test_bfloat16_eager_forward_and_backward_match_float32(channels_last, activation):
    x, params, grad = bf16_case(channels_last)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [x.detach().to(dtype).requires_grad_(), *(p.clone().requires_grad_() for p in params)]
        out = CondInstanceNormFunction.apply(*leaves, activation)
        out.backward(grad.to(dtype))
        assert out.dtype == dtype and leaves[0].grad.dtype == dtype
        results[dtype] = [out.detach(), *(t.grad for t in leaves)]
    for low, ref in zip(results[torch.bfloat16], results[torch.float32]):
        assert relative_error(low, ref) < BF16_TOLERANCE
    with torch.no_grad():  # the no-grad path of sampling
        out = cond_instance_norm(x.detach().bfloat16(), *params, activation)
    assert relative_error(out, results[torch.float32][0]) < BF16_TOLERANCE


@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_compiled_path_keeps_float32_statistics(channels_last, monkeypatch):
    """Under torch.compile the plain formula runs (here without compiling: the dispatch is what is tested)."""
    x, params, grad = bf16_case(channels_last)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    ref_x = x.clone().requires_grad_()
    ref = cond_instance_norm(ref_x, *params, True)
    ref.backward(grad)
    low_x = x.bfloat16().requires_grad_()
    low = cond_instance_norm(low_x, *params, True)
    low.backward(grad.bfloat16())
    assert low.dtype == torch.bfloat16
    assert relative_error(low, ref) < BF16_TOLERANCE
    assert relative_error(low_x.grad, ref_x.grad) < BF16_TOLERANCE
