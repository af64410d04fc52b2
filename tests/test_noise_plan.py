import json
import math

import numpy as np
import pytest
import torch
import yaml

from ncsn.config import load_config
from ncsn.noise_plan import ladder_plan, noise_plan
from ncsn.sigmas import max_pairwise_distance, ncsnv2_overlap, ncsnv2_step_criterion

from .conftest import run


@pytest.mark.parametrize("sigma_1, dim, levels, eps", [(50.0, 3 * 32 * 32, 232, 6.2e-6), (90.0, 3 * 64 * 64, 500, 3.3e-6)])
def test_rules_reproduce_the_shipped_ncsnv2_configs(sigma_1, dim, levels, eps):
    """CIFAR-10 (sigma_1 50, L 232, T 5, eps 6.2e-6) and CelebA-64 (sigma_1 90, L 500, T 5, eps 3.3e-6).

    The level counts are not an independent check: OVERLAP_TARGET = 0.566 was fitted so that the rule reproduces
    exactly these two ladders (a calibration to the shipped configs). The step sizes are a real check (technique 4).
    The rule itself is tested at the paper's 0.5 below."""
    plan = ladder_plan(sigma_1, dim, steps_each=5)
    assert plan["num_scales"] == levels
    assert plan["step_lr"] == pytest.approx(eps, rel=0.02)
    assert plan["overlap"] == pytest.approx(ncsnv2_overlap(dim, (sigma_1 / 0.01) ** (1 / (levels - 1))))
    assert plan["step_criterion"] == pytest.approx(ncsnv2_step_criterion(plan["step_lr"], 5, 0.01, plan["gamma"]))
    # the paper's literal "overlap 0.5" gives fewer levels; the shipped ladders sit at 0.566-0.567
    assert ladder_plan(sigma_1, dim, 5, target=0.5)["num_scales"] == {232: 220, 500: 473}[levels]


def test_noise_plan_of_images_scales_uint8_and_finds_the_farthest_pair():
    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    images[3] = 255  # all-white vs all-black: distance sqrt(16) = 4
    plan = noise_plan(images, steps_each=3)
    assert plan.sigma_max == pytest.approx(4.0) and plan.farthest_pair in ((0, 3), (3, 0))
    assert plan.dim == 16 and plan.n_images == 20 and plan.n_compared == 20
    assert plan.num_scales == ladder_plan(4.0, 16, 3)["num_scales"]
    assert "sigma_1 (technique 1): 4.0000" in plan.describe()


def test_noise_plan_command_writes_a_valid_config(tmp_path):
    out, numbers = tmp_path / "plan.yaml", tmp_path / "plan.json"
    result = run("noise-plan", "--config", "digits", "--steps-each", 10, "--write", out, "--json", numbers)
    assert result.exit_code == 0, result.output
    plan = json.loads(numbers.read_text())
    config = load_config(str(out))
    assert config.model.num_scales == plan["num_scales"] and config.model.sigma_max == plan["sigma_max"]
    assert config.sampling.ald.n_steps_each == 10 and config.sampling.ald.step_lr == plan["step_lr"]
    assert "levels: L = " in result.output and yaml.safe_load(out.read_text())["data"]["dataset"] == "digits"


def test_noise_plan_for_missing_data_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "plan.yaml"
    result = run("noise-plan", "--config", "mnist", "--set", f"data.root={tmp_path}", "--set", "data.download=false",
                 "--write", out)
    assert result.exit_code == 1 and result.output.startswith("Error: mnist") and len(result.output.splitlines()) == 1
    assert not out.exists()


class VirtualImages:
    """A uint8 dataset of a million 3 x 64 x 64 images (12 GB) that exists only row by row: image k is filled with
    k mod 251. It counts the rows read and refuses to be read whole."""

    shape, dtype = (1_000_000, 3, 64, 64), np.uint8

    def __init__(self):
        self.rows_read = 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        index = np.asarray(index)
        assert index.ndim == 1, "only a gather of chosen rows may be read"
        self.rows_read += len(index)
        return np.broadcast_to((index % 251).astype(np.uint8)[:, None, None, None], (len(index), *self.shape[1:]))

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole dataset was converted")


