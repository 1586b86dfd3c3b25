"""Property-based fuzzing (hypothesis) of the density, the estimator modules, the penalties and the one-call API.

Inputs: small random shapes (B, K, d, C, cond_dim), column spreads from 1e-6 to 1e6, offsets up to 1e6, constant
and duplicated columns, duplicated rows, rank-deficient data (x = w @ A with A of rank r < d), batches of 2,
classes missing from a batch, every covariance type, float32 and float64.

Property: every output and every gradient (of the parameters and of the input) is finite, or the call raises a
clear ``ValueError`` for what is truly invalid (the entropy of data on a lower-dimensional set is -inf: the error
must name the constant coordinates). The oracles of "truly invalid" are computed here from the data with numpy,
independently of ``hf_knife.estimators.degenerate``.

Every test body increments ``CASES[<test name>]``; ``test_generated_case_count`` (last in the file) prints the
counts, writes them to ``$FUZZ_COUNTS_JSON`` (default: the session's tmp folder) and asserts that the default suite
generated at least 2,000 cases. Settings are derandomised (``derandomize=True``, no example database), so CI runs
the same examples every time. More one-call API examples run under ``-m slow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import hf_knife
from hf_knife import (
    ConditionalKernel,
    DiscreteConditionalKernel,
    KNIFEConfig,
    KNIFEEstimator,
    MarginalKernel,
    MixtureMIEstimator,
)
from hf_knife.estimators import COVARIANCE_TYPES, DoEEstimator, SchraudolphKernel
from hf_knife.estimators.baselines import doe_mutual_information, knn_entropy, ksg_mutual_information
from hf_knife.estimators.functional import (
    class_mixture_log_probs,
    discrete_mixture_log_prob,
    mixture_log_prob,
)
from hf_knife.penalties import build_penalty

#: generated cases per test (incremented in each test body)
CASES: Counter[str] = Counter()

#: examples per test in the default suite (the one-call API fits, so it gets far fewer)
DEFAULT_EXAMPLES = {
    "test_functional_density_is_finite": 400,
    "test_marginal_kernel_fits_finitely": 300,
    "test_discrete_kernel_fits_finitely": 250,
    "test_conditional_kernel_fits_finitely": 200,
    "test_mutual_information_estimators_are_finite": 200,
    "test_baselines_are_finite": 150,
    "test_penalty_steps_are_finite": 250,
    "test_density_stays_finite_when_a_constant_coordinate_moves": 200,
    "test_estimate_entropy_is_finite_or_refuses_degenerate_data": 60,
    "test_estimate_mutual_information_is_finite": 60,
}
MIN_TOTAL_CASES = 2000
DTYPES = (torch.float32, torch.float64)
API_OPTIONS = dict(max_steps=20, eval_every=10, num_components=2, device="cpu", progress=False)


def fuzz_settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),  # no slow "explain"
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def count(name: str) -> None:
    CASES[name] += 1


# ------------------------------------------------------------------------------------------------ data strategies
@dataclass
class Samples:
    """Generated samples and what was built into them (recomputed from the final array, in its dtype)."""

    x: np.ndarray  # [n, d] in the requested dtype
    constant: set[int] = field(default_factory=set)  # columns with a single value
    #: pairs (i, j) with column j = c * column i (c in {1, -1, 2, 0.5}, exact), neither constant
    duplicated: list[tuple[int, int]] = field(default_factory=list)
    built_rank: int = 0  # rank of the linear map the columns were drawn from (< d: dependent by construction)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]

    def resolution(self) -> np.ndarray:
        """Rounding error of each column relative to its spread (``eps * max|x_j| / std_j``; inf if constant): ``[d]``."""
        x = self.x.astype(np.float64)
        std = x.std(0)
        eps = np.finfo(self.x.dtype).eps
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(std > 0, eps * np.abs(x).max(0) / np.where(std > 0, std, 1.0), np.inf)

    def well_resolved(self) -> np.ndarray:
        """Columns whose spread is far above their rounding level and within 1e9 of the typical spread: ``[d]``."""
        x = self.x.astype(np.float64)
        std = x.std(0)
        live = std[std > 0]
        typical = np.median(live) if live.size else 0.0
        return (self.resolution() < 1e-4) & (std > 1e-9 * typical) & (std < 1e9 * typical)

    def min_singular_ratio(self) -> float:
        """Smallest over largest singular value of the centred, standardised non-constant columns (numpy SVD)."""
        x = self.x.astype(np.float64)
        std = x.std(0)
        keep = std > 0
        if keep.sum() < 2:
            return 1.0
        z = (x[:, keep] - x[:, keep].mean(0)) / std[keep]
        s = np.linalg.svd(z, compute_uv=False)
        return float(s[-1] / s[0]) if s[0] > 0 else 0.0

    def distinct_rows(self) -> int:
        return int(np.unique(self.x, axis=0).shape[0])


spread_exponent = st.floats(-6.0, 6.0, allow_nan=False)
offset_value = st.one_of(
    st.sampled_from([0.0, 1.0, -2.5, 1e3, -1e6, 1e6]), st.floats(-1e6, 1e6, allow_nan=False)
)


@st.composite
def samples(draw, n: int, d: int, dtype: np.dtype, degenerate: bool = True) -> Samples:
    """``n`` samples of dimension ``d``: Gaussian (or rank r < d) columns, spreads 10**[-6, 6], offsets up to 1e6,
    and (``degenerate``) constant columns, duplicated columns (c * another, c exact) and duplicated rows."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rank = d
    if degenerate and d > 1 and draw(st.booleans()):
        rank = draw(st.integers(1, d - 1))
    base = rng.standard_normal((n, rank))
    if rank < d:
        base = base @ rng.standard_normal((rank, d))  # [n, d] of rank r
    if draw(st.booleans()):
        exponents = np.full(d, draw(spread_exponent))
    else:
        exponents = np.array(draw(st.lists(spread_exponent, min_size=d, max_size=d)))
    offsets = np.array(draw(st.lists(offset_value, min_size=d, max_size=d)))
    x = base * 10.0**exponents + offsets  # [n, d] float64
    copies: list[tuple[int, int, float]] = []
    if degenerate:
        for j in draw(st.sets(st.integers(0, d - 1), max_size=d)):
            x[:, j] = offsets[j]
        if d > 1:
            for _ in range(draw(st.integers(0, d - 1))):
                i, j = draw(st.permutations(range(d)))[:2]
                c = draw(st.sampled_from([1.0, -1.0, 2.0, 0.5]))
                x[:, j] = c * x[:, i]
                copies.append((i, j, c))
        for _ in range(draw(st.integers(0, n - 1))):
            src, dst = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
            x[dst] = x[src]
    x = x.astype(dtype)
    constant = {j for j in range(d) if np.ptp(x[:, j]) == 0}
    duplicated = [
        (i, j)
        for i, j, c in copies
        if i not in constant and j not in constant and np.array_equal(x[:, j], (c * x[:, i]).astype(dtype))
    ]
    return Samples(x=x, constant=constant, duplicated=duplicated, built_rank=rank)


