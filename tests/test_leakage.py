"""Leakage audit: finds planted leakage, reports none on independent representations, rejects bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_knife.metrics import LeakageReport, audit_leakage, make_attacker, wilson_interval


def _representations(
    n: int, dim: int, shift: float, num_groups: int = 2, p_major: float | None = None, seed: int = 0
):
    """Gaussian representations ``[n, dim]`` whose first feature is shifted by ``shift * group``; groups ``[n]``."""
    rng = np.random.default_rng(seed)
    if p_major is None:
        s = rng.integers(0, num_groups, n)
    else:
        s = (rng.random(n) > p_major).astype(int)  # group 0 has probability p_major
    x = rng.normal(size=(n, dim))
    x[:, 0] += shift * s
    return x, s


def _split(x, s, n_train):
    return x[:n_train], s[:n_train], x[n_train:], s[n_train:]


def test_detects_planted_leakage():
    x, s = _representations(900, 12, shift=2.0, p_major=0.7)
    report = audit_leakage(*_split(x, s, 600), n_boot=200, progress=False)
    assert isinstance(report, LeakageReport)
    assert set(report.attackers) == {"logreg", "mlp"}
    s_test = s[600:]
    assert report.majority_rate == pytest.approx(max(np.mean(s_test == 0), np.mean(s_test == 1)))
    # Bayes accuracy with a 2-sigma shift and 70/30 priors is about 0.86; the majority rate is about 0.7
    assert report.accuracy > report.majority_rate + 0.08
    assert report.leakage_ci[0] > 0
    assert report.accuracy_ci[0] <= report.accuracy <= report.accuracy_ci[1]
    best = max(report.attackers.values(), key=lambda r: r.accuracy)
    assert report.strongest == best.name and report.leakage == best.leakage
    for r in report.attackers.values():
        assert r.leakage == pytest.approx(r.accuracy - report.majority_rate)
        assert r.balanced_accuracy > 0.6
        assert r.leakage_ci[0] <= r.leakage <= r.leakage_ci[1]


def test_reports_no_leakage_on_independent_representations():
    x, s = _representations(900, 12, shift=0.0, p_major=0.6, seed=1)
    for ci_method in ("bootstrap", "wilson"):
        report = audit_leakage(*_split(x, s, 600), n_boot=200, ci_method=ci_method, progress=False)
        assert abs(report.leakage) < 0.08
        for r in report.attackers.values():
            assert r.leakage_ci[0] <= 0.0 <= r.leakage_ci[1], (ci_method, r)
            assert r.balanced_accuracy == pytest.approx(0.5, abs=0.1)


def test_three_groups_torch_and_string_inputs():
    x, s = _representations(600, 8, shift=2.5, num_groups=3, seed=2)
    names = np.array(["f", "m", "nb"])[s]
    x_t = torch.tensor(x, dtype=torch.bfloat16)
    report = audit_leakage(
        x_t[:400], names[:400], x_t[400:], names[400:], attackers=["logreg"], progress=False
    )
    assert report.num_groups == 3 and report.majority_group in {"f", "m", "nb"}
    assert report.leakage_ci[0] > 0.15
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["attackers"]["logreg"]["accuracy"] == pytest.approx(report.accuracy)
    flat = report.to_dict(flat=True)
    assert flat["logreg_leakage"] == pytest.approx(report.leakage)
    assert all(not isinstance(v, (dict, list, tuple)) for v in flat.values())
    assert "logreg" in report.summary()


def test_audit_is_deterministic_and_accepts_custom_attackers():
    from sklearn.neighbors import KNeighborsClassifier

    x, s = _representations(500, 6, shift=1.5, seed=3)
    a = audit_leakage(*_split(x, s, 300), n_boot=100, progress=False).to_dict(flat=True)
    b = audit_leakage(*_split(x, s, 300), n_boot=100, progress=False).to_dict(flat=True)
    assert a == b  # fit times are not in the flat dict
    knn = audit_leakage(
        *_split(x, s, 300), attackers={"knn": KNeighborsClassifier(5)}, n_boot=100, progress=False
    )
    assert knn.strongest == "knn" and knn.leakage > 0.1


def test_wilson_interval_known_value():
    # 80 / 100 at 95%: (0.7112, 0.8666) (Wilson 1927; e.g. statsmodels proportion_confint(method="wilson"))
    low, high = wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-4) and high == pytest.approx(0.8666, abs=1e-4)


def test_small_train_split_disables_early_stopping():
    assert make_attacker("mlp", n_train=50)[-1].early_stopping is False
    assert make_attacker("mlp", n_train=5000, min_class_count=500)[-1].early_stopping is True


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda a: a.update(train_repr=a["train_repr"][:, :, None]),
            r"train_repr must have shape \[N, d\].*pool",
        ),
        (lambda a: a.update(test_repr=a["test_repr"][:, :3]), "3 features per example, expected 4"),
        (
            lambda a: a["train_repr"].__setitem__((5, 1), np.nan),
            r"NaN or Inf values \(first at row 5, column 1\)",
        ),
        (lambda a: a.update(train_sensitive=np.zeros(30, int)), "train_sensitive has a single value"),
        (
            lambda a: a.update(test_sensitive=a["test_sensitive"][:-1]),
            "length mismatch: test_repr=20, test_sensitive=19",
        ),
        (
            lambda a: a.update(train_repr=a["train_repr"][:0], train_sensitive=a["train_sensitive"][:0]),
            "train_repr is empty",
        ),
        (lambda a: a.update(attackers=["svm"]), "unknown attacker 'svm'; expected one of 'logreg', 'mlp'"),
        (lambda a: a.update(ci_method="exact"), "unknown ci_method 'exact'"),
    ],
)
def test_bad_inputs_raise_informative_errors(change, match):
    rng = np.random.default_rng(0)
    args = {
        "train_repr": rng.normal(size=(30, 4)),
        "train_sensitive": np.arange(30) % 2,
        "test_repr": rng.normal(size=(20, 4)),
        "test_sensitive": np.arange(20) % 2,
        "progress": False,
    }
    change(args)
    with pytest.raises(ValueError, match=match):
        audit_leakage(**args)