def test_noise_plan_reads_and_converts_only_its_subsample():
    images = VirtualImages()
    plan = noise_plan(images, steps_each=5, max_points=300, seed=4)
    assert images.rows_read == 300 and plan.n_images == 1_000_000 and plan.n_compared == 300
    i, j = plan.farthest_pair
    assert plan.sigma_max == pytest.approx(abs(i % 251 - j % 251) / 255 * math.sqrt(3 * 64 * 64), rel=1e-6)
    picked = torch.randperm(1_000_000, generator=torch.Generator().manual_seed(4))[:300] % 251
    assert abs(i % 251 - j % 251) == int(picked.max() - picked.min())  # the farthest pair of the seeded subsample


def test_noise_plan_of_a_subsample_matches_the_plan_of_the_whole_float_data(tmp_path):
    """Gathering the seeded uint8 rows first (and comparing them in float blocks) gives the numbers of converting
    everything to float, then subsampling."""
    data = np.random.default_rng(0).integers(0, 256, (400, 1, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", data)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    whole = max_pairwise_distance(torch.from_numpy(data).float() / 255, max_points=60, seed=7)
    for images in (torch.from_numpy(data), mapped):
        plan = noise_plan(images, max_points=60, seed=7)
        assert plan.farthest_pair == whole[1] and plan.sigma_max == pytest.approx(whole[0], rel=1e-7)


def test_noise_plan_of_a_folder_of_two_images_is_one_line(tmp_path):
    from PIL import Image

    folder = tmp_path / "two"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.full((8, 8, 3), 100 * k, dtype=np.uint8)).save(folder / f"{k}.png")
    result = run("noise-plan", "--config", "folder", "--set", f"data.root={folder}", "--set", "data.image_size=8")
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert "Error: the noise plan needs at least two training images" in result.output


def test_the_overlap_rule_at_the_papers_half_against_an_independent_computation():
    """Technique 2 at target 0.5, recomputed here: Phi from math.erf, the root by bisection, and the meaning of the
    overlap checked on the exact chi distribution of ||x|| / sigma_i for x ~ N(0, sigma_i^2 I) (the rule uses the
    normal approximation N(sqrt(D), 1/2) of that norm)."""
    from scipy.stats import chi

    from ncsn.sigmas import ncsnv2_num_scales, ncsnv2_ratio

    def phi(v):
        return 0.5 * (1 + math.erf(v / math.sqrt(2)))

    for dim, sigma_1, levels in ((3 * 32 * 32, 50.0, 220), (3 * 64 * 64, 90.0, 473)):
        root = math.sqrt(2 * dim)

        def overlap(g):
            return phi(root * (g - 1) + 3 * g) - phi(root * (g - 1) - 3 * g)

        lo, hi = 1.0, 2.0  # overlap falls from ~1 to ~0 over this bracket
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if overlap(mid) > 0.5 else (lo, mid)
        gamma = (lo + hi) / 2
        assert ncsnv2_ratio(dim, 0.5) == pytest.approx(gamma, rel=1e-12)
        assert ncsnv2_num_scales(sigma_1, 0.01, dim, 0.5) == math.ceil(math.log(sigma_1 / 0.01) / math.log(gamma)) + 1
        assert ncsnv2_num_scales(sigma_1, 0.01, dim, 0.5) == levels
        # the share of level i's norms within 3 std (1/sqrt(2) each, in units of sigma_{i-1}) of level i-1's mean norm
        band = (gamma * (math.sqrt(dim) - 3 / math.sqrt(2)), gamma * (math.sqrt(dim) + 3 / math.sqrt(2)))
        assert chi.cdf(band[1], dim) - chi.cdf(band[0], dim) == pytest.approx(0.5, abs=0.01)