@st.composite
def labels_strategy(draw, n: int, num_classes: int) -> np.ndarray:
    """Class ids in ``[0, num_classes)``, some classes possibly missing from the batch or rare: ``[n]``."""
    present = sorted(draw(st.sets(st.integers(0, num_classes - 1), min_size=1, max_size=num_classes)))
    weights = np.array(draw(st.lists(st.floats(0.02, 1.0), min_size=len(present), max_size=len(present))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.choice(np.array(present), size=n, p=weights / weights.sum())


@st.composite
def shapes(draw, max_n: int = 12, max_d: int = 4, min_n: int = 2):
    return draw(st.integers(min_n, max_n)), draw(st.integers(1, max_d))


np_dtype = st.sampled_from([np.float32, np.float64])


# ------------------------------------------------------------------------------------------------ assertions
def assert_finite(value, what: str) -> None:
    tensor = torch.as_tensor(value).detach()
    assert bool(torch.isfinite(tensor).all()), f"{what} is not finite: {tensor}"


def assert_grads_finite(module: torch.nn.Module | None, *inputs: torch.Tensor) -> None:
    if module is not None:
        for name, parameter in module.named_parameters():
            if parameter.grad is not None:
                assert_finite(parameter.grad, f"gradient of {name}")
            assert_finite(parameter, f"parameter {name}")
    for i, tensor in enumerate(inputs):
        assert tensor.grad is not None, f"input {i} got no gradient"
        assert_finite(tensor.grad, f"gradient of input {i}")


def fit_steps(module: torch.nn.Module, loss_fn, steps: int, lr: float, *inputs: torch.Tensor) -> None:
    """A few Adam steps; every loss, gradient and parameter must stay finite."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr) if parameters else None
    for step in range(steps + 1):
        for tensor in inputs:
            tensor.grad = None
        module.zero_grad(set_to_none=True)
        loss = loss_fn()
        assert_finite(loss, f"loss at step {step}")
        loss.backward()
        assert_grads_finite(module, *inputs)
        if optimizer is not None and step < steps:
            optimizer.step()


@contextlib.contextmanager
def quiet():
    """Degenerate inputs warn by design; the warnings are checked where they are part of the contract."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------------------ functional
@fuzz_settings(DEFAULT_EXAMPLES["test_functional_density_is_finite"])
@given(data=st.data(), layout=st.sampled_from(["shared", "per_sample", "discrete"]),
       cov=st.sampled_from(COVARIANCE_TYPES), dtype=np_dtype, k=st.integers(1, 3))  # fmt: skip
def test_functional_density_is_finite(data, layout, cov, dtype, k):
    """The density formula with parameters on the data's scale (bandwidths e^[-3, 3] times each column's generated
    spread, precision factors up to 1e4 strong, possibly with duplicated columns) is finite with finite gradients."""
    n, d = data.draw(shapes(max_n=10))
    s = data.draw(samples(n, d, dtype))
    seed = data.draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    tdtype = torch.float32 if dtype == np.float32 else torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x64 = torch.from_numpy(s.x.astype(np.float64))  # [n, d]
    spread = x64.std(0, unbiased=False)  # [d]
    spread = torch.where(spread > 0, spread, x64.abs().amax(0).clamp_min(1.0))  # a scale for constant columns
    num_classes = data.draw(st.integers(1, 3)) if layout == "discrete" else 1
    prefix = {"shared": (), "per_sample": (n,), "discrete": (num_classes,)}[layout]
    rows = torch.randint(0, n, (*prefix, k), generator=generator)
    loc = x64[rows] + 0.3 * spread * randn(*prefix, k, d)  # [..., K, d] near the samples
    diag_k = 1 if cov == "shared_diagonal" else k
    log_diag = -spread.log() + 3.0 * (2.0 * torch.rand(*prefix, diag_k, d, generator=generator,
                                                        dtype=torch.float64) - 1.0)  # fmt: skip
    logits = 3.0 * randn(*prefix, k)
    tril = factor = None
    if cov == "full":
        tril = randn(k, d, d) if layout == "per_sample" else randn(*prefix, k, d, d)
    if cov == "low_rank":
        rank = data.draw(st.integers(1, d))
        strength = 10.0 ** data.draw(st.floats(-3.0, 4.0))
        factor_prefix = (
            () if layout == "per_sample" and data.draw(st.booleans()) else prefix
        )  # shared [K, d, r]
        factor = strength * randn(*factor_prefix, k, d, rank) / spread.unsqueeze(-1)  # [..., K, d, r]
        if rank > 1 and data.draw(st.booleans()):
            factor[..., 1] = factor[..., 0]  # a rank-deficient factor: still a valid precision
    tensors = {"loc": loc, "log_diag": log_diag, "logits": logits, "tril": tril, "factor": factor}
    tensors = {key: None if t is None else t.to(tdtype).requires_grad_(True) for key, t in tensors.items()}
    x = torch.from_numpy(s.x).requires_grad_(True)  # [n, d]
    chunk_size = data.draw(st.sampled_from([None, None, None, None, 4]))  # checkpointed chunks are slow
    labels = torch.from_numpy(data.draw(labels_strategy(n, num_classes)))
    count("test_functional_density_is_finite")
    kwargs = dict(tril=tensors["tril"], factor=tensors["factor"], chunk_size=chunk_size)
    args = (tensors["loc"], tensors["log_diag"], tensors["logits"])
    if layout == "discrete":
        out = discrete_mixture_log_prob(x, labels, *args, **kwargs)  # [n]
        per_class = class_mixture_log_probs(x, *args, **kwargs)  # [n, C]
        assert per_class.shape == (n, num_classes)
        out = out + per_class.mean(1)
    else:
        out = mixture_log_prob(x, *args, **kwargs)  # [n]
    assert out.shape == (n,) and out.dtype == x.dtype
    assert_finite(out, "log density")
    out.sum().backward()
    assert x.grad is not None
    assert_finite(x.grad, "gradient of x")
    for key, tensor in tensors.items():
        if tensor is not None:
            assert tensor.grad is not None, f"{key} got no gradient"
            assert_finite(tensor.grad, f"gradient of {key}")


# ------------------------------------------------------------------------------------------------ modules
@fuzz_settings(DEFAULT_EXAMPLES["test_marginal_kernel_fits_finitely"])
@given(data=st.data(), cov=st.sampled_from(COVARIANCE_TYPES), dtype=np_dtype, param_dtype=st.sampled_from(DTYPES),
       k=st.integers(1, 3), bounds=st.sampled_from([None, (1e-3, 1e3)]), schraudolph=st.booleans())  # fmt: skip
def test_marginal_kernel_fits_finitely(data, cov, dtype, param_dtype, k, bounds, schraudolph):
    """MarginalKernel (and Schraudolph's fixed-centre variant) initialised at raw, possibly degenerate samples:
    a few Adam steps of maximum likelihood keep loss, gradients (parameters and x) and parameters finite."""
    n, d = data.draw(shapes())
    s = data.draw(samples(n, d, dtype))
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    rank = data.draw(st.integers(1, d)) if cov == "low_rank" else None
    chunk_size = data.draw(st.sampled_from([None, 4]))
    count("test_marginal_kernel_fits_finitely")
    cls = SchraudolphKernel if schraudolph else MarginalKernel
    kernel = cls(d, k, cov, rank=rank, bandwidth_bounds=bounds, chunk_size=chunk_size)
    kernel = kernel.to(param_dtype)
    x = torch.from_numpy(s.x).requires_grad_(True)
    kernel.init_from_samples(x.detach())
    fit_steps(kernel, lambda: kernel(x), 3, 0.05, x)
    assert kernel.log_prob(x).shape == (n,)


@fuzz_settings(DEFAULT_EXAMPLES["test_discrete_kernel_fits_finitely"])
@given(data=st.data(), cov=st.sampled_from(COVARIANCE_TYPES), dtype=np_dtype, k=st.integers(1, 3),
       num_classes=st.integers(1, 3), bounds=st.sampled_from([None, (1e-3, 1e3)]))  # fmt: skip
def test_discrete_kernel_fits_finitely(data, cov, dtype, k, num_classes, bounds):
    """DiscreteConditionalKernel on batches that miss classes (or hold one sample of a class): finite fit."""
    n, d = data.draw(shapes())
    s = data.draw(samples(n, d, dtype))
    labels = torch.from_numpy(data.draw(labels_strategy(n, num_classes)))
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    count("test_discrete_kernel_fits_finitely")
    kernel = DiscreteConditionalKernel(d, num_classes, k, cov, bandwidth_bounds=bounds)
    x = torch.from_numpy(s.x).requires_grad_(True)
    kernel.init_from_samples(x.detach(), labels)
    fit_steps(kernel, lambda: kernel(x, labels) - kernel.log_prob_per_class(x).mean(), 3, 0.05, x)


@fuzz_settings(DEFAULT_EXAMPLES["test_conditional_kernel_fits_finitely"])
@given(data=st.data(), cov=st.sampled_from(COVARIANCE_TYPES), dtype=np_dtype, k=st.integers(1, 3),
       bounds=st.sampled_from([None, (1e-3, 1e3)]))  # fmt: skip
def test_conditional_kernel_fits_finitely(data, cov, dtype, k, bounds):
    """ConditionalKernel with a degenerate x and a degenerate y (dim != cond_dim): finite fit."""
    n, d = data.draw(shapes())
    cond_dim = data.draw(st.integers(1, 3))
    s = data.draw(samples(n, d, dtype))
    sy = data.draw(samples(n, cond_dim, dtype))
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    count("test_conditional_kernel_fits_finitely")
    kernel = ConditionalKernel(d, cond_dim, k, cov, hidden_dims=(8,), bandwidth_bounds=bounds)
    x = torch.from_numpy(s.x).requires_grad_(True)
    y = torch.from_numpy(sy.x).requires_grad_(True)
    kernel.init_from_samples(x.detach(), y.detach())  # standardises y at the MLP input
    fit_steps(kernel, lambda: kernel(x, y), 3, 0.01, x, y)


@fuzz_settings(DEFAULT_EXAMPLES["test_mutual_information_estimators_are_finite"])
@given(data=st.data(), kind=st.sampled_from(["continuous", "discrete_kernel", "mixture_likelihood",
                                             "mixture_posterior"]),
       cov=st.sampled_from(COVARIANCE_TYPES), dtype=np_dtype, k=st.integers(1, 3))  # fmt: skip
def test_mutual_information_estimators_are_finite(data, kind, cov, dtype, k):
    """KNIFEEstimator (continuous and discrete) and MixtureMIEstimator: finite I_hat, loss and gradients."""
    n, d = data.draw(shapes())
    s = data.draw(samples(n, d, dtype))
    if kind == "continuous":
        cond_dim = data.draw(st.integers(1, 3))
        y = torch.from_numpy(data.draw(samples(n, cond_dim, dtype)).x)
    else:
        num_classes = data.draw(st.integers(1, 3))
        y = torch.from_numpy(data.draw(labels_strategy(n, num_classes)))
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    bounds = data.draw(st.sampled_from([None, (1e-3, 1e3)]))
    count("test_mutual_information_estimators_are_finite")
    options = dict(num_components=k, covariance=cov, bandwidth_bounds=bounds)
    if kind == "continuous":
        estimator = KNIFEEstimator(d, cond_dim=cond_dim, hidden_dims=(8,), **options)
    elif kind == "discrete_kernel":
        estimator = KNIFEEstimator(d, num_classes=num_classes, **options)
    else:
        estimator = MixtureMIEstimator(d, num_classes, fit=kind.split("_")[1], **options)
    x = torch.from_numpy(s.x).requires_grad_(True)
    estimator.init_from_samples(x.detach(), y)
    out = estimator(x, y)
    for name in ("mutual_information", "marginal_entropy", "conditional_entropy", "loss"):
        assert_finite(getattr(out, name), name)
    fit_steps(estimator, lambda: estimator(x, y).loss, 2, 0.01, x)


@fuzz_settings(DEFAULT_EXAMPLES["test_baselines_are_finite"])
@given(data=st.data(), dtype=np_dtype)
def test_baselines_are_finite(data, dtype):
    """DoE (closed-form Gaussian, then differentiated), DoE MI, kNN entropy and KSG MI: finite on degenerate data
    (duplicated rows give a kNN distance of 0: its log is floored, never -inf)."""
    n, d = data.draw(shapes(min_n=4))
    s = data.draw(samples(n, d, dtype))
    sy = data.draw(samples(n, data.draw(st.integers(1, 2)), dtype))
    labels = torch.from_numpy(data.draw(labels_strategy(n, 3)))
    count("test_baselines_are_finite")
    doe = DoEEstimator(d).init_from_samples(torch.from_numpy(s.x))
    x = torch.from_numpy(s.x).requires_grad_(True)
    fit_steps(doe, lambda: doe(x), 0, 0.0, x)
    assert_finite(
        doe_mutual_information(torch.from_numpy(s.x), torch.from_numpy(sy.x)), "DoE MI (continuous)"
    )
    assert_finite(doe_mutual_information(torch.from_numpy(s.x), labels), "DoE MI (discrete)")
    assert_finite(knn_entropy(s.x, k=min(3, n - 1)), "kNN entropy")
    assert_finite(ksg_mutual_information(s.x, sy.x, k=min(3, n - 1)), "KSG MI")


# ------------------------------------------------------------------------------------------------ penalties
PENALTY_KINDS = ("entropy", "mi_mixture", "mi_posterior", "mi_kernel", "mi_calibrated", "mi_continuous",
                 "information_bottleneck", "adversarial")  # fmt: skip


def make_penalty_config(kind: str, cov: str, k: int, num_classes: int, cond_dim: int, **extra) -> KNIFEConfig:
    mi_options = extra.pop("mutual_information", {})
    options = dict(num_components=k, covariance=cov, hidden_dims=[8], **extra)
    if kind == "entropy":
        return KNIFEConfig(penalty="entropy", **options)
    if kind == "information_bottleneck":
        return KNIFEConfig(penalty="information_bottleneck", **options)
    if kind == "adversarial":
        return KNIFEConfig(penalty="adversarial", num_sensitive_classes=num_classes, **options)
    if kind == "mi_continuous":
        return KNIFEConfig(
            sensitive_type="continuous", sensitive_dim=cond_dim, mutual_information=dict(mi_options), **options
        )
    marginal, fit, calibrate = {"mi_mixture": ("mixture", "likelihood", False),
                                "mi_posterior": ("mixture", "posterior", False), "mi_kernel": ("kernel", "likelihood", False),
                                "mi_calibrated": ("mixture", "posterior", True)}[kind]  # fmt: skip
    if calibrate:
        mi_options["positive_part"] = False
    return KNIFEConfig(
        num_sensitive_classes=num_classes, **options,
        mutual_information=dict(marginal=marginal, fit=fit, calibrate=calibrate, **mi_options),
    )  # fmt: skip


def penalty_step(
    penalty, kind: str, features: torch.Tensor, sensitive: torch.Tensor | None, step: int | None
):
    """One training step of a standalone penalty: forward, backward, checks, ``end_step``; returns the output.

    ``step`` set: as under KNIFETrainer (``begin_step(step)``: the running statistics and the inner fit are updated
    only by ``end_step``, so the forward sees the statistics of the previous steps); ``None``: standalone (every
    training forward is an optimizer step).
    """
    if step is not None:
        penalty.begin_step(step)
    penalty.zero_grad(set_to_none=True)
    h = features.clone().requires_grad_(True)
    z, extra = penalty.transform(h) if kind == "information_bottleneck" else (h, {})
    out = penalty(z, sensitive, **extra)
    assert_finite(out.loss, "penalty loss")
    for name, value in out.metrics.items():
        assert_finite(value, f"metric {name}")
    out.loss.backward()
    assert_grads_finite(penalty, h)
    penalty.end_step()
    for name, tensor in [*penalty.named_parameters(), *penalty.named_buffers()]:
        assert_finite(tensor, f"{name} after end_step")
    return out


@fuzz_settings(DEFAULT_EXAMPLES["test_penalty_steps_are_finite"])
@given(data=st.data(), kind=st.sampled_from(PENALTY_KINDS), cov=st.sampled_from(COVARIANCE_TYPES),
       dtype=np_dtype, k=st.integers(1, 3), num_classes=st.integers(2, 3), trainer=st.booleans())  # fmt: skip
def test_penalty_steps_are_finite(data, kind, cov, dtype, k, num_classes, trainer):
    """Standalone penalties (``build_penalty``, train mode, ``end_step``) over two steps on degenerate features:
    loss, metrics, gradients of the features and of every parameter, and the state after the inner fit are finite."""
    n, d = data.draw(shapes())
    cond_dim = data.draw(st.integers(1, 3))
    extra = dict(
        inner_steps=data.draw(st.integers(0, 2)),
        mutual_information=dict(positive_part=data.draw(st.booleans())),
        standardize=data.draw(st.booleans()),
        projection_dim=data.draw(st.sampled_from([None, 1])) if kind != "information_bottleneck" else None,
    )
    # With the running standardisation the features of the two steps may differ arbitrarily (the model moves
    # them); without it the estimator's learning rate is in the features' units, so both steps come from one
    # distribution (a jump of 1e11 bandwidths between steps: test_inner_fit_adam_state_overflows below). The
    # sensitive variable is data: both batches come from one distribution.
    if kind == "mi_continuous":
        sensitive = torch.from_numpy(data.draw(samples(2 * n, cond_dim, dtype)).x)
    elif kind in ("entropy", "information_bottleneck"):
        sensitive = None
    else:
        sensitive = torch.from_numpy(data.draw(labels_strategy(2 * n, num_classes)))
    if extra["standardize"]:
        features = [torch.from_numpy(data.draw(samples(n, d, dtype)).x) for _ in range(2)]
    else:
        features = list(torch.from_numpy(data.draw(samples(2 * n, d, dtype)).x).split(n))
    batches = [
        (features[step], None if sensitive is None else sensitive[step * n : (step + 1) * n])
        for step in range(2)
    ]
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    count("test_penalty_steps_are_finite")
    with quiet():
        penalty = build_penalty(make_penalty_config(kind, cov, k, num_classes, cond_dim, **extra), d).train()
        for step, (features, sensitive) in enumerate(batches):
            penalty_step(penalty, kind, features, sensitive, step if trainer else None)


def test_inner_fit_adam_state_overflows():
    """Minimal case hypothesis found: entropy penalty, ``standardize=False``, a batch of 2 at scale 1e-5, then a
    batch of 2 with a coordinate at -1e6. A gradient above ~1.8e19 used to make the inner Adam's float32 second
    moment inf, freezing that parameter for good (m / inf = 0), silently; it now saturates."""
    torch.manual_seed(0)
    config = KNIFEConfig(
        penalty="entropy", num_components=1, covariance="shared_diagonal", standardize=False, inner_steps=1
    )
    penalty = build_penalty(config, 3).train()
    first = torch.tensor(
        [[1.2573022e-05, -1.3210486e-05, 6.4042266e-05], [1.0490012e-05, -5.3566939e-05, 3.6159505e-05]]
    )
    second = torch.tensor([[0.12573022, -0.13210486, -999999.375], [0.10490011, -0.53566939, -999999.625]])
    count("test_inner_fit_adam_state_overflows")
    with quiet():
        for features in (first, second):
            penalty_step(penalty, "entropy", features, None, None)


@fuzz_settings(DEFAULT_EXAMPLES["test_density_stays_finite_when_a_constant_coordinate_moves"])
@given(data=st.data(), target=st.sampled_from(["entropy", "mi_mixture", "mi_kernel", "marginal_kernel",
                                               "discrete_kernel"]),
       cov=st.sampled_from(COVARIANCE_TYPES), delta=st.sampled_from([1e-5, 1e-2, 1.0]),
       spread=st.sampled_from([1e-6, 1e-2, 1.0, 1e3, 1e6]), offset=st.sampled_from([0.0, 3.0, -1e3, 1e6]),
       k=st.integers(1, 3), trainer=st.booleans())  # fmt: skip
def test_density_stays_finite_when_a_constant_coordinate_moves(
    data, target, cov, delta, spread, offset, k, trainer
):
    """Initialise on features where coordinate ``c`` is constant, then feed features where it moves by ``delta``
    times the typical spread: the density stays finite (and bounded), with finite gradients.

    The bound follows from the relative floors of the design (Scott bandwidths floored at 1% of the typical spread;
    the penalties' running variances at 10% and their bandwidths at 0.1 standardised units, tighter still): the squared Mahalanobis distance is at most
    ``d * (r / 1e-4)^2`` with ``r`` the largest deviation in units of the typical spread (plus slack for the other
    terms). An absolute floor such as a variance of 1e-12 breaks it by orders of magnitude.
    """
    d = data.draw(st.integers(2, 4))
    n = data.draw(st.integers(4, 12))
    c = data.draw(st.integers(0, d - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    init = rng.standard_normal((n, d)) * spread + offset  # [n, d]
    init[:, c] = offset
    moved = rng.standard_normal((n, d)) * spread + offset
    moved[:, c] = offset + delta * spread * rng.standard_normal(n)
    labels = torch.from_numpy(rng.integers(0, 2, n))
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    count("test_density_stays_finite_when_a_constant_coordinate_moves")
    typical = np.median(np.delete(init.std(0), c))
    deviation = np.abs(moved - init.mean(0)).max() / typical + 1.0
    bound = 10.0 * d * (deviation / 1e-4) ** 2 + 1e3
    x_init = torch.from_numpy(init).float()
    x = torch.from_numpy(moved).float().requires_grad_(True)
    if target in ("marginal_kernel", "discrete_kernel"):
        if target == "marginal_kernel":
            kernel = MarginalKernel(d, k, cov).init_from_samples(x_init)
            nll = -kernel.log_prob(x)
        else:
            kernel = DiscreteConditionalKernel(d, 2, k, cov).init_from_samples(x_init, labels)
            nll = -kernel.log_prob(x, labels)
        assert_finite(nll, "NLL after the coordinate moved")
        assert float(nll.detach().max()) < bound, (
            f"NLL {float(nll.detach().max()):.3g} above the relative-floor bound {bound:.3g}"
        )
        nll.mean().backward()
        assert_grads_finite(kernel, x)
        return
    kind = "entropy" if target == "entropy" else target
    with quiet():
        penalty = build_penalty(make_penalty_config(kind, cov, k, 2, 1, inner_steps=1), d).train()
        penalty_step(penalty, kind, x_init, None if kind == "entropy" else labels, 0 if trainer else None)
        out = penalty_step(
            penalty, kind, x.detach(), None if kind == "entropy" else labels, 1 if trainer else None
        )
    nll = float(out.metrics["estimator_nll"])
    assert abs(nll) < bound, f"estimator NLL {nll:.3g} above the relative-floor bound {bound:.3g}"


# ------------------------------------------------------------------------------------------------ one-call API
def constants_named(message: str) -> set[int]:
    match = re.search(r"constant coordinate\(s\) \(([\d, ]+)", message)
    return {int(v) for v in match.group(1).split(",")} if match else set()


def check_estimate_entropy(s: Samples, method: str, cov: str, as_tensor: bool) -> None:
    n, d = s.n, s.d
    n_train_min = 0.7 * n - 2  # split: round(0.2 n) test and round(0.1 n) validation samples, at least 1 each
    rank_deficient = s.min_singular_ratio() < 1e-12
    resolved = s.well_resolved()
    must_refuse = bool(s.constant or s.duplicated) or (
        rank_deficient and n_train_min > d + 1 and bool(s.resolution().max() < 1e-6)
    )
    clean = (
        not s.constant
        and not s.duplicated
        and bool(resolved.all())
        and s.min_singular_ratio() > 1e-3
        and s.distinct_rows() - (0.3 * n + 2) > d + 1
    )
    x = torch.from_numpy(s.x) if as_tensor else s.x
    try:
        with quiet():
            result = hf_knife.estimate_entropy(x, method=method, covariance=cov, **API_OPTIONS)
    except ValueError as error:
        message = str(error)
        event(f"entropy refused ({'must refuse' if must_refuse else 'may refuse'})")
        assert not clean, f"estimate_entropy refused well-conditioned data: {message}"
        assert re.search(r"constant|duplicated|linearly dependent", message), f"unclear ValueError: {message}"
        assert s.constant <= constants_named(message), (
            f"the error must name the constant coordinates {sorted(s.constant)}: {message}"
        )
        return
    assert not must_refuse, (
        f"estimate_entropy accepted data with constant {sorted(s.constant)} / duplicated {s.duplicated} / "
        f"dependent (built rank {s.built_rank} of {d}) coordinates: {result}"
    )
    event(f"entropy estimated ({'clean' if clean else 'not clean'})")
    assert_finite(result.estimate, "entropy estimate")
    assert_finite(result.stderr, "entropy standard error")


@st.composite
def api_case(draw, max_n: int = 40):
    d = draw(st.integers(1, 3))
    n = draw(st.integers(max(8, 2 * d + 4), max_n))
    return draw(samples(n, d, draw(np_dtype), degenerate=draw(st.booleans())))


def api_entropy_test(data, method, cov, as_tensor, name):
    s = data.draw(api_case())
    count(name)
    check_estimate_entropy(s, method, cov, as_tensor)


ENTROPY_GIVEN = dict(data=st.data(), method=st.sampled_from(["knife", "schraudolph", "doe"]),
                     cov=st.sampled_from(COVARIANCE_TYPES), as_tensor=st.booleans())  # fmt: skip


@fuzz_settings(DEFAULT_EXAMPLES["test_estimate_entropy_is_finite_or_refuses_degenerate_data"])
@given(**ENTROPY_GIVEN)
def test_estimate_entropy_is_finite_or_refuses_degenerate_data(data, method, cov, as_tensor):
    """``estimate_entropy``: finite estimate and standard error; a ValueError naming the constant coordinates for
    constant ones, and one for duplicated or (resolvably) linearly dependent coordinates; well-conditioned data are
    never refused."""
    api_entropy_test(
        data, method, cov, as_tensor, "test_estimate_entropy_is_finite_or_refuses_degenerate_data"
    )


@st.composite
def mi_case(
    draw, max_n: int = 40, kinds: tuple[str, ...] = ("continuous", "discrete_mixture", "discrete_kernel")
):
    """x, y with at least one well-resolved column each (so neither is constant on the fitting split)."""
    s = draw(api_case(max_n))
    column = draw(st.integers(0, s.d - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    s.x[:, column] = rng.standard_normal(s.n).astype(s.x.dtype)
    s.constant.discard(column)
    s.duplicated = [(i, j) for i, j in s.duplicated if column not in (i, j)]
    kind = draw(st.sampled_from(kinds))
    if kind == "continuous":
        y = draw(samples(s.n, draw(st.integers(1, 2)), draw(np_dtype))).x
        if draw(st.booleans()):  # y depends on x
            y[:, 0] = (s.x[:, column] + 0.3 * rng.standard_normal(s.n)).astype(y.dtype)
        else:
            y[:, 0] = rng.standard_normal(s.n).astype(y.dtype)
    else:
        y = draw(labels_strategy(s.n, draw(st.integers(1, 3))))
        if draw(st.booleans()):
            y = y + 2  # label values need not start at 0
    return s, y, kind


def check_estimate_mutual_information(
    s: Samples, y: np.ndarray, kind: str, method: str, cov: str, readout: str = "likelihood", folds: int = 1
) -> None:
    options = dict(API_OPTIONS, hidden_dims=(8,), readout=readout, folds=folds)
    if kind == "discrete_kernel":
        options["discrete_marginal"] = "kernel"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = hf_knife.estimate_mutual_information(s.x, y, method=method, covariance=cov, **options)
    assert_finite(result.estimate, "MI estimate")
    if method == "knife":
        assert_finite(result.stderr, "MI standard error")
        for key, value in result.details.items():
            assert_finite(value, key)
    event(f"MI {kind} {method} {readout}" + (" with constant columns" if s.constant else ""))
    if s.constant:
        text = " ".join(str(w.message) for w in caught)
        assert "constant coordinate" in text, (
            f"no warning names the constant coordinates {sorted(s.constant)}"
        )


MI_GIVEN = dict(data=st.data(), method=st.sampled_from(["knife", "doe"]),
                cov=st.sampled_from(COVARIANCE_TYPES))  # fmt: skip


def api_mi_test(data, method, cov, name, readout="likelihood"):
    # the readout applies to class labels with the mixture marginal only
    s, y, kind = data.draw(mi_case(kinds=("discrete_mixture",)) if readout == "calibrated" else mi_case())
    folds = data.draw(st.integers(1, 2))
    count(name)
    check_estimate_mutual_information(s, y, kind, method, cov, readout, folds)


@fuzz_settings(DEFAULT_EXAMPLES["test_estimate_mutual_information_is_finite"])
@given(**MI_GIVEN)
def test_estimate_mutual_information_is_finite(data, method, cov):
    """``estimate_mutual_information`` succeeds with finite values on constant, duplicated and dependent columns of
    x and y (dropped with a warning naming them), duplicated rows, missing classes and a single class (discrete y:
    the KNIFE ``readout="likelihood"``; the calibrated readout is below)."""
    api_mi_test(data, method, cov, "test_estimate_mutual_information_is_finite")


def test_estimate_mutual_information_calibrated_readout_with_a_small_class():
    """The smallest case hypothesis found: 8 Gaussian samples in d = 2, classes of 3 and 5 samples (a class with 2
    fitting samples got its own singular Ledoit-Wolf covariance, and cholesky raised)."""
    x = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    count("test_estimate_mutual_information_calibrated_readout_with_a_small_class")
    with quiet():
        result = hf_knife.estimate_mutual_information(x, y, readout="calibrated", folds=1, **API_OPTIONS)
    assert_finite(result.estimate, "MI estimate")


@fuzz_settings(20)
@given(data=st.data(), which=st.sampled_from(["x", "y"]), discrete=st.booleans())
def test_estimate_mutual_information_of_a_constant_variable(data, which, discrete):
    """I(X; Y) = 0 when X (or Y) is constant: the answer is 0, or a ValueError that says so."""
    n = data.draw(st.integers(8, 30))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, data.draw(st.integers(1, 3))))
    y = rng.integers(0, 2, n) if discrete and which == "x" else rng.standard_normal((n, 2))
    if which == "x":
        x[:] = data.draw(offset_value)
    else:
        y[:] = data.draw(offset_value)
    count("test_estimate_mutual_information_of_a_constant_variable")
    try:
        with quiet():
            result = hf_knife.estimate_mutual_information(x, y, hidden_dims=(8,), **API_OPTIONS)
    except ValueError as error:
        assert "constant" in str(error), f"unclear ValueError: {error}"
        return
    assert abs(result.estimate) < 1e-6, result


@pytest.mark.slow
@fuzz_settings(300)
@given(**ENTROPY_GIVEN)
def test_estimate_entropy_slow(data, method, cov, as_tensor):
    api_entropy_test(data, method, cov, as_tensor, "test_estimate_entropy_slow")


@pytest.mark.slow
@fuzz_settings(300)
@given(**MI_GIVEN)
def test_estimate_mutual_information_slow(data, method, cov):
    api_mi_test(data, method, cov, "test_estimate_mutual_information_slow")


@pytest.mark.slow
@fuzz_settings(100)
@given(**MI_GIVEN)
def test_estimate_mutual_information_calibrated_readout_slow(data, method, cov):
    api_mi_test(data, method, cov, "test_estimate_mutual_information_calibrated_readout_slow", "calibrated")


# ------------------------------------------------------------------------------------------------ case count
def test_generated_case_count(tmp_path_factory):
    """Report the generated cases per test (``-s`` shows them) and require 2,000 in the default suite."""
    path = os.environ.get("FUZZ_COUNTS_JSON") or str(tmp_path_factory.getbasetemp() / "fuzz_counts.json")
    report = {"per_test": dict(sorted(CASES.items())), "total": sum(CASES.values())}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\ngenerated cases: {json.dumps(report, indent=2)}\n(written to {path})")
    missing = [name for name in DEFAULT_EXAMPLES if CASES[name] == 0]
    if missing:
        pytest.skip(f"not every fuzz test ran ({', '.join(missing)}): the total is not checked")
    default_total = sum(CASES[name] for name in DEFAULT_EXAMPLES)
    assert default_total >= MIN_TOTAL_CASES, report
