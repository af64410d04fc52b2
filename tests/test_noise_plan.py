import json

import pytest
import torch
import yaml

from ncsn.config import load_config
from ncsn.noise_plan import ladder_plan, noise_plan
from ncsn.sigmas import ncsnv2_overlap, ncsnv2_step_criterion

from .conftest import run


@pytest.mark.parametrize("sigma_1, dim, levels, eps", [(50.0, 3 * 32 * 32, 232, 6.2e-6), (90.0, 3 * 64 * 64, 500, 3.3e-6)])
def test_rules_reproduce_the_shipped_ncsnv2_configs(sigma_1, dim, levels, eps):
    """CIFAR-10 (sigma_1 50, L 232, T 5, eps 6.2e-6) and CelebA-64 (sigma_1 90, L 500, T 5, eps 3.3e-6)."""
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
    assert config.sampling.n_steps_each == 10 and config.sampling.step_lr == plan["step_lr"]
    assert "levels: L = " in result.output and yaml.safe_load(out.read_text())["data"]["dataset"] == "digits"


def test_noise_plan_for_missing_data_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "plan.yaml"
    result = run("noise-plan", "--config", "mnist", "--set", f"data.root={tmp_path}", "--set", "data.download=false",
                 "--write", out)
    assert result.exit_code == 1 and result.output.startswith("Error: mnist") and len(result.output.splitlines()) == 1
    assert not out.exists()
