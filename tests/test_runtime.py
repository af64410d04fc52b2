"""Runtime options (bf16 autocast, torch.compile, channels_last) change speed, never the statistics of the results."""

import copy
import itertools
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ncsn import (
    CondRefineNetDilated,
    ModelConfig,
    NCSNv2,
    ScoreModel,
    annealed_langevin,
    autotune,
    build_score_model,
    dsm_loss,
    geometric_sigmas,
    runtime,
    uniform_init,
)
from ncsn.cli import main
from ncsn.config import load_config
from ncsn.data import prepare_batch
from ncsn.losses import Objective
from ncsn.errors import InputError
from ncsn.generate import generate
from ncsn.runtime import (
    RuntimeOptions,
    autocast,
    autotunes,
    cudnn_benchmark,
    prepare_model,
    score_function,
    wants_channels_last,
)
from ncsn.samplers import SAMPLERS, SamplerSettings, initial_state, run_sampler
from ncsn.training import EpochBatches, make_optimizer, train, train_step

SIGMAS = geometric_sigmas(1.0, 0.01, 10)
MU, S = 0.4, 0.2
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs these)")


class GaussianScoreNet(nn.Module):
    """The exact perturbed score of N(MU, S^2 I) behind a 1x1 convolution, so autocast and compile really apply."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x, sigma):
        return -self.conv(x - MU) / (S**2 + sigma.view(-1, 1, 1, 1) ** 2)


def chain_stats(options: RuntimeOptions, device="cpu", n=2000, steps=100):
    model = GaussianScoreNet().to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = uniform_init((n, 1, 4, 4), generator=gen, device=device)
    out = annealed_langevin(score_function(model, options, device), x0, SIGMAS.to(device), steps, 2e-5, generator=gen)
    assert out.dtype == torch.float32
    return out.mean().item(), out.var().item()


@pytest.fixture(scope="module")
def fp32_stats():
    return chain_stats(RuntimeOptions())


def test_fp32_eager_chain_recovers_the_gaussian(fp32_stats):
    mean, var = fp32_stats
    assert abs(mean - MU) < 0.02 and var == pytest.approx(S**2, rel=0.10)


def test_bf16_chain_has_the_fp32_mean_and_variance(fp32_stats):
    mean, var = chain_stats(RuntimeOptions(precision="bf16"))
    assert mean == pytest.approx(fp32_stats[0], abs=5e-3)
    assert var == pytest.approx(fp32_stats[1], rel=0.03)


@pytest.mark.slow
def test_compiled_chain_has_the_fp32_mean_and_variance(fp32_stats):
    """The suite's one real inductor compile on the CPU (codegen numerics; ~30 s cold, cached by inductor after).
    Tests of the compile plumbing use the aot_eager backend instead (``traced_by_aot_eager``)."""
    mean, var = chain_stats(RuntimeOptions(compile=True), steps=20)
    ref_mean, ref_var = chain_stats(RuntimeOptions(), steps=20)
    assert mean == pytest.approx(ref_mean, abs=1e-4) and var == pytest.approx(ref_var, rel=1e-3)


def test_autocast_is_a_noop_for_fp32_and_bf16_where_asked():
    with autocast(RuntimeOptions(precision="fp32"), "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(RuntimeOptions(precision="bf16"), "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision"):
        RuntimeOptions(precision="fp16")
    with pytest.raises(ValueError, match="resolve"):  # "auto" is decided before the network runs, never guessed
        autocast(RuntimeOptions(), "cpu")


def test_channels_last_network_matches_contiguous_outputs_and_gradients():
    torch.manual_seed(0)
    net = CondRefineNetDilated(3, 8, 10)
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([0, 4, 9])

    def run(model, inp):
        model.zero_grad()
        out = model(inp, y)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out, grads = run(net, x)
    prepare_model(net, RuntimeOptions(channels_last=True), "cpu")
    assert net.begin_conv.weight.is_contiguous(memory_format=torch.channels_last)
    out_cl, grads_cl = run(net, x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out_cl, out, atol=1e-5, rtol=1e-4)
    assert all((a - b).norm() <= 1e-4 * b.norm() for a, b in zip(grads_cl, grads))  # float32 rounding


def trial_clock(monkeypatch, fp32: float, bf16: float) -> None:
    """The trial's clock, as if each fp32 iteration took ``fp32`` s and each bf16 one ``bf16`` s (``timed_trial``
    times them alternately, fp32 first): the network really runs in the trial, and the verdict is fixed."""
    ticks = itertools.accumulate(itertools.cycle([0.0, fp32, 0.0, bf16]))
    monkeypatch.setattr(autotune, "perf_counter", lambda: next(ticks))


@pytest.mark.parametrize("cpu, seconds, precision", [
    ("avx2", None, "fp32"),  # precision auto: fp32 at once
    ("native_bf16", {"fp32": 2.0, "bf16": 3.0}, "fp32"),  # or a trial of the network, either way
    ("native_bf16", {"fp32": 2.0, "bf16": 1.0}, "bf16"),
], ids=["avx2", "native bf16, trial picks fp32", "native bf16, trial picks bf16"])
def test_channels_last_left_to_the_library_is_for_cpu_sampling_of_larger_images(fake_cpu, cpu, seconds, precision,
                                                                                 tmp_path, monkeypatch):
    fake_cpu(cpu)
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path))
    if seconds:
        trial_clock(monkeypatch, **seconds)
    auto, off = RuntimeOptions(), RuntimeOptions(channels_last=False)
    assert wants_channels_last(auto, "cpu", 28, training=False) and not wants_channels_last(auto, "cpu", 8, False)
    assert not wants_channels_last(auto, "cpu", 32, training=True) and not wants_channels_last(off, "cpu", 32, False)
    assert wants_channels_last(RuntimeOptions(channels_last=True), "cpu", 8, training=True)
    torch.manual_seed(0)
    net = CondRefineNetDilated(1, 4, 10).eval()
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 9])
    with torch.no_grad():
        plain = net(x, y)
        fast = score_function(net, auto, "cpu")(x, y)
    assert net.begin_conv.weight.is_contiguous(memory_format=torch.channels_last)  # settled at the first call
    if seconds:  # a real trial of the raw v1 network (fed level indices) at the sampled shape and layout
        (key, entry), = json.loads((tmp_path / "autotune.json").read_text())["entries"].items()
        assert key == runtime.trial_key(net, (2, 1, 16, 16), training=False, channels_last=True)
        assert (entry["precision"], entry["seconds"]) == (precision, seconds)
    else:
        assert not (tmp_path / "autotune.json").exists()
    assert fast.dtype == (torch.float32 if precision == "fp32" else torch.bfloat16)
    tolerance = 1e-5 if precision == "fp32" else 0.1  # bf16: the rounding of its activations (here 4 %)
    assert (fast.float() - plain).norm() <= tolerance * plain.norm()


def test_score_function_refuses_a_raw_unconditional_network_in_one_line():
    with pytest.raises(InputError, match=r"^NCSNv2 is unconditional: net\(x\) is not a score; sample from "
                                         r"ScoreModel\(net, sigmas, scale_by_sigma=True\)"):
        score_function(NCSNv2(1, 4), RuntimeOptions(), "cpu")
    wrapped = score_function(ScoreModel(NCSNv2(1, 4), SIGMAS, scale_by_sigma=True), RuntimeOptions(), "cpu")
    assert wrapped.conditioning == "sigma" and not wrapped.level_conditioned


@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_a_network_with_bf16_weights_takes_the_samplers_float32_x_and_answers_in_float32(arch, one_thread):
    torch.manual_seed(0)
    v1, ladder = arch == "v1", geometric_sigmas(1.0, 0.1, 3)
    model = ScoreModel(CondRefineNetDilated(1, 4, 3) if v1 else NCSNv2(1, 4), ladder, scale_by_sigma=not v1)
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    assert low.sigmas.dtype == torch.float32 and torch.equal(low.sigmas, ladder)  # the ladder stays float32
    model.load_state_dict(low.state_dict())  # the same (rounded) weights in float32: the reference
    x, sigma = torch.rand(3, 1, 8, 8), ladder
    with torch.no_grad():
        out, ref = low(x, sigma), model(x, sigma)
    assert out.dtype == torch.float32 and (out - ref).norm() <= 0.1 * ref.norm()  # bf16 activations: 1-4 % off
    gen = torch.Generator()
    for name in ("ald", "pc") if v1 else SAMPLERS:  # a v1 network suits the samplers on its ladder
        settings = SamplerSettings.from_flat(name, n_steps_each=1, n_steps=None if v1 else 3, rtol=0.1, atol=0.1, denoise=True)
        x0 = initial_state(settings, (2, 1, 8, 8), ladder, generator=gen.manual_seed(1))
        got, want = (run_sampler(m, x0, ladder, settings, generator=gen.manual_seed(2)) for m in (low, model))
        assert got.dtype == torch.float32 and (got - want).norm() <= 0.1 * want.norm(), name
    noise = torch.randn(x.shape)
    losses = [dsm_loss(m, x, ladder, torch.tensor([0, 1, 2]), noise=noise).mean() for m in (low, model)]
    assert losses[0].dtype == torch.float32 and losses[0].item() == pytest.approx(losses[1].item(), rel=0.03)
    losses[0].backward()  # and it trains: float32 losses, gradients in the weights' dtype
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in low.parameters())


def test_generate_with_channels_last_gives_the_same_samples():
    torch.manual_seed(0)
    net = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS).eval()
    settings = load_config("digits", ["sampling.n_steps_each=2", "sampling.step_lr=2e-5"]).sampling
    plain = generate(net, SIGMAS, 4, (1, 8, 8), settings, seed=3)[1]
    fast = generate(net, SIGMAS, 4, (1, 8, 8), settings, seed=3,
                    runtime=RuntimeOptions(precision="fp32", channels_last=True))[1]
    assert torch.allclose(plain, fast, atol=1e-5)


def traced_by_aot_eager(monkeypatch) -> list:
    """torch.compile with the aot_eager backend (dynamo and AOTAutograd's forward and backward graphs, no inductor
    codegen): for tests of the compile plumbing, seconds instead of a C++ build. Returns the graphs it compiled."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs, real_compile, aot_eager = [], torch.compile, lookup_backend("aot_eager")

    def recording(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real_compile(model, mode=mode, backend=recording))
    return graphs


