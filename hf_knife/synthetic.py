"""Synthetic distributions with exact (or Monte-Carlo) ground truths for validating the estimators.

Every sampler draws with an explicit :class:`torch.Generator` and exposes its ground truth in nats:

* :class:`GaussianSampler` -- ``N(0, S)``, ``h = 1/2 log((2 pi e)^d det S)``; :func:`halving_schedule_entropies`
  gives the truths of the tracking experiment (``S`` halved at every phase: ``h`` drops by ``d/2 log 2``).
* :class:`TriangleMixtureSampler` -- i.i.d. coordinates, each a mixture of symmetric triangular densities on
  disjoint intervals ``[i, i + s_i]`` with weights ``w_i``; per coordinate
  ``h_1 = sum_i w_i (1/2 + log(s_i / 2)) + H(w)`` and ``h = d h_1``.
* :class:`CorrelatedPairSampler` -- ``(x, y)`` pairs of dimension ``d`` each, with ``I(X; Y)`` set exactly:

  - ``"gaussian"``: ``x ~ N(0, I)``, ``y = rho x + sqrt(1 - rho^2) eps``; ``I = -d/2 log(1 - rho^2)``, so
    ``rho = sqrt(1 - exp(-2 I / d))``.
  - ``"cubic"``: the same pair with ``y -> y^3`` (an invertible map of ``y``: the MI is unchanged).
  - ``"uniform"``: ``x ~ U[0, 1]^d``, ``y = x + a u`` with ``u ~ U[0, 1]^d`` independent. Per coordinate,
    ``h(Y | X) = h(a U) = log a`` and ``Y`` has the trapezoidal density of ``U[0, 1] + U[0, a]``, whose entropy
    is ``a / 2`` for ``a <= 1`` and ``log a + 1 / (2 a)`` for ``a >= 1`` (the flat part has density ``1`` or
    ``1 / a``; each linear ramp contributes ``min(a, 1) / 4`` in units of the plateau). Hence the exact
    per-coordinate MI ``i(a) = a / 2 - log a`` (``a <= 1``) or ``1 / (2 a)`` (``a >= 1``), continuous and
    decreasing in ``a``; :func:`uniform_noise_width` inverts it (closed form for ``I / d <= 1/2``, bisection
    above). At ``d = 20`` the levels 2, 4, 6, 8, 10 nats give ``a = 5, 2.5, 5/3, 1.25, 1``.

* :class:`GaussianMixtureClassSampler` -- a label ``s`` uniform over ``C`` classes and ``z | s ~ N(mu_s, I)``;
  ``I(Z; S) = E[log p(z | s) - log p(z)]`` is computed by Monte Carlo from the exact densities
  (:meth:`GaussianMixtureClassSampler.mutual_information`), with its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .estimators.baselines import gaussian_entropy

__all__ = [
    "PAIR_KINDS",
    "CorrelatedPairSampler",
    "GaussianMixtureClassSampler",
    "GaussianSampler",
    "TriangleMixtureSampler",
    "correlation_for_mi",
    "gaussian_channel_mutual_information",
    "gaussian_entropy",
    "halving_schedule_entropies",
    "uniform_noise_width",
    "uniform_pair_mi",
]

PAIR_KINDS = ("gaussian", "cubic", "uniform")


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def halving_schedule_entropies(dim: int = 64, num_phases: int = 5) -> list[float]:
    """Truths of the tracking experiment: ``N(0, 2^-p I_d)`` for ``p = 0 .. num_phases - 1``."""
    return [gaussian_entropy(0.5**p, dim) for p in range(num_phases)]


class GaussianSampler:
    """``N(0, scale^2 I_d)`` (or ``N(0, covariance)``) with its exact entropy."""

    def __init__(self, dim: int, scale: float = 1.0, covariance: Tensor | None = None) -> None:
        self.dim, self.scale = dim, float(scale)
        self.covariance = None if covariance is None else covariance.to(torch.float64)
        if self.covariance is not None:
            self._chol = torch.linalg.cholesky(self.covariance).to(torch.float32)

    @property
    def entropy(self) -> float:
        if self.covariance is not None:
            return gaussian_entropy(self.covariance)
        return gaussian_entropy(self.scale**2, self.dim)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        eps = torch.randn(n, self.dim, generator=generator)  # [n, d]
        return eps @ self._chol.T if self.covariance is not None else self.scale * eps

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)``: ``[n, d] -> [n]`` (float64)."""
        x = x.to(torch.float64)
        if self.covariance is not None:
            dist = torch.distributions.MultivariateNormal(
                torch.zeros(self.dim, dtype=x.dtype), self.covariance
            )
            return dist.log_prob(x)
        var = self.scale**2
        return -0.5 * (x.square().sum(-1) / var + self.dim * math.log(2 * math.pi * var))


