"""The calibrated readout of I(X; S) for a discrete S (issue 13) against Monte-Carlo truths.

Criterion of the issue: within ``max(0.05, 25%)`` of the truth, about 0 (within its standard error) when S is
independent of X, never below zero by more than its standard error. Truths come from the exact class-conditional
Gaussians (``benchmarks/bench_readout.py``, whose Monte-Carlo helper is checked here against numerical integration).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_knife
from hf_knife.estimators import MixtureMIEstimator
from hf_knife.estimators.mutual_information import (
    CalibratedMixtureMIEstimator,
    calibrated_log_posterior,
    fit_temperature,
    pooled_whitening,
    spiked_covariance,
)


def _load_bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_readout.py"
    spec = importlib.util.spec_from_file_location("bench_readout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_readout", module)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# ----------------------------------------------------------------------------------------------- the oracle
def test_monte_carlo_truth_matches_numerical_integration_in_1d():
    """Two 1-d classes: I = H(S) - int p(x) H(S | x) dx by quadrature against the Monte-Carlo helper."""
    from scipy import integrate, stats

    priors = np.array([0.7, 0.3])
    means, stds = np.array([0.0, 1.5]), np.array([1.0, 0.6])

    def posterior_entropy_density(x: float) -> float:
        joint = priors * stats.norm.pdf(x, means, stds)  # [2]
        marginal = joint.sum()
        posterior = joint / marginal
        return -marginal * float(np.sum(posterior * np.log(np.clip(posterior, 1e-300, None))))

    conditional_entropy, _ = integrate.quad(posterior_entropy_density, -12, 12, limit=200, epsabs=1e-11)
    exact = float(-(priors * np.log(priors)).sum()) - conditional_entropy
    truth = bench.monte_carlo_mutual_information(
        torch.tensor(means).view(2, 1),
        torch.tensor(stds**2).view(2, 1, 1),
        torch.tensor(priors),
        num_samples=400_000,
        seed=3,
    )
    assert truth.stderr < 2e-3
    assert abs(truth.value - exact) < 4 * truth.stderr, (truth, exact)


def test_sampler_truths_are_consistent():
    """Independent classes have I = 0 exactly; with a shared covariance I depends only on the Mahalanobis distance."""
    independent = bench.ClassConditionalGaussians(16, (0.79, 0.21), "independent", seed=0)
    assert independent.mutual_information(5_000).value == pytest.approx(0.0, abs=1e-12)
    a = bench.ClassConditionalGaussians(8, (0.5, 0.5), "shared", separation=2.0, seed=0)
    b = bench.ClassConditionalGaussians(24, (0.5, 0.5), "shared", separation=2.0, seed=1)
    truth_a, truth_b = a.mutual_information(100_000, seed=1), b.mutual_information(100_000, seed=2)
    assert abs(truth_a.value - truth_b.value) < 4 * math.hypot(truth_a.stderr, truth_b.stderr)
    x, labels = a.sample(50_000, seed=4)
    assert torch.bincount(labels).double().div(50_000).sub(0.5).abs().max() < 0.01
    assert (x[labels == 1].mean(0) - a.means[1]).abs().max() < 0.05


# ----------------------------------------------------------------------------------------------- building blocks
def test_fit_temperature_recovers_a_known_scale():
    """Log-likelihoods that are the true ones divided by 0.4: the fitted temperature is 0.4; no information: 0."""
    g = torch.Generator().manual_seed(0)
    n = 40_000
    priors = torch.tensor([0.79, 0.21], dtype=torch.float64)
    labels = torch.multinomial(priors, n, replacement=True, generator=g)
    x = torch.randn(n, generator=g, dtype=torch.float64) + 1.5 * labels  # N(0, 1) vs N(1.5, 1)
    true_log_likelihoods = -0.5 * (x[:, None] - torch.tensor([0.0, 1.5], dtype=torch.float64)).square()  # [n, 2]
    temperature = fit_temperature(true_log_likelihoods / 0.4, labels, priors.log())
    assert temperature == pytest.approx(0.4, rel=0.05)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    assert fit_temperature(noise, labels, priors.log(), min_gain=0.0) < 0.02
    assert fit_temperature(noise, labels, priors.log()) == 0.0  # the likelihood-ratio test keeps the prior
    # the fitted temperature never does worse than T = 0 (the prior) or T = 1 on the samples it was fitted to
    cross_entropy = [
        float(-calibrated_log_posterior(noise * 30, priors.log(), t).gather(1, labels[:, None]).mean())
        for t in (fit_temperature(noise * 30, labels, priors.log(), min_gain=0.0), 0.0, 1.0)
    ]
    assert cross_entropy[0] <= min(cross_entropy[1:]) + 1e-9


def test_pooled_whitening_decorrelates_within_classes():
    problem = bench.ClassConditionalGaussians(8, (0.6, 0.4), "shared", seed=2)
    x, labels = problem.sample(40_000, seed=5)
    shift, matrix = pooled_whitening(x, labels, 2)
    white = (x - shift) @ matrix  # [N, d]
    for c in range(2):
        covariance = torch.cov(white[labels == c].T)
        assert (covariance - torch.eye(8, dtype=covariance.dtype)).abs().max() < 0.05


@pytest.mark.parametrize("covariance,tied", [("diagonal", False), ("diagonal", True), ("full", False)])
def test_fit_gaussians_closed_form(covariance, tied):
    """K = 1 class kernels in closed form give exactly the Gaussian log-density of their class statistics."""
    from sklearn.covariance import ledoit_wolf

    problem = bench.ClassConditionalGaussians(6, (0.5, 0.3, 0.2), "class_specific", variance_factors=(2.0,), seed=1)
    x, labels = problem.sample(3_000, seed=6)
    estimator = MixtureMIEstimator(6, 3, num_components=1, covariance=covariance).double()
    estimator.fit_gaussians(x, labels, tied=tied)
    means = torch.stack([x[labels == c].mean(0) for c in range(3)])  # [3, d]
    residuals = x - means[labels]
    if covariance == "full":
        covariances = [torch.from_numpy(ledoit_wolf(residuals[labels == c].numpy(), assume_centered=True)[0])
                       for c in range(3)]  # fmt: skip
    elif tied:
        pooled = residuals.square().sum(0) / (len(x) - 3)
        covariances = [torch.diag(pooled)] * 3
    else:
        covariances = [torch.diag(residuals[labels == c].var(0)) for c in range(3)]
    expected = torch.stack(
        [torch.distributions.MultivariateNormal(means[c], covariances[c]).log_prob(x[:50]) for c in range(3)], 1
    )  # [50, 3]
    torch.testing.assert_close(estimator.all_log_probs(x[:50]), expected, rtol=1e-9, atol=1e-9)
    counts = torch.bincount(labels, minlength=3).double()
    torch.testing.assert_close(estimator.log_prior, ((counts + 1) / (counts.sum() + 3)).log())


def test_spiked_covariance_closed_form():
    """Residuals with a known sample spectrum: eigenvalues out of the Marchenko-Pastur bulk become
    ``1 + (l - 1) c^2`` with ``l`` solving ``lambda = l + gamma l / (l - 1)`` (solved here by root finding), the rest 1;
    the eigenvectors are kept."""
    from scipy.optimize import brentq

    n, d = 201, 50
    gamma = d / (n - 1)
    g = torch.Generator().manual_seed(5)
    left, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))  # [n, d]  orthonormal columns
    right = bench._orthogonal(d, g)  # [d, d]
    spectrum = torch.linspace(0.6, 1.4, d, dtype=torch.float64)  # inside the bulk [0.25, 2.25]
    spectrum[:3] = torch.tensor([6.0, 3.0, 2.3])  # above it (the last one barely)
    spectrum[-2:] = torch.tensor([0.1, 0.2])  # below it
    residuals = left @ torch.diag((spectrum * (n - 1)).sqrt()) @ right.T  # [n, d]  S = right diag(spectrum) right^T
    expected_variances = torch.ones(d, dtype=torch.float64)
    edges = ((1 - gamma**0.5) ** 2, (1 + gamma**0.5) ** 2)
    for j, value in enumerate(spectrum.tolist()):
        if edges[0] <= value <= edges[1]:
            continue
        bracket = (1 + gamma**0.5, 1e3) if value > edges[1] else (1e-9, 1 - gamma**0.5)
        ell = brentq(lambda t, value=value: t + gamma * t / (t - 1) - value, *bracket)
        cosine2 = (1 - gamma / (ell - 1) ** 2) / (1 + gamma / (ell - 1))
        expected_variances[j] = 1 + (ell - 1) * cosine2
    expected = (right * expected_variances) @ right.T  # [d, d]
    torch.testing.assert_close(spiked_covariance(residuals), expected, rtol=1e-9, atol=1e-9)
    assert int((expected_variances != 1).sum()) == 5


def test_spiked_covariance_matches_the_population_variance_along_its_directions():
    """Whitened classes with one spike above and one below the bulk: the estimated variance along each detected
    direction is the population variance along it (the held-out-likelihood optimum), not the inflated sample one."""
    n, d = 2_000, 200
    g = torch.Generator().manual_seed(6)
    directions = bench._orthogonal(d, g)[:, :2]  # [d, 2]
    population = torch.eye(d, dtype=torch.float64) + (directions * torch.tensor([3.0, -0.8])) @ directions.T
    samples = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(population).T  # [n, d]
    residuals = samples - samples.mean(0)
    estimate = spiked_covariance(residuals)
    eigenvalues, eigenvectors = torch.linalg.eigh(estimate)
    spikes = (eigenvalues - 1).abs() > 1e-9
    assert int(spikes.sum()) == 2
    for j in spikes.nonzero().flatten().tolist():
        v = eigenvectors[:, j]
        sample_variance = float(v @ torch.cov(residuals.T) @ v)
        assert float(eigenvalues[j]) == pytest.approx(float(v @ population @ v), rel=0.05)
        assert abs(float(eigenvalues[j]) - float(v @ population @ v)) < abs(sample_variance - float(v @ population @ v))


def test_fit_gaussians_spiked_is_the_gaussian_of_the_spiked_covariance():
    """``shrinkage="spiked"``: each class kernel is exactly N(class mean, spiked_covariance(class residuals))."""
    problem = bench.ClassConditionalGaussians(20, (0.6, 0.4), "class_specific", variance_factors=(6.0, 0.1), seed=3)
    x, labels = problem.sample(1_500, seed=7)
    x = (x - x.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(problem.covariances.mean(0))).T  # near-white
    estimator = MixtureMIEstimator(20, 2, num_components=1, covariance="full").double()
    estimator.fit_gaussians(x, labels, shrinkage="spiked")
    means = torch.stack([x[labels == c].mean(0) for c in range(2)])  # [2, d]
    residuals = x - means[labels]
    expected = torch.stack(
        [torch.distributions.MultivariateNormal(means[c], spiked_covariance(residuals[labels == c])).log_prob(x[:50])
         for c in range(2)], 1
    )  # fmt: skip  # [50, 2]
    torch.testing.assert_close(estimator.all_log_probs(x[:50]), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="shrinkage"):
        estimator.fit_gaussians(x, labels, shrinkage="oas")


def test_tiny_classes_share_the_pooled_covariance():
    """A class with two samples has a singular covariance estimate: its full-covariance kernel falls back to the
    pooled one instead of failing (found by tests/test_fuzz.py); the one-call readout stays finite."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    labels = torch.cat([torch.zeros(38, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    estimator = MixtureMIEstimator(3, 2, num_components=1, covariance="full").double().fit_gaussians(x, labels)
    from sklearn.covariance import ledoit_wolf

    means = torch.stack([x[:38].mean(0), x[38:].mean(0)])  # [2, d]
    pooled = torch.from_numpy(ledoit_wolf((x - means[labels]).numpy(), assume_centered=True)[0])  # [d, d]
    expected = torch.distributions.MultivariateNormal(means[1], pooled).log_prob(x)  # [40]
    torch.testing.assert_close(estimator.all_log_probs(x)[:, 1], expected, rtol=1e-9, atol=1e-9)
    x8 = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    y8 = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    for folds in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = hf_knife.estimate_mutual_information(x8, y8, folds=folds, max_steps=20, eval_every=10,
                                                          num_components=2, device="cpu", progress=False)  # fmt: skip
        assert math.isfinite(float(result))


