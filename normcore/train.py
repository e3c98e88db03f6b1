"""The training loop: v-prediction (see diffusion.sampler.v_target), EMA weights, early stopping,
and random conditioning masks for masked networks (`conditioning_masks`).

Kept apart from the networks and the diffusion process (three objects, as in
lucidrains' design) so either can change without touching the loop. It has no side
effects beyond the `progress` callback: no files, no prints.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from normcore.config import TrainConfig
from normcore.device import training_autocast
from normcore.diffusion.sampler import q_sample, v_target
from normcore.diffusion.schedule import Schedule
from normcore.parallel_protocol import Collectives

Progress = Callable[[dict], None]

VALIDATE_EVERY = 100
"""Optimiser steps between validation losses (or one epoch, if longer). Each costs forward
passes over every validation row for all its fixed draws, several training steps' worth.
The EMA weights that are validated average over ~1 / (1 - ema_decay) = 200 steps, so
checkpoints 100 steps apart differ little, and the default patience still sees five losses
(benchmarks/RESULTS.md, "Fit profile")."""


ROWS_PER_DRAW = 8
"""With a Gaussian prior, training rows share their timestep and conditioning mask in
groups of this many (each row keeps its own person and noise), and a batch is sorted by
age, so that a group's people are of about the same age. The prior
(denoisers.gaussian_prior) factorises one D x D matrix per distinct (mask, timestep, age
level), so a batch of 256 rows costs about 32-48 factorisations instead of 256 (without
a prior every row draws its own, as before it)."""


def shared(values: torch.Tensor, group: int, n: int) -> torch.Tensor:
    """n rows of `values`, each of its rows repeated for `group` consecutive rows."""
    return values.repeat_interleave(group, dim=0)[:n]


def conditioning_masks(
    n: int, dim: int, unconditional_share: float, generator: torch.Generator
) -> torch.Tensor:
    """Random observation masks (n, dim) of 0/1 floats, one per row, as CSDI trains
    (Tashiro et al., NeurIPS 2021), so that one network learns every conditional law.

    A share `unconditional_share` of rows observe nothing: that is the unconditional model
    the reference table and the deviation sample. Every other row observes each IDP with
    its own probability u ~ U(0, 1), so that small and large given sets are both common
    (a fixed rate would leave one set size rare). Rows that observe every IDP add no loss.
    """
    rate = torch.rand(n, 1, generator=generator)
    mask = (torch.rand(n, dim, generator=generator) < rate).float()
    mask[torch.rand(n, generator=generator) < unconditional_share] = 0.0
    return mask


def _validation_draws(
    n_val: int, dim: int, steps: int, draws: int, seed: int, unconditional_share: float,
    group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Fixed (t, noise, mask) draws so that the validation loss is comparable across epochs,
    t and mask shared by `group` consecutive rows (ROWS_PER_DRAW)."""
    g = torch.Generator().manual_seed(seed + 7919)
    rows = math.ceil(n_val / group)
    t = shared(torch.randint(0, steps, (draws, rows), generator=g).T, group, n_val).T
    noise = torch.randn(draws, n_val, dim, generator=g)
    masks = torch.stack(
        [
            shared(conditioning_masks(rows, dim, unconditional_share, g), group, n_val)
            for _ in range(draws)
        ]
    )
    return t, noise, masks


