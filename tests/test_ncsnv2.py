import pytest
import torch
import torch.nn.functional as F

from ncsn import (
    CondRefineNetDilated,
    InstanceNormPlusPlus,
    ModelConfig,
    NCSNv2,
    NCSNv2Deeper,
    NCSNv2Deepest,
    ScoreModel,
    build_score_model,
)
from ncsn.nets.layers import CRPBlock
from ncsn.official import official_state_dict
from ncsn.score_model import ARCHITECTURES

NETS = {"ncsnv2": NCSNv2, "ncsnv2_deeper": NCSNv2Deeper, "ncsnv2_deepest": NCSNv2Deepest}
REFERENCES = {"ncsnv2": "ncsnv2_cifar10_state_dict.txt", "ncsnv2_deeper": "ncsnv2_deeper_lsun_state_dict.txt",
              "ncsnv2_deepest": "ncsnv2_deepest_ffhq_state_dict.txt"}


def read_reference(path):
    """{name without 'module.': shape} from a listing of an official state_dict."""
    ref = {}
    for line in path.read_text().splitlines():
        name, shape = line.split(" ", 1)
        ref[name.removeprefix("module.")] = [int(v) for v in shape.strip("[]").split(",")]
    return ref


def test_exact_parameter_counts_at_ngf_128():
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in cls(3, 128).parameters()) for name, cls in NETS.items()}
    assert counts == {"ncsnv2": 29_694_083, "ncsnv2_deeper": 83_445_379, "ncsnv2_deepest": 94_132_611}


@pytest.mark.parametrize("arch", sorted(NETS))
def test_state_dict_names_and_shapes_are_the_official_ones(arch, data_dir):
    ref = read_reference(data_dir / REFERENCES[arch])
    with torch.device("meta"):
        model = ScoreModel(NETS[arch](3, 128), torch.empty(ref["sigmas"][0]), scale_by_sigma=True)
    mine = {k: list(v.shape) for k, v in official_state_dict(model, prefix="").items()}
    assert mine == ref
    assert len(ref) == {"ncsnv2": 154, "ncsnv2_deeper": 192, "ncsnv2_deepest": 230}[arch]
    assert not any(k.startswith("refine") and "norm" in k for k in mine)  # no norms inside the refine blocks


def test_networks_say_how_they_are_conditioned():
    assert CondRefineNetDilated.level_conditioned is True
    assert all(cls.level_conditioned is False for cls in NETS.values())
    assert {name: ARCHITECTURES[name] for name in NETS} == NETS


def test_instance_norm_plus_plus_against_direct_formula_and_init():
    torch.manual_seed(0)
    c = 5
    norm = InstanceNormPlusPlus(c).double()
    assert torch.all(norm.beta == 0) and [k for k in norm.state_dict()] == ["alpha", "gamma", "beta"]
    big = InstanceNormPlusPlus(4096)
    for p in (big.alpha, big.gamma):
        assert p.mean().item() == pytest.approx(1.0, abs=2e-3) and p.std().item() == pytest.approx(0.02, rel=0.05)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    x = torch.randn(3, c, 6, 7, dtype=torch.float64) * 2 + 1
    mean = x.mean(dim=(2, 3), keepdim=True)
    xhat = (x - mean) / torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5)
    mu = mean.flatten(1)
    mu_tilde = (mu - mu.mean(1, keepdim=True)) / torch.sqrt(mu.var(1, keepdim=True) + 1e-5)  # unbiased over channels
    g, a, b = (p.view(1, c, 1, 1) for p in (norm.gamma, norm.alpha, norm.beta))
    expected = g * (xhat + a * mu_tilde[..., None, None]) + b
    assert torch.allclose(norm(x), expected, atol=1e-10)
    assert torch.allclose(norm(x, activation=True), F.elu(expected), atol=1e-10)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: norm(t, activation=True), (xl,))
    x.requires_grad_()
    grads = torch.autograd.grad(norm(x).square().sum(), [norm.gamma, norm.alpha, norm.beta])
    direct = torch.autograd.grad(expected.square().sum(), [norm.gamma, norm.alpha, norm.beta])
    assert all(torch.allclose(u, v) for u, v in zip(grads, direct))


