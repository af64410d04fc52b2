"""precision "auto": the CPU's bf16 capability decides first, then a timed trial cached per machine and shape.

Every test says which fake CPU it runs on (the ``fake_cpu`` fixture of conftest.py), so each branch runs, and gives
the same verdict, on any machine."""

import json
import math
import os

import pytest
import torch
from torch import nn

from ncsn import CondRefineNetDilated, NCSNv2, ScoreModel, autotune, geometric_sigmas, runtime
from ncsn.runtime import RuntimeOptions, resolve

from .conftest import CPUINFO, FAKE_CPUS, real_cpu_info

SHAPE = (2, 1, 8, 8)
SIGMAS = geometric_sigmas(1.0, 0.01, 10)


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """A private cache folder, and no printed lines remembered from other tests."""
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_announced", set())


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS)


def no_trial(*args, **kwargs):
    raise AssertionError("the trial must not run")


def fake_trial(monkeypatch, seconds):
    """Trials whose iterations take ``seconds[precision]`` on a fake clock; returns the list of precisions run."""
    clock, calls = [0.0], []

    def workload(*args, **kwargs):
        def run(precision):
            calls.append(precision)
            clock[0] += seconds[precision]
        return run

    monkeypatch.setattr(runtime, "trial_workload", workload)
    monkeypatch.setattr(autotune, "perf_counter", lambda: clock[0])
    return calls


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    model_name, flags = real_cpu_info(str(info))
    assert model_name == "AMD EPYC 9R14" and flags == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    monkeypatch.setenv("NCSN_CPUINFO", str(info))  # the file read instead of /proc/cpuinfo
    assert real_cpu_info() == (model_name, flags)
    assert autotune.cpu_has_native_bf16(flags) and autotune.cpu_has_native_bf16(frozenset({"amx_bf16"}))
    assert not autotune.cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512bw"}))  # AVX-512 alone emulates bf16
    monkeypatch.setattr(autotune.platform, "machine", lambda: "aarch64")
    assert autotune.cpu_has_native_bf16(frozenset({"asimd", "bf16"}))  # Arm's BF16 extension
    assert real_cpu_info(str(tmp_path / "missing"))[1] == frozenset()


def test_the_suite_sees_one_fake_cpu_here_and_in_the_commands_it_starts(fake_cpu):
    """What precision "auto" does depends on the CPU, so the suite pins it: the same verdict on every machine."""
    for kind, native in (("avx2", False), ("native_bf16", True)):
        fake_cpu(kind)
        assert autotune.cpu_info() == real_cpu_info(str(CPUINFO[kind])) and autotune.cpu_has_native_bf16() is native
        assert autotune.machine_fingerprint()["cpu"] == FAKE_CPUS[kind][0]
        assert os.environ["NCSN_CPUINFO"] == str(CPUINFO[kind])  # what a command run in a subprocess reads


def test_auto_without_native_bf16_is_fp32_and_runs_no_trial(fake_cpu, monkeypatch, model, capsys, tmp_path):
    fake_cpu("avx2")
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    for training in (True, False):
        assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training).precision == "fp32"
    err = capsys.readouterr().err.splitlines()
    assert err == ["precision auto -> fp32: this CPU has no native bf16 dot products (no avx512_bf16 or amx_bf16 flag)"]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("bf16_seconds, expected", [(1.0, "bf16"), (1.85, "fp32"), (3.0, "fp32")])
