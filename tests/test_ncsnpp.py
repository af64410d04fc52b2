"""NCSN++: FIR resampling and embeddings against direct formulas, exact counts and official names, pinned outputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from ncsn import ModelConfig, NCSNpp, ScoreModel, build_score_model
from ncsn.config import ConfigError, load_config
from ncsn.nets.fir import FIRDownConv2d, downsample_2d, fir_kernel_2d, upfirdn2d, upsample_2d
from ncsn.nets.ncsnpp_layers import GaussianFourierProjection, ddpm_init_, positional_embedding
from ncsn.score_model import ARCHITECTURES, NCSNppConfig

STYLE_256 = dict(ch_mult=[1, 1, 2, 2, 2, 2, 2], num_res_blocks=2, dropout=0.0, progressive="output_skip",
                 progressive_input="input_skip")
VARIANTS = {  # name: (ngf, settings, parameters, state_dict entries with sigmas)
    "cifar10_continuous": (128, dict(image_size=32), 62_758_915, 572),
    "cifar10_deep_continuous": (128, dict(image_size=32, num_res_blocks=8), 107_587_075, 964),
    "256px_continuous": (128, dict(image_size=256, **STYLE_256), 65_574_549, 646),
    "ffhq1024_continuous": (16, dict(image_size=1024, ch_mult=[1, 2, 4, 8, 16, 32, 32, 32], num_res_blocks=1,
                                     dropout=0.0, progressive="output_skip", progressive_input="input_skip"),
                            105_785_896, 554),
}
TINY = {  # the pinned variants: every layer active (init_scale 1), both pyramid styles
    "residual": dict(image_size=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0,
                     init_scale=1.0),
    "skip": dict(image_size=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0, init_scale=1.0,
                 progressive="output_skip", progressive_input="input_skip"),
}


def model_config(ngf, settings, num_scales=1000, sigma_max=50.0):
    return ModelConfig(arch="ncsnpp", ngf=ngf, num_scales=num_scales, sigma_max=sigma_max, scale_by_sigma=True,
                       ncsnpp=NCSNppConfig(**settings))


def read_reference(path):
    """[(name without 'module.', shape)] from a listing of an official state_dict, in its order."""
    out = []
    for line in path.read_text().splitlines():
        name, shape = line.split(" ", 1)
        out.append((name.removeprefix("module."), [int(v) for v in shape.strip("[]").split(",")]))
    return out


def official_names(model: ScoreModel):
    """The wrapper's state_dict in the official flat names (sigmas, all_modules.N....)."""
    return [(k.removeprefix("net."), list(v.shape)) for k, v in model.state_dict().items()]


# FIR resampling, with the kernel [1, 3, 3, 1], against its closed forms (zeros outside the image)
def _at(x, i, j):
    return x[..., i, j] if 0 <= i < x.shape[-2] and 0 <= j < x.shape[-1] else torch.zeros_like(x[..., 0, 0])


def test_fir_upsample_is_the_separable_3_1_interpolation():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    taps = {0: ((-1, 0.25), (0, 0.75)), 1: ((0, 0.75), (1, 0.25))}  # y[2m] = (x[m-1] + 3x[m])/4, y[2m+1] = ...
    expected = torch.zeros(2, 3, 10, 12, dtype=torch.float64)
    for i in range(10):
        for j in range(12):
            for di, wi in taps[i % 2]:
                for dj, wj in taps[j % 2]:
                    expected[..., i, j] += wi * wj * _at(x, i // 2 + di, j // 2 + dj)
    assert torch.allclose(upsample_2d(x), expected, atol=1e-12)


def test_fir_downsample_is_the_separable_1_3_3_1_over_8_average():
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    k = [1 / 8, 3 / 8, 3 / 8, 1 / 8]
    expected = torch.zeros(2, 3, 3, 4, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            for a in range(4):
                for b in range(4):
                    expected[..., i, j] += k[a] * k[b] * _at(x, 2 * i - 1 + a, 2 * j - 1 + b)
    assert torch.allclose(downsample_2d(x), expected, atol=1e-12)
    assert torch.allclose(downsample_2d(torch.ones(1, 1, 8, 8))[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


def test_fir_down_conv_equals_one_strided_conv_with_the_composed_kernel():
    conv = FIRDownConv2d(2, 3).double()
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    k = fir_kernel_2d([1, 3, 3, 1], dtype=torch.float64)
    composed = torch.zeros(3, 2, 6, 6, dtype=torch.float64)  # full convolution of the blur and the 3x3 weight
    for p in range(3):
        for q in range(3):
            composed[:, :, p:p + 4, q:q + 4] += conv.weight[:, :, p:p + 1, q:q + 1] * k
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (2, 2, 2, 2)), composed, conv.bias, stride=2)
    assert torch.allclose(conv(x), expected, atol=1e-10)


def test_upfirdn2d_up_and_down_with_gradients():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    k = fir_kernel_2d([1, 2, 1], dtype=torch.float64)
    assert upfirdn2d(x, k, up=3, down=2, pad=(1, 1)).shape == (1, 2, 6, 6)
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, k, up=2, down=1, pad=(1, 0)), (x,))


