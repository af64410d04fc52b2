"""Score-SDE's checkpoint layout: EMA by default, numpy scalars in the optimizer, variant inference, refusals."""

import dataclasses
import io
import os
import re
import zipfile

import numpy as np
import pytest
import torch

from ncsn import ModelConfig, build_score_model
from ncsn.checkpoint import CheckpointError
from ncsn.model_loading import load_score_model
from ncsn.official_scoresde import infer_model
from ncsn.score_model import NCSNppConfig

from .conftest import run
from .test_ncsnpp import VARIANTS, model_config

# attention at 16 px, as in every release: the loader reads the image size off where it sits
TINY = NCSNppConfig(image_size=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.1,
                    init_scale=1.0)


def tiny_model(seed=0, **settings):
    torch.manual_seed(seed)
    config = ModelConfig(arch="ncsnpp", ngf=8, sigma_max=50.0, sigma_min=0.01, num_scales=10, scale_by_sigma=True,
                         ncsnpp=NCSNppConfig(**{**TINY.__dict__, **settings}))
    return build_score_model(config).eval(), config


def scoresde_file(model, path, shadow=None, ema=True, numpy_lr=True):
    """Score-SDE's torch.save layout: DataParallel names with the float64 ladder, the EMA shadow, numpy lr."""
    trainable = [p for p in model.net.parameters() if p.requires_grad]
    ladder = torch.tensor(np.exp(np.linspace(np.log(50.0), np.log(0.01), len(model.sigmas))))  # float64, as theirs
    weights = {"module.sigmas": ladder, **{f"module.{k}": v for k, v in model.net.state_dict().items()}}
    shadow = [p.detach() + 0.01 * (i + 1) for i, p in enumerate(trainable)] if shadow is None else shadow
    lr = np.float64(2e-4) if numpy_lr else 2e-4
    optimizer = {"state": {}, "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                                "amsgrad": False, "params": list(range(len(trainable)))}]}
    torch.save({"optimizer": optimizer, "model": weights,
                "ema": {"decay": 0.999, "num_updates": 7, "shadow_params": shadow} if ema else None, "step": 7}, path)
    return path


def as_numpy1(path):
    """The same file as numpy 1.x pickles its scalars (numpy.core.multiarray.scalar)."""
    src, out = zipfile.ZipFile(path), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())
    return path


def test_ema_weights_by_default_mapped_over_the_trainable_parameters(tmp_path):
    model, config = tiny_model()
    path = scoresde_file(model, tmp_path / "checkpoint_7.pth")
    loaded, loaded_config, info = load_score_model(path, dataset="cifar10")
    inferred = dataclasses.replace(config, ncsnpp=dataclasses.replace(config.ncsnpp, init_scale=0.0))  # init only
    assert loaded_config.model == inferred and info == {"weights": "scoresde-ema", "step": 7, "variant": "16 px"}
    mine = dict(loaded.net.named_parameters())
    trainable = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
    for i, (name, p) in enumerate(trainable):
        assert torch.equal(mine[name], p + 0.01 * (i + 1)), name
    assert torch.equal(mine["all_modules.0.W"], model.net.all_modules[0].W)  # not in the shadow: the model's own
    assert torch.equal(loaded.sigmas, model.sigmas)
    assert loaded_config.sampling.sampler == "pc" and loaded_config.data.image_size == 16


def test_no_ema_takes_the_raw_weights_and_scores_match(tmp_path):
    model, _ = tiny_model()
    path = scoresde_file(model, tmp_path / "c.pth")
    loaded, _, info = load_score_model(path, ema=False, dataset="cifar10")
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.03, 12.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma), model(x, sigma))
    assert info["weights"] == "scoresde"


@pytest.mark.parametrize("numpy_name", ["numpy2", "numpy1"])
def test_numpy_scalars_in_the_optimizer_load_under_both_pickled_names(tmp_path, numpy_name):
    model, _ = tiny_model()
    path = scoresde_file(model, tmp_path / "c.pth")
    if numpy_name == "numpy1":
        as_numpy1(path)
    with pytest.raises(Exception):  # noqa: B017 - a plain weights_only load refuses the numpy scalar
        torch.load(path, weights_only=True)
    assert load_score_model(path, dataset="cifar10")[2]["step"] == 7


def test_a_pickle_with_code_in_the_optimizer_is_still_refused(tmp_path):
    model, _ = tiny_model()
    path = scoresde_file(model, tmp_path / "c.pth")
    state = torch.load(path, weights_only=False)
    state["optimizer"]["hook"] = os.system  # a callable: code, whatever numpy scalars sit beside it
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="refused: it holds code") as err:
        load_score_model(path, dataset="cifar10")
    assert re.search(r"\(loading it would import (posix|nt)\.system\)$", str(err.value))  # numpy's not named


