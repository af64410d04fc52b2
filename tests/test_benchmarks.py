"""A smoke run of benchmarks/quality_per_nfe.py on tiny models: its JSON, PNG and table, skips and NFE counts."""

import json
import pathlib

import pytest
from PIL import Image

from ncsn.data import DataConfig
from ncsn.evaluation import get_classifier

from .conftest import train_tiny

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"
TINY = ["model.ngf=4", "training.n_iters=2", "training.batch_size=16", "training.checkpoint_every=2",
        "training.sample_every=100", "training.log_every=2", "training.eval_every=2"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The script's main(), with a private data cache holding a quickly trained digits classifier."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NCSN_DATA", str(tmp_path_factory.mktemp("ncsn_data")))
        mp.syspath_prepend(str(BENCHMARKS))
        get_classifier(DataConfig("digits", image_size=8), steps=100)
        import quality_per_nfe

        yield quality_per_nfe.main


def test_quality_per_nfe_on_a_v1_model_skips_what_it_cannot_run(bench, tmp_path):
    workdir = tmp_path / "v1"
    train_tiny(workdir, TINY)
    out = tmp_path / "result" / "v1"
    result = bench(["--workdir", str(workdir), "--out", str(out), "--device", "cpu", "--batch-size", "1000",
                    "--ald-steps", "1", "--pc-steps", "10,20", "--pc-corrector-steps", "0", "--heun-steps", "5",
                    "--ode-tols", "0.1"])
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(result))
    assert [(r["sampler"], r["budget"], r["nfe"]) for r in result["runs"]] == [
        ("ald", 1, 11), ("pc", "N=10,c=0", 10)]  # digits: 10 levels; ald's final denoising is one more
    assert {s["sampler"] for s in result["skipped"]} == {"pc", "heun", "ode"}
    assert all(r["cfid"] > 0 and 1 <= r["cscore"] <= 10 and r["seconds"] > 0 for r in result["runs"])
    assert result["n"] == 1000 and result["goal"]["reference"] is None and not result["goal"]["reached"]
    assert Image.open(out.with_suffix(".png")).size[0] > 500
    assert out.with_suffix(".md").read_text().count("\n") == 2 + 2 + 1  # header, runs, real test split


def test_quality_per_nfe_runs_heun_and_ode_on_a_sigma_scaled_model(bench, tmp_path, unconditional_arch):
    workdir = tmp_path / "v2"
    train_tiny(workdir, [*TINY, f"model.arch={unconditional_arch}"])
    out = tmp_path / "v2"
    result = bench(["--workdir", str(workdir), "--out", str(out), "--device", "cpu", "--batch-size", "1000",
                    "--samplers", "pc,heun,ode", "--pc-steps", "3", "--heun-steps", "2,3", "--ode-tols", "0.1"])
    nfe = {(r["sampler"], r["budget"]): r["nfe"] for r in result["runs"]}
    assert nfe[("pc", "N=3,c=1")] == 6 and nfe[("heun", 2)] == 3 and nfe[("heun", 3)] == 5
    assert nfe[("ode", 0.1)] >= 8 and result["skipped"] == []
    assert result["goal"]["best_at_most_100_nfe"]["nfe"] <= 100


def test_quality_per_nfe_refuses_fewer_than_1000_samples(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench(["--workdir", str(tmp_path), "--out", str(tmp_path / "x"), "--n", "100"])
