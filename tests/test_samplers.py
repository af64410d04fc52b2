"""The predictor-corrector, probability-flow ODE and Heun samplers against closed forms and direct implementations."""

import inspect
import math

import pytest
import torch

from ncsn import (
    CondRefineNetDilated,
    ScoreModel,
    SigmaOffLadderError,
    annealed_langevin,
    geometric_sigmas,
    heun_sampler,
    karras_sigmas,
    ode_sampler,
    pc_sampler,
    uniform_init,
)
from ncsn.runtime import RuntimeOptions, score_function
from ncsn.samplers import (DENOISE_DEFAULTS, Counted, SamplerSettings, denoise_for, expected_nfe, run_sampler, schedule,
                           step_sizes, used_settings)
from ncsn.samplers import settings_from

from .conftest import gaussian_score

SIGMAS = geometric_sigmas(1.0, 0.01, 10)
MU, S = 0.4, 0.2


def gen(seed):
    return torch.Generator().manual_seed(seed)


def flow_map(x, sigma_from, sigma_to, mu=MU, s=S):
    """The exact probability-flow map for data N(mu, s^2 I): x - mu scales by sqrt((s^2 + to^2) / (s^2 + from^2))."""
    return mu + (x - mu) * math.sqrt((s**2 + sigma_to**2) / (s**2 + sigma_from**2))


def test_ald_corrector_steps_are_annealed_langevin_steps():
    """alpha_i = eps (sigma_i / sigma_L)^2 = 2 (snr sigma_i)^2 when snr = sqrt(eps / (2 sigma_L^2))."""
    eps = 2e-5
    snr = math.sqrt(eps / (2 * float(SIGMAS[-1]) ** 2))
    assert snr == pytest.approx(0.316, abs=5e-4)  # SPEC §9: 0.316 for NCSN v1
    assert [2 * (snr * float(s)) ** 2 for s in SIGMAS] == pytest.approx(step_sizes(SIGMAS, eps), rel=1e-12)


@pytest.mark.parametrize("network", [False, True])
def test_corrector_only_pc_with_the_ald_corrector_reproduces_annealed_langevin(network, one_thread):
    eps, steps = 2e-5, 5
    snr = math.sqrt(eps / (2 * float(SIGMAS[-1]) ** 2))
    if network:  # a level-conditioned v1 network runs pc on its own ladder
        score = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS).eval()
        shape, steps = (3, 1, 8, 8), 2
    else:
        score, shape = gaussian_score(MU, S, SIGMAS), (64, 1, 4, 4)
    x0 = uniform_init(shape, generator=gen(1))
    ald = annealed_langevin(score, x0, SIGMAS, steps, eps, generator=gen(7))
    info = {}
    pc = pc_sampler(score, x0, SIGMAS, predictor="none", corrector="ald", corrector_steps=steps, snr=snr,
                    denoise=False, generator=gen(7), info=info)
    # the same noise draws and moves; the step sizes differ in their last bits only (eps (s/sL)^2 vs 2 (snr s)^2)
    assert torch.allclose(pc, ald, rtol=0, atol=1e-6)
    assert info["nfe"] == 10 * steps


def direct_reverse_diffusion(score, x, sigmas, generator, denoise):
    """The reverse-diffusion predictor written out: x_mean = x + (s_i^2 - s_{i+1}^2) s, x = x_mean + sqrt(.) z."""
    levels = sigmas.tolist() + [0.0]
    for i in range(len(sigmas)):
        var = levels[i] ** 2 - levels[i + 1] ** 2
        mean = x + var * score(x, torch.full((x.shape[0],), levels[i]))
        x = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator)
    return mean if denoise else x


def direct_euler_maruyama(score, x, sigmas, generator, denoise):
    """Euler-Maruyama of the reverse VE SDE in t = log sigma: dt = log(s_i / s_{i+1}), the last dt repeated."""
    levels = sigmas.tolist()
    dts = [math.log(levels[i] / levels[i + 1]) for i in range(len(levels) - 1)]
    for i, dt in enumerate(dts + dts[-1:]):
        g2 = 2 * levels[i] ** 2 * dt
        mean = x + g2 * score(x, torch.full((x.shape[0],), levels[i]))
        x = mean + math.sqrt(g2) * torch.randn(x.shape, generator=generator)
    return mean if denoise else x


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("predictor, direct", [("reverse_diffusion", direct_reverse_diffusion),
                                               ("euler_maruyama", direct_euler_maruyama)])
