"""Official NCSN / NCSNv2 checkpoint layouts: the files the official code writes, and the ones it does not."""

import json

import pytest
import torch

from .conftest import run
from ncsn import CondRefineNetDilated, NCSNv2, NCSNv2Deeper
from ncsn.checkpoint import CheckpointError, load_score_model
from ncsn.nets.layers import InstanceNormPlusPlus
from ncsn.nets.refinenet import NCSN_STAGES, RefineNet
from ncsn.samplers import denoise_for
from ncsn.sigmas import geometric_sigmas, ncsnv2_step_lr

ARCHS = ("ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest")
ADAM = {"state": {}, "param_groups": []}


def prefixed(weights):
    return {f"module.{k}": v for k, v in weights.items()}


def v2_file(path, net, sigmas, ema=True, step=300):
    """An NCSNv2-layout file: [model with module. names and module.sigmas, optimizer, epoch, step(, ema shadow)]."""
    state = [prefixed({"sigmas": sigmas, **net.state_dict()}), ADAM, 3, step]
    if ema:
        state.append({k: v + 0.5 for k, v in net.state_dict().items()})
    torch.save(state, path)
    return path


def scores(model, x, labels):
    with torch.no_grad():
        return model.at_levels(x, labels)


@pytest.mark.parametrize("arch", ARCHS)
def test_official_v2_files_load_with_ema_by_default(arch, data_dir):
    path = data_dir / f"official_{arch}_tiny.pth"
    expected = torch.load(data_dir / "official_ncsnv2_tiny_outputs.pt", weights_only=True)[arch]
    official_sigmas = torch.load(path, weights_only=True)[0]["module.sigmas"]
    model, config, info = load_score_model(path, dataset="cifar10", image_size=16)
    assert info == {"weights": "official-v2-ema", "step": 1234}
    m = config.model
    assert (m.arch, m.in_channels, m.num_scales, m.scale_by_sigma) == (arch, 3, len(official_sigmas), True)
    assert m.ngf == (4 if arch == "ncsnv2" else 2) and torch.equal(model.sigmas, official_sigmas)
    assert config.sampling.ald.denoise and config.data.dequantize is False and config.data.image_size == 16
    tol = {"rtol": 1e-4, "atol": 1e-4 * expected["ema"].abs().max().item()}
    assert torch.allclose(scores(model, expected["x"], expected["labels"]), expected["ema"], **tol)
    raw, _, raw_info = load_score_model(path, ema=False, dataset="cifar10", image_size=16)
    assert raw_info["weights"] == "official-v2"
    assert torch.allclose(scores(raw, expected["x"], expected["labels"]), expected["raw"], **tol)


def test_released_ladders_get_the_official_sampling_settings(tmp_path):
    torch.manual_seed(0)
    path = v2_file(tmp_path / "checkpoint_300000.pth", NCSNv2(3, 2), geometric_sigmas(50.0, 0.01, 232))
    _, config, _ = load_score_model(path, dataset="cifar10")
    s = config.sampling.ald
    assert (config.data.image_size, s.n_steps_each, s.step_lr, s.denoise) == (32, 5, 6.2e-6, True)
    _, celeba, _ = load_score_model(v2_file(tmp_path / "c.pth", NCSNv2(3, 2), geometric_sigmas(90.0, 0.01, 500)),
                                    dataset="celeba")
    assert (celeba.data.image_size, celeba.sampling.ald.n_steps_each, celeba.sampling.ald.step_lr) == (64, 5, 3.3e-6)


def test_a_v2_file_without_ema_takes_the_raw_weights(tmp_path):
    torch.manual_seed(0)
    net = NCSNv2(3, 2)
    path = v2_file(tmp_path / "noema.pth", net, geometric_sigmas(5.0, 0.01, 4), ema=False)
    model, _, info = load_score_model(path, dataset="cifar10", image_size=8)
    assert info == {"weights": "official-v2", "step": 300}
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), net.state_dict().values()))
    with pytest.raises(CheckpointError, match="no EMA weights; use --no-ema"):
        load_score_model(path, ema=True, dataset="cifar10", image_size=8)


def test_official_v1_file_needs_its_dataset_named(tmp_path):
    torch.manual_seed(0)
    net = CondRefineNetDilated(3, 8, 10)
    path = tmp_path / "checkpoint.pth"
    torch.save([prefixed(net.state_dict()), ADAM], path)
    with pytest.raises(CheckpointError, match="do not record their dataset: pass --dataset NAME") as err:
        load_score_model(path)
    assert "\n" not in str(err.value)
    model, config, info = load_score_model(path, dataset="celeba")
    assert info == {"weights": "official-v1", "step": None}
    assert (config.data.dataset, config.data.image_size, config.model.ngf, config.model.arch) == ("celeba", 32, 8,
                                                                                                    "ncsn_v1")
    assert denoise_for(config.sampling) is False and config.sampling.ald.n_steps_each == 100  # ald: no final step
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 5])
    with torch.no_grad():
        assert torch.equal(model.at_levels(x, y), net(x, y))
    with pytest.raises(CheckpointError, match="has 1 channel"):
        load_score_model(path, dataset="mnist")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_score_model(path, ema=True, dataset="cifar10")


