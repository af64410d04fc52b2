import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ncsn import annealed_langevin, geometric_sigmas, per_example_generators, uniform_init
from ncsn.cli import main
from ncsn.evaluation.inpainting import mean_fill, quality
from ncsn.inpainting import inpaint
from ncsn.masks import fit_mask, make_mask
from ncsn.sigmas import ladder_levels

from .conftest import gaussian_score, run, train_tiny

SIGMAS = geometric_sigmas(1.0, 0.01, 10)
TINY = ["model.ngf=4", "training.n_iters=4", "training.batch_size=16", "training.checkpoint_every=4",
        "training.sample_every=100", "training.sample_n=4", "sampling.n_steps_each=2", "sampling.batch_size=8",
        "training.log_every=2", "training.eval_every=100"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_known_pixels_come_back_exactly_for_any_size_channels_and_mask_form():
    images = torch.rand(3, 3, 5, 7, generator=gen(1))
    mask = torch.rand(3, 5, 7, generator=gen(2)) < 0.5  # per image, shared by the channels
    for redraw in (False, True):
        out = inpaint(gaussian_score(0.5, 0.3, SIGMAS), images, mask, SIGMAS, 5, 2e-5, denoise=True,
                      redraw_every_step=redraw, generator=gen(3))
        known = mask[:, None].expand_as(images)
        assert out.shape == images.shape and torch.equal(out[known], images[known])
        assert (out[~known] - images[~known]).abs().mean() > 0.05


def test_mask_forms_that_mean_the_same_give_the_same_completions():
    images = torch.rand(2, 2, 4, 4, generator=gen(1))
    shared = make_mask("left-half", 4, 4)
    forms = [shared, shared.float(), shared.numpy(), shared.expand(2, 4, 4).double(), shared.expand(2, 2, 4, 4).int(),
             shared.view(1, 1, 4, 4)]
    outs = [inpaint(gaussian_score(0.5, 0.3, SIGMAS), images, m, SIGMAS, 3, 2e-5, generator=gen(4)) for m in forms]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_all_known_mask_returns_the_originals():
    images = torch.rand(4, 1, 6, 6, generator=gen(1))
    out = inpaint(gaussian_score(0.5, 0.3, SIGMAS), images, torch.ones(6, 6), SIGMAS, 3, 2e-5, denoise=True,
                  generator=gen(0))
    assert torch.equal(out, images)


@pytest.mark.parametrize("per_example", [False, True])
def test_empty_mask_is_unconditional_sampling_with_the_same_generator(per_example):
    def generators():
        return per_example_generators(7, 5) if per_example else gen(7)

    score = gaussian_score(0.4, 0.2, SIGMAS)
    images = torch.rand(5, 3, 4, 4, generator=gen(1))
    out = inpaint(score, images, torch.zeros(5, 1, 4, 4, dtype=torch.bool), SIGMAS, 4, 2e-5, denoise=True,
                  generator=generators())
    g = generators()
    reference = annealed_langevin(score, uniform_init(images.shape, g), SIGMAS, 4, 2e-5, denoise=True, generator=g)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("shape", [(4, 4), (3, 8, 8), (2, 3, 8, 8), (8, 8, 1), (2, 1, 8, 7), (8,)])
def test_a_mask_that_does_not_fit_is_refused_naming_both_shapes(shape):
    images = torch.rand(2, 1, 8, 8)
    expected = f"mask of shape {tuple(shape)} does not fit images of shape (2, 1, 8, 8)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        inpaint(gaussian_score(0.5, 0.3, SIGMAS), images, torch.ones(shape), SIGMAS, 1, 2e-5)


def test_a_mask_that_is_not_zero_one_is_refused():
    with pytest.raises(ValueError, match="mask values must be 0 or 1"):
        fit_mask(torch.full((8, 8), 0.5), torch.rand(1, 1, 8, 8))


def gaussian_data(dim: int):
    """A correlated Gaussian N(mu, cov) over flattened images, and its exact perturbed score per noise level."""
    g = gen(0)
    b = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    cov = 0.3 * b @ b.T + 0.02 * torch.eye(dim, dtype=torch.float64)
    mu = 0.5 + 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)
    precisions = torch.linalg.inv(cov + SIGMAS.double().view(-1, 1, 1) ** 2 * torch.eye(dim)).float()

    def score(x, sigma):
        assert bool((sigma == sigma[0]).all())  # the sampler moves a whole batch through one level at a time
        level = int(ladder_levels(SIGMAS, sigma[:1]))
        return -((x.flatten(1) - mu.float()) @ precisions[level]).view_as(x)

    return mu, cov, score