def test_predictor_only_pc_equals_a_direct_implementation(predictor, direct, denoise):
    score = gaussian_score(MU, S, SIGMAS)
    sigmas = geometric_sigmas(3.0, 0.01, 30)
    x0 = 3.0 * torch.randn(16, 1, 4, 4, generator=gen(0))
    info = {}
    out = pc_sampler(score, x0, sigmas, predictor=predictor, corrector="none", denoise=denoise, generator=gen(5),
                     info=info)
    assert torch.allclose(out, direct(score, x0, sigmas, gen(5), denoise), atol=1e-5)
    assert info["nfe"] == 30


def test_reverse_diffusion_on_a_gaussian_has_the_variance_of_its_recursion():
    """For N(mu, s^2) the predictor is linear: x_{i+1} - mu = (1 - d_i / (s^2 + s_i^2)) (x_i - mu) + sqrt(d_i) z, so
    the output variance follows v_{i+1} = a_i^2 v_i + d_i exactly; and the chain lands near N(mu, s^2)."""
    sigmas = geometric_sigmas(3.0, 0.01, 200)
    x0 = MU + math.sqrt(S**2 + 9.0) * torch.randn(40_000, 1, 1, 1, generator=gen(2))
    out = pc_sampler(gaussian_score(MU, S, sigmas), x0, sigmas, corrector="none", denoise=False, generator=gen(3))
    levels, var = sigmas.tolist() + [0.0], S**2 + 9.0
    for i in range(len(sigmas)):
        d = levels[i] ** 2 - levels[i + 1] ** 2
        var = (1 - d / (S**2 + levels[i] ** 2)) ** 2 * var + d
    assert out.var().item() == pytest.approx(var, rel=0.03)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert var == pytest.approx(S**2, rel=0.05)


@pytest.mark.parametrize("s_noise", [1.0, 1.3])
def test_ald_noise_scale_follows_the_variance_recursion_of_its_temperature(s_noise):
    """For N(mu, s^2) a Langevin step is linear: x - mu -> (1 - a/v)(x - mu) + sqrt(2a) s_noise z with v = s^2 +
    sigma^2, so the variance follows w -> (1 - a/v)^2 w + 2 a s_noise^2 exactly, whose fixed point s_noise^2 v /
    (1 - a/(2v)) is the level's spread widened by s_noise (temperature s_noise^2)."""
    sigmas, eps, steps = geometric_sigmas(0.5, 0.1, 3), 2e-3, 20
    x0 = MU + 0.1 * torch.randn(40_000, 1, 1, 1, generator=gen(2))
    out = annealed_langevin(gaussian_score(MU, S, sigmas), x0, sigmas, steps, eps, generator=gen(3), s_noise=s_noise)
    var = 0.01
    for sigma, a in zip(sigmas.tolist(), step_sizes(sigmas, eps)):
        for _ in range(steps):
            var = (1 - a / (S**2 + sigma**2)) ** 2 * var + 2 * a * s_noise**2
    assert out.var().item() == pytest.approx(var, rel=0.03)
    assert out.mean().item() == pytest.approx(MU, abs=0.005)
    long = annealed_langevin(gaussian_score(MU, S, sigmas), x0, sigmas[-1:], 2000, eps, generator=gen(4),
                             s_noise=s_noise)
    v = S**2 + float(sigmas[-1]) ** 2
    assert long.var().item() == pytest.approx(s_noise**2 * v / (1 - eps / (2 * v)), rel=0.03)
    if s_noise == 1.0:  # the default is the paper's sampler, draw for draw
        assert torch.equal(out, annealed_langevin(gaussian_score(MU, S, sigmas), x0, sigmas, steps, eps,
                                                  generator=gen(3)))


