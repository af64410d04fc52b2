import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ncsn import training
from ncsn.checkpoint import list_checkpoints, load_training_state
from ncsn.config import ConfigError, load_config
from ncsn.lr_schedule import lr_at
from ncsn.training import NonFiniteLossError, RunFolderError, train

TINY = [
    "model.ngf=4", "training.batch_size=16", "training.log_every=5", "training.eval_every=5",
    "training.eval_batch_size=20", "training.checkpoint_every=5", "training.snapshot_every=10",
    "training.keep_last=2", "training.sample_every=1000", "training.sample_n=4", "sampling.n_steps_each=1",
    "training.ema=true",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "ncsn.cli", *args], env=ENV, capture_output=True, text=True, check=False, **kwargs)


def final_state(workdir):
    return load_training_state(list_checkpoints(workdir)[-1][1])


def test_tiny_run_writes_its_files(tmp_path):
    config = load_config("digits", TINY + ["training.n_iters=10"])
    result = train(config, tmp_path, device="cpu", progress=False)
    assert result.step == 10 and result.checkpoint.name == "checkpoint_00000010.pt"
    assert (tmp_path / "config.yaml").is_file() and load_config(str(tmp_path / "config.yaml")) == config
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "test_loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10] and [r["step"] for r in eval_rows] == [5, 10]
    assert all(r["images_per_s"] > 0 and r["lr"] == lr_at(config.training, r["step"] - 1) for r in train_rows)
    assert len(eval_rows[0]["test_loss_per_level"]) == config.model.num_scales
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 10]
    assert (tmp_path / "samples" / "step_00000010.png").is_file()
    state = final_state(tmp_path)
    assert state["step"] == 10 and state["ema"] is not None and state["config"]["model"]["ngf"] == 4
    with pytest.raises(RunFolderError, match="already has checkpoints"):
        train(config, tmp_path, device="cpu", progress=False)
    with pytest.raises(RunFolderError, match="no checkpoint"):
        train(config, tmp_path / "fresh", resume=True, device="cpu", progress=False)


SCORE_SDE = ["model.arch=ncsnv2", "training.objective=ve", "training.likelihood_weighting=true",
             "training.grad_clip=1.0", "training.ema_warmup=true"]  # on top of the schedule's warm-up
# NCSN++ with dropout: the masks come from torch's global generator, which training seeds per step
NCSNPP_DROPOUT = ["model.arch=ncsnpp", "model.ngf=8", "model.ncsnpp.ch_mult=[1,2]", "model.ncsnpp.num_res_blocks=1",
                  "model.ncsnpp.attn_resolutions=[4]", "model.ncsnpp.dropout=0.3", "training.objective=ve"]


