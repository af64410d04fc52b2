"""NCSN++ (Song et al., ICLR 2021): Score-SDE's variance-exploding U-Net, in plain PyTorch (no compiled op).

A σ embedding (Gaussian Fourier features of log σ, or the sinusoidal embedding of a ladder index for the discrete
variant) feeds a two-layer SiLU MLP; BigGAN residual blocks with FIR resampling, self-attention at chosen
resolutions, an input pyramid (``residual`` or ``input_skip``) and an output pyramid (``none`` or ``output_skip``).
The network sees x in [0, 1] (fed as 2x - 1) and returns the score times σ; the wrapper (``ScoreModel``) divides.
Every layer sits in the flat ``all_modules`` list in Score-SDE's order, so its state_dict names are the official ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fir import downsample_2d, upsample_2d
from .ncsnpp_layers import (
    AttnBlock,
    Combine,
    GaussianFourierProjection,
    PyramidDownsample,
    ResnetBlockBigGAN,
    conv,
    dense,
    group_norm,
    positional_embedding,
)

PROGRESSIVE = ("none", "output_skip")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")


def problems(image_size, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
             dropout: float, progressive: str, progressive_input: str, progressive_combine: str, embedding: str,
             fourier_scale: float, fir_kernel: Sequence[float], init_scale: float = 0.0, nf: int = 128,
             **_) -> list[tuple[str, str]]:
    """(setting, message) for each setting NCSN++ cannot be built with; empty when all is well."""
    found = []
    if progressive not in PROGRESSIVE:
        found.append(("progressive", f"unknown progressive (output) mode {progressive!r}; choose from {PROGRESSIVE}"))
    if progressive_input not in PROGRESSIVE_INPUT:
        found.append(("progressive_input",
                      f"unknown progressive input mode {progressive_input!r}; choose from {PROGRESSIVE_INPUT}"))
    if progressive_combine not in COMBINE:
        found.append(("progressive_combine", f"unknown combine method {progressive_combine!r}; choose from {COMBINE}"))
    if embedding not in EMBEDDINGS:
        found.append(("embedding", f"unknown σ embedding {embedding!r}; choose from {EMBEDDINGS}"))
    if not ch_mult or any(m < 1 for m in ch_mult):
        found.append(("ch_mult", f"must be a non-empty list of positive multipliers, got {list(ch_mult)}"))
    bad = [c for c in _normed_widths(nf, ch_mult, num_res_blocks, progressive_input, progressive_combine)
           if c < 4 or c % min(c // 4, 32)]
    if bad:
        found.append(("nf", f"every GroupNorm width must be >= 4 and split into min(C/4, 32) groups; nf {nf} with "
                      f"ch_mult {list(ch_mult)} gives {bad}"))
    if num_res_blocks < 1:
        found.append(("num_res_blocks", f"must be >= 1, got {num_res_blocks}"))
    if not 0 <= dropout < 1:
        found.append(("dropout", f"must lie in [0, 1), got {dropout}"))
    if fourier_scale <= 0:
        found.append(("fourier_scale", f"must be positive, got {fourier_scale}"))
    if init_scale < 0:
        found.append(("init_scale", f"must be >= 0, got {init_scale}"))
    if len(fir_kernel) < 2 or sum(fir_kernel) == 0:
        found.append(("fir_kernel", f"must list at least two taps with a non-zero sum, got {list(fir_kernel)}"))
    if image_size is None or image_size < 1:
        found.append(("image_size", f"must be a positive image size, got {image_size}"))
    elif ch_mult:
        halvings = len(ch_mult) - 1
        if image_size % 2**halvings:
            found.append(("image_size", f"{image_size} px cannot be halved {halvings} times as ch_mult "
                          f"{list(ch_mult)} asks by the FIR pyramid (it must be a multiple of {2**halvings})"))
        else:
            sizes = [image_size // 2**i for i in range(len(ch_mult))]
            missing = [r for r in attn_resolutions if r not in sizes]
            if missing:
                found.append(("attn_resolutions", f"{missing} not among the pyramid's resolutions {sizes} "
                              f"(image_size {image_size}, {len(ch_mult)} levels)"))
    return found


def _normed_widths(nf: int, ch_mult: Sequence[int], num_res_blocks: int, progressive_input: str,
                   combine: str) -> list[int]:
    """The channel counts NCSN++'s GroupNorms see (the up path's inputs carry the skip's channels too)."""
    widths, ch, skips = {nf}, nf, [nf]
    for level, mult in enumerate(ch_mult):
        for _ in range(max(num_res_blocks, 0)):
            widths |= {ch, nf * mult}
            ch = nf * mult
            skips.append(ch)
        if level != len(ch_mult) - 1:
            ch = 2 * ch if progressive_input == "input_skip" and combine == "cat" else ch
            skips.append(ch)
    for level in reversed(range(len(ch_mult))):
        for _ in range(max(num_res_blocks, 0) + 1):
            widths |= {ch + skips.pop(), nf * ch_mult[level]}
            ch = nf * ch_mult[level]
    return sorted(widths)


