"""The KNIFE mixture density against torch.distributions, a naive broadcast oracle, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from hf_knife import (
    ConditionalKernel,
    DiscreteConditionalKernel,
    KNIFEEstimator,
    MarginalKernel,
    MixtureMIEstimator,
)
from hf_knife.estimators import (
    COVARIANCE_TYPES,
    CalibratedMixtureMIEstimator,
    MIEstimator,
    build_mi_estimator,
    component_log_prob,
    mixture_log_prob,
)
from hf_knife.estimators.mutual_information import FIT_OBJECTIVES


@pytest.fixture(autouse=True)
def float64_default():
    """These tests compare in float64; restore the default dtype afterwards (it is process-global)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def precision_matrices(
    log_diag: torch.Tensor, tril: torch.Tensor | None, factor: torch.Tensor | None
) -> torch.Tensor:
    """The precision implied by the parameters, built the slow, obvious way: ``[..., d, d]``."""
    d = log_diag.shape[-1]
    scale = torch.diag_embed(log_diag.exp())  # [..., d, d]
    if tril is not None:
        a = (torch.eye(d) + torch.tril(tril, -1)) @ scale  # [..., d, d]
        return a.transpose(-1, -2) @ a
    precision = scale @ scale
    if factor is not None:
        precision = precision + factor @ factor.transpose(-1, -2)
    return precision


def reference_log_prob(x, loc, log_diag, logits, tril=None, factor=None):
    """torch.distributions oracle for shared components ``loc [K, d]``: ``[B]``."""
    log_diag = log_diag.expand_as(loc)
    mixture = MixtureSameFamily(
        Categorical(logits=logits),
        MultivariateNormal(loc, precision_matrix=precision_matrices(log_diag, tril, factor)),
    )
    return mixture.log_prob(x)


def random_parameters(cov: str, k: int, d: int, rank: int = 3, prefix=()):
    shape = (*prefix, 1 if cov == "shared_diagonal" else k, d)
    return dict(
        loc=torch.randn(*prefix, k, d),
        log_diag=0.3 * torch.randn(*shape),
        logits=torch.randn(*prefix, k),
        tril=0.3 * torch.randn(*prefix, k, d, d) if cov == "full" else None,
        factor=0.3 * torch.randn(*prefix, k, d, rank) if cov == "low_rank" else None,
    )


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
@pytest.mark.parametrize("batch,k,d", [(7, 3, 5), (1, 4, 2), (11, 1, 6), (5, 9, 1)])
def test_mixture_log_prob_matches_torch_distributions(cov, batch, k, d):
    torch.manual_seed(batch * 100 + k * 10 + d)
    p = random_parameters(cov, k, d, rank=min(3, d))
    x = torch.randn(batch, d)
    expected = reference_log_prob(x, p["loc"], p["log_diag"], p["logits"], p["tril"], p["factor"])
    got = mixture_log_prob(x, p["loc"], p["log_diag"], p["logits"], tril=p["tril"], factor=p["factor"])
    assert got.shape == (batch,)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_offset_data_is_exact_in_float32(cov):
    """Features with a large common offset: the GEMM expansion must not cancel catastrophically."""
    torch.manual_seed(0)
    k, d = 6, 8
    p = random_parameters(cov, k, d, rank=3)
    offset = 1e4
    x32 = (torch.randn(32, d) + offset).float()  # hidden states with a large common offset
    p32 = {name: None if t is None else t.float() for name, t in p.items()}
    p32["loc"] = p32["loc"] + offset
    # Oracle: the same float32 values, evaluated by torch.distributions in float64.
    p64 = {name: None if t is None else t.double() for name, t in p32.items()}
    expected = reference_log_prob(
        x32.double(), p64["loc"], p64["log_diag"], p64["logits"], p64["tril"], p64["factor"]
    )
    got = mixture_log_prob(
        x32, p32["loc"], p32["log_diag"], p32["logits"], tril=p32["tril"], factor=p32["factor"]
    )
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_chunked_evaluation_equals_unchunked_with_gradients(cov):
    torch.manual_seed(1)
    p = random_parameters(cov, 4, 3, rank=2)
    params = {n: t.requires_grad_() for n, t in p.items() if t is not None}
    x = torch.randn(10, 3)

    def run(chunk_size):
        value = mixture_log_prob(
            x, params["loc"], params["log_diag"], params["logits"],
            tril=params.get("tril"), factor=params.get("factor"), chunk_size=chunk_size,
        )  # fmt: skip
        grads = torch.autograd.grad(value.square().sum(), list(params.values()))
        return value, grads

    value, grads = run(None)
    value_chunked, grads_chunked = run(3)
    torch.testing.assert_close(value_chunked, value)
    for g, g_chunked in zip(grads, grads_chunked):
        torch.testing.assert_close(g_chunked, g)


