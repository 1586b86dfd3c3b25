"""The one home of the KNIFE mixture log-density.

A KNIFE is a Gaussian mixture parameterised by the *precision* factor of each component:

    q(x)   = sum_k w_k N(x; a_k, (A_k^T A_k)^-1),        w = softmax(mixture_logits)
    A_k    = (I + L_k) diag(exp(log_diag_k))              (L_k strictly lower triangular: ``full``)
    P_k    = diag(exp(2 log_diag_k)) + U_k U_k^T          (U_k of shape [d, r]: ``low_rank``)
    log N  = -d/2 log(2 pi) + 1/2 log det P_k - 1/2 (x - a_k)^T P_k (x - a_k)

Two evaluation paths share these formulas:

* **shared components** (``loc`` of shape ``[K, d]``, the marginal and discrete kernels): the quadratic form is
  computed with GEMMs, so memory is O(B K) for the diagonal types and O(B K d) for ``full``; no ``[B, K, d]``
  tensor (diagonal) and never ``[B, K, d, d]``. Inputs and means are first centred by a shared shift, which
  keeps the GEMM expansion exact on features with large offsets.
* **per-sample components** (``loc`` of shape ``[B, K, d]``, the continuous conditional kernel): the parameters
  themselves are ``[B, K, d]``, so the quadratic form is evaluated directly.

All functions return per-sample values (``[B]`` or ``[B, K]``) in the dtype of ``x``; callers run them in fp32
or fp64, never in half precision.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "COVARIANCE_TYPES",
    "component_log_prob",
    "mixture_log_prob",
    "precision_factor",
    "low_rank_log_det",
    "discrete_mixture_log_prob",
    "class_mixture_log_probs",
]

COVARIANCE_TYPES = ("shared_diagonal", "diagonal", "full", "low_rank")
_LOG_2PI = math.log(2.0 * math.pi)


def precision_factor(log_diag: Tensor, tril: Tensor) -> Tensor:
    """``A = (I + strict_lower(tril)) diag(exp(log_diag))``.

    Args:
        log_diag: ``[..., d]`` log of the precision scale.
        tril: ``[..., d, d]``; only its strictly lower triangle is used.

    Returns:
        ``[..., d, d]`` lower-triangular factor with ``A^T A`` the precision and ``log|det A| = sum(log_diag)``.
    """
    d = log_diag.shape[-1]
    eye = torch.eye(d, dtype=tril.dtype, device=tril.device)
    return (eye + torch.tril(tril, diagonal=-1)) * log_diag.exp().unsqueeze(-2)  # [..., d, d] columns scaled


def low_rank_log_det(log_diag: Tensor, factor: Tensor) -> Tensor:
    """``log det(diag(exp(2 log_diag)) + U U^T)`` by the matrix determinant lemma.

    Args:
        log_diag: ``[..., d]``.
        factor: ``[..., d, r]``.

    Returns:
        ``[...]``.
    """
    r = factor.shape[-1]
    # The capacitance I + S^T S squares the condition number of S = D^-1/2 U: in fp32 its rounding error exceeds
    # the identity once |S| ~ 3e3, and with aligned factor columns (a rank-deficient U, e.g. every column fitted to
    # the same degenerate direction) the Cholesky factorisation then fails. It is only [r, r]: form and factorise
    # it in float64.
    scaled = (factor * (-log_diag).exp().unsqueeze(-1)).double()  # [..., d, r]  D^-1/2 U
    capacitance = scaled.transpose(-1, -2) @ scaled  # [..., r, r]
    capacitance = capacitance + torch.eye(r, dtype=capacitance.dtype, device=factor.device)
    chol = torch.linalg.cholesky(capacitance)  # [..., r, r]
    log_det_capacitance = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [...]
    return 2.0 * log_diag.sum(-1) + log_det_capacitance.to(log_diag.dtype)


def _half_log_det(log_diag: Tensor, factor: Tensor | None) -> Tensor:
    """``1/2 log det P`` for every covariance type: ``[...]``."""
    if factor is None:
        return log_diag.sum(-1)
    return 0.5 * low_rank_log_det(log_diag, factor)


def _shared_quadratic(
    x: Tensor, loc: Tensor, log_diag: Tensor, tril: Tensor | None, factor: Tensor | None
) -> Tensor:
    """``(x_b - a_k)^T P_k (x_b - a_k)`` for components shared by the batch, with GEMMs: ``[B, K]``."""
    num_components, d = loc.shape
    shift = loc.detach().mean(0)  # [d]  a shared centre keeps the expansion exact on offset data
    x_c = x - shift  # [B, d]
    loc_c = loc - shift  # [K, d]
    log_diag = log_diag.expand(num_components, d)  # [K, d]

    if tril is not None:
        factor_a = precision_factor(log_diag, tril)  # [K, d, d]  A_k
        weight = factor_a.permute(2, 0, 1).reshape(d, num_components * d)  # [d, K*d]  W[j, k*d+i] = A_k[i, j]
        y = (x_c @ weight).view(-1, num_components, d)  # [B, K, d]  A_k x_b
        y = y - torch.einsum("kij,kj->ki", factor_a, loc_c)  # [B, K, d]  A_k (x_b - a_k)
        return y.square().sum(-1)  # [B, K]

    precision = (2.0 * log_diag).exp()  # [K, d]
    quad = (
        x_c.square() @ precision.T  # [B, K]
        - 2.0 * (x_c @ (precision * loc_c).T)  # [B, K]
        + (precision * loc_c.square()).sum(-1)  # [K]
    )
    quad = quad.clamp_min(0.0)
    if factor is not None:
        rank = factor.shape[-1]
        weight = factor.permute(1, 0, 2).reshape(d, num_components * rank)  # [d, K*r]
        proj = (x_c @ weight).view(-1, num_components, rank)  # [B, K, r]  U_k^T x_b
        proj = proj - torch.einsum("kdr,kd->kr", factor, loc_c)  # [B, K, r]  U_k^T (x_b - a_k)
        quad = quad + proj.square().sum(-1)  # [B, K]
    return quad


def _per_sample_quadratic(
    x: Tensor, loc: Tensor, log_diag: Tensor, tril: Tensor | None, factor: Tensor | None
) -> Tensor:
    """Quadratic form for per-sample components ``loc [B, K, d]``: ``[B, K]``."""
    diff = x.unsqueeze(1) - loc  # [B, K, d]
    z = diff * log_diag.exp()  # [B, K, d]  diag(s) (x - a)
    if tril is not None:
        z = z + torch.einsum(
            "kij,bkj->bki", torch.tril(tril, diagonal=-1), z
        )  # [B, K, d]  (I + L) diag(s)(x - a)
    quad = z.square().sum(-1)  # [B, K]
    if factor is not None:
        equation = "bkdr,bkd->bkr" if factor.dim() == 4 else "kdr,bkd->bkr"
        quad = quad + torch.einsum(equation, factor, diff).square().sum(-1)  # [B, K]
    return quad


def component_log_prob(
    x: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    *,
    tril: Tensor | None = None,
    factor: Tensor | None = None,
) -> Tensor:
    """Log-density of every mixture component at every sample.

    Args:
        x: ``[B, d]`` samples.
        loc: ``[K, d]`` (shared components) or ``[B, K, d]`` (per-sample components) means.
        log_diag: log precision scale, broadcastable to ``loc`` (``[1, d]`` or ``[B, 1, d]`` for
            ``shared_diagonal``).
        tril: ``[K, d, d]`` for ``full`` covariance (strictly lower triangle used), else ``None``.
        factor: ``[K, d, r]`` or ``[B, K, d, r]`` for ``low_rank`` precision, else ``None``.

    Returns:
        ``[B, K]`` log N(x_b; a_k, P_k^-1).
    """
    if tril is not None and factor is not None:
        raise ValueError("pass either `tril` (full) or `factor` (low_rank), not both")
    d = x.shape[-1]
    if loc.dim() == 2:
        quad = _shared_quadratic(x, loc, log_diag, tril, factor)  # [B, K]
        half_log_det = _half_log_det(log_diag.expand_as(loc), factor)  # [K]
    else:
        log_diag = log_diag.expand_as(loc)  # [B, K, d]
        quad = _per_sample_quadratic(x, loc, log_diag, tril, factor)  # [B, K]
        if factor is not None and factor.dim() == 3:
            factor = factor.expand(loc.shape[0], *factor.shape)  # [B, K, d, r]
        half_log_det = _half_log_det(log_diag, factor)  # [B, K]
    return half_log_det - 0.5 * quad - 0.5 * d * _LOG_2PI


def _mixture_log_prob(
    x: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    mixture_logits: Tensor,
    tril: Tensor | None,
    factor: Tensor | None,
) -> Tensor:
    log_weights = torch.log_softmax(mixture_logits, dim=-1)  # [K] or [B, K]
    return torch.logsumexp(
        log_weights + component_log_prob(x, loc, log_diag, tril=tril, factor=factor), dim=-1
    )


def _chunked(fn, x: Tensor, per_sample: tuple, shared: tuple, chunk_size: int | None) -> Tensor:
    """Apply ``fn(x, *per_sample, *shared)`` over chunks of samples, with activation checkpointing under autograd."""
    if chunk_size is None or x.shape[0] <= chunk_size:
        return fn(x, *per_sample, *shared)
    use_checkpoint = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (x, *per_sample, *shared)
    )
    chunks = []
    for start in range(0, x.shape[0], chunk_size):
        args = [t[start : start + chunk_size] for t in (x, *per_sample)]  # [<=chunk_size, ...]
        if use_checkpoint:
            chunks.append(checkpoint(fn, *args, *shared, use_reentrant=False))
        else:
            chunks.append(fn(*args, *shared))
    return torch.cat(chunks)  # [B]


def mixture_log_prob(
    x: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    mixture_logits: Tensor,
    *,
    tril: Tensor | None = None,
    factor: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-density of the KNIFE mixture, ``log sum_k w_k N(x; a_k, P_k^-1)``.

    Args:
        x: ``[B, d]``.
        loc, log_diag, tril, factor: as in :func:`component_log_prob`.
        mixture_logits: ``[K]`` (shared) or ``[B, K]`` (per sample); normalised here with ``log_softmax``.
        chunk_size: evaluate at most this many samples at a time (shared components only). Under autograd
            each chunk is recomputed in backward (activation checkpointing), so peak memory is that of one
            chunk: use it for large sample sets and for ``full`` covariance at large ``B * K * d``.

    Returns:
        ``[B]`` log q(x_b).
    """
    if loc.dim() != 2:
        chunk_size = None  # per-sample parameters are already [B, K, d]
    return _chunked(_mixture_log_prob, x, (), (loc, log_diag, mixture_logits, tril, factor), chunk_size)