def test_ald_noise_scale_applies_only_inside_its_sigma_range():
    """With s_min/s_max the temperature is raised only at the levels inside [s_min, s_max]: the variance follows the
    recursion with s_noise there and 1 elsewhere, and a range holding every level is the unbounded sampler."""
    sigmas, eps, steps, s_noise = geometric_sigmas(0.5, 0.1, 3), 2e-3, 20, 1.3  # levels 0.5, 0.224, 0.1
    x0 = MU + 0.1 * torch.randn(40_000, 1, 1, 1, generator=gen(2))
    score = gaussian_score(MU, S, sigmas)
    out = annealed_langevin(score, x0, sigmas, steps, eps, generator=gen(3), s_noise=s_noise, s_max=0.3)
    var = 0.01
    for sigma, a in zip(sigmas.tolist(), step_sizes(sigmas, eps)):
        for _ in range(steps):
            var = (1 - a / (S**2 + sigma**2)) ** 2 * var + 2 * a * (s_noise**2 if sigma <= 0.3 else 1.0)
    assert out.var().item() == pytest.approx(var, rel=0.03)
    top_only = annealed_langevin(score, x0, sigmas, steps, eps, generator=gen(3), s_noise=s_noise, s_min=0.3)
    assert top_only.var().item() < out.var().item()  # the hot top level is forgotten by the cool ones below
    assert torch.equal(annealed_langevin(score, x0, sigmas, steps, eps, generator=gen(3), s_noise=s_noise),
                       annealed_langevin(score, x0, sigmas, steps, eps, generator=gen(3), s_noise=s_noise,
                                         s_min=0.1, s_max=0.5))
    with pytest.raises(ValueError, match="s_min <= s_max"):
        annealed_langevin(score, x0, sigmas, steps, eps, s_noise=s_noise, s_min=0.4, s_max=0.2)


def test_langevin_corrector_step_uses_the_per_example_snr_ratio():
    score = gaussian_score(MU, S, SIGMAS)
    sigmas, snr = torch.tensor([0.5]), 0.16
    x0 = torch.rand(6, 1, 4, 4, generator=gen(0))
    noisy = pc_sampler(score, x0, sigmas, predictor="none", corrector="langevin", snr=snr, denoise=False,
                       generator=gen(4))
    mean = pc_sampler(score, x0, sigmas, predictor="none", corrector="langevin", snr=snr, denoise=True,
                      generator=gen(4))
    z = torch.randn(x0.shape, generator=gen(4))
    s = score(x0, torch.full((6,), 0.5))
    step = 2 * (snr * z.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1)) ** 2
    assert torch.allclose(mean, x0 + step.view(-1, 1, 1, 1) * s, atol=1e-6)
    assert torch.allclose(noisy, mean + (2 * step).sqrt().view(-1, 1, 1, 1) * z, atol=1e-6)


def test_pc_runs_a_v1_network_on_its_ladder_and_refuses_other_schedules(one_thread):
    model = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS).eval()
    x0 = torch.randn(2, 1, 8, 8, generator=gen(0))
    assert torch.isfinite(pc_sampler(model, x0, SIGMAS, generator=gen(1))).all()
    wrapped = score_function(model, RuntimeOptions(), "cpu")
    with pytest.raises(SigmaOffLadderError, match="pc.*10-level ladder.*own ladder.*NCSNv2"):
        pc_sampler(wrapped, x0, geometric_sigmas(1.0, 0.01, 20))


@pytest.mark.parametrize("sampler, kwargs", [(heun_sampler, {}), (ode_sampler, {})])
def test_heun_and_ode_refuse_a_level_conditioned_network_up_front(sampler, kwargs):
    model = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS)
    calls = Counted(model)
    calls.level_conditioned, calls.sigmas = True, model.sigmas
    for score in (model, score_function(model, RuntimeOptions(), "cpu"), calls):
        with pytest.raises(SigmaOffLadderError, match="level-conditioned.*10-level ladder.*pc sampler.*NCSNv2"):
            sampler(score, torch.zeros(1, 1, 8, 8), karras_sigmas(1.0, 0.01, 5), **kwargs)
    assert calls.calls == 0


@pytest.mark.parametrize("n", [1, 5, 18])
def test_heun_spends_2n_minus_1_evaluations(n):
    counted = Counted(gaussian_score(MU, S, SIGMAS))
    info = {}
    heun_sampler(counted, torch.randn(4, 1, 2, 2), karras_sigmas(5.0, 0.01, n), info=info)
    assert info["nfe"] == counted.calls == 2 * n - 1
    info = {}
    heun_sampler(counted, torch.randn(4, 1, 2, 2), karras_sigmas(5.0, 0.01, n, rho=3.0), s_churn=40.0,
                 generator=gen(0), info=info)
    assert info["nfe"] == 2 * n - 1