@pytest.mark.parametrize("redraw", [False, True])
def test_gaussian_completions_have_the_closed_form_conditional_mean_and_covariance(redraw):
    shape, n = (2, 2, 2), 3000
    mu, cov, score = gaussian_data(8)
    originals = (mu[:, None] + torch.linalg.cholesky(cov) @ torch.randn(8, 2, generator=gen(5), dtype=torch.float64)).T
    mask = torch.zeros(2, *shape)
    mask[0, 0] = 1  # image 0: all of channel 0 and one pixel of channel 1 known
    mask[0, 1, 0, 0] = 1
    mask[1, :, :, 0] = 1  # image 1: the left column in both channels
    images = originals.float().view(2, *shape).repeat_interleave(n, dim=0)
    out = inpaint(score, images, mask.repeat_interleave(n, dim=0), SIGMAS, 100, 1.5e-4, redraw_every_step=redraw,
                  generator=gen(6)).double().view(2, n, 8)
    for j in range(2):
        k = mask[j].flatten().bool()
        u = ~k
        gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])
        mean = mu[u] + gain @ (originals[j, k] - mu[k])
        cond = cov[u][:, u] - gain @ cov[k][:, u]
        sd = cond.diag().sqrt()
        mean_err = ((out[j][:, u].mean(0) - mean) / sd).abs().max()
        cov_err = ((torch.cov(out[j][:, u].T) - cond) / (sd[:, None] * sd)).abs().max()
        # Monte Carlo: 1/sqrt(n) = 0.018 for the mean, sqrt(2/n) = 0.026 for a variance, in units of sd
        assert mean_err < 0.09 and cov_err < 0.14, (j, float(mean_err), float(cov_err))
        # ... and the test has teeth: the unconditional moments would fail it
        assert ((mu[u] - mean) / sd).abs().max() > 0.3 or ((cov[u][:, u] - cond) / (sd[:, None] * sd)).abs().max() > 0.5


def test_named_masks():
    def known(spec):
        return make_mask(spec, 4, 6).int().tolist()

    assert known("left-half") == [[1, 1, 1, 0, 0, 0]] * 4
    assert known("right-half") == [[0, 0, 0, 1, 1, 1]] * 4
    assert known("top-half") == [[1] * 6] * 2 + [[0] * 6] * 2
    assert known("bottom-half") == [[0] * 6] * 2 + [[1] * 6] * 2
    assert known("every-other-row") == [[1] * 6, [0] * 6] * 2
    assert known("center-box") == [[1] * 6, [1, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1], [1] * 6]
    a, b, c = make_mask("random-pixels:0.25", 8, 8, seed=1), make_mask("random-pixels:0.25", 8, 8, seed=1), \
        make_mask("random-pixels:0.25", 8, 8, seed=2)
    assert int((~a).sum()) == 16 and torch.equal(a, b) and not torch.equal(a, c)


def test_png_masks_and_bad_specs(tmp_path):
    grey = np.zeros((4, 6), np.uint8)
    grey[:, :2] = 200
    Image.fromarray(grey).save(tmp_path / "m.png")
    assert make_mask(str(tmp_path / "m.png"), 4, 6).int().tolist() == [[1, 1, 0, 0, 0, 0]] * 4
    with pytest.raises(ValueError, match=r"m.png is 6x4 but the images are 8x8"):
        make_mask(str(tmp_path / "m.png"), 8, 8)
    for spec in ("left", "random-pixels:1.5", "random-pixels:x", str(tmp_path / "none.png")):
        with pytest.raises(ValueError, match="mask|random-pixels:P"):
            make_mask(spec, 8, 8)