def test_auto_with_native_bf16_follows_a_timed_trial_and_caches_it(fake_cpu, monkeypatch, model, capsys, tmp_path,
                                                                    bf16_seconds, expected):
    fake_cpu("native_bf16")
    calls = fake_trial(monkeypatch, {"fp32": 2.0, "bf16": bf16_seconds})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == expected
    assert calls == ["fp32", "bf16"] * (1 + autotune.TRIAL_ITERATIONS)  # a warm-up each, then alternated
    data = json.loads((tmp_path / "cache" / "autotune.json").read_text())
    assert data["machine"] == autotune.machine_fingerprint() and data["machine"]["cpu"] == FAKE_CPUS["native_bf16"][0]
    (key, entry), = data["entries"].items()
    assert key == runtime.trial_key(model, SHAPE, True, False) and "train CondRefineNetDilated" in key
    assert entry["precision"] == expected and entry["seconds"] == pytest.approx({"fp32": 2.0, "bf16": bf16_seconds})
    assert f"precision auto -> {expected}: timed trial" in capsys.readouterr().err

    monkeypatch.setattr(autotune, "_decided", {})  # a new process: the answer comes from the file
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == expected
    assert "cached trial" in capsys.readouterr().err
    other = fake_trial(monkeypatch, {"fp32": 2.0, "bf16": 1.0})  # another shape or use is another trial
    resolve(RuntimeOptions(), model, "cpu", (4, 1, 8, 8), training=False)
    assert len(other) == 6 and len(json.loads((tmp_path / "cache" / "autotune.json").read_text())["entries"]) == 2


def test_cache_round_trips_and_rejects_what_it_cannot_trust(tmp_path):
    path, machine = tmp_path / "autotune.json", {"cpu": "x", "flags_sha256": "ab", "torch": "2.x"}
    good = {"precision": "bf16", "seconds": {"fp32": 2.0, "bf16": 1.0}, "iterations": 2, "measured": "now"}
    autotune.write_cache(path, machine, {"k": good})
    assert autotune.read_cache(path, machine) == ({"k": good}, None)
    assert [p.name for p in tmp_path.iterdir()] == ["autotune.json"]  # the temporary file was renamed, not left
    assert autotune.read_cache(tmp_path / "none.json", machine) == ({}, None)
    assert autotune.read_cache(path, {**machine, "torch": "2.y"}) == ({}, "stale (written on another machine or "
                                                                          "torch version)")
    bad = {"wrong answer": {**good, "precision": "fp32"}, "nan": {**good, "seconds": {"fp32": math.nan, "bf16": 1}},
           "negative": {**good, "seconds": {"fp32": 2.0, "bf16": -1.0}}, "not a dict": 3, "k": good}
    autotune.write_cache(path, machine, bad)
    assert autotune.read_cache(path, machine) == ({"k": good}, "4 inconsistent entries dropped")
    path.write_text('{"version": 1, "machine": ')
    assert autotune.read_cache(path, machine) == ({}, "unreadable (JSONDecodeError)")
    path.write_bytes(b"\xff\xfe")
    assert autotune.read_cache(path, machine)[1] == "unreadable (UnicodeDecodeError)"
    path.write_text('{"version": 0, "machine": {}, "entries": {}}')
    assert autotune.read_cache(path, machine) == ({}, "not an autotune cache of this version")


@pytest.mark.parametrize("content", ["not json at all", json.dumps({"version": 1, "entries": {}, "machine": {}})])
def test_a_corrupt_or_stale_cache_is_measured_again_and_rebuilt(fake_cpu, monkeypatch, model, capsys, tmp_path,
                                                                content):
    fake_cpu("native_bf16")
    path = tmp_path / "cache" / "autotune.json"
    path.parent.mkdir()
    path.write_text(content)
    calls = fake_trial(monkeypatch, {"fp32": 2.0, "bf16": 1.0})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == "bf16"
    assert len(calls) == 6 and "and is rebuilt" in capsys.readouterr().err
    entries, problem = autotune.read_cache(path, autotune.machine_fingerprint())
    assert problem is None and [e["precision"] for e in entries.values()] == ["bf16"]


def test_a_cache_that_cannot_be_written_still_decides_and_says_so(fake_cpu, monkeypatch, model, capsys, tmp_path):
    fake_cpu("native_bf16")
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "a file" / "cache"))
    calls = fake_trial(monkeypatch, {"fp32": 2.0, "bf16": 1.0})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == "bf16" and len(calls) == 6
    assert f"; not cached ({tmp_path / 'a file' / 'cache' / 'autotune.json'}: " in capsys.readouterr().err
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == "bf16" and len(calls) == 6