def test_wrong_shadow_length_or_shape_is_refused_naming_it(tmp_path):
    model, _ = tiny_model()
    trainable = [p.detach() for p in model.net.parameters() if p.requires_grad]
    short = scoresde_file(model, tmp_path / "short.pth", shadow=trainable[:-1])
    with pytest.raises(CheckpointError, match=f"shadow_params holds {len(trainable) - 1} tensors but this NCSN\\+\\+ "
                                              f"has {len(trainable)} trainable"):
        load_score_model(short, dataset="cifar10")
    assert load_score_model(short, ema=False, dataset="cifar10")[2]["weights"] == "scoresde"  # --no-ema still works
    swapped = trainable[:]
    swapped[3], swapped[4] = swapped[4], swapped[3]
    with pytest.raises(CheckpointError, match="shadow_params\\[3\\] has shape"):
        load_score_model(scoresde_file(model, tmp_path / "swapped.pth", shadow=swapped), dataset="cifar10")
    with pytest.raises(CheckpointError, match="has no EMA weights; use --no-ema"):
        load_score_model(scoresde_file(model, tmp_path / "none.pth", ema=False), ema=True, dataset="cifar10")


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    model, _ = tiny_model()
    shadow = [p.detach().clone() for p in model.net.parameters() if p.requires_grad]
    shadow[5][0] = float("nan")
    path = scoresde_file(model, tmp_path / "c.pth", shadow=shadow)
    name = [n for n, p in model.net.named_parameters() if p.requires_grad][5]
    with pytest.raises(CheckpointError, match=f"EMA weights hold non-finite values \\(first in {re.escape(name)}\\)"):
        load_score_model(path, dataset="cifar10")
    assert load_score_model(path, ema=False, dataset="cifar10")[2]["weights"] == "scoresde"


def test_dataset_of_another_variant_and_missing_dataset_are_refused(tmp_path):
    model, _ = tiny_model(ch_mult=[1, 1, 2], image_size=64)  # attention at 16 px on the third level: 64 px
    path = scoresde_file(model, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="--dataset cifar10 \\(32 px images\\) is not this checkpoint's: .*64 px"):
        load_score_model(path, dataset="cifar10")
    with pytest.raises(CheckpointError, match="does not record its dataset: pass --dataset"):
        load_score_model(path)
    with pytest.raises(CheckpointError, match="--dataset mnist has 1 channel"):
        load_score_model(path, dataset="mnist")
    assert load_score_model(path, dataset="folder")[1].data.image_size == 64


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_variants_are_inferred_from_names_and_shapes(name, embedding):
    ngf, settings, _, _ = VARIANTS[name]
    config = model_config(ngf, dict(settings, embedding=embedding))
    with torch.device("meta"):
        weights = build_score_model(config).net.state_dict()
    got = infer_model(weights, torch.tensor([50.0, 0.01]), "file")
    assert (got.ngf, got.in_channels, got.ncsnpp) == (ngf, 3, config.ncsnpp)


def test_cli_samples_an_official_file_with_a_sampler_off_the_ladder(tmp_path):
    model, _ = tiny_model()
    path = scoresde_file(model, tmp_path / "checkpoint_7.pth")
    result = run("sample", "--checkpoint", path, "--dataset", "cifar10", "--sampler", "heun", "--n-steps", "3",
                 "--n", "2", "--batch-size", "2", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "samples.npz")["samples"].shape[0] == 2


def test_discrete_checkpoint_loads_as_a_level_conditioned_model_on_its_ladder(tmp_path):
    model, _ = tiny_model(embedding="positional")
    path = scoresde_file(model, tmp_path / "c.pth")
    loaded, config, info = load_score_model(path, ema=False, dataset="cifar10")
    assert config.model.ncsnpp.embedding == "positional" and loaded.level_conditioned
    ladder = torch.tensor(np.exp(np.linspace(np.log(50.0), np.log(0.01), 10)), dtype=torch.float32)
    assert torch.equal(loaded.sigmas, ladder)
    x, levels = torch.rand(2, 3, 16, 16), torch.tensor([0, 7])
    with torch.no_grad():  # the raw network at the ladder index, divided by that level's sigma
        expected = model.net(x, levels) / ladder[levels].view(-1, 1, 1, 1)
        assert torch.allclose(loaded(x, ladder[levels]), expected, rtol=1e-6)
