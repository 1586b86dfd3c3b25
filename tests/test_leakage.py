"""Leakage audit: finds planted leakage, reports none on independent representations, rejects bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_knife.metrics import LeakageReport, audit_leakage, make_attacker, wilson_interval
from hf_knife.metrics.leakage import ATTACKERS, SVM_C_GRID


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
    assert set(report.attackers) == set(ATTACKERS)  # the whole suite by default
    assert set(ATTACKERS) == {"logreg", "mlp", "mlp_converged", "svm_rbf", "gbt"}
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
            assert r.leakage_ci[0] <= 0.0, (ci_method, r)  # no attacker finds leakage that is not there
            assert r.balanced_accuracy == pytest.approx(0.5, abs=0.1)
            if r.name in ("logreg", "mlp"):
                assert r.leakage_ci[0] <= 0.0 <= r.leakage_ci[1], (ci_method, r)
        # an attacker that fits noise predicts the minority group now and then, so it may score *below* the
        # majority rate (0.6^2 + 0.4^2 = 0.52 for a coin with the right rate); never above it by much
        assert report.leakage_ci[0] <= 0.0


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


def test_nonlinear_leakage_is_found_by_the_strong_attackers_and_missed_by_logreg():
    """Groups differ only in the spread of two coordinates: no linear attacker sees it, the nonlinear ones do."""
    rng = np.random.default_rng(4)
    n = 1000
    s = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6))
    x[:, :2] *= np.where(s == 1, 2.5, 0.6)[:, None]  # [n, 2]: radius carries the group
    report = audit_leakage(*_split(x, s, 600), n_boot=100, progress=False)
    linear = report.attackers["logreg"]
    assert linear.leakage < 0.06
    for name in ("mlp_converged", "svm_rbf", "gbt"):
        assert report.attackers[name].leakage > 0.2, (name, report.summary())
    assert report.strongest != "logreg" and report.leakage > 0.2
    assert report.attackers["svm_rbf"].details["C"] in SVM_C_GRID  # chosen on a validation split
    assert report.attackers["gbt"].details["n_iter"] >= 1
    assert not report.attackers["mlp_converged"].converged or report.attackers["mlp_converged"].details["n_iter"] > 0


def test_near_constant_coordinates_are_dropped_before_standardising():
    """An erased direction left at 1e-12 scale in one coordinate (as LEACE leaves in dead ones) is not leakage."""
    rng = np.random.default_rng(5)
    n = 900
    s = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 10))
    x[:, 3] = 1e-12 * (s + 0.1 * rng.normal(size=n))  # a dead coordinate holding a tiny copy of the group
    x[:, 7] = 5.0  # a constant one
    args = (*_split(x, s, 600),)
    report = audit_leakage(*args, attackers=("logreg",), n_boot=100, progress=False)
    assert report.dropped == [3, 7] and "near-constant" in report.dropped_note and "3, 7" in report.dropped_note
    assert report.dim == 10 and abs(report.leakage) < 0.06
    assert report.to_dict()["dropped"] == [3, 7] and report.to_dict(flat=True)["num_dropped"] == 2
    assert "dropped 2 of 10 coordinates" in report.summary()
    raw = audit_leakage(*args, attackers=("logreg",), n_boot=100, progress=False, drop_degenerate=False)
    assert raw.leakage > 0.3 and raw.dropped == []  # standardising scales the copy back up
    everything = audit_leakage(np.zeros((60, 3)), np.arange(60) % 2, np.zeros((40, 3)), np.arange(40) % 2,
                               attackers=("logreg", "gbt"), n_boot=50, progress=False)  # fmt: skip
    assert everything.dropped == [0, 1, 2] and everything.leakage <= 0.0


def test_attacker_subset_and_svm_subsample_cap():
    x, s = _representations(700, 5, shift=2.0, seed=6)
    report = audit_leakage(*_split(x, s, 500), attackers=("svm_rbf", "gbt"), svm_max_samples=120, n_boot=50,
                           progress=False)  # fmt: skip
    assert list(report.attackers) == ["svm_rbf", "gbt"]
    assert report.attackers["svm_rbf"].details["n_fit"] == 120
    assert report.attackers["svm_rbf"].leakage > 0.15
    flat = report.to_dict(flat=True)
    assert {"svm_rbf_accuracy", "gbt_accuracy", "num_dropped"} <= set(flat)
    assert all(not isinstance(v, (dict, list, tuple)) for v in flat.values())
    assert json.loads(json.dumps(report.to_dict()))["attackers"]["svm_rbf"]["details"]["n_fit"] == 120
    converged = make_attacker("mlp_converged", n_train=5000, min_class_count=500)[-1]
    assert converged.early_stopping is False and converged.hidden_layer_sizes == (256, 256)
    assert make_attacker("gbt", n_train=50).early_stopping is False


def test_validation_split_is_scored_by_the_same_fitted_attackers():
    """One fit, two evaluated splits: the validation scores equal a separate audit with the validation split as its
    test split (same seed, same dead coordinates dropped); bad pairs are refused."""
    x, s = _representations(900, 6, shift=1.5, seed=4)
    x = np.concatenate([x, np.full((900, 1), 3.0)], axis=1)  # a dead coordinate, dropped from every split
    train, val, test = slice(0, 500), slice(500, 700), slice(700, 900)
    joint = audit_leakage(x[train], s[train], x[test], s[test], validation_repr=x[val], validation_sensitive=s[val],
                          attackers=["logreg", "mlp"], n_boot=50, progress=False)  # fmt: skip
    alone = audit_leakage(x[train], s[train], x[val], s[val], attackers=["logreg", "mlp"], n_boot=50, progress=False)
    test_only = audit_leakage(x[train], s[train], x[test], s[test], attackers=["logreg", "mlp"], n_boot=50,
                              progress=False)  # fmt: skip
    assert joint.dropped == alone.dropped == [6]
    assert joint.validation == {name: r.accuracy for name, r in alone.attackers.items()}
    assert joint.validation_majority_rate == pytest.approx(alone.majority_rate)
    assert joint.validation_leakage == pytest.approx(alone.leakage) and joint.validation_leakage > 0.1
    assert joint.to_dict(flat=True)["validation_leakage"] == pytest.approx(alone.leakage)
    assert joint.to_dict(flat=True) == {**test_only.to_dict(flat=True), "validation_leakage": joint.validation_leakage}
    assert test_only.validation_leakage is None
    with pytest.raises(ValueError, match="together"):
        audit_leakage(x[train], s[train], x[test], s[test], validation_repr=x[val], progress=False)
    with pytest.raises(ValueError, match="validation_repr"):
        audit_leakage(x[train], s[train], x[test], s[test], validation_repr=x[val, :3], validation_sensitive=s[val],
                      progress=False)  # fmt: skip
