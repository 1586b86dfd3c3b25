"""Neural (variational) mutual-information bounds, the baselines of the KNIFE paper's MI experiments.

Each estimator is an ``nn.Module`` whose ``forward(x, y)`` returns a :class:`BoundOutput` with the batch estimate
of ``I(X; Y)`` in nats and the loss to minimise. The critic-based bounds score every pair of the batch with one
critic ``T(x_i, y_j)``: the ``B`` diagonal pairs are samples of ``p(x, y)``, the ``B (B - 1)`` off-diagonal pairs
samples of ``p(x) p(y)``.

* :class:`InfoNCE` (van den Oord et al. 2018; Poole et al. 2019):
  ``I >= 1/B sum_i [T_ii - log(1/B sum_j exp T_ij)]``; bounded above by ``log B``.
* :class:`NWJ` (Nguyen, Wainwright and Jordan 2010; "f-GAN KL" / ``I_NWJ`` in Poole et al.):
  ``I >= E_p[T] - e^-1 E_{p(x)p(y)}[exp T]``.
* :class:`MINE` (Belghazi et al. 2018): the Donsker-Varadhan bound ``I >= E_p[T] - log E_{p(x)p(y)}[exp T]``,
  trained with the paper's bias-corrected gradient: ``grad log E[e^T]`` is replaced by ``grad E[e^T] / m`` where
  ``m`` is an exponential moving average of ``E[e^T]`` over batches (rate ``ema_rate``, kept in log space).
* :class:`CLUB` (Cheng et al. 2020): a Gaussian variational ``q(y | x) = N(mu(x), diag exp(logvar(x)))`` fitted by
  maximum likelihood; the estimate ``1/B sum_i log q(y_i|x_i) - 1/B^2 sum_{i,j} log q(y_j|x_i)`` is an upper
  bound on ``I`` when ``q`` is good.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["CLUB", "MINE", "NWJ", "BoundOutput", "InfoNCE", "PairCritic", "VARIATIONAL_ESTIMATORS"]


@dataclass
class BoundOutput:
    """``mutual_information``: the batch estimate (nats, detached); ``loss``: what to minimise."""

    mutual_information: Tensor
    loss: Tensor


def _check_pair(x: Tensor, y: Tensor, x_dim: int, y_dim: int) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[1] != x_dim or y.shape[1] != y_dim:
        raise ValueError(
            f"expected x [B, {x_dim}] and y [B, {y_dim}], got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError("need at least 2 samples per batch (off-diagonal pairs are the product samples)")


class PairCritic(nn.Module):
    """Concatenation critic ``T(x, y) = MLP([x, y])`` evaluated on all ``B x B`` pairs at once.

    The first layer is split as ``W [x; y] = W_x x + W_y y`` so that it costs ``O(B)`` instead of ``O(B^2)``;
    the remaining layers run on the ``[B, B, H]`` activations.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        if not hidden_dims:
            raise ValueError("PairCritic needs at least one hidden layer")
        self.x_in = nn.Linear(x_dim, hidden_dims[0])
        self.y_in = nn.Linear(y_dim, hidden_dims[0], bias=False)
        layers: list[nn.Module] = [nn.ReLU()]
        for width_in, width_out in zip(hidden_dims[:-1], hidden_dims[1:], strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(hidden_dims[-1], 1))
        self.rest = nn.Sequential(*layers)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Scores of every pair: ``x [B, dx]``, ``y [B, dy]`` -> ``T [B, B]`` with ``T[i, j] = T(x_i, y_j)``."""
        hidden = self.x_in(x).unsqueeze(1) + self.y_in(y).unsqueeze(0)  # [B, B, H]
        return self.rest(hidden).squeeze(-1)  # [B, B]


def _off_diagonal_log_mean_exp(scores: Tensor, shift: float = 0.0) -> Tensor:
    """``log mean exp(T_ij + shift)`` over the ``B (B - 1)`` off-diagonal pairs of ``scores [B, B]``: ``[]``."""
    b = scores.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=scores.device)
    masked = scores.masked_fill(eye, float("-inf"))  # [B, B]  diagonal excluded
    return torch.logsumexp(masked.flatten(), 0) + shift - math.log(b * (b - 1))


class _CriticBound(nn.Module):
    def __init__(self, x_dim: int, y_dim: int, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.x_dim, self.y_dim = x_dim, y_dim
        self.critic = PairCritic(x_dim, y_dim, hidden_dims)

    def scores(self, x: Tensor, y: Tensor) -> Tensor:
        _check_pair(x, y, self.x_dim, self.y_dim)
        return self.critic(x, y)  # [B, B]


class InfoNCE(_CriticBound):
    """InfoNCE lower bound (saturates at ``log B``)."""

    def forward(self, x: Tensor, y: Tensor) -> BoundOutput:
        scores = self.scores(x, y)  # [B, B]
        bound = (scores.diagonal() - torch.logsumexp(scores, dim=1)).mean() + math.log(scores.shape[0])
        return BoundOutput(bound.detach(), -bound)


class NWJ(_CriticBound):
    """Nguyen-Wainwright-Jordan lower bound ``E_p[T] - E_{p(x)p(y)}[exp(T - 1)]``."""

    def forward(self, x: Tensor, y: Tensor) -> BoundOutput:
        scores = self.scores(x, y)  # [B, B]
        # E[exp(T - 1)] through a log-mean-exp, clamped against overflow in the first steps of a bad critic
        bound = scores.diagonal().mean() - torch.exp(_off_diagonal_log_mean_exp(scores, -1.0).clamp(max=50.0))
        return BoundOutput(bound.detach(), -bound)


class MINE(_CriticBound):
    """MINE: Donsker-Varadhan bound with the moving-average gradient correction of Belghazi et al. (2018).

    Args:
        ema_rate: weight of the new batch in the moving average of ``E_{p(x)p(y)}[exp T]`` (the paper's ``alpha``).
    """

    def __init__(
        self, x_dim: int, y_dim: int, hidden_dims: Sequence[int] = (64, 64), ema_rate: float = 0.01
    ) -> None:
        super().__init__(x_dim, y_dim, hidden_dims)
        if not 0 < ema_rate <= 1:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate}")
        self.ema_rate = ema_rate
        self.register_buffer("log_ema", torch.tensor(float("nan")))  # log of the moving average; NaN = unset

    def forward(self, x: Tensor, y: Tensor) -> BoundOutput:
        scores = self.scores(x, y)  # [B, B]
        log_mean_exp = _off_diagonal_log_mean_exp(scores)  # log E[e^T]
        joint = scores.diagonal().mean()
        bound = joint - log_mean_exp
        if self.training:
            with torch.no_grad():
                current = log_mean_exp.detach()
                if torch.isnan(self.log_ema):
                    self.log_ema.copy_(current)
                else:
                    self.log_ema.copy_(
                        torch.logaddexp(
                            self.log_ema + math.log1p(-self.ema_rate), current + math.log(self.ema_rate)
                        )
                    )
            # grad of E[e^T] / ema  ==  grad of exp(log_mean_exp - log_ema)
            loss = -(joint - torch.exp((log_mean_exp - self.log_ema).clamp(max=50.0)))
        else:
            loss = -bound
        return BoundOutput(bound.detach(), loss)


class CLUB(nn.Module):
    """CLUB upper bound with a diagonal Gaussian ``q(y | x)`` (two MLP heads, ``logvar`` squashed by ``tanh``
    as in the paper's code). ``loss`` is the negative log-likelihood of ``q``; the estimate is not optimised."""

    def __init__(self, x_dim: int, y_dim: int, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.x_dim, self.y_dim = x_dim, y_dim

        def mlp(last: nn.Module | None) -> nn.Sequential:
            layers: list[nn.Module] = []
            width = x_dim
            for hidden in hidden_dims:
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            layers.append(nn.Linear(width, y_dim))
            if last is not None:
                layers.append(last)
            return nn.Sequential(*layers)

        self.mu = mlp(None)
        self.logvar = mlp(nn.Tanh())

    def forward(self, x: Tensor, y: Tensor) -> BoundOutput:
        _check_pair(x, y, self.x_dim, self.y_dim)
        mu, logvar = self.mu(x), self.logvar(x)  # [B, dy] each
        inv_var = (-logvar).exp()  # [B, dy]
        positive = -0.5 * ((y - mu).square() * inv_var).sum(-1)  # [B]  log q(y_i | x_i) + const
        # mean_j (y_j - mu_i)^2 = (mean_j y_j^2) - 2 mu_i mean_j y_j + mu_i^2, per coordinate
        y_mean, y_sq_mean = y.mean(0), y.square().mean(0)  # [dy]
        negative = -0.5 * ((y_sq_mean - 2 * mu * y_mean + mu.square()) * inv_var).sum(-1)  # [B]
        bound = (positive - negative).mean()
        nll = (0.5 * ((y - mu).square() * inv_var + logvar).sum(-1)).mean()  # -log q(y|x) up to a constant
        return BoundOutput(bound.detach(), nll)


VARIATIONAL_ESTIMATORS = {"infonce": InfoNCE, "nwj": NWJ, "mine": MINE, "club": CLUB}