def test_heun_maps_a_gaussian_to_its_closed_form_with_second_order_error():
    score = gaussian_score(MU, S, SIGMAS)
    x0 = torch.tensor([MU + 3.0]).view(1, 1, 1, 1)
    exact = flow_map(x0, 5.0, 0.0)
    errors = [(heun_sampler(score, x0, karras_sigmas(5.0, 0.01, n)) - exact).abs().item() for n in (10, 20, 40)]
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5  # halving the steps quarters the error
    assert errors[2] < 2e-3
    samples = MU + math.sqrt(S**2 + 25.0) * torch.randn(40_000, 1, 1, 1, generator=gen(1))
    out = heun_sampler(score, samples, karras_sigmas(5.0, 0.01, 35))
    assert out.mean().item() == pytest.approx(MU, abs=0.005)
    assert out.std().item() == pytest.approx(S, rel=0.02)


def test_heun_churn_is_seeded_and_keeps_the_distribution():
    score = gaussian_score(MU, S, SIGMAS)
    sigmas = karras_sigmas(5.0, 0.01, 35)
    x0 = MU + math.sqrt(S**2 + 25.0) * torch.randn(20_000, 1, 1, 1, generator=gen(1))
    churn = {"s_churn": 5.0, "s_min": 0.05, "s_max": 2.0}
    one = heun_sampler(score, x0, sigmas, generator=gen(3), **churn)
    assert torch.equal(one, heun_sampler(score, x0, sigmas, generator=gen(3), **churn))
    assert not torch.allclose(one, heun_sampler(score, x0, sigmas, generator=gen(4), **churn))
    assert torch.equal(heun_sampler(score, x0, sigmas, generator=gen(3)), heun_sampler(score, x0, sigmas))
    assert one.mean().item() == pytest.approx(MU, abs=0.01)
    assert one.std().item() == pytest.approx(S, rel=0.03)


