"""A small maximum-likelihood training loop for flows and other density models.

``fit`` minimises ``loss_fn(model, batch)`` (by default the average negative log-likelihood
``-(1/B) sum_b log p(x_b)``) with AdamW on shuffled minibatches. It is used by the book and by the
benchmarks, so it keeps the per-step overhead low: the per-step losses are stored in a tensor on the
model's device and copied to the host (where NaN/inf is detected) only every ``log_every`` steps.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from flowlib._validate import check_int, check_positive, check_tensor

__all__ = ["fit", "nll_loss", "evaluate"]


def nll_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Default loss: average negative log-likelihood in nats, ``-model.log_prob(batch).mean()``."""
    return -model.log_prob(batch).mean()


@torch.no_grad()
def evaluate(model, data: torch.Tensor, loss_fn=nll_loss, batch_size: int = 4096) -> float:
    """Average of ``loss_fn`` over ``data`` in chunks (weighted by chunk size), in eval mode."""
    was_training = model.training
    model.eval()
    total = data.new_zeros((), dtype=torch.float64)
    for chunk in data.split(batch_size):
        total += loss_fn(model, chunk).double() * chunk.shape[0]
    model.train(was_training)
    return float(total) / data.shape[0]


def _batches(n: int, batch_size: int, generator: torch.Generator, device):
    """Endless minibatch indices: a fresh random permutation every epoch (the last batch may be smaller)."""
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        yield from perm.split(batch_size)


def fit(
    model,
    train_data: torch.Tensor,
    *,
    val_data: torch.Tensor | None = None,
    loss_fn=None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    lr_schedule: str | None = None,
    patience: int | None = None,
    eval_every: int | None = None,
    restore_best: bool = True,
    log_every: int = 50,
    seed: int = 0,
    progress: bool = True,
    device=None,
) -> dict:
    """Fit ``model`` to ``train_data`` by minibatch gradient descent; returns a history dict.

    Parameters
    ----------
    model : an ``nn.Module``; with the default loss it needs ``log_prob(x) -> (batch,)``.
    train_data, val_data : tensors with the batch on the first axis (moved to ``device`` once).
    loss_fn : ``loss_fn(model, batch) -> scalar``; default ``nll_loss`` (mean negative log-likelihood).
    steps, epochs : how long to train; give exactly one (an epoch is ``ceil(N / batch_size)`` steps).
    batch_size, lr, weight_decay : AdamW settings (``weight_decay=0`` is plain Adam).
    clip_grad_norm : if given, rescale the gradient to this total 2-norm when it is larger.
    lr_schedule : ``None`` (constant) or ``"cosine"`` (cosine decay from ``lr`` to 0 over the run).
    patience : early stopping: stop after this many evaluations without a new best validation loss.
    eval_every : validation period in steps (default: once per epoch).
    restore_best : with ``val_data``, load the parameters of the best evaluation at the end.
    log_every : period (steps) of the host copy of the losses, the NaN check and the progress bar.
    seed : seeds the minibatch order (a private ``torch.Generator``; the global RNG is not touched).
    progress : show a tqdm progress bar.
    device : where to train; default the device of the model's parameters.

    Returns
    -------
    dict with ``train_loss`` (one float per step), ``val_loss`` and ``val_step`` (one per evaluation),
    ``best_step`` and ``best_val_loss`` (``None`` without validation data), ``steps`` (steps run),
    ``stopped_early`` and ``wall_time`` (seconds).

    Raises ``FloatingPointError`` naming the step when the training or validation loss becomes NaN or
    infinite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if loss_fn is None:
        loss_fn = nll_loss
    check_tensor(train_data, name="train_data")
    if train_data.dim() < 1 or train_data.shape[0] < 1:
        raise ValueError(f"train_data must have a non-empty batch axis, got shape {tuple(train_data.shape)}")
    if val_data is not None:
        check_tensor(val_data, name="val_data")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    weight_decay = check_positive(weight_decay, "weight_decay", strict=False)
    log_every = check_int(log_every, "log_every")
    if clip_grad_norm is not None:
        clip_grad_norm = check_positive(clip_grad_norm, "clip_grad_norm")
    if patience is not None:
        patience = check_int(patience, "patience")
        if val_data is None:
            raise ValueError("patience (early stopping) needs val_data")
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")

    device = torch.device(device) if device is not None else params[0].device
    model.to(device)
    train_data = train_data.to(device)
    val_data = val_data.to(device) if val_data is not None else None
    N = train_data.shape[0]
    steps_per_epoch = math.ceil(N / batch_size)
    total = check_int(steps, "steps") if steps is not None else check_int(epochs, "epochs") * steps_per_epoch
    if eval_every is None:
        eval_every = steps_per_epoch
    eval_every = check_int(eval_every, "eval_every")

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total) if lr_schedule == "cosine" else None
    )
    batches = _batches(N, batch_size, torch.Generator().manual_seed(int(seed)), device)

    losses = torch.empty(total, device=device)  # filled on the device, copied every log_every steps
    host_losses: list[float] = []
    history = {
        "val_loss": [],
        "val_step": [],
        "best_step": None,
        "best_val_loss": None,
        "stopped_early": False,
    }
    best_state, bad_evals = None, 0

    def sync_losses(upto: int):
        new = losses[len(host_losses) : upto].tolist()
        for i, v in enumerate(new):
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"training loss became {v} at step {len(host_losses) + i} "
                    "(try a smaller lr, clip_grad_norm, or check the data)"
                )
        host_losses.extend(new)

    model.train()
    bar = tqdm(total=total, disable=not progress, desc="fit", leave=False)
    start = time.perf_counter()
    step = 0
    try:
        for step in range(total):
            idx = next(batches)
            try:
                loss = loss_fn(model, train_data[idx])
            except ValueError as err:  # e.g. parameters already NaN: report the first bad step instead
                sync_losses(step)
                raise ValueError(f"at step {step}: {err}") from err
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses[step] = loss.detach()

            done = step + 1
            if done % log_every == 0 or done == total:
                sync_losses(done)
                bar.update(done - bar.n)
                bar.set_postfix(loss=f"{host_losses[-1]:.4f}")
            if val_data is not None and (done % eval_every == 0 or done == total):
                val = evaluate(model, val_data, loss_fn, max(batch_size, 4096))
                if not math.isfinite(val):
                    raise FloatingPointError(f"validation loss became {val} at step {step}")
                history["val_loss"].append(val)
                history["val_step"].append(done)
                if history["best_val_loss"] is None or val < history["best_val_loss"]:
                    history["best_val_loss"], history["best_step"], bad_evals = val, done, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        history["stopped_early"] = True
                        sync_losses(done)
                        break
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    history["wall_time"] = time.perf_counter() - start
    if best_state is not None and restore_best:
        model.load_state_dict(best_state)
    history["train_loss"] = host_losses
    history["steps"] = len(host_losses)
    return history
