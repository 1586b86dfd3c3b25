"""Ground truths of hf_knife.synthetic, the neural MI bounds, and --quick runs of recipes/synthetic.py."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate

from hf_knife.estimators.variational import CLUB, MINE, NWJ, InfoNCE
from hf_knife.synthetic import (
    CorrelatedPairSampler,
    GaussianMixtureClassSampler,
    GaussianSampler,
    TriangleMixtureSampler,
    correlation_for_mi,
    gaussian_entropy,
    halving_schedule_entropies,
    uniform_noise_width,
    uniform_pair_mi,
)

torch.set_num_threads(1)
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "synthetic.py"


def load_recipe():
    """Import recipes/synthetic.py from its path (registered in sys.modules, as dataclasses require)."""
    name = "hf_knife_recipe_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RECIPE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def mc_mean(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


# ---------------------------------------------------------------------------------------------------------------
# ground truths


def test_gaussian_entropy_closed_forms():
    assert gaussian_entropy(1.0, 10) == pytest.approx(14.189, abs=1e-3)
    assert gaussian_entropy(1.0, 64) == pytest.approx(90.812, abs=1e-3)
    assert halving_schedule_entropies(64, 5) == pytest.approx([90.81, 68.63, 46.45, 24.27, 2.09], abs=0.01)
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert gaussian_entropy(cov) == pytest.approx(0.5 * math.log((2 * math.pi * math.e) ** 2 * 1.75))


@pytest.mark.parametrize("sampler", [GaussianSampler(5, scale=0.7), GaussianSampler(3, covariance=torch.tensor(
    [[1.0, 0.3, 0.0], [0.3, 2.0, -0.4], [0.0, -0.4, 0.5]]))])  # fmt: skip
def test_gaussian_entropy_monte_carlo(sampler):
    x = sampler.sample(40_000, gen())
    mean, se = mc_mean(-sampler.log_prob(x))
    assert abs(mean - sampler.entropy) < 4 * se + 1e-3


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_triangle_density_and_entropy():
    sampler = TriangleMixtureSampler(1, 10, seed=3)
    # the 1-D density integrates to one and its entropy integral matches the closed form
    pieces = [(i, i + float(sampler.widths[i])) for i in range(10)]

    def p(t):
        return float(sampler.log_prob_1d(torch.tensor([t])).exp())

    halves = [(a, (a + b) / 2) for a, b in pieces] + [((a + b) / 2, b) for a, b in pieces]  # linear pieces
    mass = sum(integrate.quad(p, a, b)[0] for a, b in halves)
    assert mass == pytest.approx(1.0, abs=1e-6)
    h = sum(integrate.quad(lambda t: -p(t) * math.log(max(p(t), 1e-300)), a, b)[0] for a, b in halves)
    assert h == pytest.approx(sampler.entropy_1d, abs=1e-5)
    # samples lie on the support; -mean log p matches the entropy in d = 8
    sampler8 = TriangleMixtureSampler(8, 2, seed=1)
    x = sampler8.sample(40_000, gen(1))
    logp = sampler8.log_prob(x)
    assert torch.isfinite(logp).all()
    mean, se = mc_mean(-logp)
    assert abs(mean - sampler8.entropy) < 4 * se
    assert sampler8.entropy == pytest.approx(8 * sampler8.entropy_1d)


def test_mi_pair_closed_forms():
    for mi in (2, 4, 6, 8, 10):
        rho = correlation_for_mi(mi, 20)
        assert -10 * math.log(1 - rho**2) == pytest.approx(mi)
        a = uniform_noise_width(mi, 20)
        assert 20 * uniform_pair_mi(a) == pytest.approx(mi, rel=1e-9)
    assert [uniform_noise_width(m, 20) for m in (2, 4, 6, 8, 10)] == pytest.approx([5, 2.5, 5 / 3, 1.25, 1])
    # the a <= 1 branch (I / d > 1/2) is inverted by bisection
    assert uniform_pair_mi(uniform_noise_width(15, 10)) == pytest.approx(1.5, rel=1e-9)


@pytest.mark.parametrize("a", [0.4, 1.0, 2.5])
def test_uniform_pair_mi_numerical(a):
    # h(X + aU) by quadrature of the trapezoid density minus h(aU) = log a
    def p(t):
        return max(0.0, min(t, 1.0, a, 1.0 + a - t)) / a

    edges = sorted({0.0, min(1.0, a), max(1.0, a), 1.0 + a})
    h = sum(integrate.quad(lambda t: -p(t) * math.log(p(t)) if p(t) > 0 else 0.0, lo, hi)[0]
            for lo, hi in zip(edges[:-1], edges[1:], strict=False))  # fmt: skip
    assert h - math.log(a) == pytest.approx(uniform_pair_mi(a), abs=1e-7)


@pytest.mark.parametrize("kind", ["gaussian", "cubic", "uniform"])
@pytest.mark.parametrize("mi", [2.0, 10.0])
def test_mi_pairs_monte_carlo(kind, mi):
    sampler = CorrelatedPairSampler(kind, 20, mi)
    assert sampler.mutual_information == pytest.approx(mi, rel=1e-9)
    x, y = sampler.sample(40_000, gen(2))
    assert x.shape == y.shape == (40_000, 20)
    mean, se = mc_mean(sampler.pointwise_mi(x, y))
    assert abs(mean - mi) < 4 * se + 1e-3
    if kind == "cubic":  # the cube is applied to y only
        assert torch.allclose(
            y.sign() * y.abs().pow(1 / 3),
            CorrelatedPairSampler("gaussian", 20, mi).sample(40_000, gen(2))[1],
            atol=1e-4,
        )


def test_gaussian_mixture_class_truth():
    # d = 1, two classes: compare the Monte-Carlo truth with quadrature of the exact densities
    sampler = GaussianMixtureClassSampler(2, dim=1, separation=1.5, seed=4)
    mu = sampler.means[:, 0].tolist()

    def normal(t, m):
        return math.exp(-0.5 * (t - m) ** 2) / math.sqrt(2 * math.pi)

    def integrand(t):
        ps = [normal(t, m) for m in mu]
        pz = sum(ps) / 2
        return sum(0.5 * q * math.log(q / pz) for q in ps if q > 0)

    exact = integrate.quad(integrand, min(mu) - 12, max(mu) + 12, limit=200)[0]
    truth = sampler.mutual_information(100_000)
    assert abs(truth.value - exact) < 4 * truth.stderr + 1e-4
    for c in (2, 5, 10):
        t = GaussianMixtureClassSampler(c, dim=8, seed=0).mutual_information(20_000)
        assert 0 < t.value < math.log(c)


# ---------------------------------------------------------------------------------------------------------------
# neural bounds: exact critics recover the closed forms


class _OracleCritic(torch.nn.Module):
    """T(x_i, y_j) = log p(y_j | x_i) / p(y_j) + shift for Gaussian pairs."""

    def __init__(self, rho: float, shift: float = 0.0):
        super().__init__()
        self.rho, self.shift = rho, shift

    def forward(self, x, y):
        r2 = self.rho**2
        diff = y.unsqueeze(0) - self.rho * x.unsqueeze(1)  # [B, B, d]
        log_ratio = -0.5 * (diff.square() / (1 - r2) + math.log(1 - r2)) + 0.5 * y.unsqueeze(0).square()
        return log_ratio.sum(-1) + self.shift


def test_bounds_with_optimal_critic():
    mi, d, batch = 1.0, 4, 512
    sampler = CorrelatedPairSampler("gaussian", d, mi)
    x, y = sampler.sample(batch, gen(5))
    for cls, shift in ((InfoNCE, 0.0), (NWJ, 1.0), (MINE, 0.0)):
        est = cls(d, d)
        est.critic = _OracleCritic(sampler.rho, shift)
        values = [float(est(*sampler.sample(batch, gen(s))).mutual_information) for s in range(20)]
        assert np.mean(values) == pytest.approx(mi, abs=0.12), cls.__name__
    info = InfoNCE(d, d)
    info.critic = _OracleCritic(correlation_for_mi(30.0, d))
    x, y = CorrelatedPairSampler("gaussian", d, 30.0).sample(64, gen(6))
    assert float(info(x, y).mutual_information) <= math.log(64) + 1e-5  # InfoNCE saturates at log B


class _Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_club_with_exact_conditional():
    mi, d = 2.0, 4
    sampler = CorrelatedPairSampler("gaussian", d, mi)
    club = CLUB(d, d)
    rho = sampler.rho
    club.mu = _Lambda(lambda x: rho * x)
    club.logvar = _Lambda(lambda x: torch.full_like(x, math.log(1 - rho**2)))
    x, y = sampler.sample(20_000, gen(7))
    # with q = p(y|x) the CLUB value is sum_j rho^2 / (1 - rho^2) >= I (the bound's gap, not an error)
    assert float(club(x, y).mutual_information) == pytest.approx(d * rho**2 / (1 - rho**2), rel=0.03)


def test_bounds_train_and_mine_moving_average():
    torch.manual_seed(0)
    sampler = CorrelatedPairSampler("gaussian", 3, 1.0)
    for cls in (InfoNCE, NWJ, MINE, CLUB):
        est = cls(3, 3, hidden_dims=(16,))
        opt = torch.optim.Adam(est.parameters(), lr=3e-3)
        for step in range(5):
            out = est(*sampler.sample(32, gen(step)))
            assert torch.isfinite(out.loss) and out.mutual_information.requires_grad is False
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        if cls is MINE:
            assert torch.isfinite(est.log_ema)
    with pytest.raises(ValueError):
        InfoNCE(3, 3)(torch.zeros(4, 3), torch.zeros(4, 2))


# ---------------------------------------------------------------------------------------------------------------
# recipe --quick runs (small sizes; tolerances are loose but far below the baselines' failure modes)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    recipe = load_recipe()
    out = tmp_path_factory.mktemp("synthetic")
    results = recipe.main(["all", "--quick", "--seeds", "0", "--output_dir", str(out)])
    return recipe, out, results


def _rows(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"{name}.json").read_text())["rows"]


def test_quick_outputs_written(quick_results):
    _, out, _ = quick_results
    for name in ("entropy", "tracking", "triangles", "staircase_gaussian", "discrete"):
        assert (out / f"{name}.json").exists() and (out / f"{name}.csv").exists()
    for png in ("tracking.png", "triangles_1d.png", "staircase_gaussian.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "runs.jsonl").read_text().strip()


def test_quick_entropy(quick_results):
    _, out, _ = quick_results
    errors = {r["method"]: r["error"] for r in _rows(out, "entropy")}
    # d = 4, 150 steps, 4,000 evaluation samples: the evaluation noise alone is ~0.02 nats
    assert -0.05 < errors["knife_full"] < 0.15 and -0.05 < errors["knife_diagonal"] < 0.15  # an upper bound
    assert abs(errors["doe"]) < 0.1 and abs(errors["knn"]) < 0.2
    assert errors["schraudolph"] > -0.05  # fixed-centre KDE: an upper bound, typically loose


def test_quick_tracking(quick_results):
    _, out, _ = quick_results
    for row in _rows(out, "tracking"):
        assert abs(row["error"]) < 0.25, row  # d = 4: the tail mean of 30 batch estimates has noise ~0.05


def test_quick_triangles(quick_results):
    _, out, _ = quick_results
    for row in _rows(out, "triangles"):
        if row["method"] == "knife":
            assert -0.1 < row["error"] < 0.35, row  # cross-entropy: upper bound up to sampling noise
        if row["method"] == "doe":
            assert row["error"] > 0  # a Gaussian over-estimates the entropy of a multimodal density


def test_quick_staircase(quick_results):
    _, out, _ = quick_results
    summary = {
        (r["estimator"], r["level"]): r
        for r in json.loads((out / "staircase_gaussian.json").read_text())["summary"]
    }
    for level in (1.0, 2.0):
        assert abs(summary[("knife", level)]["bias"]) < 0.4
        assert abs(summary[("knife_gauss", level)]["bias"]) < 0.4
        assert abs(summary[("doe", level)]["bias"]) < 0.3  # exact model class for Gaussian pairs
        assert summary[("club", level)]["bias"] > 0  # an upper bound
        for name in ("infonce", "nwj", "mine"):
            assert -1.5 < summary[(name, level)]["bias"] < 0.5
        assert np.isfinite(summary[("knife", level)]["mse"])


def test_quick_discrete(quick_results):
    _, out, _ = quick_results
    for row in _rows(out, "discrete"):
        if row["method"] == "knife":
            assert abs(row["error"]) < 0.2, row
        assert row["truth"] <= math.log(row["num_classes"])


def test_jobs_spread_units_over_processes_with_identical_results(quick_results, tmp_path):
    """``--jobs 2`` (spawned workers, costliest units first) writes the rows of the in-process run, bit for bit."""
    _, out, _ = quick_results
    command = [sys.executable, str(RECIPE), "all", "--quick", "--seeds", "0", "--jobs", "2", "--output_dir",
               str(tmp_path)]  # fmt: skip
    subprocess.run(
        command, check=True, capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300
    )
    for name in ("entropy", "tracking", "triangles", "staircase_gaussian", "discrete"):
        serial, parallel = _rows(out, name), _rows(tmp_path, name)
        assert len(serial) == len(parallel) > 0
        for a, b in zip(serial, parallel, strict=True):
            a.pop("seconds", None), b.pop("seconds", None)
            assert a == b, name
    record = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert (
        record["jobs"] == 2 and record["wall_seconds"] > 0 and set(record["seconds"]) == set(record["seeds"])
    )


def test_non_finite_raises():
    from common.estimation import NonFiniteError, check_finite

    with pytest.raises(NonFiniteError, match="step 3"):
        check_finite(float("nan"), "knife", 3)
    assert check_finite(torch.tensor(1.5), "knife", 0) == 1.5


def test_marginal_gaussianizer_is_monotone_and_gaussianizes():
    from common.estimation import MarginalGaussianizer

    reference = torch.randn(8192, 2, generator=gen(10)) ** 3
    g = MarginalGaussianizer(reference)
    grid = torch.linspace(-50, 50, 2001).view(-1, 1).repeat(1, 2)
    z = g(grid)
    assert torch.all(z[1:] >= z[:-1]) and torch.isfinite(z).all()  # non-decreasing, clamped in the far tails
    inside = (grid[:, 0] > reference[:, 0].min()) & (grid[:, 0] < reference[:, 0].max())
    assert torch.all(
        z[1:, 0][inside[1:] & inside[:-1]] > z[:-1, 0][inside[1:] & inside[:-1]]
    )  # strictly inside
    out = g(torch.randn(20_000, 2, generator=gen(11)) ** 3)
    assert out.mean(0).abs().max() < 0.05 and (out.std(0) - 1).abs().max() < 0.05
