"""Everything works on NCSN++ (issue 24, item 4): a tiny NCSN++ trained on the digits by `ncsn train` with Score-SDE's
continuous VE loss, and with EDM's preconditioning and objective, then `ncsn sample` with every sampler, `ncsn
likelihood`, `ncsn export`, and the same from the export: the export gives back the same model, config and samples."""

import json

import numpy as np
import pytest
import torch

from ncsn.cli.sampler_options import untrained_ladder_note
from ncsn.config import load_config
from ncsn.model_loading import load_score_model

from .conftest import run, train_tiny

TINY_NCSNPP = ["model.arch=ncsnpp", "model.scale_by_sigma=true", "model.ngf=8", "model.ncsnpp.ch_mult=[1,2]",
               "model.ncsnpp.num_res_blocks=1", "model.ncsnpp.attn_resolutions=[4]", "model.ncsnpp.dropout=0.0",
               "model.num_scales=5", "training.n_iters=3", "training.batch_size=16", "training.checkpoint_every=3",
               "training.snapshot_every=3", "training.sample_every=3", "training.sample_n=4", "training.log_every=3",
               "training.eval_every=3", "training.eval_batch_size=16", "sampling.sampler=heun", "sampling.n_steps=2",
               "sampling.batch_size=4", "sampling.n_steps_each=2", "sampling.denoise=true"]
RECIPES = {"ve": ["training.objective=ve", "training.ema_warmup=true", "training.grad_clip=1.0"],
           "edm": ["training.objective=edm", "model.preconditioning=edm"]}
# sampler: (extra options, NFE per chain on the 5-level ladder: None for the adaptive ode)
SAMPLERS = {"pc": (["--n-steps", 3], 3 * 2), "heun": (["--n-steps", 2], 3), "ald": ([], 5 * 2 + 1),
            "ode": (["--rtol", 1e-2, "--atol", 1e-2], None)}


@pytest.fixture(scope="module", params=sorted(RECIPES))
def trained(request, tmp_path_factory, one_thread):
    """(recipe, run folder, export folder) of a 3-step NCSN++ run."""
    workdir = tmp_path_factory.mktemp(f"ncsnpp_{request.param}")
    train_tiny(workdir, [*TINY_NCSNPP, *RECIPES[request.param]])
    export = workdir / "export"
    result = run("export", "--workdir", workdir, "--out", export)
    assert result.exit_code == 0, result.output
    return request.param, workdir, export


def sample(source, out, sampler, *args):
    result = run("sample", "--checkpoint", source, "--device", "cpu", "--precision", "fp32", "--out", out, "--n", 4,
                 "--seed", 3, "--sampler", sampler, *args)
    assert result.exit_code == 0, result.output
    return result.stderr, json.loads((out / "sample_config.json").read_text()), np.load(out / "samples.npz")["samples"]


def test_export_rebuilds_the_same_model_and_nested_config(trained):
    recipe, workdir, export = trained
    model, config, _ = load_score_model(workdir)
    again, exported, _ = load_score_model(export)
    assert exported == config and exported.model.ncsnpp.ch_mult == [1, 2]
    assert exported.training.objective == recipe and again.preconditioning == config.model.preconditioning
    assert again.sigma_conditioned and not again.level_conditioned
    assert model.state_dict().keys() == again.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    grid = workdir / "samples" / "step_00000003.png"  # the training grid, drawn by heun on the sigma-conditioned net
    assert grid.is_file()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_and_the_export_samples_the_same(trained, sampler, tmp_path):
    recipe, workdir, export = trained
    args, nfe = SAMPLERS[sampler]
    said, meta, samples = sample(workdir, tmp_path / "run", sampler, *args)
    said_again, meta_again, from_export = sample(export, tmp_path / "export", sampler, *args)
    assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.uint8
    assert np.array_equal(from_export, samples) and meta_again["nfe"] == meta["nfe"]
    assert meta["sampler"] == sampler and (nfe is None and meta["nfe"] > 0 or meta["nfe"] == nfe)
    # ald runs on the model's ladder, which a net trained on continuous sigma never saw: allowed, said in one line
    config = load_score_model(workdir)[1]
    config.sampling.sampler = sampler
    note = [line for line in said.splitlines() if line.startswith("note:")]
    assert note == ([untrained_ladder_note(config)] if sampler == "ald" else [])
    assert all(f"training.objective {recipe})" in line for line in note)


def test_likelihood_is_the_same_from_the_export(trained, tmp_path):
    _, workdir, export = trained
    reports = []
    for source in (workdir, export):
        result = run("likelihood", "--checkpoint", source, "--device", "cpu", "--n", 2, "--batch-size", 2,
                     "--rtol", 1e-2, "--atol", 1e-2, "--seed", 1)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.output))
    bpd = reports[0]["bits_per_dim"]
    assert bpd["n"] == 2 and np.isfinite(bpd["mean"]) and bpd["mean"] > 0
    assert reports[1]["bits_per_dim"]["mean"] == bpd["mean"]


def test_the_ladder_note_is_for_ald_on_a_net_trained_off_its_ladder():
    digits = load_config("digits")  # the v1 preset is trained on its own ladder: nothing to say
    assert untrained_ladder_note(digits) is None
    ve = load_config("digits", [*TINY_NCSNPP, "training.objective=ve", "sampling.sampler=ald"])
    assert untrained_ladder_note(ve) == (
        "note: ald runs on the model's 5-level ladder (sigma 2.5 -> 0.05), a ladder this network was not trained over "
        "(it was trained on continuous sigma, training.objective ve); running it anyway")
    assert untrained_ladder_note(load_config("digits", [*TINY_NCSNPP, "training.objective=ve"])) is None  # heun
    ladder = load_config("digits", [*TINY_NCSNPP, "training.objective=ladder", "sampling.sampler=ald"])
    assert untrained_ladder_note(ladder) is None  # NCSN++ trained on the ladder itself