def _class_components(
    x: Tensor, loc: Tensor, log_diag: Tensor, tril: Tensor | None, factor: Tensor | None
) -> Tensor:
    """Component log-densities of every class's mixture at every sample, in one GEMM: ``[B, C, K]``."""
    num_classes, num_components, d = loc.shape
    flat = num_classes * num_components
    log_diag = log_diag.expand(num_classes, num_components, d).reshape(flat, d)  # [C*K, d]
    return component_log_prob(
        x,
        loc.reshape(flat, d),  # [C*K, d]
        log_diag,
        tril=None if tril is None else tril.reshape(flat, d, d),  # [C*K, d, d]
        factor=None if factor is None else factor.reshape(flat, d, -1),  # [C*K, d, r]
    ).view(-1, num_classes, num_components)  # [B, C, K]


def _discrete_mixture_log_prob(
    x: Tensor,
    labels: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    mixture_logits: Tensor,
    tril: Tensor | None,
    factor: Tensor | None,
) -> Tensor:
    components = _class_components(x, loc, log_diag, tril, factor)  # [B, C, K]
    index = labels.view(-1, 1, 1).expand(-1, 1, loc.shape[1])  # [B, 1, K]
    components = components.gather(1, index).squeeze(1)  # [B, K]  components of each sample's own class
    log_weights = torch.log_softmax(mixture_logits, dim=-1)[labels]  # [B, K]
    return torch.logsumexp(log_weights + components, dim=-1)  # [B]


