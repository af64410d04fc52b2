import math

import pytest
import torch

from ncsn import CondRefineNetDilated, ScoreModel, annealed_langevin, geometric_sigmas, per_example_generators, uniform_init

from .conftest import gaussian_score

SIGMAS = geometric_sigmas(1.0, 0.01, 10)


def test_reference_chain_recovers_gaussian_mean_and_variance():
    """Exact perturbed scores of N(mu, s^2 I), reference eps and T: the chain ends on the data distribution."""
    mu, s = 0.4, 0.2
    gen = torch.Generator().manual_seed(0)
    x0 = uniform_init((2000, 1, 4, 4), generator=gen)
    out = annealed_langevin(gaussian_score(mu, s, SIGMAS), x0, SIGMAS, 100, 2e-5, generator=gen)
    assert out.dtype == torch.float32
    assert abs(out.mean().item() - mu) < 0.02
    assert out.var().item() == pytest.approx(s**2, rel=0.10)


def test_paper_convention_with_twice_eps_is_the_code_chain():
    score = gaussian_score(0.5, 0.3, SIGMAS)
    x0 = uniform_init((16, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    code = annealed_langevin(score, x0, SIGMAS, 20, 2e-5, generator=torch.Generator().manual_seed(9))
    paper = annealed_langevin(
        score, x0, SIGMAS, 20, 4e-5, convention="paper", generator=torch.Generator().manual_seed(9)
    )
    assert torch.allclose(code, paper, atol=1e-6)
    half = annealed_langevin(
        score, x0, SIGMAS, 20, 2e-5, convention="paper", generator=torch.Generator().manual_seed(9)
    )
    assert not torch.allclose(code, half)


def test_seeds_control_samples_of_a_network():
    net = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS).eval()

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return annealed_langevin(net, uniform_init((3, 1, 8, 8), generator=g), SIGMAS, 2, 2e-5, generator=g)

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_per_example_generators_make_samples_independent_of_batching():
    score = gaussian_score(0.5, 0.3, SIGMAS)

    def run(start, count):
        gens = per_example_generators(seed=11, count=count, start=start)
        return annealed_langevin(score, uniform_init((count, 1, 4, 4), gens), SIGMAS, 5, 2e-5, generator=gens)

    together = run(0, 4)
    apart = torch.cat([run(0, 2), run(2, 2)])
    assert torch.allclose(together, apart, atol=1e-6)


def test_per_example_seeds_of_neighbouring_seeds_share_nothing():
    """Example k of seed s and example k - 1 of seed s + 1 must not get the same stream (a plain seed + k did)."""

    def first_draws(seed, count=8, start=0):
        return [torch.randn(4, generator=g) for g in per_example_generators(seed, count, start=start)]

    draws = {seed: first_draws(seed) for seed in (5, 6, 7)}
    streams = [d for seed_draws in draws.values() for d in seed_draws]
    assert all(not torch.equal(a, b) for i, a in enumerate(streams) for b in streams[i + 1:])
    later = first_draws(5, count=3, start=4)  # batching: examples 4..6 of seed 5, made in another batch
    assert all(torch.equal(a, b) for a, b in zip(later, draws[5][4:7]))
    negative = first_draws(-1, count=2)
    assert not torch.equal(negative[0], draws[5][0])


def test_per_example_generators_follow_the_callers_device(monkeypatch):
    made = []

    class Recorder:
        def __init__(self, device):
            made.append(torch.device(device))

        def manual_seed(self, seed):
            return self

    monkeypatch.setattr(torch, "Generator", Recorder)
    monkeypatch.setattr(torch, "get_default_device", lambda: torch.device("cuda", 0))
    per_example_generators(0, 2)  # no device given: torch's default device, where new tensors go
    per_example_generators(0, 1, device=torch.empty(0, device="meta"))  # a tensor: its device
    per_example_generators(0, 1, device="cpu")
    assert made == [torch.device("cuda", 0)] * 2 + [torch.device("meta"), torch.device("cpu")]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs these)")


