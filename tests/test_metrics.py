"""Fairness metrics and compute_metrics: hand-computed cases, agreement with fairlearn / scikit-learn, bad input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_knife.metrics import (
    bootstrap_ci,
    demographic_parity_difference,
    equalized_odds_difference,
    fairness_report,
    make_compute_metrics,
    tpr_gap_by_class,
    tpr_gap_ci,
    tpr_gap_permutation_test,
    tpr_gap_rms,
)

# ---------------------------------------------------------------------------------------------------------------
# hand-computed cases

# binary, 2 groups: group a predicts [0, 0, 1, 0] for truths [0, 0, 1, 1]; group b predicts perfectly
BIN_Y = [0, 0, 1, 1, 0, 0, 1, 1]
BIN_P = [0, 0, 1, 0, 0, 0, 1, 1]
BIN_S = ["a", "a", "a", "a", "b", "b", "b", "b"]

# 3 classes, 3 groups, rows (y, group, pred); cell (class 1, group 1) is empty, class 2 only occurs in group 0
MULTI = [
    (0, 0, 0), (0, 0, 0),
    (0, 1, 0), (0, 1, 1),
    (0, 2, 0), (0, 2, 1), (0, 2, 2), (0, 2, 2),
    (1, 0, 1),
    (1, 2, 1), (1, 2, 0),
    (2, 0, 1), (2, 0, 0),
]  # fmt: skip
MY, MS, MP = (np.array(col) for col in zip(*MULTI, strict=True))


def test_tpr_gap_binary_two_groups_by_hand():
    # TPR(0): a 1, b 1 -> gap 0; TPR(1): a 1/2, b 1 -> gap 1/2; RMS = sqrt((0 + 1/4) / 2)
    assert tpr_gap_by_class(BIN_Y, BIN_P, BIN_S) == pytest.approx({0: 0.0, 1: 0.5})
    assert tpr_gap_rms(BIN_Y, BIN_P, BIN_S) == pytest.approx(math.sqrt(0.125))


def test_tpr_gap_multiclass_three_groups_skips_empty_cells():
    # class 0: TPR 1, 1/2, 1/4 -> gap 3/4; class 1: TPR 1 (g0), - (g1 empty), 1/2 (g2) -> gap 1/2;
    # class 2: only group 0 has examples -> skipped
    assert tpr_gap_by_class(MY, MP, MS) == pytest.approx({0: 0.75, 1: 0.5})
    assert tpr_gap_rms(MY, MP, MS) == pytest.approx(math.sqrt((0.75**2 + 0.5**2) / 2))


def test_dp_and_eo_binary_by_hand():
    # selection rate of class 1: a 1/4, b 2/4 -> 1/4. TPR(1): a 1/2, b 1; FPR(1): a 0, b 0 -> EO 1/2
    assert demographic_parity_difference(BIN_Y, BIN_P, BIN_S) == pytest.approx(0.25)
    assert equalized_odds_difference(BIN_Y, BIN_P, BIN_S) == pytest.approx(0.5)


def test_dp_and_eo_multiclass_by_hand():
    # selection rates (g0, g1, g2): class 0 (3/5, 1/2, 1/3), class 1 (2/5, 1/2, 1/3), class 2 (0, 0, 1/3)
    assert demographic_parity_difference(MY, MP, MS) == pytest.approx(1 / 3)
    # TPR gaps: class 0 3/4, class 1 1/2; FPR gaps: class 0 1/6 (g1 has no negatives), class 1 1/4, class 2 1/3
    assert equalized_odds_difference(MY, MP, MS) == pytest.approx(0.75)
    # a variant where the worst gap is an FPR gap: make class 0 perfectly predicted
    mp = MP.copy()
    mp[MY == 0] = 0
    # FPR(class 0): g0 1/3 (y=2 -> 0), g2 1/2 (y=1 -> 0) -> 1/6; TPR(1) gap 1/2; FPR(2): 0 everywhere
    assert equalized_odds_difference(MY, mp, MS) == pytest.approx(0.5)


def test_empty_cells_are_skipped_not_counted_as_zero():
    from fairlearn.metrics import equalized_odds_difference as fl_eo

    y = np.array([1, 1, 0, 0, 0, 0])
    p = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0, 0, 0, 1, 1, 1])  # group 1 has no positives
    # fairlearn counts group 1's undefined TPR as 0 (gap 1); we only compare FPRs: 0 vs 1/3
    assert fl_eo(y, p, sensitive_features=s) == pytest.approx(1.0)
    assert equalized_odds_difference(y, p, s) == pytest.approx(1 / 3)
    assert tpr_gap_by_class(y, p, s) == pytest.approx({0: 1 / 3})


def test_string_labels_and_torch_inputs_give_the_same_numbers():
    names = np.array(["nurse", "doctor", "pilot"])
    expected = tpr_gap_rms(MY, MP, MS)
    assert tpr_gap_rms(names[MY], names[MP], MS) == pytest.approx(expected)
    assert tpr_gap_rms(torch.tensor(MY), torch.tensor(MP), torch.tensor(MS)) == pytest.approx(expected)
    assert demographic_parity_difference(names[MY], names[MP], MS.astype(str)) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------------------------
# agreement with fairlearn / scikit-learn on random data


def _random_predictions(n: int, num_classes: int, num_groups: int, seed: int, gap: float = 0.0):
    """Labels, groups and predictions that are right with probability 0.6 (+ gap for group 0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    s = rng.integers(0, num_groups, n)
    right = rng.random(n) < 0.6 + gap * (s == 0)
    p = np.where(right, y, rng.integers(0, num_classes, n))
    return y, p, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_dp_eo_match_fairlearn(seed):
    from fairlearn.metrics import demographic_parity_difference as fl_dp
    from fairlearn.metrics import equalized_odds_difference as fl_eo

    y, p, s = _random_predictions(500, 2, 2 + seed, seed, gap=0.2)
    assert demographic_parity_difference(y, p, s) == pytest.approx(fl_dp(y, p, sensitive_features=s))
    assert equalized_odds_difference(y, p, s) == pytest.approx(fl_eo(y, p, sensitive_features=s))


@pytest.mark.parametrize("num_groups", [2, 3])
def test_multiclass_metrics_match_metricframe(num_groups):
    from fairlearn.metrics import MetricFrame, selection_rate
    from sklearn.metrics import recall_score

    y, p, s = _random_predictions(1500, 5, num_groups, seed=num_groups, gap=0.15)
    classes = list(range(5))
    frame = MetricFrame(
        metrics=lambda a, b: recall_score(a, b, labels=classes, average=None, zero_division=0),
        y_true=y,
        y_pred=p,
        sensitive_features=s,
    )
    tpr = np.stack(frame.by_group.to_list())  # [G, C]
    gaps = tpr.max(axis=0) - tpr.min(axis=0)
    assert tpr_gap_rms(y, p, s) == pytest.approx(float(np.sqrt(np.mean(gaps**2))))
    dp = max(
        MetricFrame(metrics=selection_rate, y_true=y == c, y_pred=p == c, sensitive_features=s).difference()
        for c in classes
    )
    assert demographic_parity_difference(y, p, s) == pytest.approx(dp)


def test_fairness_report_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    y, p, s = _random_predictions(400, 4, 2, seed=3, gap=0.2)
    report = fairness_report(y, p, s, n_boot=50, n_perm=50)
    assert report["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert report["tpr_gap"] == pytest.approx(tpr_gap_rms(y, p, s))
    assert report["dp_diff"] == pytest.approx(demographic_parity_difference(y, p, s))
    assert report["eo_diff"] == pytest.approx(equalized_odds_difference(y, p, s))
    assert report["tpr_gap_ci_low"] <= report["tpr_gap"] <= report["tpr_gap_ci_high"]
    assert {"tpr_gap_null_mean", "tpr_gap_p_value", "n_examples", "num_groups"} <= set(report)
    assert all(isinstance(v, float) and not math.isnan(v) for v in report.values())


# ---------------------------------------------------------------------------------------------------------------
# bootstrap interval and permutation test


def test_bootstrap_ci_of_a_mean_matches_the_normal_interval():
    x = np.random.default_rng(0).normal(size=2000)
    low, high = bootstrap_ci(np.mean, x, n_boot=500, seed=0)
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert bootstrap_ci(np.mean, x, n_boot=500, seed=0) == (low, high)  # seeded
    assert bootstrap_ci(np.mean, x, n_boot=500, seed=1) != (low, high)


@pytest.mark.parametrize("method", ["bias_corrected", "percentile"])
def test_tpr_gap_ci_contains_estimate_and_narrows_with_more_data(method):
    small = tpr_gap_ci(*_random_predictions(400, 3, 2, seed=4, gap=0.3), n_boot=300, method=method)
    large = tpr_gap_ci(*_random_predictions(4000, 3, 2, seed=4, gap=0.3), n_boot=300, method=method)
    for est in (small, large):
        assert est.low <= est.value <= est.high
    assert large.high - large.low < 0.6 * (small.high - small.low)  # ~ 1/sqrt(10) expected
    # true per-class gap: group 0 is right w.p. 0.9 + 0.1/3, group 1 w.p. 0.6 + 0.4/3 -> 0.2 in every class
    assert large.low < 0.2 < large.high
    y, p, s = _random_predictions(400, 3, 2, seed=4, gap=0.3)
    assert tpr_gap_ci(y, p, s, n_boot=300, method=method) == small  # seeded, deterministic


def test_bias_corrected_interval_contains_a_noise_gap():
    # no true gap: the per-class gaps are pure noise and resampling inflates them further
    y, p, s = _random_predictions(1000, 10, 2, seed=0)
    plain = tpr_gap_ci(y, p, s, n_boot=300, method="percentile")
    corrected = tpr_gap_ci(y, p, s, n_boot=300)
    assert corrected.low <= corrected.value <= corrected.high
    assert plain.low > corrected.low
    null = tpr_gap_permutation_test(y, p, s, n_perm=200)
    assert null["p_value"] > 0.05
    assert null["tpr_gap"] == pytest.approx(plain.value)


def test_permutation_test_detects_a_planted_gap():
    y, p, s = _random_predictions(1000, 5, 3, seed=5, gap=0.25)
    result = tpr_gap_permutation_test(y, p, s, n_perm=200)
    assert result["p_value"] < 0.01
    assert result["tpr_gap"] > result["null_high"] > result["null_mean"] > 0


# ---------------------------------------------------------------------------------------------------------------
# compute_metrics for Trainer


def _logits(pred: np.ndarray, num_labels: int) -> np.ndarray:
    logits = np.random.default_rng(0).normal(size=(pred.size, num_labels)).astype(np.float32)
    logits[np.arange(pred.size), pred] += 10.0
    return logits


def test_compute_metrics_with_labels_and_sensitive():
    y, p, s = _random_predictions(300, 4, 3, seed=6, gap=0.2)
    compute = make_compute_metrics(num_groups=3)
    hidden = np.zeros((300, 2, 8), dtype=np.float32)
    out = compute(SimpleNamespace(predictions=(_logits(p, 4), hidden), label_ids=(y, s)))
    assert set(out) == {"accuracy", "macro_f1", "tpr_gap", "dp_diff", "eo_diff"}
    report = fairness_report(y, p, s, n_boot=0)
    for key, value in out.items():
        assert isinstance(value, float)
        assert value == pytest.approx(report[key])
    # a plain (predictions, label_ids) pair and the bootstrap keys
    out_ci = make_compute_metrics(n_boot=50)((_logits(p, 4), (y, s)))
    assert out_ci["tpr_gap_ci_low"] <= out_ci["tpr_gap"] <= out_ci["tpr_gap_ci_high"]


def test_compute_metrics_accepts_a_real_eval_prediction():
    trainer_utils = pytest.importorskip("transformers.trainer_utils")
    y, p, s = _random_predictions(100, 3, 2, seed=10, gap=0.3)
    eval_pred = trainer_utils.EvalPrediction(predictions=_logits(p, 3), label_ids=(y, s))
    out = make_compute_metrics(num_groups=2, num_labels=3)(eval_pred)
    assert out["tpr_gap"] == pytest.approx(tpr_gap_rms(y, p, s))


def test_compute_metrics_with_labels_only_and_ignored_examples():
    from sklearn.metrics import f1_score

    y, p, _ = _random_predictions(200, 3, 2, seed=7)
    labels = y.copy()
    labels[:20] = -100  # ignored by the loss, must be ignored by the metrics too
    out = make_compute_metrics(num_labels=4)(SimpleNamespace(predictions=_logits(p, 4), label_ids=labels))
    assert set(out) == {"accuracy", "macro_f1"}
    assert out["accuracy"] == pytest.approx(np.mean(p[20:] == y[20:]))
    binary = make_compute_metrics()((np.where(p == 1, 2.0, -2.0)[:, None], labels == 1))  # one logit [N, 1]
    assert binary["accuracy"] == pytest.approx(np.mean((p == 1) == (labels == 1)))
    assert out["macro_f1"] == pytest.approx(
        f1_score(y[20:], p[20:], labels=[0, 1, 2, 3], average="macro", zero_division=0)
    )


def test_compute_metrics_single_group_in_eval_warns_and_reports_accuracy():
    y, p, _ = _random_predictions(50, 3, 2, seed=8)
    with pytest.warns(RuntimeWarning, match="single sensitive group"):
        out = make_compute_metrics()(SimpleNamespace(predictions=_logits(p, 3), label_ids=(y, np.zeros(50))))
    assert set(out) == {"accuracy", "macro_f1"}


def test_compute_metrics_bad_inputs():
    y, p, s = _random_predictions(40, 3, 2, seed=9)
    with pytest.raises(ValueError, match=r"expected group ids in \[0, 2\)"):
        make_compute_metrics(num_groups=2)(SimpleNamespace(predictions=_logits(p, 3), label_ids=(y, s + 5)))
    with pytest.raises(ValueError, match="length mismatch: predictions=39, labels=40"):
        make_compute_metrics()(SimpleNamespace(predictions=_logits(p, 3)[:39], label_ids=(y, s)))
    with pytest.raises(ValueError, match=r"logits \[N, num_labels\] or class ids \[N\]"):
        make_compute_metrics()(SimpleNamespace(predictions=np.zeros((40, 2, 3)), label_ids=y))
    with pytest.raises(ValueError, match="expected an EvalPrediction"):
        make_compute_metrics()(42)


# ---------------------------------------------------------------------------------------------------------------
# bad input to the metrics


def test_metric_bad_inputs_raise_informative_errors():
    with pytest.raises(ValueError, match="length mismatch: y_true=8, y_pred=8, sensitive=7"):
        tpr_gap_rms(BIN_Y, BIN_P, BIN_S[:7])
    with pytest.raises(ValueError, match="single value .* at least two groups"):
        demographic_parity_difference(BIN_Y, BIN_P, ["a"] * 8)
    with pytest.raises(ValueError, match=r"y_true must have shape \[N\]"):
        equalized_odds_difference(np.zeros((4, 2)), [0, 1, 0, 1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="y_true is empty"):
        tpr_gap_rms([], [], [])
    with pytest.raises(ValueError, match="NaN or Inf"):
        tpr_gap_rms([0.0, 1.0, np.nan, 1.0], [0, 1, 0, 1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="not in labels"):
        tpr_gap_rms([0, 1, 2, 1], [0, 1, 0, 1], [0, 0, 1, 1], labels=[0, 1])
    with pytest.raises(ValueError, match="unknown bootstrap method 'bca'"):
        tpr_gap_ci(BIN_Y, BIN_P, BIN_S, method="bca")
    with pytest.raises(ValueError, match="n_boot must be a positive"):
        bootstrap_ci(np.mean, np.ones(3), n_boot=0)


def test_undefined_gap_is_nan_with_a_warning():
    # every class is seen in one group only: no gap can be formed
    with pytest.warns(RuntimeWarning, match="TPR-GAP is undefined"):
        assert math.isnan(tpr_gap_rms([0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]))
