"""Shared fixtures: small deterministic settings so the suite runs on two CPU cores."""

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest
import torch

from ncsn import autotune

DATA = pathlib.Path(__file__).parent / "data"
_SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="ncsn-test-"))
atexit.register(shutil.rmtree, _SCRATCH, True)
# precision "auto" may time and cache a trial on CPUs with native bf16: never in the user's own ~/.cache
os.environ["NCSN_CACHE"] = str(_SCRATCH / "cache")

# Fake CPUs, as /proc/cpuinfo describes them. What precision "auto" does depends on the CPU's flags, so the suite
# runs on the AVX2 one wherever it runs (commands in subprocesses too, through $NCSN_CPUINFO), and a test that is
# about the other branch asks for the native-bf16 one with the ``fake_cpu`` fixture: one verdict on every machine.
FAKE_CPUS = {
    "avx2": ("Fake CPU with AVX2", "fpu sse2 avx avx2 fma f16c"),
    "native_bf16": ("Fake CPU with AVX-512 BF16 and AMX", "fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 "
                                                          "amx_bf16 amx_tile"),
}
CPUINFO = {}  # kind -> its fake /proc/cpuinfo
for _kind, (_model, _flags) in FAKE_CPUS.items():
    CPUINFO[_kind] = _SCRATCH / f"cpuinfo-{_kind}"
    CPUINFO[_kind].write_text("".join(f"processor\t: {i}\nmodel name\t: {_model}\nflags\t\t: {_flags}\n\n"
                                      for i in range(2)))
os.environ["NCSN_CPUINFO"] = str(CPUINFO["avx2"])
real_cpu_info = autotune.cpu_info
if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core (pyproject's -n auto), one thread each
    torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config):
    """-n auto: a worker per core, at most 4 (each imports torch; the suite is sized for two cores)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def fake_cpu(monkeypatch, tmp_path_factory):
    """Every test runs on the fake AVX2 CPU (no native bf16: precision "auto" is fp32 without a trial), with its own
    autotune cache and no precision decided yet; ``fake_cpu("native_bf16")`` moves it to the CPU where auto times a
    trial. Returns that function."""

    def use(kind: str) -> None:
        monkeypatch.setenv("NCSN_CPUINFO", str(CPUINFO[kind]))  # for commands run in subprocesses
        monkeypatch.setattr(autotune, "cpu_info", lambda path=None: real_cpu_info(path or str(CPUINFO[kind])))

    use("avx2")
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path_factory.mktemp("autotune")))
    monkeypatch.setattr(autotune, "_decided", {})
    return use


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
