"""Penalties: gradient routing against separate backward passes, schedules, input checks, IB head."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hf_knife.config import BottleneckOptions, EntropyOptions, KNIFEConfig, MutualInformationOptions
from hf_knife.ops import scale_gradient
from hf_knife.penalties import build_penalty
from hf_knife.synthetic import gaussian_channel_mutual_information


def _features(n=32, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 3, (n,), generator=g)
    z = torch.randn(n, d, generator=g) + s[:, None].float()
    return z, s


@pytest.mark.parametrize(
    "standardize, positive_part, fit",
    [(False, False, "likelihood"), (True, False, "likelihood"), (True, True, "likelihood"),
     (True, False, "posterior"), (True, True, "posterior")],
)  # fmt: skip
def test_mi_gradient_routing_matches_separate_backward_passes(standardize, positive_part, fit):
    torch.manual_seed(0)
    z0, s = _features()
    config = KNIFEConfig(
        num_sensitive_classes=3,
        num_components=4,
        weight=0.7,
        standardize=standardize,
        mutual_information=MutualInformationOptions(fit=fit, positive_part=positive_part, calibrate=False),
    )
    penalty = build_penalty(config, hidden_size=6)
    penalty.init_from_samples(z0, s)
    penalty.eval()  # freeze the running statistics so the three passes see the same map
    lam = 0.7
    params = penalty.estimator_parameters()

    z = z0.clone().requires_grad_(True)
    out = penalty(z, s)
    out.loss.backward()
    routed_z, routed_params = z.grad.clone(), [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    # oracle 1: estimator parameters get the gradient of the fitting loss on detached features: h(Z) + h(Z|S)
    # (likelihood) or the cross-entropy of the class posterior (posterior)
    zs = penalty.standardizer(z0)
    if fit == "likelihood":
        marginal_nll, conditional_nll = penalty.estimator.pointwise(zs, s)
        (marginal_nll.mean() + conditional_nll.mean()).backward()
    else:
        log_prior = penalty.estimator.log_prior
        logits = penalty.estimator.all_log_probs(zs) + log_prior  # [B, C]
        torch.nn.functional.cross_entropy(logits, s).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(routed_params, params))
    for p in params:
        p.grad = None
    # oracle 2: features get lam * grad I_hat (or of the mean positive part of the pointwise MI), estimator frozen
    z2 = z0.clone().requires_grad_(True)
    marginal_nll, conditional_nll = penalty.estimator.pointwise(penalty.standardizer(z2), s)  # [B] each
    pointwise = marginal_nll - conditional_nll
    objective = pointwise.clamp_min(0).mean() if positive_part else pointwise.mean()
    (grad,) = torch.autograd.grad(lam * objective, z2)
    torch.testing.assert_close(routed_z, grad, atol=1e-6, rtol=1e-5)
    # the value is lam * the penalty, not the fitting loss; the logged MI is the raw difference
    torch.testing.assert_close(out.loss.detach(), lam * objective.detach())
    torch.testing.assert_close(out.metrics["mutual_information"], pointwise.mean().detach())
    if positive_part:
        assert (pointwise < 0).any() and (pointwise > 0).any()  # both branches exercised


def test_entropy_sign_and_value():
    z, _ = _features()
    for direction, sign in [("lower", 1.0), ("raise", -1.0)]:
        penalty = build_penalty(
            KNIFEConfig(penalty="entropy", entropy=EntropyOptions(direction=direction), num_components=4), 6
        )
        penalty.init_from_samples(z)
        penalty.eval()
        zz = z.clone().requires_grad_(True)
        out = penalty(zz)
        out.loss.backward()
        z3 = z.clone().requires_grad_(True)
        (oracle,) = torch.autograd.grad(sign * penalty.estimator(penalty.standardizer(z3)), z3)
        torch.testing.assert_close(zz.grad, oracle, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.loss.detach(), sign * out.metrics["marginal_entropy"])


def test_information_bottleneck_closed_form_and_vib():
    torch.manual_seed(0)
    d = 5
    config = KNIFEConfig(penalty="information_bottleneck", num_components=4, information_bottleneck=BottleneckOptions(init_sigma=0.5))
    penalty = build_penalty(config, d)
    h = torch.randn(64, d)
    penalty.init_from_samples(h)
    z, extra = penalty.transform(h)
    out = penalty(z, **extra)
    expected = d * math.log(0.5) + 0.5 * d * math.log(2 * math.pi * math.e)
    torch.testing.assert_close(
        out.metrics["conditional_entropy"], torch.tensor(expected), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(out.metrics["mutual_information"], out.metrics["marginal_entropy"] - expected)
    vib = build_penalty(
        KNIFEConfig(penalty="information_bottleneck", information_bottleneck=BottleneckOptions(estimator="vib", init_sigma=0.5)), d
    )
    _, extra = vib.transform(h)
    kl = vib(h, **extra).loss
    oracle = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(h, 0.5), torch.distributions.Normal(torch.zeros_like(h), 1.0)
        )
        .sum(1)
        .mean()
    )
    torch.testing.assert_close(kl, oracle, rtol=1e-5, atol=1e-5)


def test_warmup_and_annealing_schedule():
    penalty = build_penalty(KNIFEConfig(penalty="entropy", weight=2.0, warmup_steps=3, anneal_steps=4), 4)
    weights = [penalty.current_weight(step) for step in range(9)]
    assert weights == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    # during warm-up the features get no gradient but the estimator still fits
    penalty.begin_step(0)
    z = torch.randn(16, 4, requires_grad=True)
    penalty(z).loss.backward()
    assert torch.count_nonzero(z.grad) == 0
    assert penalty.estimator.loc.grad.abs().sum() > 0


def test_inner_steps_fit_the_estimator_and_keep_outer_gradients():
    z, s = _features()
    penalty = build_penalty(KNIFEConfig(num_sensitive_classes=3, num_components=4, inner_steps=3), 6)
    penalty.init_from_samples(z, s)
    loc = penalty.estimator.conditional.loc
    loc.grad = torch.ones_like(loc)
    before = loc.detach().clone()
    penalty(z, s)
    assert not torch.equal(before, loc.detach())
    assert torch.equal(loc.grad, torch.ones_like(loc))


def _continuous_penalty_with_projection():
    """A penalty on 8-d Z projected to 4-d, S continuous 2-d; initialised at the returned ``(z [32, 8], y [32, 2])``."""
    torch.manual_seed(0)
    z = torch.randn(32, 8)
    y = z[:, :2] + 0.1 * torch.randn(32, 2)
    config = KNIFEConfig(
        sensitive_type="continuous", sensitive_dim=2, projection_dim=4, num_components=4, hidden_dims=[8]
    )
    penalty = build_penalty(config, 8)
    penalty.init_from_samples(z, y)
    return penalty, z, y


def test_continuous_sensitive_and_projection():
    penalty, z, y = _continuous_penalty_with_projection()
    out = penalty(z.requires_grad_(True), y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and penalty.projection.shape == (8, 4)
    torch.testing.assert_close(penalty.projection.T @ penalty.projection, torch.eye(4), atol=1e-5, rtol=0)


def test_bad_inputs():
    penalty = build_penalty(
        KNIFEConfig(num_sensitive_classes=2, sensitive_column="gender", num_components=2), 4
    )
    z = torch.randn(8, 4)
    with pytest.raises(
        ValueError, match=r"sensitive column 'gender' contains class id 2, expected ids in \[0, 1\]"
    ):
        penalty(z, torch.tensor([0, 1, 2, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="non-integer"):
        penalty(z, torch.full((8,), 0.5))
    with pytest.raises(ValueError, match="needs the sensitive variable"):
        penalty(z, None)
    bad = z.clone()
    bad[3, 1] = float("nan")
    penalty.begin_step(7)
    with pytest.raises(FloatingPointError, match=r"representation Z \(Z\) at step 7: 1 NaN and 0 Inf"):
        penalty(bad, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must have shape \[B, 4\]"):
        penalty(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))


def test_scale_gradient_is_the_routing_primitive():
    x = torch.ones(3, requires_grad=True)
    (scale_gradient(x, -2.0) * 1.0).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))


def test_gaussian_channel_truth_limits():
    """The Monte-Carlo truth of the bottleneck check: log N for far-apart heads, 0 when every head is the same."""
    far = 100.0 * torch.eye(5, dtype=torch.float64)  # [5, 5]
    assert gaussian_channel_mutual_information(far, 1.0, 2_000) == pytest.approx(math.log(5), abs=1e-9)
    same = torch.ones(5, 3, dtype=torch.float64)
    assert gaussian_channel_mutual_information(same, 1.0, 2_000) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("spread", [1.0, 0.02])  # separated clusters (I = log N) and overlapping ones (I < log N)
def test_bottleneck_memory_marginal_is_within_10_percent_of_the_truth(spread):
    """The Gaussian-head check: N = 100 training examples with fixed head means in 64 dimensions and noise 0.1,
    batches of 8 as in low-resource fine-tuning. The logged I(X;Z) with the memory marginal is within 10% of the
    exact value (the fitted kernel marginal reads 10-30x the truth here: benchmarks/bench_bottleneck_rate.py)."""
    torch.manual_seed(0)
    n, d, sigma = 100, 64, 0.1
    mu = spread * torch.randn(n, d)
    truth = gaussian_channel_mutual_information(mu.double(), sigma)
    options = BottleneckOptions(marginal="memory", memory_size=256, init_sigma=sigma)
    penalty = build_penalty(KNIFEConfig(penalty="information_bottleneck", information_bottleneck=options), d)
    penalty.init_from_samples(mu)
    penalty.train()
    estimates = []
    for step in range(120):
        penalty.begin_step(step)
        z, extra = penalty.transform(mu[torch.randint(0, n, (8,))])
        estimates.append(float(penalty(z, **extra).metrics["mutual_information"]))
        penalty.end_step()
    estimate = sum(estimates[-40:]) / 40  # once the memory holds every example (after ~60 steps)
    assert int(penalty.estimator.count) == 120 * 8 and estimate <= math.log(256) + 1e-6
    assert abs(estimate - truth) <= 0.1 * truth, (estimate, truth)


@pytest.mark.parametrize("given", ["nothing", "labels"])
def test_calibrated_mi_routing_matches_separate_backward_passes(given):
    """calibrate=True: the estimator gets the gradient of its fitting loss on detached features; the features get
    lam * grad mean_n log q_T(s_n | z_n) / p(s_n) with T the batch's fitted temperature and the estimator frozen; the
    value and the logged MI are that calibrated estimate."""
    from hf_knife.estimators.mutual_information import calibrated_log_posterior, fit_temperature

    torch.manual_seed(0)
    z0, s = _features(n=64)
    s = (s > 0).long()  # two classes
    y = torch.randint(0, 2, (64,))
    options = MutualInformationOptions(fit="posterior", positive_part=False, calibrate=True, given=given,
                                       num_label_classes=2 if given == "labels" else None)  # fmt: skip
    config = KNIFEConfig(num_sensitive_classes=2, num_components=2, weight=0.7, mutual_information=options)
    penalty = build_penalty(config, hidden_size=6)
    labels = {"labels": y} if given == "labels" else {}
    penalty.init_from_samples(z0, s, **labels)
    penalty.eval()
    estimator, params = penalty.estimator, penalty.estimator_parameters()
    joint = y * 2 + s if given == "labels" else s

    z = z0.clone().requires_grad_(True)
    out = penalty(z, s, **labels)
    out.loss.backward()
    routed_z, routed_params = z.grad.clone(), [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    # oracle 1: the posterior fit's cross-entropy (within each label's classes) on detached features
    zs = penalty.standardizer(z0)
    groups = joint // 2
    logits = (estimator.all_log_probs(zs) + estimator.log_prior).view(64, -1, 2)[torch.arange(64), groups]  # [B, 2]
    torch.nn.functional.cross_entropy(logits, s).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(routed_params, params))
    # oracle 2: the tempered posterior's log-ratio, T fitted on the batch, estimator frozen
    z2 = z0.clone().requires_grad_(True)
    with torch.no_grad():
        frozen = [p.detach().clone() for p in params]
    lp = estimator.all_log_probs(penalty.standardizer(z2)).view(64, -1, 2)[torch.arange(64), groups]  # [B, 2]
    prior = estimator.log_prior.view(-1, 2)[groups]  # [B, 2]
    temperature = fit_temperature(lp.detach(), s, prior)
    assert temperature > 0  # S is visible in these features: the likelihood-ratio test keeps T
    pointwise = (calibrated_log_posterior(lp, prior, temperature) - prior).gather(1, s[:, None]).squeeze(1)
    (grad,) = torch.autograd.grad(0.7 * pointwise.mean(), z2)
    torch.testing.assert_close(routed_z, grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.loss.detach(), 0.7 * pointwise.mean().detach())
    torch.testing.assert_close(out.metrics["mutual_information"], pointwise.mean().detach())
    assert float(out.metrics["temperature"]) == pytest.approx(temperature)
    assert all(torch.equal(a, b) for a, b in zip(frozen, params))  # nothing was updated in place
    assert all(p.requires_grad for p in params)  # the estimator is unfrozen again


def test_calibrated_mi_reads_zero_without_leakage_and_positive_with_it():
    """In the trainer's order (estimate on a batch, then fit on it), the calibrated estimate averages ~0 nats when S
    is independent of Z and is positive when Z shows S; the raw posterior estimate reads far below zero for both."""

    def run(shift: float) -> tuple[float, float]:
        g = torch.Generator().manual_seed(0)
        n, d = 256 + 60 * 32, 64  # every batch unseen, as in a first epoch
        s = (torch.rand(n, generator=g) < 0.25).long()
        z = torch.randn(n, d, generator=g)
        z[:, 0] += shift * s
        config = KNIFEConfig(num_sensitive_classes=2, weight=1e-9, mutual_information=MutualInformationOptions(
            fit="posterior", positive_part=False, calibrate=True))  # fmt: skip
        torch.manual_seed(0)
        penalty = build_penalty(config, hidden_size=d).train()
        penalty.init_from_samples(z[:256], s[:256])
        calibrated, raw = [], []
        for step in range(60):
            idx = torch.arange(256 + 32 * step, 256 + 32 * (step + 1))
            penalty.begin_step(step)
            out = penalty(z[idx], s[idx])
            calibrated.append(float(out.metrics["mutual_information"]))
            with torch.no_grad():
                m, c = penalty.estimator.pointwise(penalty.standardizer(z[idx]), s[idx])
                raw.append(float((m - c).mean()))
            penalty.end_step()
        return sum(calibrated[10:]) / 50, sum(raw[10:]) / 50

    independent, raw_independent = run(0.0)
    dependent, _ = run(3.0)
    assert abs(independent) < 0.02, independent
    assert dependent > 0.2, dependent  # I(Z;S) = 0.41 nats here (H(S) = 0.56, two classes 3 sigma apart)
    assert raw_independent < -0.5, raw_independent  # what the uncalibrated estimate logs


def test_calibrate_bad_input():
    with pytest.raises(ValueError, match="set positive_part=False with it"):
        KNIFEConfig(mutual_information=MutualInformationOptions(calibrate=True, positive_part=True))
    with pytest.raises(ValueError, match="set fit='likelihood' and calibrate=False"):
        KNIFEConfig(mutual_information=MutualInformationOptions(marginal="kernel"))
    KNIFEConfig(mutual_information=MutualInformationOptions(marginal="kernel", fit="likelihood", calibrate=False))
    # a continuous S ignores the discrete options (the positive part applies to it)
    KNIFEConfig(sensitive_type="continuous", mutual_information=MutualInformationOptions(positive_part=True))


def test_memory_rate_matches_torch_distributions_and_never_exceeds_log_m():
    """MemoryMixture.rate: log p(z|x) is the batch's own Gaussian and log q the uniform mixture over the memory and
    the batch (oracles: torch.distributions); the pointwise rate log p - log q <= log M holds up to float rounding,
    also on offset data where the expanded quadratic rounds (the bound the logged I(X;Z) relies on)."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    from hf_knife.estimators import MemoryMixture

    torch.manual_seed(0)
    d, batch = 16, 8
    memory = MemoryMixture(d, size=24)
    for _ in range(4):
        memory.push(torch.randn(batch, d) * 0.5 + 300.0, torch.full((batch, d), -2.0) + 0.1 * torch.randn(batch, d))
    loc = (torch.randn(batch, d) * 0.5 + 300.0).double()
    log_scale = (torch.full((batch, d), -2.0) + 0.1 * torch.randn(batch, d)).double()
    memory = memory.double()
    z = loc + log_scale.exp() * torch.randn(batch, d, dtype=torch.float64)
    log_p, log_q = memory.rate(z, loc, log_scale)  # [B] each
    assert torch.allclose(log_p, Independent(Normal(loc, log_scale.exp()), 1).log_prob(z), atol=1e-6)
    centres, scales = memory.components(loc, log_scale)  # [M, d], M = 24 + 8
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(32, dtype=torch.float64)),
                                Independent(Normal(centres, scales.exp()), 1))  # fmt: skip
    assert torch.allclose(log_q, mixture.log_prob(z), atol=1e-6)
    # float32 on offset data: the bound holds up to the rounding of the log-densities themselves (a few ulps)
    memory32 = memory.float()
    for scale in (0.01, 0.1, 1.0):
        loc32 = torch.randn(batch, d) * scale + 300.0
        log_scale32 = torch.full((batch, d), -4.0)
        z32 = loc32 + log_scale32.exp() * torch.randn(batch, d)
        log_p32, log_q32 = memory32.rate(z32, loc32, log_scale32)
        assert float((log_p32 - log_q32).max()) <= math.log(32) + 1e-6 * float(log_p32.abs().max())