# embeddings and initialisation
def test_fourier_features_of_log_sigma_and_their_fixed_frequencies():
    proj = GaussianFourierProjection(embedding_size=4, scale=16.0).double()
    v = torch.tensor([-2.0, 0.5, 3.9], dtype=torch.float64)
    w = proj.W.tolist()
    expected = [[math.sin(2 * math.pi * a * b) for b in w] + [math.cos(2 * math.pi * a * b) for b in w] for a in v]
    assert torch.allclose(proj(v), torch.tensor(expected, dtype=torch.float64), atol=1e-9)
    assert not proj.W.requires_grad and list(proj.state_dict()) == ["W"]
    big = GaussianFourierProjection(20_000, 16.0)
    assert big.W.std().item() == pytest.approx(16.0, rel=0.03) and abs(big.W.mean().item()) < 0.5


def test_positional_embedding_against_the_formula():
    steps = torch.tensor([0, 3, 999])
    dim = 7  # odd: zero-padded
    half = dim // 2
    freqs = [math.exp(-math.log(10_000) * i / (half - 1)) for i in range(half)]
    expected = [[math.sin(s * f) for f in freqs] + [math.cos(s * f) for f in freqs] + [0.0] for s in steps.tolist()]
    assert torch.allclose(positional_embedding(steps, dim), torch.tensor(expected), atol=1e-5)


def test_ddpm_init_is_uniform_at_the_fan_average_variance():
    w = ddpm_init_(torch.empty(96, 64, 3, 3), scale=2.0)
    fan_avg = (96 + 64) * 9 / 2
    assert w.abs().max().item() <= math.sqrt(3 * 2.0 / fan_avg)
    assert w.var().item() == pytest.approx(2.0 / fan_avg, rel=0.03)
    assert ddpm_init_(torch.empty(64, 64), scale=0.0).abs().max().item() <= math.sqrt(3e-10 / 64)


# the variants: counts, names, conditioning
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_exact_parameter_and_state_dict_counts(name):
    ngf, settings, params, entries = VARIANTS[name]
    with torch.device("meta"):
        model = build_score_model(model_config(ngf, settings))
    assert sum(p.numel() for p in model.parameters()) == params  # the Fourier W included
    assert len(model.state_dict()) == entries  # sigmas included


@pytest.mark.parametrize("name,reference", [("cifar10_continuous", "ncsnpp_cifar10_continuous_state_dict.txt"),
                                            ("256px_continuous", "ncsnpp_ffhq_256_continuous_state_dict.txt")])
def test_state_dict_names_and_shapes_are_the_official_ones(name, reference, data_dir):
    ngf, settings, _, _ = VARIANTS[name]
    ref = read_reference(data_dir / reference)
    with torch.device("meta"):
        model = build_score_model(model_config(ngf, settings, num_scales=ref[0][1][0]))
    assert official_names(model) == ref


def test_discrete_variant_differs_only_in_its_embedding(data_dir):
    ref = read_reference(data_dir / "ncsnpp_cifar10_continuous_state_dict.txt")
    with torch.device("meta"):
        model = build_score_model(model_config(128, dict(image_size=32, embedding="positional")))
    shifted = []  # the official discrete layout: no Fourier W, every later module one index down, nf in
    for name, shape in ref:
        if name == "all_modules.0.W":
            continue
        if name.startswith("all_modules."):
            index, rest = name.removeprefix("all_modules.").split(".", 1)
            name = f"all_modules.{int(index) - 1}.{rest}"
        shifted.append((name, [512, 128] if name == "all_modules.0.weight" else shape))  # embeds nf, not 2 nf
    assert official_names(model) == shifted
    assert model.level_conditioned and model.net.conditioning == "level"


def test_continuous_network_is_sigma_conditioned_and_the_wrapper_divides():
    torch.manual_seed(0)
    model = build_score_model(model_config(16, TINY["residual"], num_scales=10)).eval()
    assert NCSNpp.conditioning == "sigma" and ARCHITECTURES["ncsnpp"] is NCSNpp and not model.level_conditioned
    x = torch.rand(3, 3, 8, 8)
    sigma = torch.tensor([0.013, 1.7, 42.0])  # off any ladder: fine for a sigma-conditioned network
    raw = model.net(x, sigma)
    assert torch.allclose(model(x, sigma), raw / sigma.view(-1, 1, 1, 1), rtol=1e-6, atol=0)
    assert not torch.allclose(model.net(x, sigma.flip(0)), raw)  # the output depends on sigma


