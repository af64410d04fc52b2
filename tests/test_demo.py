import torch

from ncsn.demo import format_report, gmm_samples


def test_gmm_baseline_draws_from_the_fitted_mixture():
    gen = torch.Generator().manual_seed(0)
    dark = (20 + 10 * torch.randn(300, 1, 4, 4, generator=gen)).clamp(0, 255)
    light = (220 + 10 * torch.randn(100, 1, 4, 4, generator=gen)).clamp(0, 255)
    train = torch.cat([dark, light]).round().to(torch.uint8)
    drawn = gmm_samples(train, 2000, components=2, seed=0)
    assert drawn.shape == (2000, 1, 4, 4) and drawn.dtype == torch.uint8
    means = drawn.float().flatten(1).mean(1)
    light_share = (means > 128).float().mean().item()
    assert abs(light_share - 0.25) < 0.03  # the mixture's weights: 100 of 400 training images are light
    assert abs(means[means > 128].mean().item() - 220) < 3 and abs(means[means <= 128].mean().item() - 20) < 3
    assert light_share not in (0.0, 1.0) and (means[:100] > 128).any()  # draws are shuffled, not grouped by component
    assert torch.equal(drawn, gmm_samples(train, 2000, components=2, seed=0))


def test_format_report_puts_model_beside_baselines_and_real_digits():
    row = {"cfid": 5.0, "cfid_at_test_n": 8.0, "cscore": 9.5, "n": 1000, "nn_median": 1.1, "nn_min": 0.6, "nn_p10": 0.8}
    report = {"samples": row, "baselines": {"gmm_10": {**row, "cfid": 22.0}, "gmm_30": {**row, "cfid": 12.0}},
              "real_test": {"cfid_at_test_n": 3.5, "cscore": 9.6, "n": 297, "nn_median": 1.0, "nn_p10": 0.7}, "class_shares": [0.1] * 10}
    text = format_report(report)
    lines = text.splitlines()
    assert "FID at N=297" in lines[0] and lines[1].split()[:2] == ["samples", "5.00"]
    assert "Gaussian mixture, 10 components" in lines[2] and "22.00" in lines[2] and "real held-out digits" in lines[4]
    assert "median / 10th percentile: samples 1.100 / 0.800, real held-out 1.000 / 0.700" in text
    assert "Mann-Whitney" not in text  # no test figures, no test line
    report["samples"].update(nn_p_closer=0.97, nn_prob_farther=0.56)
    report["real_test"]["nn_median_interval"] = [0.98, 1.03]
    assert "interval 0.980-1.030; P(sample farther than a real digit) 0.560 (0.5 = alike); one-sided Mann-Whitney " \
           "p(samples closer) 0.97" in format_report(report)