def _class_mixture_log_probs(
    x: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    mixture_logits: Tensor,
    tril: Tensor | None,
    factor: Tensor | None,
) -> Tensor:
    components = _class_components(x, loc, log_diag, tril, factor)  # [B, C, K]
    return torch.logsumexp(torch.log_softmax(mixture_logits, dim=-1) + components, dim=-1)  # [B, C]


def class_mixture_log_probs(
    x: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    mixture_logits: Tensor,
    *,
    tril: Tensor | None = None,
    factor: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``log q(x_b | s = c)`` for every sample and every class: ``[B, C]`` (parameters as in
    :func:`discrete_mixture_log_prob`)."""
    return _chunked(
        _class_mixture_log_probs, x, (), (loc, log_diag, mixture_logits, tril, factor), chunk_size
    )


def discrete_mixture_log_prob(
    x: Tensor,
    labels: Tensor,
    loc: Tensor,
    log_diag: Tensor,
    mixture_logits: Tensor,
    *,
    tril: Tensor | None = None,
    factor: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-density ``log q(x_b | s_b)`` with one KNIFE mixture per class, all classes evaluated in one GEMM.

    Args:
        x: ``[B, d]``.
        labels: ``[B]`` int64 class ids in ``[0, C)``; classes absent from the batch are simply not selected.
        loc: ``[C, K, d]``; log_diag: ``[C, K, d]`` or ``[C, 1, d]``; mixture_logits: ``[C, K]``;
        tril: ``[C, K, d, d]`` or None; factor: ``[C, K, d, r]`` or None.
        chunk_size: as in :func:`mixture_log_prob`.

    Returns:
        ``[B]``.
    """
    return _chunked(
        _discrete_mixture_log_prob, x, (labels,), (loc, log_diag, mixture_logits, tril, factor), chunk_size
    )