def test_fourier_w_is_not_trained():
    torch.manual_seed(0)
    model = build_score_model(model_config(16, TINY["skip"], num_scales=10))
    model(torch.rand(2, 3, 8, 8), torch.tensor([0.1, 3.0])).square().sum().backward()
    w = model.net.all_modules[0].W
    assert w.grad is None and all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", sorted(TINY))
def test_seeded_output_is_pinned(variant, data_dir):
    pinned = torch.load(data_dir / "ncsnpp_tiny_pinned.pt", weights_only=True)[variant]
    torch.manual_seed(0)
    model = build_score_model(model_config(16, TINY[variant], num_scales=10)).eval()
    with torch.no_grad():
        out = model(pinned["x"], pinned["sigma"])
    assert out.abs().max() > 1e-2  # every layer active: not the near-zero output of the default init
    # float32 kernels differ between CPUs (AVX2, AVX-512, AMX) in summation order: through a deep network at
    # sigma = 0.02 (scores ~ 1/sigma) that moves outputs by ~2e-6 of their largest value; a change to the network
    # itself moves them by far more
    scale = pinned["score"].abs().max()
    assert (out - pinned["score"]).abs().max() <= 2e-5 * scale


OFFICIAL_TINY = dict(image_size=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0)


@pytest.mark.parametrize("variant,settings", [
    ("residual", OFFICIAL_TINY),
    ("skip", dict(OFFICIAL_TINY, progressive="output_skip", progressive_input="input_skip")),
    ("discrete", dict(OFFICIAL_TINY, embedding="positional")),
])
def test_outputs_match_the_official_code(variant, settings, data_dir):
    """Weights and scores made by Score-SDE's own NCSN++ (benchmarks/ncsnpp_vs_official.py --write-tiny)."""
    made = torch.load(data_dir / "ncsnpp_official_tiny.pt", weights_only=True)[variant]
    weights = dict(made["state"])
    ladder = weights.pop("sigmas")
    model = build_score_model(model_config(8, settings, num_scales=len(ladder), sigma_max=50.0)).eval()
    model.net.load_state_dict(weights, strict=True)
    assert torch.allclose(model.sigmas.double(), ladder, rtol=1e-6)
    with torch.no_grad():
        out = model(made["x"], made["sigma"])
    assert (out - made["score"]).abs().max() <= 1e-5 * made["score"].abs().max()


# bad input: one line naming the setting
def test_bad_settings_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="NCSN\\+\\+ progressive: unknown progressive .* 'residual'"):
        NCSNpp(progressive="residual")
    with pytest.raises(ValueError, match="image_size: 36 px cannot be halved 3 times .* multiple of 8"):
        NCSNpp(image_size=36)
    with pytest.raises(ValueError, match="attn_resolutions: \\[12\\] not among"):
        NCSNpp(attn_resolutions=[12])
    with pytest.raises(ValueError, match="nf: every GroupNorm width .* gives \\[144\\]"):
        NCSNpp(nf=36)


@pytest.mark.parametrize("progressive_input", ["none", "input_skip", "residual"])
@pytest.mark.parametrize("combine", ["sum", "cat"])
def test_width_check_sees_every_group_norm_the_network_builds(progressive_input, combine):
    """The validation's channel plan equals the GroupNorm widths of the network it vouches for."""
    from ncsn.nets.ncsnpp import _normed_widths

    for nf, ch_mult, blocks in [(8, [1, 2], 1), (12, [1, 2, 3], 2)]:
        with torch.device("meta"):
            net = NCSNpp(nf=nf, image_size=16, ch_mult=ch_mult, num_res_blocks=blocks, attn_resolutions=[],
                         progressive_input=progressive_input, progressive_combine=combine)
        built = sorted({m.num_channels for m in net.modules() if isinstance(m, torch.nn.GroupNorm)})
        assert built == _normed_widths(nf, ch_mult, blocks, progressive_input, combine)