def naive_component_log_prob(x, loc, log_diag, tril=None, factor=None):
    """Naive broadcast formulation (``[B, K, d]`` and ``[B, K, d, d]`` tensors): ``[B, K]``."""
    d = x.shape[-1]
    log_diag = log_diag.expand_as(loc)
    precision = precision_matrices(log_diag, tril, factor)  # [K, d, d]
    diff = x[:, None, :] - loc[None]  # [B, K, d]
    quad = torch.einsum("bki,kij,bkj->bk", diff, precision, diff)
    return (
        0.5 * torch.linalg.slogdet(precision)[1]
        - 0.5 * quad
        - 0.5 * d * torch.log(torch.tensor(2 * torch.pi))
    )


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_efficient_components_equal_naive_broadcast(cov):
    torch.manual_seed(2)
    p = random_parameters(cov, 5, 4, rank=2)
    x = torch.randn(9, 4)
    expected = naive_component_log_prob(x, p["loc"], p["log_diag"], p["tril"], p["factor"])
    got = component_log_prob(x, p["loc"], p["log_diag"], tril=p["tril"], factor=p["factor"])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_per_sample_components_match_torch_distributions(cov):
    """The per-sample path (conditional kernel) equals one torch mixture per sample."""
    torch.manual_seed(3)
    batch, k, d = 6, 3, 4
    p = random_parameters(cov, k, d, rank=2, prefix=(batch,))
    tril = p["tril"][0] if cov == "full" else None  # the conditional's tril does not depend on y: [K, d, d]
    x = torch.randn(batch, d)
    got = mixture_log_prob(x, p["loc"], p["log_diag"], p["logits"], tril=tril, factor=p["factor"])
    for b in range(batch):
        expected = reference_log_prob(
            x[b : b + 1], p["loc"][b], p["log_diag"][b], p["logits"][b], tril,
            None if p["factor"] is None else p["factor"][b],
        )  # fmt: skip
        torch.testing.assert_close(got[b : b + 1], expected)


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn_like(param))
    return module


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_marginal_kernel_log_prob(cov):
    torch.manual_seed(4)
    kernel = randomise(MarginalKernel(5, num_components=3, covariance=cov, rank=2).double())
    x = torch.randn(8, 5)
    expected = reference_log_prob(
        x, kernel.loc, kernel.log_diag, kernel.mixture_logits, kernel.tril, kernel.factor
    )
    torch.testing.assert_close(kernel.log_prob(x), expected)
    torch.testing.assert_close(kernel(x), -expected.mean())


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_discrete_conditional_kernel_log_prob(cov, num_classes):
    torch.manual_seed(5 + num_classes)
    batch, k, d = 7, 3, 4  # B, K, d, C all differ
    kernel = randomise(
        DiscreteConditionalKernel(d, num_classes, num_components=k, covariance=cov, rank=2).double()
    )
    x = torch.randn(batch, d)
    labels = torch.randint(0, num_classes, (batch,))
    got = kernel.log_prob(x, labels)
    for b in range(batch):
        c = labels[b]
        expected = reference_log_prob(
            x[b : b + 1], kernel.loc[c], kernel.log_diag[c], kernel.mixture_logits[c],
            None if kernel.tril is None else kernel.tril[c], None if kernel.factor is None else kernel.factor[c],
        )  # fmt: skip
        torch.testing.assert_close(got[b : b + 1], expected)