@pytest.mark.cuda
@cuda
def test_readme_per_example_sampling_runs_on_a_gpu():
    net = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS).cuda().eval()
    with torch.device("cuda"):
        gens = per_example_generators(0, 3)
        x0 = uniform_init((3, 1, 8, 8), generator=gens, device="cuda")
        out = annealed_langevin(net, x0, SIGMAS.cuda(), 2, 2e-5, generator=gens)
    assert out.is_cuda and torch.isfinite(out).all()


def test_final_denoising_is_one_tweedie_step():
    score = gaussian_score(0.5, 0.3, SIGMAS)
    x0 = uniform_init((8, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    plain = annealed_langevin(score, x0, SIGMAS, 3, 2e-5, generator=torch.Generator().manual_seed(1))
    den = annealed_langevin(score, x0, SIGMAS, 3, 2e-5, denoise=True, generator=torch.Generator().manual_seed(1))
    last = SIGMAS[-1].expand(8)
    assert torch.allclose(den, plain + SIGMAS[-1] ** 2 * score(plain, last), atol=1e-6)


def test_step_size_schedule_callback_and_constraint_hooks():
    seen, hooks = [], []
    x0 = torch.zeros(2, 1, 2, 2)

    def score(x, labels):
        return torch.zeros_like(x)

    def cb(i, sigma_next, x):
        seen.append((i, sigma_next))

    def constraint(x, level, step):
        hooks.append((level, step))
        x[:, :, 0, 0] = 7.0

    out = annealed_langevin(score, x0, SIGMAS[:3], 4, 1e-3, callback=cb, constraint=constraint,
                            generator=torch.Generator().manual_seed(0))
    assert seen == [(4 * lvl + t, float(SIGMAS[lvl])) for lvl in range(3) for t in range(4)]
    assert hooks == [(lvl, t) for lvl in range(3) for t in [-1, 0, 1, 2, 3]]
    assert torch.all(out[:, :, 0, 0] == 7.0)
    # zero score: each step adds sqrt(2 alpha_i) z; the variance sums 2 * eps * (sigma_i/sigma_L)^2 over the steps.
    big = annealed_langevin(score, torch.zeros(20000, 1, 1, 1), SIGMAS[:3], 4, 1e-3,
                            generator=torch.Generator().manual_seed(0))
    expected = sum(4 * 2 * 1e-3 * (float(s) / float(SIGMAS[2])) ** 2 for s in SIGMAS[:3])
    assert big.var().item() == pytest.approx(expected, rel=0.05)
    assert math.isfinite(big.mean().item())


def test_sampler_rejects_bad_settings():
    with pytest.raises(ValueError, match="convention"):
        annealed_langevin(lambda x, y: x, torch.zeros(1, 1, 2, 2), SIGMAS, convention="typo")
    with pytest.raises(ValueError, match="n_steps_each"):
        annealed_langevin(lambda x, y: x, torch.zeros(1, 1, 2, 2), SIGMAS, n_steps_each=0)


def test_seeded_v1_sample_and_loss_are_pinned(data_dir, one_thread):
    """A seeded v1 chain (tiny network, fixed weights) and its DSM losses equal the values saved before the score
    functions took sigma instead of level indices: the v1 path is unchanged by that move."""
    from ncsn import ModelConfig, build_score_model, dsm_loss

    pinned = torch.load(data_dir / "v1_pinned.pt", weights_only=True)
    model = build_score_model(ModelConfig(in_channels=1, ngf=8, sigma_max=1.0, sigma_min=0.05, num_scales=4))
    model.load_state_dict(pinned["state"])
    model.eval()
    gen = torch.Generator().manual_seed(3)
    x0 = uniform_init((4, 1, 8, 8), generator=gen)
    assert torch.equal(x0, pinned["x0"])
    out = annealed_langevin(model, x0, model.sigmas, n_steps_each=3, step_lr=1e-3, denoise=True, generator=gen)
    # float32 convolutions may differ in the last bits between CPU instruction sets; a level mix-up would not
    assert torch.allclose(out, pinned["sample"], rtol=1e-5, atol=1e-5)
    g2 = torch.Generator().manual_seed(5)
    x = torch.rand(6, 1, 8, 8, generator=g2)
    loss = dsm_loss(model, x, model.sigmas, generator=g2)
    assert torch.allclose(loss, pinned["loss"], rtol=1e-5)