def masked_loss(
    v: torch.Tensor, target: torch.Tensor, observed: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared v error over the cells the network had to predict (all without a mask)."""
    if observed is None:
        return torch.mean((v - target) ** 2)
    free = 1.0 - observed
    return torch.sum(free * (v - target) ** 2) / free.sum().clamp_min(1.0)


def validation_split(n: int, config: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, training rows): a seeded random `val_fraction` held out.

    The model computes it once and hands both parts to its first stage and to
    `train_denoiser`, so the rows the first stage leaves out are the rows validated on.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(int(round(n * config.val_fraction)), min(n // 5, 32)) if n >= 40 else 0
    return order[:n_val], order[n_val:]


def _observe(xt: torch.Tensor, x0: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
    """x_t with the observed cells' clean scores in place (the masked network's input)."""
    return xt if observed is None else torch.where(observed > 0, x0, xt)


def train_denoiser(
    net: nn.Module,
    schedule: Schedule,
    y: np.ndarray,
    age: np.ndarray,
    codes: np.ndarray,
    config: TrainConfig,
    val_rows: np.ndarray,
    train_rows: np.ndarray,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device | None = None,
    parallel: Collectives | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train `net` to predict v on `train_rows`; return the best EMA copy (by the loss
    on `val_rows`, which also stops training early) and the loss history.

    `y` are the first stage's normal scores (n, D), `age` standardised ages (n,), `codes`
    category codes (n, K); `val_rows`, `train_rows` come from `validation_split`.

    A masked network (`net.masked`) is trained on `conditioning_masks`: observed cells
    hold the clean score instead of x_t, and the loss counts the other cells only.

    `net` must already be on `device` (default CPU). All random draws come from one CPU
    generator whatever the device, so a run is the same draw sequence on CPU and GPU.
    With `parallel` (see normcore.distributed) every process draws the same global batch
    and trains on its own slice of it through DistributedDataParallel, so the gradient
    is that of the whole batch and the settings mean the same as in one process.
    """
    dim = y.shape[1]
    val_idx, tr_idx = val_rows, train_rows
    n_val = len(val_idx)
    device = device or torch.device("cpu")
    Y = torch.as_tensor(y, dtype=torch.float32).to(device)
    A = torch.as_tensor(age, dtype=torch.float32).to(device)
    C = torch.as_tensor(codes, dtype=torch.long).to(device)
    alpha_bar = torch.as_tensor(schedule.alpha_bar, dtype=torch.float32).to(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    masked = bool(getattr(net, "masked", False))
    group = 1 if getattr(net, "prior", None) is None else ROWS_PER_DRAW
    val_t, val_noise, val_masks = _validation_draws(
        n_val, dim, schedule.steps, draws=8, seed=seed,
        unconditional_share=config.unconditional_share if masked else 1.0, group=group,
    )  # fmt: skip
    val_t, val_noise, val_masks = val_t.to(device), val_noise.to(device), val_masks.to(device)
    predict = parallel.wrap(net) if parallel is not None else net
    min_rows = 2 if parallel is None else max(2, parallel.world_size)

    batch = min(config.batch_size, len(tr_idx))
    steps_per_epoch = max(1, math.ceil(len(tr_idx) / batch))
    max_epochs = config.max_epochs or math.ceil(config.max_steps / steps_per_epoch)
    max_steps = (
        min(config.max_steps, max_epochs * steps_per_epoch)
        if config.max_epochs is None
        else (max_epochs * steps_per_epoch)
    )
    eval_every = max(steps_per_epoch, VALIDATE_EVERY)
    vi = torch.as_tensor(val_idx).to(device)
    y_val, val_observed = Y[vi], list(val_masks) if masked else [None] * len(val_t)
    val_xt = [
        _observe(q_sample(y_val, t, noise, alpha_bar), y_val, m)
        for t, noise, m in zip(val_t, val_noise, val_observed, strict=True)
    ]
    val_target = [v_target(y_val, t, noise, alpha_bar) for t, noise in zip(val_t, val_noise)]

    def val_loss() -> float:
        if n_val == 0:
            return float("nan")
        with torch.inference_mode():
            h = ema.embed(A[vi], C[vi])
            losses = [
                masked_loss(ema(xt, t, h, *([m] if masked else [])), target, m).item()
                for xt, t, target, m in zip(val_xt, val_t, val_target, val_observed)
            ]
        return float(np.mean(losses))

    history: list[dict] = []
    best, best_state, best_step = math.inf, copy.deepcopy(ema.state_dict()), 0
    start = time.perf_counter()
    step, epoch, running = 0, 0, []
    tr = torch.as_tensor(tr_idx)
    stop = False
    net.train()  # validation runs the EMA copy, so the network stays in training mode
    while not stop and epoch < max_epochs:
        epoch += 1
        perm = tr[torch.randperm(len(tr), generator=g)]
        for b in range(steps_per_epoch):
            idx = perm[b * batch : (b + 1) * batch]
            if len(idx) < min_rows:
                continue
            if group > 1:  # see ROWS_PER_DRAW
                idx = idx[torch.argsort(A[idx.to(device)].cpu())]
            idx = idx.to(device)
            x0, a, c = Y[idx], A[idx], C[idx].clone()
            if c.shape[1] and config.covariate_dropout > 0:
                drop = torch.rand(c.shape, generator=g) < config.covariate_dropout
                c[drop.to(device)] = 0
            rows = math.ceil(len(idx) / group)
            t = shared(torch.randint(0, schedule.steps, (rows,), generator=g), group, len(idx))
            t = t.to(device)
            noise = torch.randn(x0.shape, generator=g).to(device)
            m = torch.zeros_like(x0)
            if masked:
                masks = conditioning_masks(rows, dim, config.unconditional_share, g)
                m = shared(masks, group, len(idx)).to(device)
            if parallel is not None:
                x0, a, c, t, noise, m = (parallel.shard(v) for v in (x0, a, c, t, noise, m))
            observed = m if masked else None
            with training_autocast(device):
                xt = _observe(q_sample(x0, t, noise, alpha_bar), x0, observed)
                v = predict(xt, t, net.embed(a, c), *([observed] if masked else []))
            loss = masked_loss(v.float(), v_target(x0, t, noise, alpha_bar), observed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - config.ema_decay)
            running.append(loss.item())
            step += 1
            if step >= max_steps:
                stop = True
                break
        elapsed = time.perf_counter() - start
        if step % eval_every < steps_per_epoch or stop:
            vl = val_loss()
            mean_loss = float(np.mean(running))
            history.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "loss": mean_loss if parallel is None else parallel.mean(mean_loss),
                    "val_loss": vl,
                    "seconds": elapsed,
                }
            )
            running = []
            if vl < best or math.isnan(vl):
                best, best_step = vl, step
                best_state = copy.deepcopy(ema.state_dict())
            if step - best_step >= config.patience_steps:
                stop = True
            if progress is not None:
                rate = elapsed / step
                progress(
                    {
                        "phase": "train",
                        "epoch": epoch,
                        "max_epochs": max_epochs,
                        "step": step,
                        "max_steps": max_steps,
                        "loss": history[-1]["loss"],
                        "val_loss": vl,
                        "best_val_loss": best,
                        "eta_seconds": rate * (max_steps - step),
                        "fraction": step / max_steps,
                    }
                )
        if config.max_seconds is not None and elapsed > config.max_seconds:
            stop = True
        if should_stop is not None and should_stop():
            stop = True
        if parallel is not None:
            stop = parallel.any(stop)
    ema.load_state_dict(best_state)
    if parallel is not None:
        parallel.broadcast(ema)
    return ema, history
