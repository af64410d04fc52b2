"""The training loop: denoising score matching with Adam, held-out loss per level, atomic checkpoints, resuming.

All randomness of step k (batch order, dequantisation, flips, noise levels, noise) is drawn from generators seeded
by (seed, k) for the whole global batch, and each process takes its slice (and reads only its share of the images).
So a resumed run repeats exactly what an uninterrupted one does, and N processes reproduce one process with the same
global batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, runfolder
from .config import ConfigError, RunConfig
from .data import load_split, prepare_batch, training_images
from .errors import NcsnError
from .generate import generate
from .images import save_grid
from .losses import Objective, dsm_loss, objective_for
from .lr_schedule import set_lr
from .metrics_log import MetricsLog
from .resume import _config_on_disk, _record_resume, _resolve_config, _start
from .runfolder import RunFolderError  # noqa: F401 (raised by the setup; importers catch it from here)
from .run_record import settle_run
from .runtime import RuntimeOptions, autocast, autotunes, cudnn_benchmark, prepare_model, resolve
from .samplers import check_fits
from .score_model import build_score_model

# Changing these on --resume would make the resumed run neither the old run nor a fresh one: refused.

class NonFiniteLossError(NcsnError, RuntimeError):
    """The loss became NaN or infinite by ``step``; the run stopped without writing a checkpoint of broken weights."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class TrainResult:
    step: int
    last_loss: float
    checkpoint: Path | None


def _stream_seed(seed: int, stream: int, index: int) -> int:
    return (seed * 1_000_003 + stream * 7_919 + index * 104_729) % 2**63


def _seeded(seed: int, stream: int, index: int, device) -> torch.Generator:
    """A generator for (seed, stream, index): independent streams for batch order and per-step noise."""
    return torch.Generator(device=device).manual_seed(_stream_seed(seed, stream, index))


@contextlib.contextmanager
def _seeded_global_rng(seed: int, step: int, info):
    """Dropout draws from torch's global generator: seed it per (step, rank) for the step, so a run with dropout is
    reproducible and a resumed one continues exactly; the caller's random state is restored afterwards."""
    cuda = info.device.type == "cuda"
    devices = [info.device.index if info.device.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_stream_seed(seed, 4, step * info.world_size + info.rank))
        yield


class EpochBatches:
    """Global batch indices of step k: epochs are seeded permutations of the training set (last partial batch dropped).

    The permutation is drawn on the CPU (the same on every device) and moved to ``device`` once per epoch, so a
    step only slices it: no host-to-device copy per step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device="cpu"):
        if batch_size > n:
            raise ConfigError(f"config key 'training.batch_size': {batch_size} exceeds the training set ({n} images)")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, offset = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            perm = torch.randperm(self.n, generator=_seeded(self.seed, 1, epoch, "cpu"))
            self._epoch, self._perm = epoch, perm.to(self.device)
        return self._perm[offset * self.batch_size : (offset + 1) * self.batch_size]


def local_batch(images, indices: torch.Tensor, local: slice, gen: torch.Generator, config: RunConfig,
                objective: Objective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's share of step k's batch: (x, sigma, noise) for the examples ``indices[local]``.

    Only the share's images are read (from disk on the memory-mapped path), so I/O per rank falls with the world
    size. The random numbers are drawn for the whole global batch from the step's one generator and sliced, the
    stream of one process, so any number of ranks trains exactly as one process does (and as earlier runs did):
    on a GPU the draws take microseconds, while per-example streams would cost launches and change every run.
    """
    d = config.data
    x = images[indices[local]].float() / 255.0
    whole = (len(indices), *x.shape[1:])
    if d.dequantize:  # prepare_batch's arithmetic on the share of its draws
        x = x * (255.0 / 256.0) + torch.rand(whole, generator=gen, device=x.device)[local] / 256.0
    if d.random_flip:
        flip = torch.rand(len(indices), generator=gen, device=x.device)[local] < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    sigma = objective.draw_sigma(len(indices), gen, x.device)[local]
    noise = torch.randn(whole, generator=gen, device=x.device)[local]
    return x, sigma, noise