def test_an_entry_that_contradicts_its_timings_is_measured_again(fake_cpu, monkeypatch, model, tmp_path):
    fake_cpu("native_bf16")
    key = runtime.trial_key(model, SHAPE, True, False)
    lie = {"precision": "bf16", "seconds": {"fp32": 1.0, "bf16": 5.0}, "iterations": 2, "measured": "then"}
    autotune.write_cache(tmp_path / "cache" / "autotune.json", autotune.machine_fingerprint(), {key: lie})
    calls = fake_trial(monkeypatch, {"fp32": 1.0, "bf16": 5.0})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == "fp32" and len(calls) == 6


def test_explicit_precision_wins_and_bf16_without_native_support_warns_once(fake_cpu, monkeypatch, model, capsys):
    fake_cpu("native_bf16")
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    assert resolve(RuntimeOptions(precision="fp32"), model, "cpu", SHAPE, True).precision == "fp32"
    assert resolve(RuntimeOptions(precision="bf16"), model, "cpu", SHAPE, True).precision == "bf16"
    assert capsys.readouterr().err == ""
    fake_cpu("avx2")
    for _ in range(2):
        assert resolve(RuntimeOptions(precision="bf16"), model, "cpu", SHAPE, False).precision == "bf16"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --precision bf16 on a cpu without native bf16")


def test_cuda_auto_is_fp32_without_a_trial(monkeypatch, model):
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    choice = runtime.choose_precision(model, "cuda", (128, 3, 32, 32), training=True, channels_last=False)
    assert choice.precision == "fp32" and "--precision bf16 opts in" in choice.reason


def test_a_real_trial_times_the_network_and_leaves_it_untouched(fake_cpu, monkeypatch, model, tmp_path):
    fake_cpu("native_bf16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for training in (True, False):
        resolved = resolve(RuntimeOptions(), model, "cpu", SHAPE, training)
        assert resolved.precision in ("fp32", "bf16") and resolved.channels_last is False  # 8x8: NCHW
    assert torch.equal(torch.get_rng_state(), rng)  # the trial draws from its own generator
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    entries, _ = autotune.read_cache(tmp_path / "cache" / "autotune.json", autotune.machine_fingerprint())
    assert sorted(k.split()[0] for k in entries) == ["sample", "train"]
    for entry in entries.values():
        assert all(s > 0 for s in entry["seconds"].values()) and entry["precision"] == autotune.pick(entry["seconds"])


class Log(list):
    """A list that the trial's deep copy of a network shares with the original."""

    def __deepcopy__(self, memo):
        return self


class Spy(nn.Module):
    """A one-convolution network that declares its conditioning and logs the arguments it is called with."""

    def __init__(self, **declared):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.log = Log()
        for name, value in declared.items():
            setattr(self, name, value)

    def forward(self, x, *cond):
        self.log.append((x.dtype, [(c.dtype, tuple(c.shape), c.min().item(), c.max().item()) for c in cond]))
        return self.conv(x)


@pytest.mark.parametrize("declared, expected", [
    ({"level_conditioned": True, "num_classes": 7}, [(torch.int64, (2,), 0, 6)]),  # a raw NCSN v1 network: indices
    ({"level_conditioned": True}, [(torch.int64, (2,), 0, 0)]),  # no level count: level 0 exists in any
    ({"level_conditioned": False}, []),  # a raw NCSNv2 network: x alone
    ({"conditioning": "sigma", "level_conditioned": False}, [(torch.float32, (2,), 1.0, 1.0)]),  # NCSN++-style
    ({"conditioning": "levels", "num_classes": 3}, [(torch.int64, (2,), 0, 2)]),
    ({"conditioning": "none", "level_conditioned": True}, []),  # the declaration wins over the flag
    ({}, [(torch.float32, (2,), 1.0, 1.0)]),  # a network that declares nothing is a score function f(x, sigma)
], ids=["v1", "v1 without num_classes", "v2", "sigma", "declared levels", "declared none", "undeclared"])
@pytest.mark.parametrize("training", [True, False])
def test_the_trial_calls_a_network_the_way_it_declares_it_is_conditioned(fake_cpu, declared, expected, training):
    fake_cpu("native_bf16")
    torch.manual_seed(0)
    spy = Spy(**declared)
    before = spy.conv.weight.detach().clone()
    assert resolve(RuntimeOptions(), spy, "cpu", (2, 1, 4, 4), training).precision in ("fp32", "bf16")
    assert len(spy.log) == 2 * (1 + autotune.TRIAL_ITERATIONS)  # the trial ran on a copy of the network
    for x_dtype, args in spy.log:  # the second argument within its range: level indices, or sigma
        assert x_dtype == torch.float32 and len(args) == len(expected)
        for (dtype, shape, low, high), (want_dtype, want_shape, floor, ceiling) in zip(args, expected):
            assert (dtype, shape) == (want_dtype, want_shape) and floor <= low <= high <= ceiling
    assert torch.equal(spy.conv.weight, before) and spy.conv.weight.grad is None


def test_a_declared_conditioning_must_be_one_the_library_knows():
    assert runtime.conditioning(ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS)) == "sigma"  # the wrapper speaks σ
    assert runtime.conditioning(CondRefineNetDilated(1, 4, 10)) == "levels"
    assert runtime.conditioning(NCSNv2(1, 4)) == "none"

    def scored(x, sigma):  # a score function: its level_conditioned says which sigmas it knows, not what it takes
        return x

    scored.level_conditioned = True
    assert runtime.conditioning(scored) == "sigma"
    with pytest.raises(ValueError, match=r"Spy.conditioning must be one of \('sigma', 'levels', 'none'\), got 'time'"):
        runtime.conditioning(Spy(conditioning="time"))