def test_dropout_masks_are_seeded_so_two_runs_match_and_the_callers_random_state_is_kept(tmp_path):
    config = load_config("digits", TINY + NCSNPP_DROPOUT + ["training.n_iters=6"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(config, tmp_path / "a", device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # training neither used nor moved the caller's generator
    torch.manual_seed(999)  # a different global state must not change the run
    train(config, tmp_path / "b", device="cpu", progress=False)
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    no_dropout = load_config("digits", TINY + NCSNPP_DROPOUT + ["training.n_iters=6", "model.ncsnpp.dropout=0.0"])
    train(no_dropout, tmp_path / "c", device="cpu", progress=False)
    c = final_state(tmp_path / "c")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])  # the masks did act


@pytest.mark.parametrize("recipe", [[], SCORE_SDE, NCSNPP_DROPOUT], ids=["ladder", "score_sde", "ncsnpp_dropout"])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, recipe):
    args = ["train", "--config", "digits", "--device", "cpu", "--no-progress"]
    schedule = ["training.lr_schedule=cosine", "training.lr_warmup=10"]  # the rate is a function of the step
    sets = [f"--set={s}" for s in TINY + schedule + recipe + ["training.n_iters=60"]]
    straight = cli(*args, "--workdir", str(tmp_path / "straight"), *sets)
    assert straight.returncode == 0, straight.stderr

    victim = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ncsn.cli", *args, "--workdir", str(victim), *sets], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(victim) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(victim)[-1][0]
    assert 5 <= killed_at < 60, "the run must die part-way"
    resumed = cli(*args, "--workdir", str(victim), "--resume", *sets)
    assert resumed.returncode == 0, resumed.stderr

    a, b = final_state(tmp_path / "straight"), final_state(victim)
    assert a["step"] == b["step"] == 60
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    steps = [json.loads(r)["step"] for r in (victim / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    assert steps == list(range(5, 61, 5))  # rows after the checkpoint were dropped, then rewritten


def test_learning_rate_schedules_follow_their_closed_forms():
    t = load_config("digits", ["training.n_iters=101", "training.lr=1e-3", "training.lr_min=1e-4",
                               "training.lr_warmup=0", "training.lr_schedule=cosine"]).training
    assert lr_at(t, 0) == pytest.approx(1e-3) and lr_at(t, 100) == pytest.approx(1e-4)
    assert lr_at(t, 50) == pytest.approx(5.5e-4) and lr_at(t, 25) == pytest.approx(1e-4 + 9e-4 * (1 + 0.5 ** 0.5) / 2)
    lin = dataclasses.replace(t, lr_schedule="linear", lr_warmup=20, lr_min=0.0)
    assert [lr_at(lin, s) for s in (0, 9, 19)] == pytest.approx([5e-5, 5e-4, 1e-3])  # warm-up ends at lr
    assert lr_at(lin, 60) == pytest.approx(5e-4) and lr_at(lin, 100) == 0.0
    const = dataclasses.replace(t, lr_schedule="constant", lr_warmup=0)
    assert {lr_at(const, s) for s in range(101)} == {1e-3}


def test_the_logged_rate_is_the_scheduled_one_and_bad_schedules_are_refused(tmp_path):
    config = load_config("digits", TINY + ["training.n_iters=20", "training.lr_schedule=linear", "training.lr_min=0",
                                         "training.lr=1e-3", "training.lr_warmup=0"])
    train(config, tmp_path, device="cpu", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "loss" in r] == pytest.approx([1e-3 * k / 19 for k in (15, 10, 5, 0)])  # after steps 4, 9, 14, 19
    for bad, key in (("training.lr_schedule=step", "lr_schedule"), ("training.lr_warmup=-1", "lr_warmup"),
                     ("training.lr_min=1", "lr_min")):
        with pytest.raises(ConfigError, match=key):
            load_config("digits", TINY + ["training.n_iters=20", bad])


def test_resume_reuses_the_recorded_precision_instead_of_deciding_again(tmp_path, monkeypatch, capsys):
    from ncsn import autotune, runtime
    from ncsn.runtime import RuntimeOptions

    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_decided", {})
    monkeypatch.setattr(runtime, "_announced", set())
    monkeypatch.setattr(autotune, "cpu_info", lambda path=None: ("CPU with AMX", frozenset({"amx_bf16"})))
    clock = [0.0]

    def favours_bf16(*args, **kwargs):  # a trial in which bf16 takes half the time
        return lambda precision: clock.__setitem__(0, clock[0] + (1.0 if precision == "bf16" else 2.0))

    monkeypatch.setattr(runtime, "trial_workload", favours_bf16)
    monkeypatch.setattr(autotune, "perf_counter", lambda: clock[0])
    sets = TINY + ["training.ema=false", "training.eval_every=1000"]
    run = tmp_path / "auto"
    train(load_config("digits", sets + ["training.n_iters=5"]), run, device="cpu", progress=False,
          runtime=RuntimeOptions())
    record = json.loads((run / "runtime.json").read_text())
    assert (record["precision"], record["requested"], record["channels_last"]) == ("bf16", "auto", False)
    assert record["machine"]["cpu"] == "CPU with AMX" and "timed trial" in record["reason"]

    # Resumed where the rule would now pick fp32 (no native bf16) and any trial is an error: the record decides.
    monkeypatch.setattr(autotune, "_decided", {})
    monkeypatch.setattr(autotune, "cpu_info", lambda path=None: ("CPU without", frozenset({"avx2"})))
    monkeypatch.setattr(runtime, "trial_workload", lambda *a, **k: pytest.fail("the resumed run ran a trial"))
    capsys.readouterr()
    train(load_config("digits", sets + ["training.n_iters=10"]), run, resume=True, device="cpu", progress=False,
          runtime=RuntimeOptions())
    assert "precision bf16 for the resumed run: recorded in" in capsys.readouterr().err
    assert json.loads((run / "runtime.json").read_text())["precision"] == "bf16"
    straight = tmp_path / "straight"
    train(load_config("digits", sets + ["training.n_iters=10"]), straight, device="cpu", progress=False,
          runtime=RuntimeOptions(precision="bf16"))
    a, b = final_state(straight)["model"], final_state(run)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted bf16 run

    (run / "runtime.json").write_text("{broken")
    with pytest.raises(ValueError, match="runtime.json is unreadable.*--precision fp32 or bf16"):
        train(load_config("digits", sets + ["training.n_iters=15"]), run, resume=True, device="cpu",
              progress=False, runtime=RuntimeOptions())
    capsys.readouterr()
    train(load_config("digits", sets + ["training.n_iters=15"]), run, resume=True, device="cpu", progress=False,
          runtime=RuntimeOptions(precision="fp32"))  # an explicit choice resumes and is recorded
    assert json.loads((run / "runtime.json").read_text())["precision"] == "fp32"
    (run / "runtime.json").unlink()  # a run folder from before the record trained in fp32, the default then
    train(load_config("digits", sets + ["training.n_iters=20"]), run, resume=True, device="cpu", progress=False,
          runtime=RuntimeOptions())
    assert "precision fp32 for the resumed run: no runtime.json" in capsys.readouterr().err


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = training.Objective.loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] >= 6 else out  # the training loss of step 6

    monkeypatch.setattr(training.Objective, "loss", poisoned)
    config = load_config("digits", TINY + ["training.n_iters=20"])
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf by step 10.*checkpoint_00000005.pt"):
        train(config, tmp_path, device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    state = final_state(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    sets = [f"--set={s}" for s in TINY + ["training.n_iters=5", "training.ema=false"]]
    one = cli("train", "--config", "digits", "--device", "cpu", "--no-progress", "--workdir", str(tmp_path / "one"),
              *sets)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ncsn.cli",
         "train", "--config", "digits", "--device", "cpu", "--no-progress", "--workdir", str(tmp_path / "two"), *sets],
        env=ENV, capture_output=True, text=True, check=False,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = final_state(tmp_path / "one")["model"], final_state(tmp_path / "two")["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    first = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["processes"] == 2
    alone = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == alone["step"] == 5
    assert first["loss"] == pytest.approx(alone["loss"], abs=1e-5)  # the global batch's mean loss, not rank 0's


def test_shards_split_the_global_batch():
    from ncsn.distributed import shard

    assert [shard(16, r, 2) for r in (0, 1)] == [slice(0, 8), slice(8, 16)]
    with pytest.raises(ValueError, match="does not split evenly"):
        shard(15, 0, 2)


def test_ema_warmup_follows_score_sde_decay_from_the_initial_weights():
    """Score-SDE's models/ema.py: the shadow starts at the initial weights and the k-th update uses the decay
    min(rate, (1 + k)/(10 + k)); written out here as it is there."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.75), use_buffers=True)
    shadow = [p.detach().clone() for p in model.parameters()]
    for k in range(1, 41):  # the warm-up's decay reaches 0.75 at k = 23
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        training.update_ema(ema, model, warmup_rate=0.75)
        decay = min(0.75, (1 + k) / (10 + k))
        for s, p in zip(shadow, model.parameters()):
            s.sub_((1.0 - decay) * (s - p.detach()))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ema.module.parameters(), shadow)), k
    assert int(ema.n_averaged) == 40


def test_train_step_clips_the_gradient_norm():
    from ncsn import ScoreModel, geometric_sigmas
    from ncsn.losses import Objective

    from .conftest import TinyUnconditional

    torch.manual_seed(0)
    model = ScoreModel(TinyUnconditional(1, 4), geometric_sigmas(1.0, 0.01, 5), scale_by_sigma=True)
    objective = Objective("ve", model.sigmas)
    gen = torch.Generator().manual_seed(0)
    x, noise, sigma = torch.rand(8, 1, 8, 8, generator=gen), torch.randn(8, 1, 8, 8), objective.draw_sigma(8, gen)

    def grad_norm(clip):
        t = load_config("digits", [f"training.grad_clip={clip}"]).training
        trial = ScoreModel(TinyUnconditional(1, 4), model.sigmas, scale_by_sigma=True)
        trial.load_state_dict(model.state_dict())
        training.train_step(trial, trial, training.make_optimizer(trial, t), x, sigma, noise, objective, t)
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trial.parameters()])).item()

    unclipped = grad_norm("null")
    assert unclipped > 0.1
    assert grad_norm(0.05) == pytest.approx(0.05, rel=1e-4)


class TinySigmaNet(torch.nn.Module):
    """A tiny network conditioned on sigma through ln(sigma), as NCSN++ is: net(x, sigma)."""

    conditioning, level_conditioned = "sigma", False

    def __init__(self, in_channels: int, ngf: int):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(in_channels, ngf, 3, padding=1)
        self.embed = torch.nn.Linear(1, ngf)
        self.conv_out = torch.nn.Conv2d(ngf, in_channels, 3, padding=1)

    def forward(self, x, sigma):
        h = self.conv_in(x) + self.embed(sigma.log().view(-1, 1))[:, :, None, None]
        return self.conv_out(torch.nn.functional.silu(h))


def test_edm_training_resumes_bit_identically_and_its_checkpoint_samples_the_same_score(tmp_path, monkeypatch):
    from ncsn import score_model
    from ncsn.model_loading import load_score_model

    monkeypatch.setitem(score_model.ARCHITECTURES, "tiny_sigma", TinySigmaNet)
    sets = TINY + ["model.arch=tiny_sigma", "model.preconditioning=edm", "training.objective=edm",
                   "training.ema_warmup=true", "training.grad_clip=1.0", "training.lr_warmup=4"]
    straight = train(load_config("digits", sets + ["training.n_iters=10"]), tmp_path / "a", device="cpu",
                     progress=False)
    train(load_config("digits", sets + ["training.n_iters=5"]), tmp_path / "b", device="cpu", progress=False)
    train(load_config("digits", sets + ["training.n_iters=10"]), tmp_path / "b", resume=True, device="cpu",
          progress=False)
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    model, config, _ = load_score_model(straight.checkpoint)
    assert (model.preconditioning, model.sigma_data, config.training.objective) == ("edm", 0.25, "edm")
    x, sigma = torch.rand(4, 1, 8, 8), torch.tensor([0.01, 0.1, 1.0, 3.0])
    reference = score_model.ScoreModel(TinySigmaNet(1, 4), model.sigmas, preconditioning="edm")
    reference.load_state_dict(a["ema"])
    with torch.no_grad():
        assert torch.equal(model(x, sigma), reference(x, sigma))


@pytest.mark.parametrize("dequantize", [False, True])
def test_heldout_loss_follows_dequantize_against_a_closed_form(dequantize):
    """With s(x~, sigma) = -x~ / sigma^2 the DSM residual is sigma*s + z = -x / sigma: the loss of image x at level
    sigma is 1/2 ||x||^2 / sigma^2 (anneal power 2), free of the noise, so it shows which x was scored."""
    images = torch.randint(0, 256, (12, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    sigmas = torch.tensor([1.0, 0.3, 0.05])
    per_level = training.heldout_loss(lambda x, s: -x / s.view(-1, 1, 1, 1) ** 2, images, sigmas, 2.0, seed=0,
                                      dequantize=dequantize)
    x = images.double() / 255
    levels = torch.arange(12) % 3
    exact = [float((0.5 * x[levels == i].flatten(1).square().sum(1) / sigmas[i].double() ** 2).mean()) for i in range(3)]
    if dequantize:  # x*255/256 + U/256 moves each pixel by up to 1/256: the finest level sees it
        assert per_level[2] != pytest.approx(exact[2], rel=1e-3)
    else:
        assert per_level == pytest.approx(exact, rel=1e-5)


def test_logged_test_loss_of_a_run_without_dequantisation_is_on_undequantised_images(tmp_path):
    config = load_config("digits", TINY + ["training.n_iters=5", "data.dequantize=false"])
    train(config, tmp_path, device="cpu", progress=False)
    row = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "test_loss" in line][0]
    from ncsn.data import load_split
    from ncsn.model_loading import load_score_model

    model, _, _ = load_score_model(list_checkpoints(tmp_path)[-1][1], ema=True)
    test = load_split(config.data, "test", limit=config.training.eval_batch_size).images
    args = (model, test, model.sigmas, config.training.anneal_power, config.training.seed)
    plain, dequantised = (training.heldout_loss(*args, dequantize=d) for d in (False, True))
    assert row["test_loss_per_level"] == pytest.approx(plain, rel=1e-5)
    assert row["test_loss_per_level"] != pytest.approx(dequantised, rel=1e-5)