def test_discrete_batch_missing_classes_is_finite_and_ignores_them():
    torch.manual_seed(6)
    kernel = randomise(DiscreteConditionalKernel(3, 6, num_components=2).double())
    x = torch.randn(5, 3, requires_grad=True)
    labels = torch.zeros(5, dtype=torch.long)  # classes 1..5 absent
    loss = kernel(x, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(kernel.loc.grad[1:] == 0) and kernel.loc.grad[0].abs().sum() > 0


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_conditional_kernel_log_prob_with_dim_not_cond_dim(cov):
    torch.manual_seed(7)
    dim, cond_dim, k, batch = 4, 3, 5, 6
    kernel = randomise(
        ConditionalKernel(dim, cond_dim, num_components=k, covariance=cov, rank=2, hidden_dims=(8,)).double()
    )
    x, y = torch.randn(batch, dim), torch.randn(batch, cond_dim)
    params = kernel.mixture_parameters(y)
    assert params["loc"].shape == (batch, k, dim)
    got = kernel.log_prob(x, y)
    for b in range(batch):
        expected = reference_log_prob(
            x[b : b + 1], params["loc"][b], params["log_diag"][b], params["mixture_logits"][b], params["tril"],
            None if params["factor"] is None else params["factor"][b],
        )  # fmt: skip
        torch.testing.assert_close(got[b : b + 1], expected)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_gradcheck_kernels(cov):
    """float64 gradcheck with respect to the samples and to every learnable parameter."""
    torch.manual_seed(8)
    x = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0])
    y = torch.randn(4, 2)
    cases = [
        (randomise(MarginalKernel(3, 2, cov, rank=2).double()), ()),
        (randomise(DiscreteConditionalKernel(3, 2, 2, cov, rank=2).double()), (labels,)),
        (randomise(ConditionalKernel(3, 2, 2, cov, rank=2, hidden_dims=(4,)).double()), (y,)),
    ]
    for module, condition in cases:
        assert torch.autograd.gradcheck(lambda x, m=module, c=condition: m.log_prob(x, *c), (x,))
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        values = tuple(module.get_parameter(n).detach().clone().requires_grad_() for n in names)

        def by_parameters(*values, module=module, names=names, condition=condition):
            return torch.func.functional_call(module, dict(zip(names, values)), (x.detach(), *condition))

        assert torch.autograd.gradcheck(by_parameters, values)


@pytest.mark.parametrize("discrete", [True, False])
def test_knife_estimator_output_is_raw_difference(discrete):
    torch.manual_seed(9)
    x = torch.randn(10, 3)
    y = torch.randint(0, 3, (10,)) if discrete else torch.randn(10, 2)
    estimator = KNIFEEstimator(
        3, num_classes=3 if discrete else None, cond_dim=None if discrete else 2
    ).double()
    estimator.init_from_samples(x, y)
    out = estimator(x, y)
    torch.testing.assert_close(out.mutual_information, out.marginal_entropy - out.conditional_entropy)
    torch.testing.assert_close(out.loss, out.marginal_entropy + out.conditional_entropy)
    torch.testing.assert_close(out.marginal_entropy, estimator.marginal(x))


@pytest.mark.parametrize("fit", ["likelihood", "posterior"])
def test_mixture_mi_estimator_fitting_losses(fit):
    """Oracles: the mixture marginal is sum_s p(s) N-mixture(x | s) (torch.distributions), the MI is
    mean log q(s_n | x_n) / p(s_n), and the fitting loss is the sum of both NLLs (likelihood) or the cross-entropy
    of the class posterior minus mean log p(s_n) (posterior)."""
    torch.manual_seed(11)
    x, s = torch.randn(40, 2).double(), torch.randint(0, 3, (40,))
    estimator = MixtureMIEstimator(2, 3, fit=fit, num_components=2).double().init_from_samples(x, s)
    out = estimator(x, s)
    class_log_probs = torch.stack(
        [
            MixtureSameFamily(
                Categorical(logits=kernel_logits),
                MultivariateNormal(loc, precision_matrix=torch.diag_embed((2 * log_diag).exp())),
            ).log_prob(x)
            for kernel_logits, loc, log_diag in zip(
                estimator.conditional.mixture_logits,
                estimator.conditional.loc,
                estimator.conditional.log_diag,
            )
        ],
        dim=1,
    )  # [B, C]
    log_prior = estimator.log_prior.double()
    log_marginal = torch.logsumexp(class_log_probs + log_prior, dim=1)  # [B]
    log_conditional = class_log_probs.gather(1, s.unsqueeze(1)).squeeze(1)  # [B]
    torch.testing.assert_close(out.mutual_information, (log_conditional - log_marginal).mean())
    if fit == "likelihood":
        expected = -log_marginal.mean() - log_conditional.mean()
    else:
        posterior_ce = torch.nn.functional.cross_entropy(class_log_probs + log_prior, s)
        expected = posterior_ce + log_prior[s].mean()
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="fit must be one of"):
        MixtureMIEstimator(2, 3, fit="adversarial")


