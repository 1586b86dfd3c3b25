"""Baselines beside KNIFE: DoE (one Gaussian), Schraudolph (kernels fixed at samples), kNN entropy and KSG MI.

DoE and Schraudolph are :class:`~hf_knife.MarginalKernel` special cases (same ``log_prob`` / ``forward``
interface, same density formula). The kNN (Kozachenko-Leonenko) entropy and the KSG mutual information are
non-differentiable and meant for evaluation only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln
from torch import Tensor

from .degenerate import relative_floor
from .marginal import MarginalKernel

__all__ = [
    "DoEEstimator",
    "SchraudolphKernel",
    "gaussian_entropy",
    "doe_mutual_information",
    "knn_entropy",
    "ksg_mutual_information",
]


def _lower_precision_factor(covariance: Tensor) -> Tensor:
    """Lower-triangular ``A`` with ``A^T A = covariance^-1`` (a "reversed" Cholesky factor): ``[d, d]``."""
    precision = torch.linalg.inv(covariance)  # [d, d]
    flipped = precision.flip(0, 1)  # J P J
    chol = torch.linalg.cholesky(flipped)  # J P J = R R^T, R lower
    return chol.T.flip(0, 1)  # A = J R^T J, lower with A^T A = P


class DoEEstimator(MarginalKernel):
    """Difference-of-entropies baseline: a single full-covariance Gaussian fitted in closed form.

    ``init_from_samples(x)`` sets the maximum-likelihood mean and covariance (plus ``ridge`` on the diagonal),
    so no training is needed; the parameters stay learnable for use as a penalty.
    """

    def __init__(self, dim: int, ridge: float = 1e-6) -> None:
        super().__init__(dim, num_components=1, covariance="full", learn_weights=False, init_std=0.0)
        self.ridge = ridge

    @torch.no_grad()
    def init_from_samples(self, x: Tensor) -> DoEEstimator:
        self._check_x(x)
        x = x.to(torch.float64)
        covariance = torch.cov(x.T, correction=0).reshape(self.dim, self.dim)  # [d, d]
        covariance = covariance + self.ridge * covariance.diagonal().mean().clamp_min(1e-12) * torch.eye(
            self.dim, dtype=x.dtype
        )
        factor = _lower_precision_factor(covariance)  # [d, d]
        scale = factor.diagonal()  # [d]
        self.loc.copy_(x.mean(0, keepdim=True))
        self.log_diag.copy_(scale.log().unsqueeze(0))
        self.tril.copy_((factor / scale.unsqueeze(0)).tril(-1).unsqueeze(0))
        return self


class SchraudolphKernel(MarginalKernel):
    """Schraudolph's estimator: uniform kernels fixed at ``num_components`` samples; only bandwidths are learned.

    Call :meth:`init_from_samples` with the samples that hold the kernel centres, then fit the bandwidths on
    *other* samples (the centres' own points would reward a vanishing bandwidth).
    """

    def __init__(self, dim: int, num_components: int = 128, covariance: str = "diagonal", **kwargs) -> None:
        super().__init__(dim, num_components, covariance, learn_means=False, learn_weights=False, **kwargs)


_LOG_2PI_E = math.log(2.0 * math.pi * math.e)


def gaussian_entropy(covariance: Tensor | np.ndarray | float, dim: int | None = None) -> float:
    """Closed-form entropy of N(m, S) in nats: ``1/2 (d log(2 pi e) + log det S)``.

    ``covariance``: ``S [d, d]`` (torch or numpy), or a scalar variance ``v`` with ``dim`` given (``S = v I_dim``).
    """
    if np.ndim(covariance) == 0:
        if dim is None:
            raise ValueError("pass dim with a scalar variance")
        return 0.5 * dim * (_LOG_2PI_E + math.log(float(covariance)))
    covariance = torch.as_tensor(covariance, dtype=torch.float64)  # [d, d]
    return float(0.5 * (covariance.shape[-1] * _LOG_2PI_E + torch.linalg.slogdet(covariance)[1]))


def doe_mutual_information(x: Tensor, y: Tensor) -> float:
    """Gaussian (DoE) mutual information: ``h_G(X) - h_G(X|Y)``.

    For continuous ``y [N, d_y]`` this is ``1/2 (log det S_x + log det S_y - log det S_xy)``; for labels ``y [N]``
    it is ``h_G(X) - sum_s p(s) h_G(X | S=s)`` with one Gaussian per class.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y)

    def standardise(a: Tensor) -> Tensor:
        # MI is invariant to per-coordinate affine maps: on unit spreads the ridge below is relative to each
        # coordinate's spread (an absolute 1e-9 vanishes against a variance of 1e8 and det S_xy becomes 0: +inf)
        std = a.std(0, unbiased=False)  # [d]
        return (a - a.mean(0)) / std.clamp_min(relative_floor(std))  # [N, d]

    x = standardise(x)

    def cov(a: Tensor) -> Tensor:
        return torch.cov(a.T, correction=0).reshape(a.shape[1], a.shape[1]) + 1e-9 * torch.eye(
            a.shape[1], dtype=a.dtype
        )

    if y.dim() == 1 and not torch.is_floating_point(y):
        conditional = 0.0
        for label in y.unique():
            mask = y == label
            conditional += float(mask.double().mean()) * gaussian_entropy(cov(x[mask]))
        return gaussian_entropy(cov(x)) - conditional
    y = standardise(y.to(torch.float64).reshape(x.shape[0], -1))
    joint = torch.cat([x, y], dim=1)  # [N, d_x + d_y]
    return gaussian_entropy(cov(x)) + gaussian_entropy(cov(y)) - gaussian_entropy(cov(joint))


