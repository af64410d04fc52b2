"""precision "auto": the CPU's bf16 capability decides first, then a timed trial cached per machine and shape."""

import json
import math

import pytest
import torch

from ncsn import CondRefineNetDilated, ScoreModel, geometric_sigmas
from ncsn import autotune, runtime
from ncsn.runtime import RuntimeOptions, resolve

NATIVE = ("Fake CPU with AMX", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
AVX2 = ("Fake CPU with AVX2", frozenset({"avx2", "fma"}))
SHAPE = (2, 1, 8, 8)


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """A private cache folder, and no answers or printed lines remembered from other tests."""
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_decided", {})
    monkeypatch.setattr(runtime, "_announced", set())


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ScoreModel(CondRefineNetDilated(1, 4, 10), geometric_sigmas(1.0, 0.01, 10))


def cpu(monkeypatch, info):
    monkeypatch.setattr(autotune, "cpu_info", lambda path="/proc/cpuinfo": info)


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
    model_name, flags = autotune.cpu_info(str(info))
    assert model_name == "AMD EPYC 9R14" and flags == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert autotune.cpu_has_native_bf16(flags) and autotune.cpu_has_native_bf16(frozenset({"amx_bf16"}))
    assert not autotune.cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512bw"}))  # AVX-512 alone emulates bf16
    monkeypatch.setattr(autotune.platform, "machine", lambda: "aarch64")
    assert autotune.cpu_has_native_bf16(frozenset({"asimd", "bf16"}))  # Arm's BF16 extension
    assert autotune.cpu_info(str(tmp_path / "missing"))[1] == frozenset()


def test_auto_without_native_bf16_is_fp32_and_runs_no_trial(monkeypatch, model, capsys, tmp_path):
    cpu(monkeypatch, AVX2)
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    for training in (True, False):
        assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training).precision == "fp32"
    err = capsys.readouterr().err.splitlines()
    assert err == ["precision auto -> fp32: this CPU has no native bf16 dot products (no avx512_bf16 or amx_bf16 flag)"]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("bf16_seconds, expected", [(1.0, "bf16"), (1.85, "fp32"), (3.0, "fp32")])
def test_auto_with_native_bf16_follows_a_timed_trial_and_caches_it(monkeypatch, model, capsys, tmp_path,
                                                                    bf16_seconds, expected):
    cpu(monkeypatch, NATIVE)
    calls = fake_trial(monkeypatch, {"fp32": 2.0, "bf16": bf16_seconds})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == expected
    assert calls == ["fp32", "bf16"] * (1 + autotune.TRIAL_ITERATIONS)  # a warm-up each, then alternated
    data = json.loads((tmp_path / "cache" / "autotune.json").read_text())
    assert data["machine"] == autotune.machine_fingerprint() and data["machine"]["cpu"] == NATIVE[0]
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
def test_a_corrupt_or_stale_cache_is_measured_again_and_rebuilt(monkeypatch, model, capsys, tmp_path, content):
    cpu(monkeypatch, NATIVE)
    path = tmp_path / "cache" / "autotune.json"
    path.parent.mkdir()
    path.write_text(content)
    calls = fake_trial(monkeypatch, {"fp32": 2.0, "bf16": 1.0})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == "bf16"
    assert len(calls) == 6 and "and is rebuilt" in capsys.readouterr().err
    entries, problem = autotune.read_cache(path, autotune.machine_fingerprint())
    assert problem is None and [e["precision"] for e in entries.values()] == ["bf16"]


def test_an_entry_that_contradicts_its_timings_is_measured_again(monkeypatch, model, tmp_path):
    cpu(monkeypatch, NATIVE)
    key = runtime.trial_key(model, SHAPE, True, False)
    lie = {"precision": "bf16", "seconds": {"fp32": 1.0, "bf16": 5.0}, "iterations": 2, "measured": "then"}
    autotune.write_cache(tmp_path / "cache" / "autotune.json", autotune.machine_fingerprint(), {key: lie})
    calls = fake_trial(monkeypatch, {"fp32": 1.0, "bf16": 5.0})
    assert resolve(RuntimeOptions(), model, "cpu", SHAPE, training=True).precision == "fp32" and len(calls) == 6


def test_explicit_precision_wins_and_bf16_without_native_support_warns_once(monkeypatch, model, capsys):
    cpu(monkeypatch, NATIVE)
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    assert resolve(RuntimeOptions(precision="fp32"), model, "cpu", SHAPE, True).precision == "fp32"
    assert resolve(RuntimeOptions(precision="bf16"), model, "cpu", SHAPE, True).precision == "bf16"
    assert capsys.readouterr().err == ""
    cpu(monkeypatch, AVX2)
    for _ in range(2):
        assert resolve(RuntimeOptions(precision="bf16"), model, "cpu", SHAPE, False).precision == "bf16"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --precision bf16 on a cpu without native bf16")


def test_cuda_auto_is_fp32_without_a_trial(monkeypatch, model):
    monkeypatch.setattr(runtime, "trial_workload", no_trial)
    choice = runtime.choose_precision(model, "cuda", (128, 3, 32, 32), training=True, channels_last=False)
    assert choice.precision == "fp32" and "--precision bf16 opts in" in choice.reason


def test_a_real_trial_times_the_network_and_leaves_it_untouched(monkeypatch, model, tmp_path):
    cpu(monkeypatch, NATIVE)
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
