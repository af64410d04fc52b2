import pytest
import torch

from ncsn import CondInstanceNormPlusPlus, CondRefineNetDilated, ModelConfig, ScoreModel, build_score_model
from ncsn.sigmas import SigmaOffLadderError
from ncsn.sigmas import geometric_sigmas


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_exact_parameter_counts():
    assert n_params(CondRefineNetDilated(1, 64, 10)) == 7_638_657
    assert n_params(CondRefineNetDilated(3, 128, 10)) == 30_117_635


def test_state_dict_matches_official_cifar10_checkpoint(data_dir):
    ref = {}
    for line in (data_dir / "ncsn_v1_cifar10_state_dict.txt").read_text().splitlines():
        name, shape = line.split(" ", 1)
        ref[name.removeprefix("module.")] = [int(v) for v in shape.strip("[]").split(",")]
    mine = {k: list(v.shape) for k, v in CondRefineNetDilated(3, 128, 10).state_dict().items()}
    assert len(ref) == len(mine) == 173
    assert mine == ref


def test_cond_instance_norm_plus_plus_against_direct_formula():
    gen = torch.Generator().manual_seed(0)
    c, levels = 5, 4
    norm = CondInstanceNormPlusPlus(c, levels)
    with torch.no_grad():
        norm.embed.weight.copy_(torch.randn(levels, 3 * c, generator=gen))
    x = torch.randn(3, c, 6, 7, generator=gen) * 2 + 1
    y = torch.tensor([0, 3, 1])
    got = norm(x, y).double()

    xd = x.double()
    out = torch.empty_like(xd)
    for n in range(3):
        gamma, alpha, beta = norm.embed.weight[y[n]].double().split(c)
        chan_mean = xd[n].mean(dim=(1, 2))
        chan_var = ((xd[n] - chan_mean[:, None, None]) ** 2).mean(dim=(1, 2))  # biased
        xhat = (xd[n] - chan_mean[:, None, None]) / torch.sqrt(chan_var[:, None, None] + 1e-5)
        m = chan_mean.mean()
        v = ((chan_mean - m) ** 2).sum() / (c - 1)  # unbiased over channels
        mu_tilde = (chan_mean - m) / torch.sqrt(v + 1e-5)
        out[n] = gamma[:, None, None] * (xhat + alpha[:, None, None] * mu_tilde[:, None, None]) + beta[:, None, None]
    assert torch.allclose(got, out, atol=1e-5)


def test_cond_instance_norm_initialisation():
    torch.manual_seed(0)
    norm = CondInstanceNormPlusPlus(512, 10)
    w = norm.embed.weight
    assert torch.all(w[:, 1024:] == 0)
    assert w[:, :1024].mean().item() == pytest.approx(1.0, abs=2e-3)
    assert w[:, :1024].std().item() == pytest.approx(0.02, rel=0.05)
    assert not any("running" in k for k in norm.state_dict())


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (28, 1), (32, 3), (64, 3)])
def test_network_keeps_image_shape(size, channels):
    net = CondRefineNetDilated(channels, 4, 10)
    x = torch.rand(2, channels, size, size)
    out = net(x, torch.tensor([0, 9]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_network_maps_input_to_minus_one_one_and_conditions_on_level():
    torch.manual_seed(0)
    net = CondRefineNetDilated(1, 4, 10)
    with torch.no_grad():
        net.normalizer.embed.weight[3].mul_(2.0)  # make level 3's head differ
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([0, 0])), net(x, torch.tensor([3, 3])))
    with torch.no_grad():
        h_ref = net.begin_conv(2 * x - 1)
    seen = {}

    def grab(module, args):
        seen["h"] = args[0]

    net.res1[0].normalize1.register_forward_pre_hook(grab)
    net(x, torch.tensor([0, 0]))
    assert torch.allclose(seen["h"], h_ref)


def test_network_rejects_wrong_shapes():
    net = CondRefineNetDilated(3, 4, 10)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="even"):
        net(torch.rand(2, 3, 9, 9), torch.zeros(2, dtype=torch.long))


def test_score_model_wrapper_levels_sigmas_and_scaling():
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, ngf=4, sigma_max=1.0, sigma_min=0.01, num_scales=10)
    model = build_score_model(cfg)
    assert torch.allclose(model.sigmas, geometric_sigmas(1.0, 0.01, 10))
    x = torch.rand(2, 1, 8, 8)
    by_level = model.net(x, torch.tensor([2, 5]))
    assert torch.equal(model.at_levels(x, torch.tensor([2, 5])), by_level)
    assert torch.equal(model(x, model.sigmas[[2, 5]]), by_level)
    assert torch.equal(model(x, float(model.sigmas[2])), model.net(x, torch.tensor([2, 2])))
    # within the ladder's relative tolerance the level is found; between two levels, or off the ends, it is refused
    assert torch.equal(model(x, model.sigmas[[2, 5]] * (1 + 5e-5)), by_level)
    for off in (0.36 * 0.99, 0.3, 2.0, 0.005):
        with pytest.raises(SigmaOffLadderError, match=rf"sigma {off:.6g} is not on this level-conditioned.*0\.5995"):
            model(x, torch.tensor([float(model.sigmas[0]), off]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(x, model.sigmas[:3])
    scaled = ScoreModel(model.net, model.sigmas, scale_by_sigma=True)
    assert torch.allclose(scaled(x, model.sigmas[[2, 5]]), by_level / model.sigmas[[2, 5]].view(-1, 1, 1, 1))
    with pytest.raises(ValueError, match="model.arch"):
        build_score_model(ModelConfig(arch="unet"))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_layers_are_the_plain_pooling_maps(channels_last):
    """The CRP pool (separable depthwise taps) and the folded conv-then-mean-pool equal the plain ops, with gradients."""
    import torch.nn.functional as F

    from ncsn.nets.layers import ConvMeanPool, mean_pool5

    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    (fast,) = torch.autograd.grad(mean_pool5(x), x, grad)
    (plain,) = torch.autograd.grad(F.avg_pool2d(x, 5, 1, 2), x, grad)
    assert torch.allclose(mean_pool5(x), F.avg_pool2d(x, 5, 1, 2), atol=1e-12) and torch.allclose(fast, plain)
    layer = ConvMeanPool(3, 4, 3).double()
    assert torch.allclose(layer(x), F.avg_pool2d(layer.conv(x), 2), atol=1e-12)