def test_quality_figures_and_mean_fill_baseline():
    originals = torch.tensor([[[[0.2, 1.0], [0.4, 0.0]]]])
    mask = torch.tensor([[True, False], [True, False]])
    assert torch.allclose(mean_fill(originals, mask), torch.tensor([[[[0.2, 0.3], [0.4, 0.3]]]]))
    samples = originals.unsqueeze(1).repeat(1, 3, 1, 1, 1)
    samples[0, 1, 0, 0, 1] = 0.8  # one completion off by 0.2 on one of the two missing pixels
    figures = quality(originals, samples, mask)
    assert figures["missing_share"] == 0.5 and figures["mse"] == pytest.approx(0.2**2 / 2 / 3)
    assert figures["best_psnr"] == pytest.approx(100.0)
    assert figures["average_mse"] == pytest.approx((0.2 / 3) ** 2 / 2)
    assert figures["baseline_mse"] == pytest.approx((0.7**2 + 0.3**2) / 2)
    assert figures["diversity"] == pytest.approx(float(torch.tensor([1.0, 0.8, 1.0]).std()) / 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_tiny(workdir, TINY)
    return workdir


def test_cli_inpaint_writes_completions_grid_and_figures(trained, tmp_path):
    args = ["inpaint", "--workdir", trained, "--n-images", 3, "--n-per-image", 2, "--batch-size", 4, "--seed", 2,
            "--steps-each", 1, "--device", "cpu"]
    result = run(*args, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output and "mean-fill baseline" in result.output
    files = np.load(tmp_path / "a" / "inpainting.npz")
    original, mask, samples = files["original"], files["mask"], files["samples"]
    assert original.shape == (3, 8, 8, 1) and mask.shape == (3, 8, 8) and samples.shape == (3, 2, 8, 8, 1)
    assert original.dtype == mask.dtype == samples.dtype == np.uint8
    assert (mask[:, :, :4] == 1).all() and (mask[:, :, 4:] == 0).all()  # the paper's left half by default
    assert np.array_equal(samples[:, :, :, :4], np.repeat(original[:, None, :, :4], 2, axis=1))
    report = json.loads((tmp_path / "a" / "inpainting.json").read_text())
    assert report["mask"] == "left-half" and report["missing_share"] == 0.5 and report["n_per_image"] == 2
    assert report["baseline_mse"] > 0 and report["diversity"] > 0 and report["weights"] == "ema"
    grid = Image.open(tmp_path / "a" / "grid.png")
    assert grid.size == ((4 * (8 + 2) + 2) * 4, (3 * (8 + 2) + 2) * 4)  # 2+M columns, 3 rows, x4
    again = run(*args, "--out", tmp_path / "b")
    assert again.exit_code == 0 and np.array_equal(np.load(tmp_path / "b" / "inpainting.npz")["samples"], samples)


def test_cli_inpaints_a_folder_with_a_png_mask(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 12, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    grey = np.full((8, 8), 255, np.uint8)
    grey[2:5, 2:5] = 0
    Image.fromarray(grey).save(tmp_path / "hole.png")
    result = run("inpaint", "--workdir", trained, "--images", folder, "--n-images", 2, "--n-per-image", 1,
                 "--mask", tmp_path / "hole.png", "--steps-each", 1, "--redraw", "--device", "cpu", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    files = np.load(tmp_path / "o" / "inpainting.npz")
    assert files["original"].shape == (2, 8, 8, 1) and files["original"][1].max() == 60
    assert int(files["mask"][0].sum()) == 64 - 9
    report = json.loads((tmp_path / "o" / "inpainting.json").read_text())
    assert report["redraw_every_step"] and report["n_steps_each"] == 1 and report["images"] == str(folder)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--mask", "diagonal"], "Invalid value for '--mask': unknown mask 'diagonal'"),
        (["--mask", "random-pixels:2"], "random-pixels:P needs a missing share P in [0, 1]"),
        (["--images", "/nonexistent"], "Error: --images must be test, train or a folder of images"),
        (["--n-images", "5000"], "Error: asked for 5000 images but test has only 297"),
        (["--n-per-image", "0"], "Invalid value for '--n-per-image'"),
    ],
)
def test_cli_bad_input_is_one_clear_line(trained, tmp_path, extra, message):
    result = CliRunner().invoke(main, ["inpaint", "--workdir", str(trained), "--out", str(tmp_path), *extra])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_cli_refuses_a_mask_file_of_the_wrong_size(trained, tmp_path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small.png")
    result = CliRunner().invoke(main, ["inpaint", "--workdir", str(trained), "--mask", str(tmp_path / "small.png"),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "small.png is 5x5 but the images are 8x8" in result.output


def test_cli_files_that_are_not_images_or_missing_are_one_line_naming_them(trained, tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "0.png")
    (folder / "1.png").write_bytes(b"\x89PNG truncated")
    cases = [
        (["--mask", tmp_path / "text.png"], 1, f"Error: mask file {tmp_path / 'text.png'}: not an image"),
        (["--mask", tmp_path / "missing.png"], 2, f"mask file {tmp_path / 'missing.png'}: no such file"),
        (["--images", folder, "--n-images", 2], 1, f"Error: --images {folder / '1.png'}: not an image"),
    ]
    for extra, code, message in cases:
        result = CliRunner().invoke(main, ["inpaint", "--workdir", str(trained), "--steps-each", "1", "--device",
                                           "cpu", "--out", str(tmp_path / "o"), *map(str, extra)])
        assert result.exit_code == code and isinstance(result.exception, SystemExit), result.output
        assert message in result.output and "unknown mask" not in result.output
