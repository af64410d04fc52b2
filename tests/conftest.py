"""Shared fixtures: small deterministic settings so the suite runs on two CPU cores."""

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest
import torch

DATA = pathlib.Path(__file__).parent / "data"
# precision "auto" may time and cache a trial on CPUs with native bf16: never in the user's own ~/.cache
os.environ["NCSN_CACHE"] = tempfile.mkdtemp(prefix="ncsn-test-cache-")
atexit.register(shutil.rmtree, os.environ["NCSN_CACHE"], True)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast and avoids oversubscribing a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args):
    """``ncsn ARGS...`` in-process; arguments may be paths or numbers."""
    from click.testing import CliRunner

    from ncsn.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def train_tiny(workdir, overrides):
    """A tiny CPU training run of the digits config in ``workdir``; returns the command's output."""
    result = run("train", "--config", "digits", "--workdir", workdir, "--device", "cpu", "--no-progress",
                 *[f"--set={s}" for s in overrides])
    assert result.exit_code == 0, result.output
    return result.output


def gaussian_score(mu: float, s: float, sigmas: torch.Tensor):
    """Exact score of N(mu, s^2 I) perturbed by N(0, sigma^2 I), one sigma per example (``sigmas`` is unused: any
    sigma works, as for a sigma-scaled network)."""

    def score(x, sigma):
        var = s**2 + sigma.to(x.device).view(-1, *([1] * (x.dim() - 1))) ** 2
        return -(x - mu) / var

    return score


class TinyUnconditional(torch.nn.Module):
    """A two-layer unconditional conv net (s = f(x)/sigma once wrapped): any sigma works, as for NCSNv2."""

    level_conditioned = False

    def __init__(self, in_channels: int, ngf: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_channels, ngf, 3, padding=1), torch.nn.ELU(),
                                        torch.nn.Conv2d(ngf, in_channels, 3, padding=1))

    def forward(self, x):
        return self.body(2 * x - 1)


@pytest.fixture(scope="module")
def unconditional_arch():
    """Registers TinyUnconditional as model.arch=tiny_unconditional for the module's tests (in-process CLI runs)."""
    from ncsn import score_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(score_model.ARCHITECTURES, "tiny_unconditional", TinyUnconditional)
        yield "tiny_unconditional"