def make_optimizer(model: torch.nn.Module, t) -> torch.optim.Adam:
    """Adam with the config's settings; the fused kernel (one pass over all parameters) where the device has it."""
    device = next(model.parameters()).device.type
    fused = device in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                            weight_decay=t.weight_decay, fused=fused or None)


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module, warmup_rate: float | None = None) -> None:
    """``ema.update_parameters(model)`` without its per-step host-to-device copy of the update count (a sync).

    The two tensor lists are gathered once and kept on ``ema`` (parameters are updated in place, never replaced), so
    a step does not walk both module trees. With ``warmup_rate`` the n-th update (n = 1, 2, ...) averages from the
    initial weights at decay min(warmup_rate, (1 + n)/(10 + n)), as Score-SDE's EMA does; without it the first
    update copies the model and later ones use the EMA's fixed decay.
    """
    if "_ncsn_pairs" not in ema.__dict__:
        ema._ncsn_pairs = ([*ema.module.parameters(), *ema.module.buffers()],
                           [t.detach() for t in (*model.parameters(), *model.buffers())])
    target, source = ema._ncsn_pairs
    n = int(ema.n_averaged)  # the count lives on the CPU
    if warmup_rate is not None:
        get_ema_multi_avg_fn(min(warmup_rate, (2 + n) / (11 + n)))(target, source, ema.n_averaged)
    elif n == 0:
        for a, b in zip(target, source):
            a.copy_(b)
    else:
        ema.multi_avg_fn(target, source, ema.n_averaged)
    ema.n_averaged += 1


def train_step(net, model, optimizer, x, sigma, noise, objective: Objective, t, ema=None,
               runtime: RuntimeOptions | None = None) -> torch.Tensor:
    """One optimisation step on a drawn batch (σ per example from ``objective.draw_sigma``); returns the mean loss
    as a device tensor (nothing waits for it).

    ``net`` is what the forward pass calls (the model, or its DDP/compiled wrapper); ``model`` owns the parameters.
    ``runtime`` defaults to fp32; a precision left to the library ("auto") is decided at the first call and
    remembered by the process (``ncsn.runtime.resolve``); ``train`` passes it decided.
    """
    runtime = runtime or RuntimeOptions(precision="fp32")
    if runtime.precision == "auto":
        runtime = resolve(runtime, model, x.device, tuple(x.shape), training=True)
    with autocast(runtime, x.device):
        losses = objective.loss(net, x, sigma, noise)
    loss = losses.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if t.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    optimizer.step()
    if ema is not None:
        update_ema(ema, model, t.ema_rate if t.ema_warmup else None)
    return loss.detach()


@torch.no_grad()
def heldout_loss(score_fn, images: torch.Tensor, sigmas: torch.Tensor, anneal_power: float, seed: int, *,
                 dequantize: bool) -> list[float]:
    """DSM loss of test images per noise level with fixed noise (image i at level i mod L), comparable across steps;
    ``dequantize`` follows data.dequantize, as training and `ncsn eval` do."""
    n_levels = len(sigmas)
    gen = _seeded(seed, 2, 0, images.device)
    x = prepare_batch(images, gen, random_flip=False, dequantize=dequantize)
    labels = torch.arange(len(x), device=x.device) % n_levels
    noise = torch.randn(x.shape, generator=gen, device=x.device)
    losses = dsm_loss(score_fn, x, sigmas, labels=labels, anneal_power=anneal_power, noise=noise)
    sums = torch.zeros(n_levels, device=x.device).index_add_(0, labels, losses)
    counts = torch.bincount(labels, minlength=n_levels).clamp(min=1)
    return (sums / counts).tolist()


def _build(config: RunConfig, device, runtime: RuntimeOptions, state: dict | None):
    """(model, optimizer, EMA, start step): a fresh initialisation from training.seed, or the checkpoint's state."""
    t = config.training
    with torch.random.fork_rng(devices=[]):  # seeded initialisation that leaves the caller's random state alone
        torch.manual_seed(t.seed)
        model = build_score_model(config.model)
    model = model.to(device)
    model.net.activation_checkpointing = t.activation_checkpointing  # memory for time; the same gradients
    if runtime.channels_last:  # before the optimizer and the EMA copy, so their tensors share the layout
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, t)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_rate), use_buffers=True) if t.ema else None
    if state is None:
        return model, optimizer, ema, 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
        ema.n_averaged.fill_(state["ema_updates"])
    return model, optimizer, ema, state["step"]


