"""EDM's preconditioning (Karras et al. 2022), in the library's units: the denoiser D(x; σ) around a raw network F.

D(x; σ) = m + c_skip (x − m) + c_out F(c_in (x − m), c_noise(σ)), and the score is (D − x) / σ².

Units. The library's images lie in [0, 1] with σ in the same units; EDM's lie in [−1, 1] with zero mean. With
x_edm = 2x − 1 and σ_edm = 2σ, EDM's constants map as follows (``tests/test_objectives.py`` checks each):
- the data mean m = 0.5 is removed before c_skip and c_in (else c_skip pulls every image towards black);
- σ_data 0.5 on [−1, 1] is 0.25 here (it scales with the data);
- ln σ ~ N(P_mean, P_std²): P_mean −1.2 becomes −1.2 − ln 2 here, P_std stays 1.2;
- c_in, c_skip and c_out/σ_data are unchanged functions of σ/σ_data, so D = (D_edm + 1) / 2 for the same F;
- c_noise = ln(σ)/4 here is ln(σ_edm)/4 − ln(2)/4 there: a constant shift that a learned σ embedding absorbs;
- the weight λ(σ) = (σ² + σ_data²)/(σ σ_data)² is 4 λ_edm(2σ), and ‖D − y‖² is ‖D_edm − y_edm‖²/4, so the loss is
  EDM's loss, number for number.
"""

from __future__ import annotations

import math

import torch

PRECONDITIONINGS = ("none", "edm")
DATA_MEAN = 0.5  # the mean of [0, 1] data that EDM's zero-mean [−1, 1] convention assumes removed
EDM_SIGMA_DATA = 0.5 / 2  # EDM's 0.5 on [−1, 1]
EDM_P_MEAN = -1.2 - math.log(2.0)  # EDM's −1.2 for ln σ_edm, with σ = σ_edm / 2
EDM_P_STD = 1.2


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) at each σ, in σ's dtype."""
    var = sigma.square() + sigma_data**2
    return sigma_data**2 / var, sigma * sigma_data / var.sqrt(), var.rsqrt(), sigma.log() / 4


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_data²) / (σ σ_data)², which makes the loss of the net's own output F unit-weighted at every σ."""
    return (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()


def edm_network_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """What a σ-conditioned network (one that embeds ln of its σ input) is given so that it sees c_noise = ln(σ)/4:
    σ^(1/4)."""
    return sigma.pow(0.25)


def edm_denoise(x: torch.Tensor, sigma: torch.Tensor, raw: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """D = m + c_skip (x − m) + c_out F, in float32, from the network's output ``raw`` = F(c_in (x − m), c_noise)."""
    c_skip, c_out, _, _ = (c.view(-1, *([1] * (x.dim() - 1))) for c in edm_coefficients(sigma.float(), sigma_data))
    return DATA_MEAN + c_skip * (x.float() - DATA_MEAN) + c_out * raw.float()


def edm_score(x: torch.Tensor, sigma: torch.Tensor, raw: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """(D − x)/σ² in float32, written as −(x − m)/(σ² + σ_data²) + c_out F/σ² so that no small σ² divides a
    difference of nearly equal numbers."""
    s = sigma.float().view(-1, *([1] * (x.dim() - 1)))
    var = s.square() + sigma_data**2
    return -(x.float() - DATA_MEAN) / var + (sigma_data / (s * var.sqrt())) * raw.float()