def test_ode_maps_a_point_by_the_closed_form_within_its_tolerance():
    score = gaussian_score(MU, S, SIGMAS)
    x0 = torch.tensor([MU - 4.0, MU + 1.0, MU + 9.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    exact = flow_map(x0, 5.0, 0.01)
    found = {}
    for tol in (1e-3, 1e-5, 1e-7):
        counted, info = Counted(score), {}
        out = ode_sampler(counted, x0, torch.tensor([5.0, 0.01]), rtol=tol, atol=tol, denoise=False, info=info)
        assert info["nfe"] == counted.calls and info["solver_steps"] >= 1
        found[tol] = ((out - exact).abs().max().item(), info["nfe"])
    assert found[1e-3][0] < 2e-3 and found[1e-5][0] < 2e-5 and found[1e-7][0] < 2e-6
    assert found[1e-3][1] < found[1e-5][1] < found[1e-7][1]


def test_ode_output_points_are_free_and_on_the_path_and_denoise_adds_one_step():
    score = gaussian_score(MU, S, SIGMAS)
    x0 = torch.full((2, 1, 2, 2), MU + 2.0)
    seen, plain, dense = [], {}, {}
    ode_sampler(score, x0, torch.tensor([5.0, 0.01]), denoise=False, info=plain)
    ode_sampler(score, x0, geometric_sigmas(5.0, 0.01, 6), denoise=False, info=dense,
                callback=lambda i, s, x: seen.append((s, x)))
    assert len(seen) == 5 and dense["nfe"] == plain["nfe"]
    for sigma, x in seen:
        assert torch.allclose(x, flow_map(x0, 5.0, sigma), atol=1e-4)
    info = {}
    out = ode_sampler(score, x0, torch.tensor([5.0, 0.01]), denoise=True, info=info)
    end = flow_map(x0, 5.0, 0.01)
    assert info["nfe"] == plain["nfe"] + 1
    assert torch.allclose(out, end + 0.01**2 * score(end, torch.full((2,), 0.01)), atol=1e-4)


@pytest.mark.parametrize("name", ["ald", "pc", "ode", "heun"])
def test_every_sampler_keeps_float32_with_a_bf16_score_and_reports_its_nfe(name):
    exact = gaussian_score(MU, S, SIGMAS)

    def score(x, sigma):
        return exact(x, sigma).to(torch.bfloat16)

    settings = SamplerSettings.from_flat(name, n_steps_each=2, n_steps=4, rtol=1e-3, atol=1e-3, denoise=True)
    info, counted = {}, Counted(score)
    out = run_sampler(counted, torch.rand(3, 1, 4, 4), SIGMAS, settings, generator=gen(0), info=info)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    check_nfe(info, counted, settings, SIGMAS)


def check_nfe(info, counted, settings, ladder):
    """The reported NFE is the score calls made: expected_nfe's count, or for the adaptive ode (dopri5) the initial
    evaluation and step-size probe plus 6 per attempted step (at least one attempt per accepted step) and the
    denoising step."""
    assert info["nfe"] == counted.calls > 0
    expected = expected_nfe(settings, ladder)
    if settings.sampler != "ode":
        assert info["nfe"] == expected
        return
    assert expected is None and settings.ode.method == "dopri5" and info["solver_steps"] >= 1
    solver = info["nfe"] - 2 - int(denoise_for(settings))
    assert solver % 6 == 0 and solver >= 6 * info["solver_steps"]


def test_run_sampler_is_the_named_sampler_on_the_schedule_from_the_ladder():
    score = gaussian_score(MU, S, SIGMAS)
    x0 = torch.randn(4, 1, 2, 2, generator=gen(0))
    top, bottom = float(SIGMAS[0]), float(SIGMAS[-1])
    heun = SamplerSettings.of("heun", n_steps=7, rho=5.0)
    assert torch.equal(schedule(heun, SIGMAS), karras_sigmas(top, bottom, 7, rho=5.0))
    direct = heun_sampler(score, x0, karras_sigmas(top, bottom, 7, 5.0))
    assert torch.equal(run_sampler(score, x0, SIGMAS, heun), direct)
    pc = SamplerSettings.of("pc", n_steps=25, snr=0.2, corrector_steps=2)
    assert torch.equal(run_sampler(score, x0, SIGMAS, pc, generator=gen(1)),
                       pc_sampler(score, x0, geometric_sigmas(top, bottom, 25), corrector_steps=2, snr=0.2,
                                  generator=gen(1)))  # both end on the mean (denoise: Score-SDE's default)
    assert torch.equal(schedule(SamplerSettings.of("pc"), SIGMAS), SIGMAS)
    assert expected_nfe(pc, SIGMAS) == 75 and expected_nfe(heun, SIGMAS) == 13


def test_karras_schedule_endpoints_spacing_and_final_zero():
    sigmas = karras_sigmas(80.0, 0.002, 18)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    i = torch.arange(18, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(sigmas[:-1].double(), ref, rtol=1e-6)
    assert torch.allclose(karras_sigmas(3.0, 1.0, 3, rho=1.0), torch.tensor([3.0, 2.0, 1.0, 0.0]))


@pytest.mark.parametrize("call, message", [
    (lambda: karras_sigmas(1.0, 0.01, 0), "N must be >= 1"),
    (lambda: karras_sigmas(1.0, 0.01, 5, rho=0.0), "rho must be positive"),
    (lambda: karras_sigmas(0.01, 1.0, 5), "sigma_min must be below sigma_max"),
    (lambda: karras_sigmas(1.0, 1.0, 5), "sigma_min must be below sigma_max"),
    (lambda: pc_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), SIGMAS, snr=0.0), "snr must be positive"),
    (lambda: pc_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), SIGMAS, predictor="none", corrector="none"),
     "needs a predictor or a corrector"),
    (lambda: ode_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), SIGMAS[[0, -1]], rtol=0.0), "rtol and atol must be"),
    (lambda: heun_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), SIGMAS.flip(0)), "strictly descending"),
    (lambda: pc_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), torch.tensor([1.0, 0.5, 0.5])), "strictly descending"),
    (lambda: ode_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), torch.tensor([0.1, 1.0])), "strictly descending"),
    (lambda: annealed_langevin(lambda x, s: x, torch.zeros(1, 1, 2, 2), SIGMAS.flip(0)), "strictly descending"),
    (lambda: heun_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), torch.tensor([1.0, 0.0, 0.0])), "the last may be 0"),
    (lambda: heun_sampler(lambda x, s: x, torch.zeros(1, 1, 2, 2), karras_sigmas(1.0, 0.1, 3), s_noise=0.0),
     "s_noise must be positive"),
    (lambda: annealed_langevin(lambda x, s: x, torch.zeros(1, 1, 2, 2), SIGMAS, s_noise=-1.0), "s_noise must be positive"),
])
def test_bad_sampler_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"sampler": "dpm"}, "sampling.sampler: unknown sampler 'dpm'; choose from ald, pc, ode, heun"),
    ({"sampler": "heun", "n_steps": 0}, "sampling.heun.n_steps: must be >= 1"),
    ({"snr": -0.1}, "sampling.pc.snr: must be positive"),
    ({"rtol": 0.0}, "sampling.ode.rtol: must be positive"),
    ({"rho": 0.0}, "sampling.heun.rho: must be positive"),
    ({"s_min": 2.0, "s_max": 1.0}, "sampling.ald.s_max: must be >= s_min"),
])
def test_bad_settings_are_refused_naming_the_key(changes, message):
    from ncsn.samplers import validate

    with pytest.raises(ValueError, match=message):
        validate(SamplerSettings.from_flat(**{"sampler": "ald", **changes}))
    with pytest.raises(ValueError, match=message):
        run_sampler(gaussian_score(MU, S, SIGMAS), torch.zeros(1, 1, 2, 2), SIGMAS,
                    SamplerSettings.from_flat(**{"sampler": "ald", **changes}))