class SigmaNet(nn.Module):
    """A raw network taking x and one float sigma per example (the NCSN++ signature), declared as such."""

    conditioning = "sigma"
    level_conditioned = False

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, sigma):
        return self.conv(x) / sigma.view(-1, 1, 1, 1)


NETWORKS = {  # each kind of network resolve receives (a ScoreModel v1: the test above), two of them in bf16
    "raw v1": lambda: CondRefineNetDilated(1, 4, 10),
    "raw v2, bf16 weights": lambda: NCSNv2(1, 4).to(torch.bfloat16),
    "sigma-conditioned": SigmaNet,
    "ScoreModel v2, bf16 weights": lambda: ScoreModel(NCSNv2(1, 4), SIGMAS, scale_by_sigma=True).to(torch.bfloat16),
}


@pytest.mark.parametrize("kind", NETWORKS)
def test_a_real_trial_runs_every_kind_of_network(fake_cpu, kind, tmp_path):
    fake_cpu("native_bf16")
    torch.manual_seed(0)
    net = NETWORKS[kind]()
    for training, channels_last in ((True, False), (False, True)):
        resolved = resolve(RuntimeOptions(channels_last=channels_last), net, "cpu", SHAPE, training)
        assert resolved.precision in ("fp32", "bf16")
    entries, _ = autotune.read_cache(tmp_path / "cache" / "autotune.json", autotune.machine_fingerprint())
    assert sorted(k.split()[0] + " " + k.split()[-3] for k in entries) == ["sample channels_last", "train nchw"]


def test_a_plain_score_function_gets_a_trial_for_sampling(fake_cpu, tmp_path):
    fake_cpu("native_bf16")
    seen = []

    def score(x, sigma):
        seen.append(sigma.dtype)
        return -x / sigma.view(-1, 1, 1, 1) ** 2

    assert resolve(RuntimeOptions(), score, "cpu", SHAPE, training=False).precision in ("fp32", "bf16")
    assert seen and set(seen) == {torch.float32}
