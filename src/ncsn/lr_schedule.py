"""Learning rate as a pure function of the step (so a resumed run continues the same curve): a linear warm-up,
then constant, cosine or linear decay from ``lr`` to ``lr_min`` at the last step. A warm-up longer than the run
(a short run of a preset, say) simply ramps for the whole run. Score-SDE's warm-up, lr · min(k/warmup, 1) at its
step k = 0, 1, ..., gives its first step the rate 0; this one is the same ramp one step earlier (lr/warmup first)."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(t, step: int) -> float:
    """The learning rate of optimisation step ``step`` (0-based) for the training config ``t``."""
    if step < t.lr_warmup:
        return t.lr * (step + 1) / t.lr_warmup
    if t.lr_schedule == "constant":
        return t.lr
    span = max(t.n_iters - 1 - t.lr_warmup, 1)
    progress = min((step - t.lr_warmup) / span, 1.0)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if t.lr_schedule == "cosine" else 1.0 - progress
    return t.lr_min + (t.lr - t.lr_min) * decay


def set_lr(optimizer, t, step: int) -> None:
    """Give every parameter group the scheduled rate of ``step``."""
    lr = lr_at(t, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