class TriangleMixtureSampler:
    """I.i.d. coordinates, each a mixture of symmetric triangles on the disjoint intervals ``[i, i + s_i]``.

    Args:
        dim: number of coordinates ``d``.
        num_triangles: components per coordinate.
        widths, weights: ``s_i`` in ``(0, 1]`` and ``w_i`` (summing to 1); drawn from ``seed`` when omitted
            (``s_i ~ U[0.2, 1]``, ``w ~ Dirichlet(1, ..., 1)``).
    """

    def __init__(
        self,
        dim: int,
        num_triangles: int,
        widths: Tensor | None = None,
        weights: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        gen = _generator(seed)
        if widths is None:
            widths = 0.2 + 0.8 * torch.rand(num_triangles, generator=gen, dtype=torch.float64)
        if weights is None:
            weights = -torch.rand(num_triangles, generator=gen, dtype=torch.float64).log()  # Exp(1)
            weights = weights / weights.sum()  # Dirichlet(1)
        self.widths = torch.as_tensor(widths, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.widths.shape != (num_triangles,) or self.weights.shape != (num_triangles,):
            raise ValueError(f"widths and weights must have shape [{num_triangles}]")
        if not bool(((self.widths > 0) & (self.widths <= 1)).all()):
            raise ValueError("widths must lie in (0, 1] so that the supports [i, i + s_i] are disjoint")
        if not math.isclose(float(self.weights.sum()), 1.0, abs_tol=1e-9) or bool((self.weights <= 0).any()):
            raise ValueError("weights must be positive and sum to 1")
        self.dim, self.num_triangles = dim, num_triangles

    @property
    def entropy_1d(self) -> float:
        w, s = self.weights, self.widths
        return float((w * (0.5 + (s / 2).log())).sum() - (w * w.log()).sum())

    @property
    def entropy(self) -> float:
        return self.dim * self.entropy_1d

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        component = torch.multinomial(
            self.weights.float(), n * self.dim, replacement=True, generator=generator
        )
        u = torch.rand(2, n * self.dim, generator=generator, dtype=torch.float64).mean(
            0
        )  # triangular on [0, 1]
        x = component.to(torch.float64) + self.widths[component] * u
        return x.view(n, self.dim).float()

    def log_prob_1d(self, t: Tensor) -> Tensor:
        """Exact per-coordinate log-density (``-inf`` off the support), any shape, float64."""
        t = t.to(torch.float64)
        i = t.floor().clamp(0, self.num_triangles - 1).long()
        s, w = self.widths[i], self.weights[i]
        u = (t - i) / s  # position within the triangle's support
        inside = (u >= 0) & (u <= 1) & (t >= 0) & (t < self.num_triangles)
        density = w * (2.0 / s) * (1.0 - (2.0 * u - 1.0).abs())
        return torch.where(
            inside & (density > 0), density.clamp_min(1e-300).log(), torch.full_like(t, -math.inf)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)``: ``[n, d] -> [n]``."""
        return self.log_prob_1d(x).sum(-1)


def correlation_for_mi(mi: float, dim: int) -> float:
    """``rho`` such that ``dim`` independent Gaussian pairs of correlation ``rho`` have ``I = mi`` nats."""
    return math.sqrt(1.0 - math.exp(-2.0 * mi / dim))


def uniform_pair_mi(width: float) -> float:
    """Exact per-coordinate ``I(X; X + a U)`` for ``X, U ~ U[0, 1]`` independent, ``a = width > 0``."""
    a = float(width)
    return a / 2 - math.log(a) if a <= 1 else 1.0 / (2 * a)


def uniform_noise_width(mi: float, dim: int) -> float:
    """Invert :func:`uniform_pair_mi`: the noise width ``a`` giving ``I = mi`` nats over ``dim`` coordinates."""
    per_coordinate = mi / dim
    if per_coordinate <= 0:
        raise ValueError(f"mi must be positive, got {mi}")
    if per_coordinate <= 0.5:
        return 1.0 / (2 * per_coordinate)
    low, high = 1e-300, 1.0  # i(a) = a/2 - log a is decreasing on (0, 1]
    for _ in range(200):
        mid = math.sqrt(low * high) if high / low > 4 else 0.5 * (low + high)
        if uniform_pair_mi(mid) > per_coordinate:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


class CorrelatedPairSampler:
    """Pairs ``(x, y)``, each ``[n, dim]``, with exact ``I(X; Y) = mi`` nats (see the module docstring)."""

    def __init__(self, kind: str, dim: int, mi: float) -> None:
        if kind not in PAIR_KINDS:
            raise ValueError(f"kind must be one of {PAIR_KINDS}, got {kind!r}")
        self.kind, self.dim, self.mi = kind, dim, float(mi)
        self.rho = correlation_for_mi(mi, dim) if kind != "uniform" else None
        self.width = uniform_noise_width(mi, dim) if kind == "uniform" else None

    @property
    def mutual_information(self) -> float:
        if self.kind == "uniform":
            return self.dim * uniform_pair_mi(self.width)
        return -0.5 * self.dim * math.log(1.0 - self.rho**2)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.kind == "uniform":
            x = torch.rand(n, self.dim, generator=generator)  # [n, d]
            return x, x + self.width * torch.rand(n, self.dim, generator=generator)
        x = torch.randn(n, self.dim, generator=generator)  # [n, d]
        y = self.rho * x + math.sqrt(1.0 - self.rho**2) * torch.randn(n, self.dim, generator=generator)
        return (x, y**3) if self.kind == "cubic" else (x, y)

    def pointwise_mi(self, x: Tensor, y: Tensor) -> Tensor:
        """Exact ``log p(y | x) - log p(y)`` per sample (its mean over samples estimates ``I``): ``[n]``."""
        x, y = x.to(torch.float64), y.to(torch.float64)
        if self.kind == "uniform":
            a = self.width
            # p(y | x) = 1/a on [x, x + a]; p(y) = trapezoid: min(y, 1, a, 1 + a - y) / a on [0, 1 + a].
            log_cond = torch.full_like(y, -math.log(a))
            marginal = torch.minimum(torch.minimum(y, torch.full_like(y, min(1.0, a))), 1.0 + a - y) / a
            return (log_cond - marginal.log()).sum(-1)
        if self.kind == "cubic":  # the Jacobian of y -> y^3 cancels between p(y|x) and p(y)
            y = y.sign() * y.abs().pow(1.0 / 3.0)
        r2 = self.rho**2
        log_cond = -0.5 * ((y - self.rho * x).square() / (1 - r2) + math.log(1 - r2))  # constants cancel
        log_marg = -0.5 * y.square()
        return (log_cond - log_marg).sum(-1)


def _logmeanexp(a: Tensor, dim: int) -> Tensor:
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


@dataclass
class MonteCarloTruth:
    """A Monte-Carlo ground truth: ``value`` and its standard error, both in nats."""

    value: float
    stderr: float
    num_samples: int


class GaussianMixtureClassSampler:
    """Labels ``s`` uniform over ``num_classes``; ``z | s ~ N(mu_s, I_dim)`` with ``mu_s ~ N(0, separation^2 I)``.

    ``I(Z; S) <= log C``; the class means are drawn from ``seed`` (a different problem per seed).
    """

    def __init__(self, num_classes: int, dim: int = 8, separation: float = 1.5, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        gen = _generator(seed)
        self.num_classes, self.dim, self.separation = num_classes, dim, separation
        self.means = separation * torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)  # [C, d]

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, self.num_classes, (n,), generator=generator)  # [n]
        z = self.means[labels] + torch.randn(n, self.dim, generator=generator, dtype=torch.float64)  # [n, d]
        return z.float(), labels

    def class_log_probs(self, z: Tensor) -> Tensor:
        """Exact ``log p(z | s)`` for every class: ``[n, d] -> [n, C]`` (float64)."""
        z = z.to(torch.float64)
        sq = (z.unsqueeze(1) - self.means).square().sum(-1)  # [n, C]
        return -0.5 * (sq + self.dim * math.log(2 * math.pi))

    def pointwise_mi(self, z: Tensor, labels: Tensor) -> Tensor:
        """Exact ``log p(z | s) - log p(z)`` per sample: ``[n]``."""
        logp = self.class_log_probs(z)  # [n, C]
        return logp.gather(1, labels.view(-1, 1)).squeeze(1) - _logmeanexp(logp, 1)

    def mutual_information(self, num_samples: int = 200_000, seed: int = 12345) -> MonteCarloTruth:
        """Monte-Carlo ``I(Z; S)`` from the exact densities (label entropy is exactly ``log C``)."""
        gen = _generator(seed)
        values = []
        for start in range(0, num_samples, 50_000):
            z, labels = self.sample(min(50_000, num_samples - start), gen)
            values.append(self.pointwise_mi(z, labels))
        v = torch.cat(values)
        return MonteCarloTruth(float(v.mean()), float(v.std() / math.sqrt(v.numel())), v.numel())


def gaussian_channel_mutual_information(mu: Tensor, sigma: float, num_samples: int = 20_000, seed: int = 1) -> float:
    """I(X; Z) in nats for X uniform over the rows of ``mu [N, d]`` and ``Z | X = n ~ N(mu_n, sigma^2 I)`` (a
    Gaussian head on a training set of N examples; at most log N), by Monte Carlo:
    ``E[log p(z | x) - log (1/N) sum_j p(z | x_j)]``."""
    generator = _generator(seed)
    n, d = mu.shape
    index = torch.randint(0, n, (num_samples,), generator=generator)  # [S]
    z = mu[index] + sigma * torch.randn(num_samples, d, generator=generator, dtype=mu.dtype)  # [S, d]
    log_p = torch.distributions.Normal(mu.unsqueeze(0), sigma).log_prob(z.unsqueeze(1)).sum(-1)  # [S, N]
    return float((log_p[torch.arange(num_samples), index] - _logmeanexp(log_p, 1)).mean())