def train(
    config: RunConfig,
    workdir: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    runtime: RuntimeOptions | None = None,
) -> TrainResult:
    """Train ``config`` in ``workdir`` (config.yaml, metrics.jsonl, checkpoints/, samples/); returns the last step.

    Launch under ``torchrun --nproc_per_node=N`` for data-parallel training; every rank runs this same function.
    ``runtime`` (compile, bf16 autocast, channels_last) changes speed, not the run: it is not part of the config.
    The main process holds the folder's lock until it returns. Nothing is written until the setup (checkpoint,
    data, batch size) has passed; the caller's global random state is left as it was.
    What it leaves to the library is decided once, on the main process, and recorded in ``runtime.json``; a resumed
    run reuses the recorded precision (``ncsn.run_record.settle_run``).
    Under torchrun a setup error on any rank stops every rank with the same line (``distributed.agree``). Every rank
    reads the run folder (a resume's checkpoint) itself: training on several nodes needs the folder on a filesystem
    they all share, and a rank that finds another latest checkpoint than rank 0 stops the run.
    """
    runtime = runtime or RuntimeOptions()
    workdir = Path(workdir)
    info = distributed.setup(device)
    lock, started, failure = None, False, None
    try:
        try:  # every rank sets up, then all agree: one rank's error stops them all with the same line
            lock = runfolder.RunFolderLock(workdir).acquire() if info.is_main else None
            state, changed = _resolve_config(config, workdir, resume)
            model, optimizer, ema, start = _build(config, info.device, runtime, state)
            check_fits(model, config.sampling, model.sigmas)  # the grids' sampler must suit the network: fail now
            t = config.training
            train_images = training_images(config.data, info.device)  # a device tensor, or memory-mapped
            test_images = load_split(config.data, "test", limit=t.eval_batch_size).images.to(info.device)
            batches = EpochBatches(len(train_images), t.batch_size, t.seed, info.device)
            local = distributed.shard(t.batch_size, info.rank, info.world_size)
            shape = (t.batch_size // info.world_size, config.model.in_channels, config.data.image_size,
                     config.data.image_size)
        except Exception as err:
            failure = err
        main_start = distributed.agree(failure, payload=None if failure else start)
        if start != main_start:  # each rank read its own copy of the run folder: a stale one would train apart
            failure = RunFolderError(
                f"--resume: this rank found checkpoint step {start} in {workdir}, rank 0 step {main_start}: every "
                "rank reads the run folder, so training on several nodes needs it on a shared filesystem")
        distributed.agree(failure)
        try:
            if info.is_main:
                _start(workdir, config, state, changed)
                runtime = settle_run(runtime, workdir, state is not None, model, info.device, shape)
                _record_resume(workdir, state, changed)  # only a resume whose setup passed leaves a row
        except Exception as err:
            failure = err
        runtime = distributed.agree(failure, payload=runtime)
        started, state = True, None
        with cudnn_benchmark(autotunes(info.device)):  # cuDNN's autotuner for the training steps only
            result = _loop(config, workdir, info, runtime, progress, (model, optimizer, ema), start,
                           (train_images, test_images, batches, local))
    except NonFiniteLossError as err:
        if info.is_main and resume:
            runfolder.record(workdir, "stopped", err.step, error=str(err))
        raise
    finally:
        if lock is not None:
            lock.release(discard=not started)
    distributed.barrier()
    return result