@pytest.mark.parametrize("options", [RuntimeOptions(precision="bf16", channels_last=True), RuntimeOptions(compile=True)])
def test_train_step_with_options_lowers_a_finite_loss(options, monkeypatch):
    config = load_config("digits")
    torch.manual_seed(0)
    model = GaussianScoreNet()
    optimizer = make_optimizer(model, config.training)
    graphs = traced_by_aot_eager(monkeypatch) if options.compile else []
    net = prepare_model(model, options, "cpu")
    before = model.conv.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = MU + S * torch.randn(64, 1, 4, 4, generator=gen)
        sigma = SIGMAS[torch.randint(0, 10, (64,), generator=gen)]
        noise = torch.randn(x.shape, generator=gen)
        loss = train_step(net, model, optimizer, x, sigma, noise, Objective("ladder", SIGMAS), config.training,
                          runtime=options)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert not torch.equal(model.conv.weight, before)
    assert bool(graphs) == options.compile  # the compiled path really ran the steps


def test_train_and_sample_commands_take_the_options(tmp_path):
    sets = ["model.ngf=4", "training.n_iters=2", "training.batch_size=16", "training.sample_n=4",
            "sampling.n_steps_each=1", "training.ema=false"]
    config = load_config("digits", sets)
    result = train(config, tmp_path / "run", device="cpu", progress=False,
                   runtime=RuntimeOptions(precision="bf16", channels_last=True))
    assert result.step == 2 and math.isfinite(result.last_loss)
    out = tmp_path / "samples"
    res = CliRunner().invoke(main, ["sample", "--workdir", str(tmp_path / "run"), "--n", "4", "--batch-size", "4",
                                    "--steps-each", "1", "--precision", "bf16", "--channels-last", "--out", str(out),
                                    "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "sample_config.json").read_text())
    assert (meta["precision"], meta["channels_last"], meta["compile"]) == ("bf16", True, False)
    bad = CliRunner().invoke(main, ["sample", "--workdir", str(tmp_path / "run"), "--precision", "fp16", "--out",
                                    str(out)])
    assert bad.exit_code == 2 and "fp16" in bad.output


def test_commands_default_to_auto_and_record_what_it_chose(tmp_path, fake_cpu):
    fake_cpu("avx2")
    for command in ("train", "sample", "inpaint", "eval", "demo"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert "[auto|fp32|bf16]" in help_text and "default: auto" in help_text, command
    sets = ["model.ngf=4", "training.n_iters=1", "training.batch_size=16", "training.sample_n=4",
            "sampling.n_steps_each=1", "training.ema=false"]
    train(load_config("digits", sets), tmp_path / "run", device="cpu", progress=False)
    record = json.loads((tmp_path / "run" / "runtime.json").read_text())
    assert (record["precision"], record["requested"], record["compile"]) == ("fp32", "auto", False)
    out = tmp_path / "samples"
    res = CliRunner().invoke(main, ["sample", "--workdir", str(tmp_path / "run"), "--n", "4", "--batch-size", "4",
                                    "--steps-each", "1", "--out", str(out), "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "sample_config.json").read_text())
    assert (meta["precision"], meta["channels_last"]) == ("fp32", False)  # decided, not "auto"/None: 8x8 is NCHW


def test_training_on_a_native_bf16_cpu_times_its_own_network_and_records_the_choice(tmp_path, fake_cpu, monkeypatch,
                                                                                   unconditional_arch):
    """The training path's trial (``settle_run``) runs on the run's network as it is called: here an unconditional
    one, net(x) inside its ScoreModel (a v1 network's training trial: test_autotune.py)."""
    fake_cpu("native_bf16")
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    sets = [f"model.arch={unconditional_arch}", "model.scale_by_sigma=true", "model.ngf=4", "training.n_iters=1",
            "training.batch_size=16", "training.sample_n=4", "sampling.n_steps_each=1", "training.ema=false"]
    train(load_config("digits", sets), tmp_path / "run", device="cpu", progress=False)
    record = json.loads((tmp_path / "run" / "runtime.json").read_text())
    entries = json.loads((tmp_path / "cache" / "autotune.json").read_text())["entries"]
    (key, entry), = ((k, e) for k, e in entries.items() if k.startswith("train "))
    assert key.startswith("train TinyUnconditional ") and " 16x1x8x8 nchw " in key  # its network, batch and layout
    assert (record["precision"], record["requested"]) == (entry["precision"], "auto")
    assert record["reason"].startswith(f"timed trial ({key})") and record["machine"] == autotune.machine_fingerprint()


def test_cudnn_autotuning_is_a_scoped_choice_of_cuda_training(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored afterwards
    net = nn.Identity()  # prepare_model never moves a model, so this runs without a GPU
    for device, sampling in (("cpu", False), ("cuda", True), ("cuda", False)):
        prepare_model(net, RuntimeOptions(), device, sampling=sampling)
    assert torch.backends.cudnn.benchmark is False  # preparing a model leaves the process's switches alone
    assert autotunes("cuda") and autotunes(torch.device("cuda", 1)) and not autotunes("cpu")
    with cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
        with cudnn_benchmark(False):
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False


# CUDA paths: run by benchmarks/gpu_check.sh on a GPU machine, skipped elsewhere.


@pytest.mark.cuda
@cuda
def test_cuda_train_step_does_not_wait_for_the_device():
    t = load_config("cifar10").training
    model = build_score_model(ModelConfig(in_channels=3, ngf=16)).cuda()
    optimizer = make_optimizer(model, t)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    batches = EpochBatches(64, 16, 0, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)

    def step(k):
        x = prepare_batch(images[batches.indices(k)], gen, True, True)
        labels = torch.randint(0, 10, (16,), generator=gen, device="cuda")
        return train_step(model, model, optimizer, x, labels, torch.randn(x.shape, generator=gen, device="cuda"),
                          model.sigmas, t)

    step(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(k) for k in (1, 2, 3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(loss) for loss in losses)


@pytest.mark.cuda
@cuda
def test_cuda_bf16_compiled_graph_chain_has_the_fp32_statistics():
    ref = chain_stats(RuntimeOptions(), device="cuda", n=4000)
    for options in (RuntimeOptions(precision="bf16"), RuntimeOptions(compile=True, precision="bf16")):
        mean, var = chain_stats(options, device="cuda", n=4000)
        assert mean == pytest.approx(ref[0], abs=5e-3) and var == pytest.approx(ref[1], rel=0.03), options


@pytest.mark.cuda
@cuda
def test_cuda_network_bf16_channels_last_is_close_to_fp32():
    torch.manual_seed(0)
    net = CondRefineNetDilated(3, 32, 10).cuda().eval()
    x, y = torch.rand(8, 3, 32, 32, device="cuda"), torch.arange(8, device="cuda") % 10
    with torch.no_grad():
        ref = net(x, y)
        fast = score_function(net, RuntimeOptions(precision="bf16", channels_last=True), "cuda")(x, y).float()
    assert (fast - ref).norm() / ref.norm() < 0.03


@pytest.mark.cuda
@cuda
def test_cuda_compiled_bf16_training_step_lowers_the_loss():
    config = load_config("cifar10", ["model.ngf=16"])
    options = RuntimeOptions(compile=True, precision="bf16", channels_last=True)
    torch.manual_seed(0)
    model = build_score_model(ModelConfig(in_channels=3, ngf=16)).cuda()
    prepare_model(model, RuntimeOptions(channels_last=True), "cuda")
    optimizer = make_optimizer(model, config.training)
    net = prepare_model(model, options, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(32, 3, 32, 32, generator=gen, device="cuda")
    losses = []
    for _ in range(20):
        labels = torch.randint(0, 10, (32,), generator=gen, device="cuda")
        noise = torch.randn(x.shape, generator=gen, device="cuda")
        losses.append(train_step(net, model, optimizer, x, labels, noise, model.sigmas, config.training, runtime=options))
    losses = torch.stack(losses).tolist()
    assert all(math.isfinite(v) for v in losses) and sum(losses[-5:]) < sum(losses[:5])