def _kth_neighbour_log_distance(x: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    """``log`` of the Euclidean distance from each row of ``x [N, d]`` to its k-th nearest other row: ``[N]``.

    A k-d tree in low dimension; in high dimension (where the tree degrades to a slow brute force) chunked GEMMs
    on centred float32 data, ``||a||^2 + ||b||^2 - 2 a.b``.
    """
    n, d = x.shape
    if d <= 16:
        distances, _ = cKDTree(x).query(x, k=k + 1)  # [N, k+1], first is the point itself
        return np.log(np.maximum(distances[:, -1], 1e-300))
    z = torch.from_numpy(x - x.mean(0)).float()  # [N, d]
    squared = z.square().sum(1)  # [N]
    log_eps = np.empty(n)
    for start in range(0, n, chunk_size):
        block = z[start : start + chunk_size]  # [c, d]
        dist2 = (squared[start : start + chunk_size, None] + squared[None, :] - 2.0 * block @ z.T).clamp_min(
            0.0
        )  # [c, N]
        kth = dist2.topk(k + 1, dim=1, largest=False).values[:, -1]  # [c], the point itself comes first
        log_eps[start : start + chunk_size] = 0.5 * kth.double().clamp_min(1e-300).log().numpy()
    return log_eps


def knn_entropy(x: Tensor | np.ndarray, k: int = 3, chunk_size: int = 2048) -> float:
    """Kozachenko-Leonenko k-nearest-neighbour entropy estimate (Euclidean norm), in nats.

    ``h = psi(N) - psi(k) + log V_d + d/N sum_i log eps_i`` with ``eps_i`` the distance to the k-th neighbour
    and ``V_d`` the volume of the unit ball.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    log_eps = _kth_neighbour_log_distance(x, k, chunk_size)
    log_unit_ball = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)
    return float(digamma(n) - digamma(k) + log_unit_ball + d * np.mean(log_eps))


def ksg_mutual_information(x: Tensor | np.ndarray, y: Tensor | np.ndarray, k: int = 3) -> float:
    """Kraskov-Stoegbauer-Grassberger estimator (algorithm 1, max-norm), in nats.

    ``I = psi(k) + psi(N) - <psi(n_x + 1) + psi(n_y + 1)>`` where ``n_x``, ``n_y`` count the points strictly
    within the joint k-th-neighbour distance in each marginal space.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x and y must have the same number of samples, got {n} and {y.shape[0]}")
    joint = np.concatenate([x, y], axis=1)
    distances, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)  # [N, k+1]
    radius = np.nextafter(distances[:, -1], 0)  # strictly less than the k-th distance
    n_x = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    n_y = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))
