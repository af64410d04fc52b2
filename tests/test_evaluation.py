import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ncsn.cli import main
from ncsn.config import load_config
from ncsn.data import DataConfig, load_split
from ncsn.evaluation import (
    classifier_score,
    fid_of_features,
    fidelity,
    frechet_distance,
    get_classifier,
    heldout_dsm_loss,
    nearest_neighbours,
    neighbour_report,
    closeness_test,
    parse_metrics,
    pick_best,
    write_sweep,
)

TINY = ["model.ngf=4", "training.n_iters=4", "training.batch_size=16", "training.checkpoint_every=2",
        "training.snapshot_every=2", "training.keep_last=1", "training.sample_every=100", "training.sample_n=4",
        "sampling.n_steps_each=2", "sampling.batch_size=8", "training.log_every=2", "training.eval_every=2"]
# IS and the classifier score are exp(mean KL) with every KL >= 0, so >= 1 in exact arithmetic only: in float64 a KL
# of identical rows comes out as a few -1e-17, so the bound holds to 1e-12 (and <= K likewise).
EXP_KL_SLACK = 1e-12


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """A private NCSN_DATA holding a quickly trained digits classifier (200 steps instead of the default)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NCSN_DATA", str(tmp_path_factory.mktemp("ncsn_data")))
        get_classifier(DataConfig("digits", image_size=8), steps=200)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    workdir = tmp_path_factory.mktemp("run")
    result = run("train", "--config", "digits", "--workdir", workdir, "--device", "cpu", "--no-progress",
                 *[f"--set={s}" for s in TINY])
    assert result.exit_code == 0, result.output
    return workdir


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16))
    assert abs(fid_of_features(features, features)) < 1e-6


def test_fid_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.5, 2, size=6), rng.uniform(0.5, 2, size=6)
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())
    exact = frechet_distance({"mu": mu1, "sigma": np.diag(var1)}, {"mu": mu2, "sigma": np.diag(var2)})
    assert exact == pytest.approx(closed, rel=1e-9)
    a = mu1 + rng.normal(size=(100_000, 6)) * np.sqrt(var1)
    b = mu2 + rng.normal(size=(100_000, 6)) * np.sqrt(var2)
    assert fid_of_features(a, b) == pytest.approx(closed, abs=0.02)


def test_classifier_score_is_one_for_identical_and_k_for_confident_balanced_predictions():
    same = np.tile([0.1, 0.6, 0.3], (50, 1))
    assert classifier_score(same) == pytest.approx(1.0)
    k = 7
    assert classifier_score(np.eye(k)[np.arange(70) % k]) == pytest.approx(k)
    soft = np.full((70, k), 1e-4)
    soft[np.arange(70), np.arange(70) % k] = 1 - 1e-4 * (k - 1)
    assert k * 0.99 < classifier_score(soft) < k


def test_sweep_picks_the_lowest_fid_on_a_fabricated_table(tmp_path):
    rows = [{"step": 5000, "fid": 40.0}, {"step": 10000, "fid": 31.5}, {"step": 15000, "fid": float("nan")},
            {"step": 20000, "fid": 33.0}, {"step": 25000, "fid": 31.5}]
    assert pick_best(rows)["step"] == 10000
    paths = write_sweep(tmp_path, [dict(r, metric="cfid", n=1000) for r in rows], pick_best(rows))
    assert paths["png"].stat().st_size > 0 and len(paths["csv"].read_text().splitlines()) == 6
    with pytest.raises(ValueError, match="no checkpoint gave a finite fid"):
        pick_best([{"step": 1, "fid": float("inf")}])


def test_nearest_neighbour_of_a_training_image_is_itself():
    train = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dist, idx = nearest_neighbours(train[[7, 123]], train, k=3, chunk=50)
    assert idx[:, 0].tolist() == [7, 123] and dist[:, 0].tolist() == [0.0, 0.0]
    assert (dist[:, 1:] > 0).all() and (dist.diff(dim=1) >= 0).all()


def test_neighbour_statistics_cover_all_samples_while_the_figure_shows_the_first(tmp_path):
    gen = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=gen)
    test = torch.randint(0, 256, (150, 1, 8, 8), dtype=torch.uint8, generator=gen)
    samples = torch.cat([train[:10], test[:90]])  # 10 copies of training images, then 90 unseen ones
    rep = neighbour_report(samples, train, test, tmp_path / "nn.png", k=2, n=8, n_stats=60)
    assert (rep["n_shown"], rep["n_samples"], rep["n_real"]) == (8, 60, 60)
    assert rep["nearest_distances"] == [0.0] * 8 and len(rep["neighbour_indices"]) == 8
    direct = nearest_neighbours(samples[:60], train, 1)[0][:, 0].numpy()
    real = nearest_neighbours(test[:60], train, 1)[0][:, 0].numpy()
    assert rep["samples_nearest"]["median"] == pytest.approx(float(np.median(direct)))
    assert rep["samples_nearest"]["min"] == 0.0 and rep["real_test_nearest"]["median"] == pytest.approx(float(np.median(real)))
    assert (tmp_path / "nn.png").is_file()


def test_heldout_loss_is_seeded_and_batch_size_free(data_cache):
    images = load_split(DataConfig("digits", image_size=8), "test").images[:40]
    sigmas = torch.tensor([1.0, 0.3, 0.1])

    def score(x, sigma):
        return -x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    a = heldout_dsm_loss(score, images, sigmas, seed=3, batch_size=7)
    b = heldout_dsm_loss(score, images, sigmas, seed=3, batch_size=500)
    c = heldout_dsm_loss(score, images, sigmas, seed=4)
    assert a["per_level"] == pytest.approx(b["per_level"], rel=1e-6) and a["n_images"] == 40
    assert a["per_level"] != c["per_level"] and len(a["per_level"]) == 3
    assert a["mean"] == pytest.approx(sum(a["per_level"]) / 3)


def test_metric_names_are_checked():
    assert parse_metrics(None, "digits") == ["cfid", "cscore", "loss", "nn"]
    assert parse_metrics(None, "cifar10") == ["is", "fid", "kid", "loss", "nn"]
    with pytest.raises(ValueError, match="unknown"):
        parse_metrics("fid,bogus", "digits")
    with pytest.raises(ValueError, match="grey-scale"):
        parse_metrics("cfid", "cifar10")


def test_eval_reports_classifier_metrics_loss_and_neighbours(trained, tmp_path):
    out = tmp_path / "eval.json"
    result = run("eval", "--workdir", trained, "--n", 16, "--batch-size", 16, "--loss-images", 40, "--device", "cpu",
                 "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["n"] == 16 and report["dataset"] == "digits" and report["step"] == 4
    assert m["cfid"]["samples"] > m["cfid"]["real_test"] >= 0 and m["cfid"]["n_test"] == 297
    assert 1 - EXP_KL_SLACK <= m["cscore"]["samples"] <= 10 + EXP_KL_SLACK and m["cscore"]["real_test"] > 5
    assert 0 < m["classifier"]["test_accuracy"] <= 1
    levels = load_config("digits").model.num_scales  # the preset's ladder
    assert len(m["loss"]["per_level"]) == levels and m["loss"]["n_images"] == 40
    assert all(math.isfinite(v) for v in m["loss"]["per_level"])
    assert m["nn"]["k"] == 5 and len(m["nn"]["nearest_distances"]) == 16 and (tmp_path / "eval" / "nn.png").is_file()
    assert {"sampling", "cfid", "cscore", "loss", "nn"} <= set(report["seconds"])
    assert (tmp_path / "eval" / "samples.npz").is_file()

    again = tmp_path / "again.json"
    run("eval", "--workdir", trained, "--samples", tmp_path / "eval" / "samples.npz", "--metrics", "loss",
        "--loss-images", 40, "--device", "cpu", "--out", again)
    assert json.loads(again.read_text())["metrics"]["loss"] == m["loss"]


def test_sweep_evaluates_every_checkpoint_then_the_best(trained, tmp_path):
    out = tmp_path / "sweep_eval.json"
    result = run("eval", "--workdir", trained, "--sweep", "--sweep-n", 8, "--n", 8, "--batch-size", 8,
                 "--metrics", "cfid",
                 "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "sweep_eval" / "sweep" / "sweep.json").read_text())
    assert [r["step"] for r in table["rows"]] == [2, 4] and table["best"] == pick_best(table["rows"])
    # keep_last=1: step 2 exists only as a slim snapshot, which the sweep reads
    assert [Path(r["checkpoint"]).name for r in table["rows"]] == ["snapshot_00000002.pt", "snapshot_00000004.pt"]
    assert [p.name for p in (trained / "checkpoints").glob("checkpoint_*.pt")] == ["checkpoint_00000004.pt"]
    assert (tmp_path / "sweep_eval" / "sweep" / "sweep.png").is_file()
    assert json.loads(out.read_text())["step"] == table["best"]["step"]


def test_missing_inception_weights_is_one_clear_line(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(fidelity, "_download", lambda target: "offline")
    result = CliRunner().invoke(main, ["eval", "--workdir", str(trained), "--metrics", "fid", "--out",
                                       str(tmp_path / "e.json"), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line and fidelity.WEIGHTS_FILE in line and "--inception-weights" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line
    result = CliRunner().invoke(main, ["eval", "--workdir", str(trained), "--metrics", "is", "--out",
                                       str(tmp_path / "e.json"), "--inception-weights", str(tmp_path / "nope.pth")])
    assert result.exit_code == 1 and "nope.pth: no such file" in result.output


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A randomly initialised state dict of torch-fidelity's InceptionV3, saved like the real weights file."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = tmp_path_factory.mktemp("inception") / fidelity.WEIGHTS_FILE
    torch.save(state, path)
    return path


def test_torch_fidelity_path_runs_end_to_end_with_random_weights(random_inception_weights, trained, tmp_path):
    """Plumbing only: random Inception weights give meaningless numbers; this checks shapes, wiring and the CLI path."""
    gen = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=gen)
    reference = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=gen)
    weights = fidelity.resolve_inception_weights(random_inception_weights)
    feats = fidelity.inception_features(samples, weights)
    ref = fidelity.inception_features(reference, weights, layers=(fidelity.POOL,))[fidelity.POOL]
    assert feats[fidelity.POOL].shape == (6, 2048) and feats[fidelity.LOGITS].shape == (6, 1008)
    out = fidelity.inception_metrics(feats, {"is", "fid", "kid"}, ref)
    assert out["is"]["mean"] >= 1 - EXP_KL_SLACK and math.isfinite(out["fid"]["samples"]) and out["kid"]["subset_size"] == 5

    result = run("eval", "--workdir", trained, "--n", 4, "--batch-size", 4, "--metrics", "is", "--inception-weights",
                 random_inception_weights, "--device", "cpu", "--out", tmp_path / "is.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "is.json").read_text())["metrics"]["is"]["splits"] == 4


def test_inception_score_of_identical_images_is_one_up_to_rounding(random_inception_weights):
    """All predictions equal: every KL is 0, so IS = 1 exactly in exact arithmetic. In float64 it lands within a few
    ulps on either side (0.9999999999999999 for this image on the development machine), which is why the bounds above
    carry EXP_KL_SLACK rather than assert IS >= 1."""
    one = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    weights = fidelity.resolve_inception_weights(random_inception_weights)
    feats = fidelity.inception_features(one.expand(6, 1, 8, 8).contiguous(), weights)
    score = fidelity.inception_metrics(feats, {"is"}, None)["is"]
    assert abs(score["mean"] - 1) <= EXP_KL_SLACK and score["std"] <= EXP_KL_SLACK
    assert abs(classifier_score(np.full((5, 4), 0.25)) - 1) <= EXP_KL_SLACK


def test_inception_weights_holding_code_are_refused(tmp_path):
    bad = tmp_path / fidelity.WEIGHTS_FILE
    torch.save({"fc.weight": torch.zeros(1), "extra": object.__new__(DataConfig)}, bad)
    with pytest.raises(fidelity.InceptionWeightsError, match="refused"):
        fidelity.resolve_inception_weights(bad)


def test_files_given_as_samples_that_are_not_samples_are_one_line_naming_them(trained, tmp_path):
    (tmp_path / "config.yaml").write_text("training:\n  lr: 0.001\n")
    np.save(tmp_path / "bare.npy", np.zeros((2, 8, 8, 1), np.uint8))
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    np.savez(tmp_path / "floats.npz", samples=np.zeros((2, 8, 8, 1), np.float32))
    for name in ("config.yaml", "bare.npy", "other.npz", "floats.npz"):
        result = CliRunner().invoke(main, ["eval", "--workdir", str(trained), "--samples", str(tmp_path / name),
                                           "--metrics", "loss", "--device", "cpu", "--out", str(tmp_path / "e.json")])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        line = result.output.strip()
        assert line.startswith(f"Error: {tmp_path / name}: ") and "\n" not in line, line


def test_closeness_test_matches_a_direct_pair_count_and_detects_a_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(1.0, 0.2, 297)
    same = rng.normal(1.0, 0.2, 1000)
    closer = same - 0.1  # half a standard deviation nearer the training set
    for s in (same, closer):
        rep = closeness_test(s, real)
        direct = ((s[:, None] > real[None, :]).sum() + 0.5 * (s[:, None] == real[None, :]).sum()) / (len(s) * len(real))
        assert rep["prob_sample_farther"] == pytest.approx(direct, abs=1e-12)
    assert closeness_test(same, real)["p_samples_closer"] > 0.05
    assert closeness_test(closer, real)["p_samples_closer"] < 1e-8
    lo, hi = closeness_test(same, real)["real_median_interval"]
    assert lo < np.median(real) < hi and hi - lo < 0.1
    assert closeness_test(same, real) == closeness_test(same, real)  # the bootstrap is seeded
