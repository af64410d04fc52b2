"""Samplers read a score function's output only until its next call and never change it in place: a compiled score
on a GPU (CUDA graphs) returns one output buffer that every call overwrites."""

import pytest
import torch

from ncsn import geometric_sigmas, karras_sigmas
from ncsn.inpainting import inpaint
from ncsn.likelihood import log_density
from ncsn.samplers import SamplerSettings, annealed_langevin, heun_sampler, ode_sampler, pc_sampler

SIGMAS = geometric_sigmas(1.0, 0.01, 6)
TOP_HALF = torch.arange(4).view(4, 1).expand(4, 4) < 2


def score(x, sigma):
    """A nonlinear score (a Gaussian's plus a bounded term), so an evaluation at a stale x or sigma shows."""
    var = 0.04 + sigma.view(-1, 1, 1, 1) ** 2
    return -(x - 0.4) / var + 0.3 * torch.tanh(3 * x)


class OneBuffer:
    """What a CUDA-graph score does: every call writes its result into the same tensor and returns that tensor."""

    def __init__(self, fn):
        self.fn, self.out = fn, None

    def __call__(self, x, sigma):
        value = self.fn(x, sigma)
        if self.out is None:
            self.out = torch.empty_like(value)
        return self.out.copy_(value)


def gen(seed):
    return torch.Generator().manual_seed(seed)


RUNS = {
    "ald": lambda fn, x: annealed_langevin(fn, x, SIGMAS, n_steps_each=3, step_lr=1e-3, denoise=True,
                                           generator=gen(1)),
    "pc-langevin": lambda fn, x: pc_sampler(fn, x, SIGMAS, corrector_steps=2, generator=gen(1)),
    "pc-em-ald": lambda fn, x: pc_sampler(fn, x, SIGMAS, "euler_maruyama", "ald", 2, generator=gen(1)),
    "pc-corrector-only": lambda fn, x: pc_sampler(fn, x, SIGMAS, "none", "langevin", 2, generator=gen(1)),
    "heun": lambda fn, x: heun_sampler(fn, x, karras_sigmas(1.0, 0.01, 5)),
    "heun-churn": lambda fn, x: heun_sampler(fn, x, karras_sigmas(1.0, 0.01, 5), s_churn=10.0, generator=gen(1)),
    "ode": lambda fn, x: ode_sampler(fn, x, SIGMAS[[0, 2, -1]], rtol=1e-3, atol=1e-3, denoise=True),
    "inpaint-ald": lambda fn, x: inpaint(fn, x.clamp(0, 1), TOP_HALF, SIGMAS, 2, 1e-3, generator=gen(1)),
    "inpaint-pc": lambda fn, x: inpaint(fn, x.clamp(0, 1), TOP_HALF, SIGMAS, generator=gen(1),
                                        settings=SamplerSettings.of("pc", corrector_steps=1)),
    "likelihood": lambda fn, x: log_density(fn, x, 0.01, 1.0, rtol=1e-3, atol=1e-3, generator=gen(1)),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_score_that_reuses_its_output_buffer_gives_the_same_result(name):
    x0 = torch.rand(3, 1, 4, 4, generator=gen(0))
    fresh = RUNS[name](score, x0.clone())
    reused = RUNS[name](OneBuffer(score), x0.clone())
    assert torch.isfinite(fresh).all()
    assert torch.equal(reused, fresh)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs these)")
@pytest.mark.parametrize("name", ["heun", "ode"])  # the seeded ones take CPU generators
def test_cuda_graph_compiled_score_gives_what_its_copied_outputs_give(name):
    """The real thing: ``--compile`` on CUDA (mode reduce-overhead) hands back CUDA-graph buffers."""
    from ncsn import ModelConfig, build_score_model
    from ncsn.runtime import RuntimeOptions, score_function

    torch.manual_seed(0)
    model = build_score_model(ModelConfig(arch="ncsnv2", in_channels=1, ngf=8, sigma_max=1.0, sigma_min=0.01,
                                          num_scales=6)).cuda().eval()
    compiled = score_function(model, RuntimeOptions(compile=True, precision="fp32", channels_last=False), "cuda")
    x0 = torch.rand(3, 1, 8, 8, generator=gen(0)).cuda()
    copied = RUNS[name](lambda x, sigma: compiled(x, sigma).clone(), x0.clone())
    graphs = RUNS[name](compiled, x0.clone())
    assert torch.isfinite(copied).all() and torch.equal(graphs, copied)
