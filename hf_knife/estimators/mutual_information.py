"""KNIFEEstimator: I(X; Y) = h(X) - h(X | Y) from a marginal and a conditional kernel; MixtureMIEstimator and its
calibrated readout for a discrete Y."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .base import KernelBase, init_functions
from .conditional import ConditionalKernel
from .discrete import DiscreteConditionalKernel
from .marginal import MarginalKernel
from .validation import check_choice

__all__ = [
    "COVARIANCE_SHRINKAGES",
    "FIT_OBJECTIVES",
    "MI_MARGINALS",
    "MI_READOUTS",
    "CalibratedMixtureMIEstimator",
    "KNIFEEstimator",
    "KNIFEOutput",
    "MIEstimator",
    "MixtureMIEstimator",
    "build_mi_estimator",
    "calibrated_log_posterior",
    "fit_temperature",
    "pooled_whitening",
    "spiked_covariance",
    "TEMPERATURE_MIN_GAIN",
]

# How MixtureMIEstimator fits its class kernels: coefficients (a, b) of the loss a * h_hat(X) + b * h_hat(X | S).
#   likelihood: h(X) + h(X|S), both NLLs (the KNIFE fit; it equals 2 h(X|S) + I_hat, so it also pulls I_hat down)
#   posterior:  h(X|S) - h(X) = -I_hat = CE(S | X) - H(S), the cross-entropy of the class posterior q(s|x): the
#               tightest Barber-Agakov bound I >= H(S) - CE, the objective of a classifier (an adversary)
FIT_OBJECTIVES: dict[str, tuple[float, float]] = {"likelihood": (1.0, 1.0), "posterior": (-1.0, 1.0)}
#: How h(X) is estimated for a discrete Y: ``mixture`` (the class kernels weighted by the prior,
#: :class:`MixtureMIEstimator`) or ``kernel`` (a separate :class:`~hf_knife.MarginalKernel`, :class:`KNIFEEstimator`).
MI_MARGINALS = ("mixture", "kernel")
#: How a mixture estimator is read out: ``likelihood`` (the raw difference of entropies) or ``calibrated``
#: (:class:`CalibratedMixtureMIEstimator`: a tempered class posterior).
MI_READOUTS = ("likelihood", "calibrated")
#: Shrinkage of the full class covariances of :meth:`MixtureMIEstimator.fit_gaussians`: ``ledoit_wolf`` or
#: ``spiked`` (:func:`spiked_covariance`).
COVARIANCE_SHRINKAGES = ("ledoit_wolf", "spiked")


@dataclass
class KNIFEOutput:
    """Result of :class:`KNIFEEstimator` on a batch (all scalars, in nats).

    Attributes:
        mutual_information: ``h_hat(X) - h_hat(X|Y)``, the raw difference (it can be negative; never ``abs()``).
        marginal_entropy: ``h_hat(X)``.
        conditional_entropy: ``h_hat(X|Y)``.
        loss: the fitting loss of the estimator, ``h_hat(X) + h_hat(X|Y)`` (both NLLs).
    """

    mutual_information: Tensor
    marginal_entropy: Tensor
    conditional_entropy: Tensor
    loss: Tensor


class MIEstimator(nn.Module):
    """The interface of the KNIFE estimators of I(X; Y) = h(X) - h(X | Y), for ``x [B, dim]`` and ``y``.

    Subclasses give ``marginal_log_prob(x) -> [B]`` (``log q(x)``) and ``conditional_log_prob(x, y) -> [B]``
    (``log q(x | y)``); ``fit_coefficients = (a, b)`` make the fitting loss ``a h_hat(X) + b h_hat(X | Y)``
    (:data:`FIT_OBJECTIVES`), so a caller that routes gradients (the penalty) needs no other knowledge of the
    estimator. :meth:`reset_parameters` re-initialises every kernel as its constructor does.
    """

    fit_coefficients: tuple[float, float] = FIT_OBJECTIVES["likelihood"]
    conditional: KernelBase

    @property
    def num_components(self) -> int:
        """Mixture size ``K`` of the kernels."""
        return self.conditional.num_components

    def marginal_log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``log q(x)``: ``[B, dim] -> [B]`` (``y`` only for estimators conditional on a group, which read it)."""
        raise NotImplementedError

    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log q(x | y)``: ``x [B, dim]``, ``y [B, ...]`` -> ``[B]``."""
        raise NotImplementedError

    def pointwise(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(-log q(x), -log q(x | y))``, each ``[B]``."""
        return -self.marginal_log_prob(x, y), -self.conditional_log_prob(x, y)

    def forward(self, x: Tensor, y: Tensor) -> KNIFEOutput:
        """Estimate on a batch; ``loss`` is the fitting loss ``a h_hat(X) + b h_hat(X | Y)``."""
        marginal_nll, conditional_nll = self.pointwise(x, y)  # [B], [B]
        h, h_conditional = marginal_nll.mean(), conditional_nll.mean()
        a, b = self.fit_coefficients
        return KNIFEOutput(h - h_conditional, h, h_conditional, a * h + b * h_conditional)

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 1.0, init_bandwidth: float = 1.0) -> None:
        """The constructor's initialisation of every kernel, in registration order (see
        :meth:`~hf_knife.estimators.base.KernelBase.reset_parameters`)."""
        for module in self.children():
            if isinstance(module, KernelBase):
                module.reset_parameters(init_std, init_bandwidth)