@pytest.mark.parametrize("cls,args", [(MarginalKernel, (4,)), (DiscreteConditionalKernel, (4, 3))])
@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_save_load_round_trip_is_exact(tmp_path, cls, args, cov):
    torch.manual_seed(10)
    module = randomise(cls(*args, num_components=3, covariance=cov, rank=2, bandwidth_bounds=(0.01, 100.0)))
    module.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(5, 4, dtype=torch.float32)
    call = (
        (lambda m: m.log_prob(x))
        if cls is MarginalKernel
        else (lambda m: m.log_prob(x, torch.tensor([0, 1, 2, 0, 1])))
    )
    assert torch.equal(call(module), call(loaded))


def test_knife_estimator_round_trip(tmp_path):
    torch.manual_seed(11)
    estimator = randomise(
        KNIFEEstimator(3, cond_dim=2, num_components=4, covariance="full", hidden_dims=(8,))
    )
    estimator.save_pretrained(tmp_path)
    loaded = KNIFEEstimator.from_pretrained(tmp_path)
    x, y = torch.randn(6, 3, dtype=torch.float32), torch.randn(6, 2, dtype=torch.float32)
    assert torch.equal(estimator(x, y).loss, loaded(x, y).loss)


def test_runs_in_fp32_under_bf16_autocast():
    kernel = MarginalKernel(4, 3).float()
    x = torch.randn(5, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = kernel.log_prob(x)
    assert value.dtype == torch.float32


def test_bandwidth_bounds_clamp():
    kernel = MarginalKernel(2, 1, bandwidth_bounds=(0.5, 2.0)).double()
    with torch.no_grad():
        kernel.log_diag.fill_(10.0)  # bandwidth e^-10, below the bound
        kernel.loc.zero_()
    x = torch.zeros(1, 2)
    expected = MultivariateNormal(torch.zeros(2), 0.25 * torch.eye(2)).log_prob(x)
    torch.testing.assert_close(kernel.log_prob(x), expected)


# ----------------------------------------------------------------------------------------------- MI interface
@pytest.mark.parametrize("kind", ["continuous", "kernel", "mixture", "posterior", "calibrated"])
def test_mi_estimators_share_one_interface(kind):
    """Every MI estimator's pointwise values are its two densities, and its loss is a h(X) + b h(X|Y) with
    (a, b) = fit_coefficients: what the penalty relies on, without knowing the estimator's type."""
    torch.manual_seed(5)
    x = torch.randn(30, 3)
    y = torch.randn(30, 2) if kind == "continuous" else torch.randint(0, 3, (30,))
    if kind == "continuous":
        options = dict(cond_dim=2, hidden_dims=(8,))
    else:
        options = dict(
            num_classes=3,
            marginal="kernel" if kind == "kernel" else "mixture",
            fit="posterior" if kind == "posterior" else "likelihood",
            readout="calibrated" if kind == "calibrated" else "likelihood",
        )
    estimator = build_mi_estimator(3, num_components=2, **options)
    assert isinstance(estimator, MIEstimator) and estimator.num_components == 2
    if kind == "calibrated":  # densities of x through a non-trivial linear map
        estimator.set_transform(torch.randn(3), torch.randn(3, 3))
    estimator.init_from_samples(x, y)
    marginal_nll, conditional_nll = estimator.pointwise(x, y)  # [B], [B]
    torch.testing.assert_close(marginal_nll, -estimator.marginal_log_prob(x))
    torch.testing.assert_close(conditional_nll, -estimator.conditional_log_prob(x, y))
    a, b = estimator.fit_coefficients
    torch.testing.assert_close(estimator(x, y).loss, a * marginal_nll.mean() + b * conditional_nll.mean())


def test_build_mi_estimator_choices():
    assert type(build_mi_estimator(3, cond_dim=2)) is KNIFEEstimator
    assert type(build_mi_estimator(3, num_classes=2)) is MixtureMIEstimator
    assert type(build_mi_estimator(3, num_classes=2, readout="calibrated")) is CalibratedMixtureMIEstimator
    kernel = build_mi_estimator(3, num_classes=2, marginal="kernel", num_components=5)
    assert type(kernel) is KNIFEEstimator and kernel.is_discrete and kernel.marginal.num_components == 5
    posterior = build_mi_estimator(3, num_classes=2, fit="posterior", covariance="full")
    assert posterior.fit_coefficients == FIT_OBJECTIVES["posterior"] and posterior.conditional.covariance == "full"
    continuous = build_mi_estimator(3, cond_dim=2, hidden_dims=[7], fit="posterior")  # fit: discrete Y only
    assert continuous.conditional.trunk[0].out_features == 7
    assert continuous.fit_coefficients == FIT_OBJECTIVES["likelihood"]
    with pytest.raises(ValueError, match="need marginal='mixture'"):
        build_mi_estimator(3, num_classes=2, marginal="kernel", fit="posterior")
    with pytest.raises(ValueError, match="exactly one of cond_dim"):
        build_mi_estimator(3)
    with pytest.raises(ValueError, match="unknown marginal 'kde'"):
        build_mi_estimator(3, num_classes=2, marginal="kde")


# ----------------------------------------------------------------------------------------------- reset_parameters
RESET_CASES = {
    "marginal_full": lambda: MarginalKernel(3, 2, covariance="full"),
    "marginal_low_rank": lambda: MarginalKernel(3, 2, covariance="low_rank", rank=2),
    "discrete": lambda: DiscreteConditionalKernel(3, 2, num_components=2),
    "conditional": lambda: ConditionalKernel(3, 2, num_components=2, covariance="low_rank", hidden_dims=(4, 5)),
    "knife_continuous": lambda: KNIFEEstimator(3, cond_dim=2, num_components=2, hidden_dims=(4,)),
    "knife_discrete": lambda: KNIFEEstimator(3, num_classes=2, num_components=2),
    "mixture": lambda: MixtureMIEstimator(3, 2, num_components=2, covariance="full"),
}


@pytest.mark.parametrize("case", list(RESET_CASES))
def test_reset_parameters_restores_the_constructor_initialisation(case):
    """After fitting, reset_parameters under a seed gives the parameters a fresh module gets under that seed."""
    torch.manual_seed(3)
    fresh = RESET_CASES[case]()
    torch.manual_seed(0)
    module = RESET_CASES[case]()
    x = torch.randn(20, 3)
    y = torch.randn(20, 2) if "continuous" in case or case == "conditional" else torch.randint(0, 2, (20,))
    module.init_from_samples(x) if case.startswith("marginal") else module.init_from_samples(x, y)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    torch.manual_seed(3)
    module.reset_parameters()
    for (name, expected), actual in zip(fresh.named_parameters(), module.parameters()):
        torch.testing.assert_close(actual, expected, msg=name)
    if case == "mixture":
        torch.testing.assert_close(module.log_prior, fresh.log_prior)


def test_reset_parameters_keeps_tensors_loaded_from_a_checkpoint():
    pytest.importorskip("transformers.initialization")
    kernel = MarginalKernel(2, 3)
    with torch.no_grad():
        kernel.loc.fill_(7.0)
        kernel.log_diag.fill_(2.0)
    kernel.loc._is_hf_initialized = True  # what transformers marks on tensors it loaded
    kernel.reset_parameters(init_bandwidth=2.0)
    assert bool((kernel.loc == 7.0).all())
    torch.testing.assert_close(kernel.log_diag, torch.full_like(kernel.log_diag, -math.log(2.0)))