def test_chained_residual_pooling_max_without_norms_is_the_direct_map():
    torch.manual_seed(0)
    block = CRPBlock(4, 2, norm=None, pool="max").double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    h = F.elu(x)
    path, expected = h, h
    for conv in block.convs:
        path = conv(torch.nn.MaxPool2d(5, stride=1, padding=2)(path))
        expected = expected + path
    assert torch.allclose(block(x, None), expected) and block.norms is None
    with pytest.raises(ValueError, match="pool"):
        CRPBlock(4, 2, None, pool="median")


def test_outputs_match_the_official_code(data_dir):
    """Weights and outputs made by the official NCSNv2 code (tiny widths, 16 px, raw weights here)."""
    expected = torch.load(data_dir / "official_ncsnv2_tiny_outputs.pt", weights_only=True)
    for arch, cls in NETS.items():
        state = torch.load(data_dir / f"official_{arch}_tiny.pth", weights_only=True)
        weights = {k.removeprefix("module."): v for k, v in state[0].items()}
        sigmas = weights.pop("sigmas")
        net = cls(3, weights["begin_conv.weight"].shape[0])
        net.load_state_dict(weights)
        e = expected[arch]
        with torch.no_grad():
            out = net(e["x"]) / sigmas[e["labels"]].view(-1, 1, 1, 1)
        assert torch.allclose(out, e["raw"], rtol=1e-4, atol=1e-4 * e["raw"].abs().max().item()), arch


def test_input_is_fed_as_two_x_minus_one():
    net = NCSNv2(1, 4)
    x = torch.rand(2, 1, 8, 8)
    seen = {}
    net.res1[0].normalize1.register_forward_pre_hook(lambda module, args: seen.setdefault("h", args[0]))
    net(x)
    with torch.no_grad():
        assert torch.allclose(seen["h"], net.begin_conv(2 * x - 1))


@pytest.mark.parametrize("arch,size,bad", [("ncsnv2", 28, 9), ("ncsnv2_deeper", 16, 18), ("ncsnv2_deepest", 24, 20)])
def test_networks_keep_the_image_shape_and_refuse_sizes_they_cannot_halve(arch, size, bad):
    net = NETS[arch](3, 2)
    x = torch.rand(2, 3, size, size)
    out = net(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="even" if arch == "ncsnv2" else "multiples of"):
        net(torch.rand(1, 3, bad, bad))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(1, 1, size, size))


def test_build_score_model_makes_sigma_scaled_v2_models():
    torch.manual_seed(0)
    for arch, cls in NETS.items():
        model = build_score_model(ModelConfig(arch=arch, in_channels=1, ngf=2, sigma_max=5.0, num_scales=4))
        assert type(model.net) is cls and model.scale_by_sigma and model.net.ngf == 2
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        direct = model.net(x) / model.sigmas[[0, 3]].view(-1, 1, 1, 1)
        assert torch.allclose(model.at_levels(x, torch.tensor([0, 3])), direct)
        off_ladder = torch.tensor([0.7, 0.003])  # any sigma > 0 is fine for an unconditional network
        assert torch.allclose(model(x, off_ladder), model.net(x) / off_ladder.view(-1, 1, 1, 1))


def test_a_v2_network_trains_and_reloads_from_its_run_folder(tmp_path, one_thread):
    from ncsn.model_loading import load_score_model

    from .conftest import train_tiny

    train_tiny(tmp_path, ["model.arch=ncsnv2", "model.ngf=4", "training.n_iters=3", "training.ema=true",
                          "training.batch_size=16", "training.sample_every=100", "training.sample_n=4",
                          "sampling.n_steps_each=1", "training.eval_every=100"])
    model, config, info = load_score_model(tmp_path)
    assert type(model.net) is NCSNv2 and config.model.arch == "ncsnv2" and info == {"weights": "ema", "step": 3}
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_00000003.pt", weights_only=True)
    assert all(torch.equal(v, state["ema"][k]) for k, v in model.state_dict().items())
