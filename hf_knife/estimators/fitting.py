"""The one fitting loop of the estimators: Adam on a loss of sample indices, with early stopping on validation.

    theta_{t+1} = Adam(theta_t, grad loss(batch_t)),   batch_t: the next ``batch_size`` of a shuffled order
    keep argmin_t loss(validation) over the checks every ``eval_every`` steps (without validation: the last)

With a validation split the learning rate halves after ``max(1, patience // 3)`` checks without improvement and
the fit stops after ``patience`` of them. A non-finite loss, or one above 100 times its start (bandwidth bounds keep
a diverging fit finite), raises ``FloatingPointError`` instead of returning NaN.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["FitOptions", "fit"]


@dataclass
class FitOptions:
    """How :func:`fit` runs.

    Attributes:
        max_steps: Adam steps at most.
        batch_size: samples per step (at most the fitting samples: one full batch).
        lr: Adam's learning rate.
        eval_every: steps between validation checks (and a check at the last step).
        patience: checks without improvement before stopping (the learning rate halves after ``patience // 3``).
        shuffle: batches from a fresh random order per pass over the samples (``False``: in the given order, so a
            full batch is the samples as given).
        progress: show a progress bar (``None``: only on a terminal).
    """

    max_steps: int = 4000
    batch_size: int = 512
    lr: float = 0.01
    eval_every: int = 50
    patience: int = 10
    shuffle: bool = True
    progress: bool | None = None


def _batches(train_index: Tensor, batch_size: int, shuffle: bool, generator: torch.Generator | None):
    """Endless ``[batch_size]`` index batches of ``train_index [N]``; a new pass (new order) when one runs out."""
    while True:
        order = train_index[torch.randperm(len(train_index), generator=generator)] if shuffle else train_index
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]  # [batch_size]


def fit(
    module: nn.Module,
    loss_fn: Callable[[Tensor], Tensor],
    train_index: Tensor,
    validation_index: Tensor | None = None,
    *,
    options: FitOptions | None = None,
    generator: torch.Generator | None = None,
    description: str = "fitting",
) -> list[dict[str, float]]:
    """Minimise ``loss_fn(index) -> []`` over batches of ``train_index [N]`` with Adam on ``module``'s trainable
    parameters.

    With ``validation_index [M]``: early stopping and learning-rate decay on ``loss_fn(validation_index)``, and the
    parameters of the best check are loaded back. Without it: ``max_steps`` steps, the last parameters kept.
    ``generator`` draws the batch orders. Returns the history, one dict per check: ``step``, ``train_loss`` (mean
    since the previous check), ``validation_loss`` (with a validation split) and ``lr``.
    """
    options = options or FitOptions()
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        return []
    optimizer = torch.optim.Adam(parameters, lr=options.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, options.patience // 3)
    )
    best_loss, stale, history, running = math.inf, 0, [], []
    best_state = copy.deepcopy(module.state_dict()) if validation_index is not None else None
    batches = _batches(train_index, min(options.batch_size, len(train_index)), options.shuffle, generator)
    first_loss = math.nan
    disable = None if options.progress is None else not options.progress
    with tqdm(total=options.max_steps, desc=description, disable=disable, leave=False) as bar:
        for step in range(1, options.max_steps + 1):
            loss = loss_fn(next(batches))  # []
            if step == 1:
                first_loss = loss.item()
            if not torch.isfinite(loss) or loss.item() > first_loss + 100.0 * (abs(first_loss) + 1.0):
                raise FloatingPointError(
                    f"the fitting loss diverged to {loss.item():.4g} at step {step} (it started at {first_loss:.4g}); "
                    f"lower lr (now {optimizer.param_groups[0]['lr']:.2g}) or set bandwidth_bounds"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            bar.update(1)
            if step % options.eval_every != 0 and step != options.max_steps:
                continue
            entry = {"step": step, "train_loss": float(np.mean(running))}
            running = []
            if validation_index is None:
                history.append({**entry, "lr": optimizer.param_groups[0]["lr"]})
                continue
            with torch.no_grad():
                validation_loss = float(loss_fn(validation_index))
            history.append({**entry, "validation_loss": validation_loss, "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(validation=f"{validation_loss:.4f}")
            if validation_loss < best_loss - 1e-4:
                best_loss, best_state, stale = validation_loss, copy.deepcopy(module.state_dict()), 0
            else:
                stale += 1
            scheduler.step(validation_loss)
            if stale >= options.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    return history