def test_sizes_without_an_official_release_must_be_given(tmp_path):
    torch.manual_seed(0)
    path = v2_file(tmp_path / "deeper.pth", NCSNv2Deeper(3, 2), geometric_sigmas(5.0, 0.01, 4))
    with pytest.raises(CheckpointError, match="pass --image-size"):
        load_score_model(path, dataset="cifar10")
    with pytest.raises(CheckpointError, match="multiple of 4"):
        load_score_model(path, dataset="cifar10", image_size=18)
    _, config, _ = load_score_model(path, dataset="cifar10", image_size=24)
    ratio = (5.0 / 0.01) ** (1 / 3)  # an unreleased ladder: T = 5 and the step-size rule
    assert config.data.image_size == 24 and config.sampling.ald.n_steps_each == 5
    assert config.sampling.ald.step_lr == pytest.approx(ncsnv2_step_lr(5, 0.01, ratio), rel=1e-6)


def test_other_layouts_get_messages_that_say_what_they_are(tmp_path):
    torch.manual_seed(0)
    baseline = RefineNet(3, 4, NCSN_STAGES, InstanceNormPlusPlus, refine_norms=True, pool="mean")
    v1, v2 = CondRefineNetDilated(1, 4, 10), NCSNv2(3, 2)
    sigmas = geometric_sigmas(5.0, 0.01, 4)
    cases = {
        "baseline.pth": ([prefixed(baseline.state_dict()), ADAM], "BaselineRunner.*single noise level 0.01"),
        "bare_v1.pth": (prefixed(v1.state_dict()), r"bare state_dict of an official NCSN v1.*\[state_dict, \{\}\]"),
        "bare_v2.pth": ({"sigmas": sigmas, **v2.state_dict()}, r"bare state_dict of an official NCSNv2 network"),
        "unknown.pth": ([{"module.fc.weight": torch.zeros(2, 2)}, ADAM], "no official layout known here.*'module.fc"),
        "v2_as_v1.pth": ([prefixed({"sigmas": sigmas, **v2.state_dict()}), ADAM], "no official layout.*NCSNv2"),
        "no_ladder.pth": ([prefixed(v2.state_dict()), ADAM, 0, 0], "without its module.sigmas ladder"),
        "bad_ladder.pth": ([prefixed({"sigmas": sigmas.flip(0), **v2.state_dict()}), ADAM, 0, 0], "decreasing"),
        "bad_ema.pth": ([prefixed({"sigmas": sigmas, **v2.state_dict()}), ADAM, 0, 0, {"begin_conv.bias": sigmas}],
                        "its EMA weights do not fit the NCSNv2 network"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / name)
        with pytest.raises(CheckpointError, match=message) as err:
            load_score_model(tmp_path / name, dataset="cifar10", image_size=8)
        assert "\n" not in str(err.value) and name in str(err.value), name
    torch.save([prefixed(v1.state_dict()), {}], tmp_path / "wrapped_v1.pth")  # the hint of the bare-dict message
    model, _, _ = load_score_model(tmp_path / "wrapped_v1.pth", dataset="mnist")
    assert torch.equal(model.net.end_conv.bias, v1.end_conv.bias)


def test_dataset_options_are_refused_where_the_checkpoint_records_them(tmp_path):
    from .test_checkpoint import tiny_checkpoint

    tiny_checkpoint(tmp_path / "ck.pt")
    assert load_score_model(tmp_path / "ck.pt", dataset="digits", image_size=8)[1].data.dataset == "digits"
    with pytest.raises(CheckpointError, match="--dataset is for official checkpoints; this one records digits"):
        load_score_model(tmp_path / "ck.pt", dataset="mnist")
    with pytest.raises(CheckpointError, match="--image-size is for official checkpoints"):
        load_score_model(tmp_path / "ck.pt", image_size=16)


def test_cli_samples_exports_inpaints_and_evaluates_official_v2_files(tmp_path, data_dir, one_thread):
    path = data_dir / "official_ncsnv2_tiny.pth"
    fast = ["--steps-each", 1, "--device", "cpu"]
    missing = run("sample", "--checkpoint", path, "--n", 2, "--out", tmp_path / "s", *fast)
    assert missing.exit_code == 1 and "pass --dataset NAME" in missing.output
    result = run("sample", "--checkpoint", path, "--dataset", "cifar10", "--image-size", 16, "--n", 2,
                 "--out", tmp_path / "s", *fast)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s" / "sample_config.json").read_text())
    assert (summary["weights"], summary["step"], summary["denoise"], summary["n_steps_each"]) == (
        "official-v2-ema", 1234, True, 1)
    result = run("export", "--checkpoint", path, "--dataset", "cifar10", "--image-size", 16, "--no-ema",
                 "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    exported, config, info = load_score_model(tmp_path / "export")
    official, _, _ = load_score_model(path, ema=False, dataset="cifar10", image_size=16)
    assert info["weights"] == "official-v2" and config.model.arch == "ncsnv2"
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), official.state_dict().values()))
    bad = run("eval", "--checkpoint", path, "--dataset", "mnist", "--metrics", "loss", "--out", tmp_path / "e.json")
    assert bad.exit_code == 1 and "has 1 channel(s)" in bad.output

    torch.manual_seed(0)
    grey = v2_file(tmp_path / "grey.pth", NCSNv2(1, 2), geometric_sigmas(5.0, 0.01, 3))
    result = run("eval", "--checkpoint", grey, "--dataset", "digits", "--image-size", 8, "--metrics", "loss",
                 "--n", 2, "--loss-images", 8, "--out", tmp_path / "e.json", *fast)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["weights"] == "official-v2-ema" and len(report["metrics"]["loss"]["per_level"]) == 3
    result = run("inpaint", "--checkpoint", grey, "--dataset", "digits", "--image-size", 8, "--n-images", 2,
                 "--n-per-image", 1, "--out", tmp_path / "inp", *fast)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "inp" / "inpainting.json").read_text())["weights"] == "official-v2-ema"
