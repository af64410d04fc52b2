"""training.time_budget_s: a run stops at a wall-clock limit with a checkpoint, and resuming it continues exactly as
an uninterrupted run (what benchmarks/time_to_quality.py relies on to snapshot recipes at fractions of a budget)."""

import json

import pytest
import torch

from ncsn import checkpoint as ckpt
from ncsn.config import ConfigError, load_config
from ncsn.training import train

from .conftest import run

TINY = ["model.ngf=4", "training.n_iters=4", "training.batch_size=16", "training.checkpoint_every=100",
        "training.snapshot_every=100", "training.sample_every=100", "training.log_every=100", "training.eval_every=100",
        "training.lr_warmup=1", "training.sample_n=4", "sampling.n_steps_each=1"]
INSTANT = "training.time_budget_s=1e-9"  # spent by the end of the first step


def test_a_spent_budget_stops_with_a_checkpoint_and_resumes_bit_identically(tmp_path, one_thread):
    whole = train(load_config("digits", TINY), tmp_path / "whole", progress=False)
    assert whole.step == 4
    first = train(load_config("digits", [*TINY, INSTANT]), tmp_path / "cut", progress=False)
    assert first.step == 1 and first.checkpoint == ckpt.checkpoint_path(tmp_path / "cut", 1)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {"step": 1, "stopped": "time_budget", "time_budget_s": 1e-9}
    assert any("loss" in r and r["step"] == 1 for r in rows)  # the stop step is logged like a last step
    assert (tmp_path / "cut" / "samples" / "step_00000001.png").is_file()
    second = train(load_config("digits", [*TINY, INSTANT]), tmp_path / "cut", resume=True, progress=False)
    assert second.step == 2
    rest = train(load_config("digits", TINY), tmp_path / "cut", resume=True, progress=False)
    assert rest.step == 4
    a = ckpt.load_training_state(whole.checkpoint)
    b = ckpt.load_training_state(rest.checkpoint)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert a["ema_updates"] == b["ema_updates"] == 4


def test_an_unspent_budget_changes_nothing_and_the_cli_says_when_it_stopped(tmp_path, one_thread):
    result = train(load_config("digits", [*TINY, "training.time_budget_s=3600"]), tmp_path / "long", progress=False)
    assert result.step == 4
    said = run("train", "--config", "digits", "--workdir", tmp_path / "cli", "--device", "cpu", "--no-progress",
               *[f"--set={s}" for s in (*TINY, INSTANT)])
    assert said.exit_code == 0, said.output
    assert "trained to step 1 (training.time_budget_s 1e-09 spent; --resume continues)" in said.output


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_budget_must_be_positive(value):
    with pytest.raises(ConfigError, match="training.time_budget_s"):
        load_config("digits", [f"training.time_budget_s={value}"])
