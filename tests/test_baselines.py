"""Baselines: DoE, kNN (both neighbour searches), KSG and the Gaussian closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from hf_knife.estimators.baselines import (
    DoEEstimator,
    doe_mutual_information,
    gaussian_entropy,
    knn_entropy,
    ksg_mutual_information,
)


def test_knn_gemm_path_equals_kd_tree():
    """In high dimension the k-th neighbour distances come from GEMMs; they must equal the k-d tree's."""
    x = np.random.default_rng(0).normal(size=(1500, 20)) * np.linspace(0.5, 2.0, 20) + 50.0
    distances, _ = cKDTree(x).query(x, k=4)
    n, d = x.shape
    reference = digamma(n) - digamma(3) + 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)
    reference += d * np.mean(np.log(distances[:, -1]))
    assert knn_entropy(x, k=3, chunk_size=256) == pytest.approx(reference, abs=1e-3)


def test_doe_fits_the_gaussian_exactly():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.T + torch.eye(4, dtype=torch.float64)
    x = torch.randn(50_000, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + 2.0
    doe = DoEEstimator(4).double().init_from_samples(x)
    sample_cov = torch.cov(x.T, correction=0)
    expected = torch.distributions.MultivariateNormal(x.mean(0), sample_cov).log_prob(x[:10])
    torch.testing.assert_close(doe.log_prob(x[:10]), expected, rtol=1e-6, atol=1e-6)
    assert float(doe(x)) == pytest.approx(gaussian_entropy(cov), abs=0.02)


def test_gaussian_mutual_information_closed_forms():
    d, mi = 4, 1.5
    rho = math.sqrt(1 - math.exp(-2 * mi / d))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40_000, d, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(40_000, d, generator=g, dtype=torch.float64)
    assert doe_mutual_information(x, y) == pytest.approx(mi, abs=0.03)
    # KSG is accurate in low dimension (and biased low in high dimension, as the paper reports): test d = 1.
    one_d = -0.5 * math.log(1 - rho**2)
    assert ksg_mutual_information(x[:5000, :1].numpy(), y[:5000, :1].numpy(), k=3) == pytest.approx(
        one_d, abs=0.04
    )
    labels = (torch.rand(40_000, generator=g) < 0.5).long()
    shifted = torch.randn(40_000, 1, generator=g, dtype=torch.float64) + 2.0 * labels[:, None]
    assert 0 < doe_mutual_information(shifted, labels) < math.log(2)


def test_gaussian_entropy_has_one_home():
    """Matrix (torch or numpy) and scalar-variance forms agree; hf_knife.synthetic re-exports the same function."""
    import hf_knife.synthetic

    assert hf_knife.synthetic.gaussian_entropy is gaussian_entropy
    expected = 0.5 * 3 * math.log(2 * math.pi * math.e * 0.5)
    assert gaussian_entropy(0.5, 3) == pytest.approx(expected, abs=1e-12)
    assert gaussian_entropy(0.5 * torch.eye(3)) == pytest.approx(expected, abs=1e-12)
    assert gaussian_entropy(0.5 * np.eye(3)) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="pass dim"):
        gaussian_entropy(0.5)