def test_penalty_keeps_float64_and_lifts_bfloat16_to_float32():
    """A float64 penalty on float64 features computes in float64 (parity tests and scientists need that precision);
    bfloat16 features meet a float32 penalty in float32, exactly as if the caller had cast them."""
    single, z, y = _continuous_penalty_with_projection()
    single.eval()
    double = copy.deepcopy(single).double()

    z64 = z.double().requires_grad_(True)
    out64 = double(z64, y.double())
    out64.loss.backward()
    assert out64.loss.dtype == torch.float64 and z64.grad.dtype == torch.float64
    assert all(p.grad.dtype == torch.float64 for p in double.estimator_parameters() if p.grad is not None)
    step = 1e-9 * torch.randn(32, 8, dtype=torch.float64)  # below float32 resolution: lost if Z were cast down
    moved = double(z64.detach() + step, y.double()).loss - out64.loss.detach()
    torch.testing.assert_close(moved, (z64.grad * step).sum(), rtol=1e-3, atol=0)  # first order, in float64
    z32 = z.clone().requires_grad_(True)
    out32 = single(z32, y)
    out32.loss.backward()
    torch.testing.assert_close(out64.loss.float(), out32.loss)  # the same number, to float32 rounding
    torch.testing.assert_close(z64.grad.float(), z32.grad)

    z16 = z.bfloat16()
    torch.testing.assert_close(single(z16, y.bfloat16()).loss, single(z16.float(), y.bfloat16().float()).loss,
                               rtol=0, atol=0)  # fmt: skip