def _loop(config: RunConfig, workdir: Path, info, runtime: RuntimeOptions, progress: bool, trained, start: int,
          data) -> TrainResult:
    """The training steps from ``start`` to n_iters, with the held-out loss, checkpoints, snapshots and grids."""
    t = config.training
    model, optimizer, ema = trained
    train_images, test_images, batches, local = data
    net = prepare_model(DistributedDataParallel(model) if info.world_size > 1 else model, runtime, info.device)
    sigmas = model.sigmas
    objective = objective_for(config, sigmas)
    log = MetricsLog(workdir, info.is_main, start, t.tensorboard)
    bar = tqdm(total=t.n_iters, initial=start, disable=not (progress and info.is_main), desc="training", unit="it")
    config_written = _config_on_disk(workdir) if info.is_main else None

    loss_sum = torch.zeros((), device=info.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=info.device)
    loss_steps, last_loss, saved = 0, float("nan"), None
    speed = {"start": time.perf_counter(), "steps": 0}
    deadline = None if t.time_budget_s is None else speed["start"] + t.time_budget_s  # this invocation's wall clock

    def check_finite(step: int) -> None:
        if distributed.any_true(nonfinite):
            latest = ckpt.latest_checkpoint(workdir)
            kept = f"last good checkpoint kept: {latest}" if latest else "no checkpoint was written"
            raise NonFiniteLossError(f"loss became NaN/inf by step {step}; training stopped ({kept})", step)

    try:
        for step in range(start, t.n_iters):
            gen = _seeded(t.seed, 3, step, info.device)
            x, sigma, noise = local_batch(train_images, batches.indices(step), local, gen, config, objective)
            set_lr(optimizer, t, step)  # from the config, so a resume with a changed rate takes it at once
            with _seeded_global_rng(t.seed, step, info):
                loss = train_step(net, model, optimizer, x, sigma, noise, objective, t, ema, runtime)
            loss_sum += loss
            nonfinite |= ~torch.isfinite(loss)
            loss_steps += 1
            speed["steps"] += 1
            done = step + 1
            bar.update(1)
            # the last step: n_iters, or the time budget spent (every rank stops at the same step)
            last = done == t.n_iters or (deadline is not None and distributed.any_true(
                torch.tensor(time.perf_counter() >= deadline)))

            if done % t.log_every == 0 or last:
                check_finite(done)
                last_loss = distributed.mean(loss_sum / loss_steps).item()  # the global batch's, not rank 0's
                images_per_s = speed["steps"] * t.batch_size / max(time.perf_counter() - speed["start"], 1e-9)
                log.write({"step": done, "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
                           "images_per_s": images_per_s, "processes": info.world_size})
                bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{images_per_s:.0f}")
                loss_sum.zero_()
                loss_steps = 0
                speed.update(start=time.perf_counter(), steps=0)

            sampler_model = ema.module if ema is not None else model
            side_work = time.perf_counter()  # held-out loss, checkpoints and grids do not count towards images/s
            evaluates = done % t.eval_every == 0 or last
            saves = done % t.checkpoint_every == 0 or done % t.snapshot_every == 0 or last
            draws = done % t.sample_every == 0 or last
            if saves:
                check_finite(done)  # a collective: before rank 0 goes off alone
            if info.is_main and evaluates:
                sampler_model.eval()
                per_level = heldout_loss(sampler_model, test_images, sigmas, t.anneal_power, t.seed,
                                         dequantize=config.data.dequantize)
                sampler_model.train()
                log.write({"step": done, "test_loss": sum(per_level) / len(per_level), "test_loss_per_level": per_level})

            if saves:
                if info.is_main:
                    saved = ckpt.atomic_save(
                        ckpt.training_state(done, config, model, optimizer, ema), ckpt.checkpoint_path(workdir, done)
                    )
                    if done % t.snapshot_every == 0:  # slim: what the model-selection sweep needs
                        ckpt.atomic_save(ckpt.snapshot_state(done, config, model, ema),
                                         ckpt.snapshot_path(workdir, done))
                    if config_written != config:  # config.yaml follows the latest checkpoint's config
                        runfolder.write_config(workdir, config)
                        config_written = config
                    ckpt.prune_checkpoints(workdir, t.keep_last, t.snapshot_every)

            if info.is_main and draws:
                sampler_model.eval()
                with cudnn_benchmark(False):  # sampling keeps cuDNN's fixed choice: same seed, same grid
                    _, images, _ = generate(sampler_model, sigmas, t.sample_n, tuple(x.shape[1:]), config.sampling,
                                            seed=t.seed, device=info.device, batch_size=t.sample_n,
                                            runtime=RuntimeOptions(precision=runtime.precision,
                                                                   channels_last=bool(runtime.channels_last)))
                sampler_model.train()
                save_grid(workdir / "samples" / f"step_{done:08d}.png", images)
            if evaluates or saves or draws:  # the others wait here, not in the next all-reduce (NCCL's watchdog)
                distributed.wait_for_main("held-out loss, checkpoint and sample grid")
            speed["start"] += time.perf_counter() - side_work
            if last and done < t.n_iters:
                if info.is_main:
                    log.write({"step": done, "stopped": "time_budget", "time_budget_s": t.time_budget_s})
                return TrainResult(step=done, last_loss=last_loss, checkpoint=saved or ckpt.latest_checkpoint(workdir))
    finally:
        bar.close()
        log.close()
    return TrainResult(step=max(start, t.n_iters), last_loss=last_loss, checkpoint=saved or ckpt.latest_checkpoint(workdir))
