"""Activation checkpointing for NCSN++ (training.activation_checkpointing): the same loss and gradients, dropout
included, with fewer tensors kept for the backward pass; `ncsn train` turns it on; other networks refuse it."""

import pytest
import torch

from ncsn import ModelConfig, build_score_model
from ncsn.config import ConfigError, load_config
from ncsn.nets import ncsnpp
from ncsn.score_model import NCSNppConfig

from .conftest import train_tiny

PYRAMIDS = {"residual": {}, "skip": dict(progressive="output_skip", progressive_input="input_skip")}


def tiny_ncsnpp(pyramid: str):
    settings = NCSNppConfig(image_size=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.3,
                            init_scale=1.0, **PYRAMIDS[pyramid])
    torch.manual_seed(0)
    return build_score_model(ModelConfig(arch="ncsnpp", ngf=8, in_channels=1, num_scales=10, sigma_max=5.0, scale_by_sigma=True,
                                         ncsnpp=settings))


def loss_gradients_and_saved_bytes(model, checkpointing: bool):
    """One seeded loss, its gradients, and the bytes of the tensors autograd kept for the backward pass."""
    model.net.activation_checkpointing = checkpointing
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(1)
    x, sigma = torch.rand(4, 1, 8, 8, generator=gen), torch.rand(4, generator=gen) * 5 + 0.01
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(2)  # dropout's draws
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (model(x, sigma) * sigma.view(-1, 1, 1, 1)).square().sum()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(saved)


@pytest.mark.parametrize("pyramid", sorted(PYRAMIDS))
def test_checkpointed_blocks_give_the_same_gradients_and_keep_fewer_activations(pyramid):
    model = tiny_ncsnpp(pyramid).train()  # dropout on: the recomputation must replay its draws
    loss, grads, kept = loss_gradients_and_saved_bytes(model, checkpointing=False)
    loss_ckpt, grads_ckpt, kept_ckpt = loss_gradients_and_saved_bytes(model, checkpointing=True)
    assert loss_ckpt == loss
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert kept_ckpt < 0.5 * kept  # each block keeps only its inputs


def test_checkpointing_is_off_without_gradients():
    model = tiny_ncsnpp("residual").eval()
    model.net.activation_checkpointing = True
    x, sigma = torch.rand(2, 1, 8, 8), torch.full((2,), 0.5)
    with torch.no_grad():
        out = model(x, sigma)
    model.net.activation_checkpointing = False
    with torch.no_grad():
        assert torch.equal(model(x, sigma), out)


def test_training_turns_it_on_from_the_config(tmp_path, monkeypatch):
    calls = []
    original = ncsnpp._checkpointed

    def counted(module, *args):
        calls.append(type(module).__name__)
        return original(module, *args)

    monkeypatch.setattr(ncsnpp, "_checkpointed", counted)
    tiny = ["model.arch=ncsnpp", "model.scale_by_sigma=true", "model.ngf=8", "model.ncsnpp.ch_mult=[1,2]",
            "model.ncsnpp.num_res_blocks=1", "model.ncsnpp.attn_resolutions=[4]", "model.num_scales=5",
            "training.objective=ve", "training.n_iters=1", "training.batch_size=8", "training.checkpoint_every=1",
            "training.sample_every=100", "training.log_every=1", "training.eval_every=100"]
    train_tiny(tmp_path / "off", tiny)
    assert calls == []
    train_tiny(tmp_path / "on", [*tiny, "training.activation_checkpointing=true"])
    assert "ResnetBlockBigGAN" in calls and "AttnBlock" in calls


def test_other_networks_refuse_it_in_one_line():
    with pytest.raises(ConfigError, match="'training.activation_checkpointing': works with model.arch ncsnpp only"):
        load_config("digits", ["training.activation_checkpointing=true"])