class KNIFEEstimator(
    MIEstimator, PyTorchModelHubMixin, library_name="hf_knife", tags=["knife", "mutual-information"]
):
    """Mutual information between ``x [B, dim]`` and a continuous ``y [B, cond_dim]`` or discrete ``y [B]``.

    Pass exactly one of ``cond_dim`` (continuous: :class:`ConditionalKernel`) or ``num_classes`` (discrete:
    :class:`DiscreteConditionalKernel`). The remaining options are shared by both kernels; ``hidden_dims``
    applies to the continuous conditional only. The fitting loss is the likelihood fit of both kernels
    (:data:`FIT_OBJECTIVES`).
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        num_classes: int | None = None,
        num_components: int = 16,
        covariance: str = "diagonal",
        rank: int | None = None,
        init_bandwidth: float = 1.0,
        bandwidth_bounds: tuple[float, float] | None = None,
        hidden_dims: tuple[int, ...] = (128, 128),
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if (cond_dim is None) == (num_classes is None):
            raise ValueError(
                "pass exactly one of cond_dim (continuous Y of shape [B, cond_dim]) or num_classes "
                f"(discrete Y of shape [B]), got cond_dim={cond_dim}, num_classes={num_classes}"
            )
        options = dict(
            num_components=num_components, covariance=covariance, rank=rank, init_bandwidth=init_bandwidth,
            bandwidth_bounds=bandwidth_bounds,
        )  # fmt: skip
        self.marginal = MarginalKernel(dim, chunk_size=chunk_size, **options)
        self.conditional: ConditionalKernel | DiscreteConditionalKernel
        if cond_dim is not None:
            self.conditional = ConditionalKernel(dim, cond_dim, hidden_dims=hidden_dims, **options)
        else:
            self.conditional = DiscreteConditionalKernel(dim, num_classes, chunk_size=chunk_size, **options)
        self.dim, self.cond_dim, self.num_classes = dim, cond_dim, num_classes

    @property
    def is_discrete(self) -> bool:
        return self.num_classes is not None

    def marginal_log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``log q(x)`` of the marginal kernel: ``[B, dim] -> [B]`` (``y`` unused)."""
        return self.marginal.log_prob(x)

    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log q(x | y)``: ``x [B, dim]``, ``y [B, cond_dim]`` or labels ``[B]`` -> ``[B]``."""
        return self.conditional.log_prob(x, y)

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, y: Tensor) -> KNIFEEstimator:
        """Initialise both kernels from samples (means at samples, Scott bandwidths); returns self."""
        self.marginal.init_from_samples(x)
        self.conditional.init_from_samples(x, y)
        return self


class MixtureMIEstimator(MIEstimator):
    """I(X; S) for a discrete S with one KNIFE mixture per class and the marginal ``q(x) = sum_s p(s) q(x | s)``.

    ``p(s)`` is a buffer (smoothed class frequencies of the initialisation samples). The estimate
    ``mean_n [log q(x_n | s_n) - log q(x_n)] = mean_n log q(s_n | x_n) / p(s_n)`` is at most ``H(S)``, and both
    entropies share the same kernels, so its variance is far lower than that of two separate entropy estimates.
    Same interface as :class:`KNIFEEstimator` (:class:`MIEstimator`, ``conditional``, ``init_from_samples``);
    the fitting loss is ``h_hat(X) + h_hat(X | S)`` (``fit="likelihood"``) or the cross-entropy of the class
    posterior, ``h_hat(X | S) - h_hat(X)`` (``fit="posterior"``); see :data:`FIT_OBJECTIVES`.

    With ``num_groups = G > 1`` it estimates the conditional ``I(X; S | G) = h(X | G) - h(X | S, G)``: one class kernel
    per pair ``(g, s)``, labels are the joint ids ``g * num_classes + s``, ``p(s | g)`` is the prior and the
    "marginal" of a sample is its group's mixture ``q(x | g) = sum_s p(s | g) q(x | g, s)``.
    """

    def __init__(self, dim: int, num_classes: int, fit: str = "likelihood", num_groups: int = 1, **options) -> None:
        super().__init__()
        if fit not in FIT_OBJECTIVES:
            raise ValueError(f"fit must be one of {tuple(FIT_OBJECTIVES)}, got {fit!r}")
        if num_groups < 1:
            raise ValueError(f"num_groups must be a positive integer, got {num_groups}")
        self.num_classes, self.num_groups, self.fit = num_classes, num_groups, fit
        self.fit_coefficients = FIT_OBJECTIVES[fit]
        self.conditional = DiscreteConditionalKernel(dim, num_classes * num_groups, **options)
        self.register_buffer("log_prior", torch.full((num_classes * num_groups,), -math.log(num_classes)))

    def all_log_probs(self, x: Tensor) -> Tensor:
        """``log q(x | s)`` for every class (every pair ``(g, s)``): ``[B, d] -> [B, G * C]`` (one GEMM)."""
        return self.conditional.log_prob_per_class(x)

    def _group_log_probs(self, joint: Tensor, labels: Tensor | None) -> Tensor:
        """``log q(x | g)`` of each sample's group from ``joint = log p(s | g) + log q(x | g, s)`` ``[B, G * C]``."""
        if self.num_groups == 1:
            return torch.logsumexp(joint, dim=1)  # [B]
        if labels is None:
            raise ValueError(
                f"this estimator of I(X; S | G) ({self.num_groups} groups) needs the joint labels g * C + s to "
                "pick each sample's group"
            )
        per_group = torch.logsumexp(joint.view(joint.shape[0], self.num_groups, self.num_classes), dim=2)  # [B, G]
        return per_group.gather(1, (labels.long() // self.num_classes).unsqueeze(1)).squeeze(1)  # [B]

    def own_group(self, class_log_probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each sample's classes: ``(log q(x | g_n, s) [B, C], log p(s | g_n) [B, C], s_n [B])`` from
        ``class_log_probs [B, G * C]`` (:meth:`all_log_probs`) and joint ids ``labels [B]`` (all classes when G = 1)."""
        classes = self.num_classes
        group = labels.long() // classes  # [B]
        rows = torch.arange(labels.shape[0], device=labels.device)
        own = class_log_probs.view(labels.shape[0], -1, classes)[rows, group]  # [B, C]
        log_prior = self.log_prior.to(own).view(-1, classes)[group]  # [B, C]
        return own, log_prior, labels.long() % classes

    def marginal_log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``log q(x) = logsumexp_s(log p(s) + log q(x | s))``: ``[B]`` (``log q(x | g)`` with groups: ``labels``
        are then needed, their group is used)."""
        return self._group_log_probs(self.all_log_probs(x) + self.log_prior.to(x.dtype), labels)

    def conditional_log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log q(x | s)`` of each sample's own class: ``x [B, d]``, ``labels [B]`` -> ``[B]``."""
        return self.conditional.log_prob(x, labels)

    def pointwise(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(-log q(x), -log q(x | s))``, each ``[B]`` (one evaluation of the class kernels)."""
        all_log_probs = self.all_log_probs(x)  # [B, G * C]
        marginal = self._group_log_probs(all_log_probs + self.log_prior.to(all_log_probs.dtype), labels)  # [B]
        conditional = all_log_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)  # [B]
        return -marginal, -conditional

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 1.0, init_bandwidth: float = 1.0) -> None:
        """Uniform prior ``log p(s | g) = -log C`` and the class kernels as their constructor sets them."""
        init_functions().constant_(self.log_prior, -math.log(self.num_classes))
        super().reset_parameters(init_std, init_bandwidth)

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, labels: Tensor) -> MixtureMIEstimator:
        """Class priors from (add-one smoothed) frequencies (within each group); each class kernel from its
        samples."""
        total = self.num_classes * self.num_groups
        counts = torch.bincount(labels.long(), minlength=total).double().view(self.num_groups, -1) + 1.0  # [G, C]
        self.log_prior.copy_((counts / counts.sum(1, keepdim=True)).log().flatten().to(self.log_prior.dtype))
        self.conditional.init_from_samples(x, labels)
        return self

    @torch.no_grad()
    def fit_gaussians(
        self, x: Tensor, labels: Tensor, tied: bool = False, shrinkage: str = "ledoit_wolf"
    ) -> MixtureMIEstimator:
        """Fit one Gaussian per class (``num_components = 1``) in closed form; returns self.

        Means are the class means of ``x [N, d]``. Diagonal covariances (``diagonal``, ``shared_diagonal``): the
        maximum-likelihood variances (unbiased), per class or, when ``tied``, pooled within classes (every class
        then shares one diagonal: linear discriminant analysis in the coordinates of ``x``). ``full``: the
        shrunk covariance of each class (regularised quadratic discriminant analysis), or the pooled Ledoit-Wolf
        one when ``tied``; ``shrinkage`` (:data:`COVARIANCE_SHRINKAGES`) is ``ledoit_wolf`` (linear shrinkage
        towards a multiple of the identity) or ``spiked`` (:func:`spiked_covariance`: the identity plus the
        eigen-directions that leave the Marchenko-Pastur bulk, for inputs whitened by the pooled within-class
        covariance). Classes with fewer than two samples, or a (nearly) singular estimate, get the pooled
        covariance; classes without samples the overall mean. Also sets the class priors, as
        :meth:`init_from_samples` does.
        """
        kernel = self.conditional
        if kernel.num_components != 1 or kernel.covariance not in ("diagonal", "shared_diagonal", "full"):
            raise ValueError(
                "fit_gaussians needs num_components=1 and a diagonal or full covariance, got "
                f"num_components={kernel.num_components}, covariance={kernel.covariance!r}"
            )
        check_choice(shrinkage, "shrinkage", COVARIANCE_SHRINKAGES)
        x64, labels = x.detach().double(), labels.long()
        counts = torch.bincount(labels, minlength=self.num_classes)  # [C]
        self.log_prior.copy_(((counts.double() + 1.0) / (counts.sum() + self.num_classes)).log())
        means = torch.stack(
            [x64[labels == c].mean(0) if counts[c] > 0 else x64.mean(0) for c in range(self.num_classes)]
        )  # [C, d]
        residuals = x64 - means[labels]  # [N, d]
        kernel.loc.copy_(means.unsqueeze(1).to(kernel.loc))  # [C, 1, d]
        kernel.mixture_logits.zero_()
        own = [not tied and bool(counts[c] >= 2) for c in range(self.num_classes)]
        if kernel.covariance == "full":
            pooled = _cholesky_or_none(_ledoit_wolf(residuals), ridge=True)  # [d, d]
            if pooled is None:  # no spread at all within classes: unit covariance
                pooled = torch.eye(x64.shape[1], dtype=x64.dtype, device=x64.device)
            for c in range(self.num_classes):
                # a class with few samples can have a (nearly) singular Ledoit-Wolf estimate (shrinkage 0 from two
                # samples): it then shares the pooled one
                shrunk = _ledoit_wolf if shrinkage == "ledoit_wolf" else spiked_covariance
                cholesky = _cholesky_or_none(shrunk(residuals[labels == c])) if own[c] else None  # [d, d]
                cholesky = pooled if cholesky is None else cholesky
                # precision factor A = chol(covariance)^-1 (lower triangular, A^T A = covariance^-1), stored as
                # A = (I + L) diag(exp(log_diag))
                identity = torch.eye(x64.shape[1], dtype=x64.dtype, device=x64.device)
                factor = torch.linalg.solve_triangular(cholesky, identity, upper=False)  # [d, d]
                scale = factor.diagonal()  # [d]  > 0
                kernel.log_diag[c, 0].copy_(scale.log())
                kernel.tril[c, 0].copy_(torch.tril(factor / scale, diagonal=-1))
            return self
        dof = max(1, x64.shape[0] - int((counts > 0).sum()))
        pooled = residuals.square().sum(0) / dof  # [d]
        variances = pooled.expand(self.num_classes, -1).clone()  # [C, d]
        for c in range(self.num_classes):
            if own[c]:
                variances[c] = residuals[labels == c].square().sum(0) / (counts[c] - 1)
        floor = 1e-12 * float(pooled.max().clamp_min(1e-300))
        kernel.log_diag.copy_((-0.5 * variances.clamp_min(floor).log()).unsqueeze(1).to(kernel.log_diag))
        return self


def _cholesky_or_none(covariance: Tensor, floor: float = 1e-6, ridge: bool = False) -> Tensor | None:
    """Cholesky factor ``[d, d]`` of ``covariance``, or ``None`` when it is (nearly) singular: some conditional
    variance below ``floor`` times the mean variance (the kernels' bandwidth floor of 1e-3 of the spread).
    With ``ridge``, that floor is then added to the diagonal instead of giving up (``None`` only without any
    variance)."""
    scale = float(covariance.diagonal().mean())
    if not math.isfinite(scale) or scale <= 0.0:
        return None
    cholesky, info = torch.linalg.cholesky_ex(covariance)
    if int(info) == 0 and bool(cholesky.diagonal().square().ge(floor * scale).all()):
        return cholesky
    if not ridge:
        return None
    eye = torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
    cholesky, info = torch.linalg.cholesky_ex(covariance + floor * scale * eye)
    return cholesky if int(info) == 0 else None


def _ledoit_wolf(residuals: Tensor) -> Tensor:
    """Ledoit-Wolf shrunk covariance of centred samples ``[N, d]`` (float64, same device): ``[d, d]``."""
    from sklearn.covariance import ledoit_wolf

    covariance, _ = ledoit_wolf(residuals.detach().cpu().double().numpy(), assume_centered=True)
    return torch.from_numpy(covariance).to(residuals)


def spiked_covariance(residuals: Tensor) -> Tensor:
    """Covariance ``[d, d]`` of ``n`` class-centred samples ``[n, d]`` whose population is the identity plus a few
    spikes (the within-class covariance of samples whitened by the pooled one, plus the class's own directions).

    Eigen-directions of the sample covariance ``S`` (``n - 1`` degrees of freedom, ``gamma = d / (n - 1)``) whose
    eigenvalue ``lambda`` leaves the Marchenko-Pastur bulk ``[(1 - sqrt(gamma))^2, (1 + sqrt(gamma))^2]`` are kept
    as spikes: the population value ``l`` solves ``lambda = l + gamma l / (l - 1)``, the squared cosine between the
    sample and population directions is ``c^2 = (1 - gamma / (l - 1)^2) / (1 + gamma / (l - 1))`` (Paul 2007), and
    the spike's variance becomes ``1 + (l - 1) c^2``, the population variance along the sample direction (the
    shrinker of Donoho, Gavish and Johnstone 2018 that minimises KL(true || estimate), i.e. the held-out
    likelihood). Every other direction keeps variance 1, so classes differ only along their detected spikes
    (Ledoit-Wolf's single shrinkage intensity removes those too when the rest is close to the identity).
    """
    x64 = residuals.detach().double()  # [n, d]
    n, d = x64.shape
    eye = torch.eye(d, dtype=x64.dtype, device=x64.device)
    if n < 2:
        return eye.to(residuals)
    gamma = d / (n - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(x64.T @ x64 / (n - 1))  # [d], [d, d]
    upper = (1.0 + math.sqrt(gamma)) ** 2
    lower = (1.0 - math.sqrt(gamma)) ** 2 if gamma < 1.0 else -math.inf  # no spike below the bulk when d >= n - 1
    above, below = eigenvalues > upper, eigenvalues < lower  # [d], [d]
    b = eigenvalues + 1.0 - gamma  # [d]  l^2 - b l + lambda = 0
    root = (b.square() - 4.0 * eigenvalues).clamp_min(0.0).sqrt()  # [d]
    population = torch.where(above, 0.5 * (b + root), 0.5 * (b - root))  # [d]  l (larger root above, smaller below)
    excess = torch.where(above | below, population - 1.0, torch.ones_like(population))  # [d]  l - 1 (1 in the bulk)
    cosine2 = ((1.0 - gamma / excess.square()) / (1.0 + gamma / excess)).clamp(0.0, 1.0)  # [d]
    variances = torch.where(above | below, 1.0 + excess * cosine2, torch.ones_like(eigenvalues))  # [d]
    return ((eigenvectors * variances) @ eigenvectors.T).to(residuals)  # [d, d]


# ----------------------------------------------------------------------------------------------- calibrated readout
def pooled_whitening(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Whitening by the pooled within-class covariance of ``x [N, d]``, with Ledoit-Wolf shrinkage.

    Returns ``shift [d]`` and ``matrix [d, d]`` (eigenvectors scaled by eigenvalue^-1/2) such that
    ``(x - shift) @ matrix`` has a within-class covariance close to the identity. It is an invertible linear map,
    so I(X; S) is unchanged, but diagonal class kernels then see decorrelated coordinates. Ledoit-Wolf keeps the
    map well conditioned when ``d`` is not small against ``N``.
    """
    x64, labels = x.detach().cpu().double(), labels.detach().cpu().long()
    centred = x64.clone()  # [N, d]
    for c in range(num_classes):
        rows = labels == c
        if bool(rows.any()):
            centred[rows] -= x64[rows].mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(_ledoit_wolf(centred))  # [d], [d, d]
    if not float(eigenvalues.max()) > 0.0:  # no spread within classes: nothing to whiten
        return x64.mean(0).to(x), torch.eye(x.shape[1]).to(x)
    eigenvalues = eigenvalues.clamp_min(1e-12 * float(eigenvalues.max()))
    matrix = eigenvectors / eigenvalues.sqrt()  # [d, d]  columns: whitened coordinates
    return x64.mean(0).to(x), matrix.to(x)


def calibrated_log_posterior(class_log_probs: Tensor, log_prior: Tensor, temperature: float | Tensor) -> Tensor:
    """``log q_T(s | x) = log_softmax_s(log p(s) + T log q(x | s))``: ``class_log_probs [N, C]``, ``log_prior [C]``
    or ``[N, C]`` -> ``[N, C]``. T = 1 is Bayes' rule with the kernels; T = 0 gives the prior."""
    return torch.log_softmax(log_prior + temperature * class_log_probs, dim=1)


#: Half the 95% quantile of chi-square with one degree of freedom: the gain in total log-likelihood a temperature
#: must bring over the prior (T = 0) on its calibration samples to be kept (a likelihood-ratio test).
TEMPERATURE_MIN_GAIN = 0.5 * 3.841


def fit_temperature(
    class_log_probs: Tensor,
    labels: Tensor,
    log_prior: Tensor,
    max_temperature: float = 1e3,
    min_gain: float = TEMPERATURE_MIN_GAIN,
) -> float:
    """The temperature ``T >= 0`` minimising the cross-entropy of :func:`calibrated_log_posterior` on held-out samples.

    Args:
        class_log_probs: ``[N, C]`` ``log q(x_n | s = c)`` of samples the kernels were *not* fitted to.
        labels: ``[N]`` class ids.
        log_prior: ``[C]`` or ``[N, C]``.
        max_temperature: upper end of the search (reached only on separable samples).
        min_gain: ``T = 0`` is returned unless ``T`` raises the total log-likelihood of the labels by more than
            this many nats over the prior (default: a likelihood-ratio test at the 5% level). Without it, a
            temperature fitted to noise (S independent of X) is small but positive, and the readout on other
            samples is then slightly negative; ``0`` disables the test.

    The cross-entropy is convex in T (a log-sum-exp of affine functions); its derivative,
    ``mean_n (E_{q_T}[log q(x_n | s)] - log q(x_n | s_n))``, is found to vanish by bisection, in float64.
    T = 0 (the prior) is in the family, so the fitted posterior is never worse than the prior on these samples:
    over-confident kernels get T < 1 instead of driving the readout below zero.
    """
    log_likelihoods = class_log_probs.detach().double()  # [N, C]
    log_prior = log_prior.detach().double().expand_as(log_likelihoods)  # [N, C]
    labels = labels.long().view(-1, 1)  # [N, 1]
    own = log_likelihoods.gather(1, labels).squeeze(1)  # [N]

    def slope(t: float) -> float:
        posterior = torch.softmax(log_prior + t * log_likelihoods, dim=1)  # [N, C]
        return float(((posterior * log_likelihoods).sum(1) - own).mean())

    def total_log_likelihood(t: float) -> float:
        return float(calibrated_log_posterior(log_likelihoods, log_prior, t).gather(1, labels).sum())

    if slope(0.0) >= 0.0:
        return 0.0
    low, high = 0.0, 1.0
    while slope(high) < 0.0 and high < max_temperature:
        low, high = high, 2.0 * high
    if slope(high) < 0.0:
        temperature = max_temperature
    else:
        for _ in range(60):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if slope(middle) < 0.0 else (low, middle)
        temperature = 0.5 * (low + high)
    if total_log_likelihood(temperature) - total_log_likelihood(0.0) <= min_gain:
        return 0.0
    return temperature


class CalibratedMixtureMIEstimator(MixtureMIEstimator):
    """A :class:`MixtureMIEstimator` read out through a calibrated class posterior: the one-call API's estimate of
    I(X; S) for a discrete S.

    Inputs go through a fixed linear map ``(x - input_shift) @ input_matrix`` (identity, or
    :func:`pooled_whitening`) before the class kernels; densities include its log-Jacobian, so ``pointwise`` and
    ``all_log_probs`` are densities of ``x``. The readout is the Barber-Agakov form
    ``I_hat = mean_n log q_T(s_n | x_n) / p(s_n)`` with ``q_T(s | x) = softmax_s(log p(s) + T log q(x | s))`` and a
    temperature ``T`` fitted on held-out samples (:func:`fit_temperature`). Its expectation on fresh samples is at
    most I(X; S), and ``T -> 0`` gives exactly 0: kernels that overfit give a small estimate, not a negative one.
    ``forward(x, labels).mutual_information`` is that readout; ``loss`` is still the kernels' fitting loss.
    """

    def __init__(self, dim: int, num_classes: int, fit: str = "likelihood", **options) -> None:
        super().__init__(dim, num_classes, fit=fit, **options)
        self.register_buffer("input_shift", torch.zeros(dim))
        self.register_buffer("input_matrix", torch.eye(dim))
        self.register_buffer("log_abs_det", torch.zeros(()))
        self.register_buffer("temperature", torch.ones(()))

    @torch.no_grad()
    def set_transform(self, shift: Tensor, matrix: Tensor) -> CalibratedMixtureMIEstimator:
        """Use ``(x - shift) @ matrix`` (``shift [d]``, invertible ``matrix [d, d]``) as the kernels' input."""
        self.input_shift.copy_(shift)
        self.input_matrix.copy_(matrix)
        self.log_abs_det.copy_(torch.linalg.slogdet(matrix.double())[1])
        return self

    def transform(self, x: Tensor) -> Tensor:
        """``[B, d] -> [B, d]``, in the kernels' dtype."""
        x = x.to(self.input_matrix.dtype)
        return (x - self.input_shift) @ self.input_matrix  # [B, d]

    def all_log_probs(self, x: Tensor) -> Tensor:
        """``log q(x | s)`` for every class, as densities of ``x``: ``[B, d] -> [B, C]``."""
        return super().all_log_probs(self.transform(x)) + self.log_abs_det.to(x.dtype)  # [B, C]

    def conditional_log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log q(x | s)`` of each sample's own class, as a density of ``x``: ``[B, d]``, ``[B]`` -> ``[B]``."""
        return super().conditional_log_prob(self.transform(x), labels) + self.log_abs_det.to(x.dtype)  # [B]

    def log_posterior(self, x: Tensor) -> Tensor:
        """Calibrated ``log q_T(s | x)``: ``[B, d] -> [B, C]``."""
        log_likelihoods = self.all_log_probs(x)  # [B, C]
        return calibrated_log_posterior(
            log_likelihoods, self.log_prior.to(log_likelihoods), self.temperature.to(log_likelihoods)
        )

    def pointwise_mutual_information(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log q_T(s_n | x_n) - log p(s_n)`` per sample: ``[B]``; its mean is the readout."""
        labels = labels.long()
        log_posterior = self.log_posterior(x).gather(1, labels.view(-1, 1)).squeeze(1)  # [B]
        return log_posterior - self.log_prior.to(log_posterior)[labels]

    def forward(self, x: Tensor, labels: Tensor) -> KNIFEOutput:
        """``mutual_information``: the calibrated readout; entropies and ``loss`` as in :class:`MixtureMIEstimator`
        (untempered kernels; their difference is the uncalibrated estimate)."""
        labels = labels.long()
        log_likelihoods = self.all_log_probs(x)  # [B, C]
        log_prior = self.log_prior.to(log_likelihoods)  # [C]
        own = log_likelihoods.gather(1, labels.view(-1, 1)).squeeze(1)  # [B]
        h = -torch.logsumexp(log_likelihoods + log_prior, dim=1).mean()
        h_conditional = -own.mean()
        log_posterior = calibrated_log_posterior(log_likelihoods, log_prior, self.temperature.to(log_likelihoods))
        readout = log_posterior.gather(1, labels.view(-1, 1)).squeeze(1) - log_prior[labels]  # [B]
        a, b = self.fit_coefficients
        return KNIFEOutput(readout.mean(), h, h_conditional, a * h + b * h_conditional)

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, labels: Tensor) -> CalibratedMixtureMIEstimator:
        """As :meth:`MixtureMIEstimator.init_from_samples`, on the transformed samples; returns self."""
        super().init_from_samples(self.transform(x), labels)
        return self

    @torch.no_grad()
    def fit_gaussians(
        self, x: Tensor, labels: Tensor, tied: bool = False, shrinkage: str = "ledoit_wolf"
    ) -> CalibratedMixtureMIEstimator:
        """As :meth:`MixtureMIEstimator.fit_gaussians`, on the transformed samples; returns self."""
        super().fit_gaussians(self.transform(x), labels, tied=tied, shrinkage=shrinkage)
        return self


# ----------------------------------------------------------------------------------------------- builder
def build_mi_estimator(
    dim: int,
    *,
    num_classes: int | None = None,
    cond_dim: int | None = None,
    marginal: str = "mixture",
    fit: str = "likelihood",
    readout: str = "likelihood",
    hidden_dims: Sequence[int] = (128, 128),
    num_groups: int = 1,
    **kernel_options: Any,
) -> MIEstimator:
    """The KNIFE estimator of I(X; Y) for ``x [B, dim]`` and a discrete (``num_classes``) or continuous
    (``cond_dim``) ``y``; pass exactly one of them.

    Discrete Y: ``marginal="mixture"`` gives a :class:`MixtureMIEstimator` fitted by ``fit`` (or, with
    ``readout="calibrated"``, a :class:`CalibratedMixtureMIEstimator`), ``marginal="kernel"`` a
    :class:`KNIFEEstimator` with a separate marginal kernel (likelihood fit only). Continuous Y: always a
    :class:`KNIFEEstimator` with a :class:`ConditionalKernel` of MLP widths ``hidden_dims``, fitted by likelihood
    (``marginal``, ``fit`` and ``readout`` apply to a discrete Y only). ``kernel_options`` (``num_components``,
    ``covariance``, ``rank``, ``bandwidth_bounds``, ``init_bandwidth``, ``chunk_size``) go to every kernel.
    """
    check_choice(marginal, "marginal", MI_MARGINALS)
    check_choice(fit, "fit", tuple(FIT_OBJECTIVES))
    check_choice(readout, "readout", MI_READOUTS)
    if num_classes is not None and cond_dim is None:
        if marginal == "mixture":
            if num_groups > 1:
                if readout != "likelihood":
                    raise ValueError(f"readout={readout!r} does not take groups (num_groups={num_groups})")
                return MixtureMIEstimator(dim, num_classes, fit=fit, num_groups=num_groups, **kernel_options)
            estimator_class = CalibratedMixtureMIEstimator if readout == "calibrated" else MixtureMIEstimator
            return estimator_class(dim, num_classes, fit=fit, **kernel_options)
        if fit != "likelihood" or readout != "likelihood":
            raise ValueError(
                f"fit={fit!r} and readout={readout!r} need marginal='mixture' (a separate marginal kernel is fitted "
                "by likelihood and read as is)"
            )
    return KNIFEEstimator(
        dim, cond_dim=cond_dim, num_classes=num_classes, hidden_dims=tuple(hidden_dims), **kernel_options
    )