def test_an_ncsnv2_network_runs_every_sampler_and_the_likelihood(one_thread):
    from ncsn import ModelConfig, bits_per_dim, build_score_model

    model = build_score_model(ModelConfig(arch="ncsnv2", in_channels=1, ngf=4, sigma_max=2.0, sigma_min=0.05,
                                          num_scales=6)).eval()
    x0 = torch.rand(2, 1, 8, 8, generator=gen(0))
    for name in ("pc", "heun", "ode"):
        settings, info, counted = SamplerSettings.from_flat(name, n_steps=3, rtol=1e-2, atol=1e-2), {}, Counted(model)
        out = run_sampler(counted, x0, model.sigmas, settings, generator=gen(1), info=info)
        assert torch.isfinite(out).all()
        check_nfe(info, counted, settings, model.sigmas)
    bpd = bits_per_dim(model, torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), 0.05, 2.0, rtol=1e-2,
                       atol=1e-2, generator=gen(2))
    assert torch.isfinite(bpd).all()


@pytest.mark.parametrize("name, function", [("ald", annealed_langevin), ("pc", pc_sampler), ("ode", ode_sampler),
                                            ("heun", heun_sampler)])
def test_each_sampler_ends_as_its_paper_by_default_in_the_function_and_the_settings(name, function):
    """ald: no final step (NCSN); pc: the last mean (Score-SDE); ode: the Tweedie step (Score-SDE); heun: no setting
    (EDM's schedule ends at sigma = 0). The settings' default runs the function's default."""
    default = inspect.signature(function).parameters.get("denoise")
    assert (None if default is None else default.default) == DENOISE_DEFAULTS.get(name)
    assert denoise_for(SamplerSettings.of(name)) == bool(DENOISE_DEFAULTS.get(name))
    score = gaussian_score(MU, S, SIGMAS)
    x0 = MU + torch.randn(3, 1, 2, 2, generator=gen(0))
    sigmas = schedule(SamplerSettings.from_flat(name, n_steps=4), SIGMAS)
    extra = {"n_steps_each": 2} if name == "ald" else {"rtol": 1e-3, "atol": 1e-3} if name == "ode" else {}
    direct = function(score, x0, sigmas, **extra, generator=gen(1))
    via_settings = run_sampler(score, x0, SIGMAS, SamplerSettings.from_flat(name, n_steps=4, **extra), generator=gen(1))
    assert torch.equal(direct, via_settings)


@pytest.mark.parametrize("preset", ["mnist", "cifar10", "celeba", "fashion_mnist"])
def test_pc_on_a_v1_preset_ends_on_its_mean_while_ald_keeps_the_papers_noisy_end(preset):
    from ncsn.config import load_config

    sampling = load_config(preset).sampling
    assert denoise_for(settings_from(sampling)) is False  # ald as NCSN (the pinned v1 samples stay as they were)
    pc = settings_from(sampling, sampler="pc", corrector="none")
    assert denoise_for(pc) is True and used_settings(pc)["denoise"] is True
    score = gaussian_score(MU, S, SIGMAS)
    x0 = MU + torch.randn(3, 1, 2, 2, generator=gen(0))
    mean = pc_sampler(score, x0, SIGMAS, corrector="none", denoise=True, generator=gen(1))
    assert torch.equal(run_sampler(score, x0, SIGMAS, pc, generator=gen(1)), mean)