@pytest.mark.parametrize("override,message", [
    ("model.ncsnpp.progressive=skip", "config key 'model.ncsnpp.progressive': unknown progressive"),
    ("model.ncsnpp.progressive_input=sum", "config key 'model.ncsnpp.progressive_input': unknown progressive input"),
    ("model.ncsnpp.ch_mult=[1,2,2,2,2,2,2]", "config key 'model.ncsnpp.image_size': 32 px cannot be halved 6 times"),
    ("model.ncsnpp.image_size=64", "config key 'model.ncsnpp.image_size': must equal data.image_size \\(32\\)"),
    ("model.ncsnpp.embedding=learned", "config key 'model.ncsnpp.embedding': unknown"),
    ("model.scale_by_sigma=false", "config key 'model.scale_by_sigma': ncsnpp divides its output by sigma"),
])
def test_config_refuses_bad_ncsnpp_settings(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cifar10", ["model.arch=ncsnpp", "model.scale_by_sigma=true", override])


def test_config_resolves_the_image_size_and_keeps_ncsnpp_settings_to_ncsnpp():
    config = load_config("cifar10", ["model.arch=ncsnpp", "model.scale_by_sigma=true", "model.ncsnpp.dropout=0.0"])
    assert config.model.ncsnpp.image_size == 32 and config.model.ncsnpp.dropout == 0.0
    with pytest.raises(ConfigError, match="'model.ncsnpp': applies to model.arch ncsnpp only, not ncsn_v1"):
        load_config("cifar10", ["model.ncsnpp.num_res_blocks=2"])


def test_checkpoint_and_export_rebuild_the_same_ncsnpp(tmp_path):
    """The config stored in a checkpoint (with its model.ncsnpp block) rebuilds the network; export round-trips."""
    import torch.optim

    from ncsn.checkpoint import atomic_save, training_state
    from ncsn.export import export_slim
    from ncsn.model_loading import load_score_model

    config = load_config("digits", ["model.arch=ncsnpp", "model.ngf=8", "model.ncsnpp.ch_mult=[1,2]",
                                    "model.ncsnpp.num_res_blocks=1", "model.ncsnpp.attn_resolutions=[4]",
                                    "model.ncsnpp.progressive=output_skip", "model.ncsnpp.init_scale=1.0"])
    torch.manual_seed(0)
    model = build_score_model(config.model).eval()
    path = atomic_save(training_state(3, config, model, torch.optim.Adam(model.parameters())), tmp_path / "c.pt")
    x, sigma = torch.rand(2, 1, 8, 8), torch.tensor([0.07, 1.9])
    with torch.no_grad():
        expected = model(x, sigma)
        for source in (path, export_slim(path, tmp_path / "export")):
            loaded, loaded_config, _ = load_score_model(source)
            assert loaded_config.model == config.model and torch.equal(loaded(x, sigma), expected)


def test_equality_benchmark_shims_the_reference_op_without_building_it(tmp_path, monkeypatch):
    """benchmarks/ncsnpp_vs_official.py takes the reference's native upfirdn2d from its source and never runs the
    module's CUDA build; its configs describe the same networks as the variants above."""
    import pathlib
    import sys

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent.parent / "benchmarks"))
    import ncsnpp_vs_official as bench

    (tmp_path / "op").mkdir()
    (tmp_path / "op" / "upfirdn2d.py").write_text(
        "raise RuntimeError('this would compile CUDA')\n\n"
        "def upfirdn2d_native(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):\n"
        "    return F.pad(input, [pad_x0, pad_x1, pad_y0, pad_y1]) * kernel.sum() + up_x + 10 * down_y\n"
    )
    monkeypatch.setitem(sys.modules, "op", None)  # restored (removed) after the test
    bench.stub_op(tmp_path)
    out = sys.modules["op"].upfirdn2d(torch.ones(1, 1, 2, 2), torch.full((2, 2), 0.5), up=2, down=3, pad=(1, 0))
    assert out.shape == (1, 1, 3, 3) and out[0, 0, 1, 1] == 2 + 2 + 30 and out[0, 0, 0, 0] == 32
    for name, variant in [("cifar10_continuous", "cifar10_continuous"), ("ffhq256", "256px_continuous")]:
        ngf, settings, _, _ = VARIANTS[variant]
        config = bench.ncsn_config(bench.CONFIGS[name])
        assert (config.ngf, config.ncsnpp) == (ngf, model_config(ngf, settings).ncsnpp)


@pytest.mark.parametrize("variant", sorted(TINY))
def test_channels_last_and_bf16_autocast_give_the_same_score(variant):
    torch.manual_seed(0)
    model = build_score_model(model_config(16, TINY[variant], num_scales=10)).eval()
    x, sigma = torch.rand(2, 3, 8, 8), torch.tensor([0.1, 5.0])
    with torch.no_grad():
        expected = model(x, sigma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, sigma)
        model.to(memory_format=torch.channels_last)
        last = model(x.contiguous(memory_format=torch.channels_last), sigma)
    scale = expected.abs().max()
    assert (last - expected).abs().max() <= 1e-5 * scale
    assert half.dtype == torch.bfloat16 and (half.float() - expected).abs().max() <= 0.1 * scale


@pytest.mark.parametrize("variant", sorted(TINY))
def test_torch_compile_traces_the_whole_network_as_one_graph(variant):
    """No graph break (the FIR kernel used to be checked with a tensor-to-float read at every resampling)."""
    model = build_score_model(model_config(8, dict(TINY[variant], dropout=0.1)))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.rand(2, 3, 8, 8), torch.full((2,), 0.5))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