def test_calibrated_estimator_densities_and_temperature():
    """Densities include the transform's Jacobian; T = 0 reads exactly 0; forward's MI is the pointwise mean."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64)
    labels = (x[:, 0] > 0).long()
    shift, matrix = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g).double()
    calibrated = CalibratedMixtureMIEstimator(4, 2, num_components=3).double().set_transform(shift, matrix)
    calibrated.init_from_samples(x, labels)
    plain = MixtureMIEstimator(4, 2, num_components=3).double()
    plain.load_state_dict(calibrated.state_dict(), strict=False)
    log_abs_det = torch.linalg.slogdet(matrix)[1]
    torch.testing.assert_close(calibrated.all_log_probs(x), plain.all_log_probs((x - shift) @ matrix) + log_abs_det)
    marginal_nll, conditional_nll = calibrated.pointwise(x, labels)
    out = calibrated(x, labels)  # T = 1: the uncalibrated readout
    torch.testing.assert_close(out.mutual_information, (marginal_nll - conditional_nll).mean())
    calibrated.temperature.fill_(0.0)
    assert calibrated.pointwise_mutual_information(x, labels).abs().max() < 1e-12
    calibrated.temperature.fill_(0.3)
    torch.testing.assert_close(calibrated(x, labels).mutual_information,
                               calibrated.pointwise_mutual_information(x, labels).mean())  # fmt: skip


# ----------------------------------------------------------------------------------------------- one-call API
def _estimate(case: str, dim: int, num_samples: int, seed: int = 0, **options):
    problem = bench.ClassConditionalGaussians(dim, seed=seed, **bench.CASES[case])
    truth = problem.mutual_information(50_000, seed=11).value
    x, labels = problem.sample(num_samples, seed=100 + seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = hf_knife.estimate_mutual_information(x.float(), labels, seed=seed, device="cpu", **options)
    return truth, result


def _check_readout(truth: float, result, tolerance: float) -> None:
    estimate, stderr = float(result), result.stderr
    assert math.isfinite(estimate) and 0 <= stderr < 0.05
    assert abs(estimate - truth) <= tolerance, (estimate, stderr, truth)
    assert estimate >= -stderr - 1e-9, (estimate, stderr)  # never below zero beyond its standard error
    assert estimate <= result.details["label_entropy"] + 1e-9  # a Barber-Agakov readout cannot exceed H(S)
    assert estimate == pytest.approx(result.details["label_entropy"] - result.details["conditional_label_entropy"])


@pytest.mark.parametrize("case", ["shared 79/21", "class-cov strong 79/21", "shared 3 classes"])
def test_readout_fast_cases(case):
    """d = 32, N = 2,000: the same criterion, max(0.05, 25% of the truth)."""
    truth, result = _estimate(case, 32, 2_000)
    _check_readout(truth, result, bench.tolerance(truth))
    assert result.num_samples["test"] == 1_800  # cross-fitted over everything outside the validation split
    assert isinstance(result.estimator, CalibratedMixtureMIEstimator)


@pytest.mark.parametrize("case", ["independent 79/21", "independent 3 classes"])
def test_readout_reads_zero_when_independent(case):
    truth, result = _estimate(case, 32, 2_000)
    assert truth == pytest.approx(0.0, abs=1e-12)
    assert abs(float(result)) <= result.stderr + 1e-9, (float(result), result.stderr)


def test_readout_single_split_and_old_readout():
    """folds=1 reports on the test split; readout='likelihood' is the uncalibrated mixture of earlier versions."""
    truth, single = _estimate("shared 79/21", 16, 2_000, folds=1)
    _check_readout(truth, single, bench.tolerance(truth))
    assert single.num_samples == {"train": 1_400, "validation": 200, "test": 400}
    assert single.details["temperature"] == single.details["validation_temperature"]
    _, old = _estimate("shared 79/21", 16, 2_000, readout="likelihood", max_steps=200)
    assert type(old.estimator) is MixtureMIEstimator and "temperature" not in old.details
    with pytest.raises(ValueError, match="readout"):
        _estimate("shared 79/21", 16, 200, readout="posterior")
    with pytest.raises(ValueError, match="folds"):
        _estimate("shared 79/21", 16, 200, folds=0)


# ----------------------------------------------------------------------------------------------- the audit regime
@pytest.mark.slow
@pytest.mark.parametrize("case", ["shared 79/21", "class-cov 79/21", "shared 50/50", "shared 3 classes"])
def test_readout_audit_regime(case):
    """d = 384, N = 4,000, as in the fair-classification audit."""
    truth, result = _estimate(case, 384, 4_000)
    _check_readout(truth, result, bench.tolerance(truth))


@pytest.mark.slow
def test_readout_audit_regime_independent():
    truth, result = _estimate("independent 79/21", 384, 4_000)
    assert truth == pytest.approx(0.0, abs=1e-12)
    assert abs(float(result)) <= result.stderr + 1e-9, (float(result), result.stderr)