class NCSNpp(nn.Module):
    """NCSN++ for ``in_channels`` × ``image_size``² images; ``net(x, sigma)`` with sigma float32 (N,) > 0 (or ladder
    indices with ``embedding="positional"``) returns σ × score. Defaults are CIFAR-10's continuous model."""

    conditioning = "sigma"
    level_conditioned = False
    # Training with activation checkpointing (training.activation_checkpointing): each residual and attention block
    # keeps only its inputs for the backward pass and recomputes the rest (dropout replays its RNG state, so the
    # gradients are the same). Off: every activation is kept, the fastest and the most memory.
    activation_checkpointing = False

    def __init__(self, in_channels: int = 3, nf: int = 128, image_size: int = 32,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, progressive: str = "none",
                 progressive_input: str = "residual", progressive_combine: str = "sum", embedding: str = "fourier",
                 fourier_scale: float = 16.0, fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0):
        super().__init__()
        found = problems(image_size, ch_mult, num_res_blocks, attn_resolutions, dropout, progressive, progressive_input,
                         progressive_combine, embedding, fourier_scale, fir_kernel, init_scale, nf)
        if found:
            raise ValueError(f"NCSN++ {found[0][0]}: {found[0][1]}")
        if embedding == "positional":
            self.conditioning, self.level_conditioned = "level", True
        self.in_channels, self.nf, self.image_size = in_channels, nf, image_size
        self.num_levels, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.size_multiple = 2 ** (len(ch_mult) - 1)
        self.attn_levels = {i for i in range(len(ch_mult)) if image_size // 2**i in attn_resolutions}
        self.progressive, self.progressive_input, self.embedding = progressive, progressive_input, embedding
        self.fir_kernel, self.skip_rescale = tuple(float(v) for v in fir_kernel), skip_rescale

        block = dict(temb_dim=4 * nf, dropout=dropout, fir_kernel=self.fir_kernel, skip_rescale=skip_rescale,
                     init_scale=init_scale)
        attn = dict(skip_rescale=skip_rescale, init_scale=init_scale)
        modules: list[nn.Module] = []
        if embedding == "fourier":
            modules.append(GaussianFourierProjection(nf, fourier_scale))
        modules += [dense(2 * nf if embedding == "fourier" else nf, 4 * nf), dense(4 * nf, 4 * nf)]

        modules.append(conv(in_channels, nf))
        skips, ch, pyramid_ch = [nf], nf, in_channels
        for level, mult in enumerate(ch_mult):  # down path
            for _ in range(num_res_blocks):
                modules.append(ResnetBlockBigGAN(ch, nf * mult, **block))
                ch = nf * mult
                if level in self.attn_levels:
                    modules.append(AttnBlock(ch, **attn))
                skips.append(ch)
            if level != len(ch_mult) - 1:
                modules.append(ResnetBlockBigGAN(ch, down=True, **block))
                if progressive_input == "input_skip":
                    modules.append(Combine(pyramid_ch, ch, progressive_combine))
                    ch = 2 * ch if progressive_combine == "cat" else ch
                elif progressive_input == "residual":
                    modules.append(PyramidDownsample(pyramid_ch, ch, self.fir_kernel))
                    pyramid_ch = ch
                skips.append(ch)

        modules += [ResnetBlockBigGAN(ch, **block), AttnBlock(ch, **attn), ResnetBlockBigGAN(ch, **block)]

        for level in reversed(range(len(ch_mult))):  # up path
            for _ in range(num_res_blocks + 1):
                modules.append(ResnetBlockBigGAN(ch + skips.pop(), nf * ch_mult[level], **block))
                ch = nf * ch_mult[level]
            if level in self.attn_levels:
                modules.append(AttnBlock(ch, **attn))
            if progressive == "output_skip":
                modules += [group_norm(ch), conv(ch, in_channels, init_scale=init_scale)]
            if level != 0:
                modules.append(ResnetBlockBigGAN(ch, up=True, **block))
        if progressive != "output_skip":
            modules += [group_norm(ch), conv(ch, in_channels, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(modules)

    def check_input(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        """One line naming the problem for images of the wrong channels or a size the FIR pyramid cannot halve."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"image height and width must be multiples of {m} for this NCSN++, "
                             f"got {tuple(x.shape[-2:])}")
        if cond.shape != (x.shape[0],):
            raise ValueError(f"expected one sigma (or level) per image, shape ({x.shape[0]},), got {tuple(cond.shape)}")

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """σ × score at x in [0, 1]; ``cond`` is σ (> 0) for the Fourier embedding, the ladder index otherwise."""
        self.check_input(x, cond)
        mods = iter(self.all_modules)
        block = _checkpointed if self.activation_checkpointing and torch.is_grad_enabled() else _direct
        if self.embedding == "fourier":
            temb = next(mods)(torch.log(cond.float()))
        else:
            temb = positional_embedding(cond, self.nf)
        temb = next(mods)(temb)
        temb = next(mods)(F.silu(temb))

        x = 2 * x - 1
        pyramid = x
        hs = [next(mods)(x)]
        for level in range(self.num_levels):
            for _ in range(self.num_res_blocks):
                h = block(next(mods), hs[-1], temb)
                if level in self.attn_levels:
                    h = block(next(mods), h)
                hs.append(h)
            if level != self.num_levels - 1:
                h = block(next(mods), hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = downsample_2d(pyramid, self.fir_kernel)
                    h = next(mods)(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = next(mods)(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
                hs.append(h)

        h = block(next(mods), hs[-1], temb)
        h = block(next(mods), h)
        h = block(next(mods), h, temb)

        out = None
        for level in reversed(range(self.num_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = block(next(mods), torch.cat([h, hs.pop()], dim=1), temb)
            if level in self.attn_levels:
                h = block(next(mods), h)
            if self.progressive == "output_skip":
                norm, head = next(mods), next(mods)
                skip = head(F.silu(norm(h)))
                out = skip if out is None else upsample_2d(out, self.fir_kernel) + skip
            if level != 0:
                h = block(next(mods), h, temb)
        if self.progressive != "output_skip":
            norm, head = next(mods), next(mods)
            out = head(F.silu(norm(h)))
        return out


def _direct(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    return module(*args)


def _checkpointed(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """The block's output without keeping its inner activations for the backward pass (recomputed there)."""
    return checkpoint(module, *args, use_reentrant=False)
