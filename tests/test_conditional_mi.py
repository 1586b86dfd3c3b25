"""I(Z; S | Y): the grouped class-kernel estimator and the ``mutual_information.given='labels'`` penalty."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import synthetic_dataset, tiny_model, training_args
from transformers import default_data_collator

from hf_knife.config import KNIFEConfig, MutualInformationOptions
from hf_knife.estimators.mutual_information import MixtureMIEstimator
from hf_knife.modeling import add_knife
from hf_knife.penalties import build_penalty
from hf_knife.trainer import KNIFETrainer

GIVEN = MutualInformationOptions(fit="posterior", positive_part=False, given="labels")


def _gaussian_groups(groups=3, classes=2, d=4, seed=0):
    """An estimator with one unit-variance Gaussian per (group, class), its means and priors p(s | g)."""
    g = torch.Generator().manual_seed(seed)
    estimator = MixtureMIEstimator(d, classes, num_groups=groups, num_components=1, covariance="diagonal")
    means = torch.randn(groups * classes, d, generator=g) * 2  # [G*C, d]
    prior = torch.softmax(torch.randn(groups, classes, generator=g), dim=1)  # [G, C]
    with torch.no_grad():
        estimator.conditional.loc.copy_(means[:, None, :])  # [G*C, 1, d]
        estimator.conditional.log_diag.zero_()
        estimator.log_prior.copy_(prior.log().flatten())
    return estimator, means, prior


def test_group_marginal_is_the_group_mixture_density():
    """log q(x | g) = log sum_s p(s | g) N(x; mu_{g,s}, I), exactly (torch.distributions oracle)."""
    groups, classes, d = 3, 2, 4
    estimator, means, prior = _gaussian_groups(groups, classes, d)
    x = torch.randn(50, d) * 3
    joint = torch.randint(0, groups * classes, (50,))
    normal = torch.distributions.MultivariateNormal(means, torch.eye(d))  # batch [G*C]
    log_normal = normal.log_prob(x[:, None, :])  # [N, G*C]
    g = joint // classes
    expected_marginal = torch.logsumexp(
        (log_normal + prior.log().flatten()).view(50, groups, classes), dim=2
    ).gather(1, g[:, None]).squeeze(1)  # [N]
    torch.testing.assert_close(estimator.marginal_log_prob(x, joint), expected_marginal, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        estimator.conditional_log_prob(x, joint), log_normal.gather(1, joint[:, None]).squeeze(1), atol=1e-4, rtol=1e-5
    )
    with pytest.raises(ValueError, match="joint labels"):
        estimator.marginal_log_prob(x)


def test_conditional_mi_is_zero_when_s_depends_on_z_only_through_y():
    """S and Z both depend on Y only: I(Z;S) > 0 but I(Z;S|Y) = 0; the fitted grouped estimator reads ~0."""
    torch.manual_seed(0)
    n, d = 4000, 3
    y = torch.randint(0, 2, (n,))
    s = torch.where(torch.rand(n) < 0.9, y, 1 - y)
    z = torch.randn(n, d) + 3.0 * y[:, None].float()
    options = dict(num_components=1, fit="posterior")
    estimator = MixtureMIEstimator(d, 2, num_groups=2, **options).init_from_samples(z, y * 2 + s)
    plain = MixtureMIEstimator(d, 2, **options).init_from_samples(z, s)
    for est, labels in ((estimator, y * 2 + s), (plain, s)):
        optimizer = torch.optim.Adam(est.parameters(), lr=0.05)
        for _ in range(200):
            optimizer.zero_grad()
            est(z, labels).loss.backward()
            optimizer.step()
    with torch.no_grad():
        conditional = float(estimator(z, y * 2 + s).mutual_information)
        unconditional = float(plain(z, s).mutual_information)
    # I(Z;S) <= I(Y;S) = log 2 - H_b(0.9) = 0.368, and Z recovers Y 93% of the time
    assert abs(conditional) < 0.02
    assert 0.25 < unconditional < 0.37


def test_given_labels_penalty_through_add_knife_and_bad_input():
    model = add_knife(tiny_model("bert", num_labels=3), KNIFEConfig(
        sensitive_column="gender", num_sensitive_classes=2, mutual_information=GIVEN))  # fmt: skip
    assert model.knife_config.mutual_information.num_label_classes == 3
    assert model.knife.estimator.conditional.num_classes == 6
    ids = torch.randint(10, 50, (8, 12))
    s, y = torch.randint(0, 2, (8,)), torch.randint(0, 3, (8,))
    model.train()
    out = model(input_ids=ids, labels=y, sensitive=s)
    assert torch.isfinite(out.loss) and out.knife_mutual_information is not None
    with pytest.raises(ValueError, match="needs the task labels"):
        model(input_ids=ids, sensitive=s)
    with pytest.raises(ValueError, match="task labels contains class id 3"):
        model.knife(torch.randn(8, 32), s, labels=torch.full((8,), 3))
    model.eval()
    assert not hasattr(model(input_ids=ids, sensitive=s), "knife_loss")  # inference without labels: no penalty
    with pytest.raises(ValueError, match="needs a discrete S"):
        KNIFEConfig(sensitive_type="continuous", mutual_information=GIVEN).validate()
    with pytest.raises(ValueError, match="num_label_classes must be an integer >= 2"):
        KNIFEConfig(mutual_information=MutualInformationOptions(given="labels", num_label_classes=1)).validate()
    with pytest.raises(ValueError, match="needs marginal='mixture'"):
        MutualInformationOptions(given="labels", marginal="kernel", fit="likelihood", calibrate=False).validate()
    with pytest.raises(ValueError, match="needs num_label_classes"):
        build_penalty(KNIFEConfig(num_sensitive_classes=2, mutual_information=GIVEN), hidden_size=8)


def test_given_labels_trains_saves_and_reloads(tmp_path):
    """KNIFETrainer passes the label column; the config (with num_label_classes) and the estimator round-trip."""
    from hf_knife.modeling import AutoKNIFEModelForSequenceClassification

    config = KNIFEConfig(sensitive_column="gender", mutual_information=GIVEN, weight=0.5)
    trainer = KNIFETrainer(
        model=tiny_model("bert"), args=training_args(tmp_path / "run", max_steps=3), knife_config=config,
        train_dataset=synthetic_dataset(48), data_collator=default_data_collator,
    )  # fmt: skip
    trainer.train()
    mi = [e["knife/mutual_information"] for e in trainer.state.log_history if "knife/mutual_information" in e]
    assert len(mi) == 3 and all(math.isfinite(v) for v in mi)
    trainer.save_model(tmp_path / "saved")
    reloaded = AutoKNIFEModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert reloaded.knife_config.mutual_information == trainer.model.knife_config.mutual_information
    state = trainer.model.knife.estimator.state_dict()
    for name, tensor in reloaded.knife.estimator.state_dict().items():
        assert torch.equal(tensor, state[name]), name
