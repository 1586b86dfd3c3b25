"""Leakage audit: how well fresh attackers read the sensitive attribute from frozen representations.

The protocol the field trusts (DESIGN.md §6): extract representations of the train and test splits from the frozen
encoder, train fresh attackers (a standardised logistic regression and a small early-stopped MLP) on the train split
to predict the sensitive attribute, and report their held-out accuracy next to the majority-class rate of the test
split. ``leakage = accuracy - majority_rate``; the headline is the strongest attacker's (highest held-out accuracy).

This module works on arrays; pooling a model's hidden states into one vector per example is done elsewhere.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._validation import check_1d, check_representations, check_same_length

__all__ = ["AttackerResult", "LeakageReport", "audit_leakage", "make_attacker", "wilson_interval"]

ATTACKERS = ("logreg", "mlp")


@dataclass
class AttackerResult:
    """Held-out scores of one attacker. Intervals are ``(low, high)`` at level ``1 - alpha`` of the report."""

    name: str
    accuracy: float
    accuracy_ci: tuple[float, float]
    balanced_accuracy: float
    majority_rate: float
    leakage: float
    leakage_ci: tuple[float, float]
    train_accuracy: float
    converged: bool
    fit_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-ready); intervals as ``[low, high]`` lists."""
        out = asdict(self)
        out["accuracy_ci"] = list(self.accuracy_ci)
        out["leakage_ci"] = list(self.leakage_ci)
        return out


@dataclass
class LeakageReport:
    """Result of :func:`audit_leakage`: every attacker's scores and the headline (``strongest``) one."""

    attackers: dict[str, AttackerResult]
    strongest: str
    majority_rate: float
    majority_group: Any
    num_groups: int
    n_train: int
    n_test: int
    dim: int
    alpha: float
    ci_method: str
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> AttackerResult:
        """The strongest attacker's result (highest held-out accuracy)."""
        return self.attackers[self.strongest]

    @property
    def accuracy(self) -> float:
        return self.best.accuracy

    @property
    def accuracy_ci(self) -> tuple[float, float]:
        return self.best.accuracy_ci

    @property
    def leakage(self) -> float:
        return self.best.leakage

    @property
    def leakage_ci(self) -> tuple[float, float]:
        return self.best.leakage_ci

    def to_dict(self, flat: bool = False) -> dict[str, Any]:
        """JSON-ready dict. ``flat=True``: one level of scalar keys (for a CSV row), e.g. ``leakage``,
        ``leakage_ci_low``, ``logreg_accuracy``, ``mlp_leakage``."""
        head = {
            "strongest": self.strongest,
            "accuracy": self.accuracy,
            "leakage": self.leakage,
            "majority_rate": self.majority_rate,
            "majority_group": _plain(self.majority_group),
            "num_groups": self.num_groups,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "dim": self.dim,
            "alpha": self.alpha,
            "ci_method": self.ci_method,
            "seed": self.seed,
        }
        if not flat:
            head.update(
                accuracy_ci=list(self.accuracy_ci),
                leakage_ci=list(self.leakage_ci),
                attackers={name: r.to_dict() for name, r in self.attackers.items()},
                **self.extra,
            )
            return head
        head.update(
            accuracy_ci_low=self.accuracy_ci[0],
            accuracy_ci_high=self.accuracy_ci[1],
            leakage_ci_low=self.leakage_ci[0],
            leakage_ci_high=self.leakage_ci[1],
        )
        for name, r in self.attackers.items():
            for key in ("accuracy", "balanced_accuracy", "leakage", "train_accuracy"):
                head[f"{name}_{key}"] = getattr(r, key)
            head[f"{name}_leakage_ci_low"], head[f"{name}_leakage_ci_high"] = r.leakage_ci
        return head

    def summary(self) -> str:
        """A few human-readable lines, one per attacker, strongest marked."""
        pct = round(100 * (1 - self.alpha))
        head = f"leakage audit: {self.n_train} train / {self.n_test} test, {self.num_groups} groups"
        lines = [f"{head}, majority rate {self.majority_rate:.3f}"]
        for name, r in self.attackers.items():
            mark = " *" if name == self.strongest else ""
            lines.append(
                f"  {name:>8}: accuracy {r.accuracy:.3f} (balanced {r.balanced_accuracy:.3f}), leakage {r.leakage:+.3f} "
                f"[{pct}% CI {r.leakage_ci[0]:+.3f}, {r.leakage_ci[1]:+.3f}]{mark}"
            )
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a binomial proportion ``successes / n``."""
    from scipy.stats import norm

    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 trials, got {n}")
    z = float(norm.ppf(1 - alpha / 2))
    phat = successes / n
    denom = 1 + z**2 / n
    centre = (phat + z**2 / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def make_attacker(
    name: str, seed: int = 0, n_train: int | None = None, min_class_count: int | None = None
) -> Any:
    """A fresh, unfitted scikit-learn attacker: ``"logreg"`` (standardise + multinomial logistic regression) or
    ``"mlp"`` (standardise + one hidden layer of 256 ReLU units, Adam, early stopping on 10% of the train split).

    Early stopping is switched off when the train split is too small to hold out a stratified validation set
    (fewer than 100 examples or a group with fewer than 10).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    if name == "mlp":
        early = (n_train is None or n_train >= 100) and (min_class_count is None or min_class_count >= 10)
        return make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden_layer_sizes=(256,),
                alpha=1e-4,
                early_stopping=early,
                validation_fraction=0.1,
                n_iter_no_change=10,
                max_iter=300,
                random_state=seed,
            ),
        )
    raise ValueError(
        f"unknown attacker {name!r}; expected one of {', '.join(map(repr, ATTACKERS))} or an estimator"
    )


def _bootstrap_accuracy_and_leakage(
    correct: np.ndarray, is_majority: np.ndarray, n_boot: int, alpha: float, seed: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Paired percentile bootstrap over test examples of accuracy and of ``accuracy - majority rate``."""
    rng = np.random.default_rng(seed)
    n = correct.size
    acc = np.empty(n_boot)
    leak = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))  # bound the [chunk, n] index matrix
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        acc[start:stop] = correct[idx].mean(axis=1)
        leak[start:stop] = acc[start:stop] - is_majority[idx].mean(axis=1)
    q = [alpha / 2, 1 - alpha / 2]
    a_lo, a_hi = np.quantile(acc, q)
    l_lo, l_hi = np.quantile(leak, q)
    return (float(a_lo), float(a_hi)), (float(l_lo), float(l_hi))


def audit_leakage(
    train_repr: Any,
    train_sensitive: Any,
    test_repr: Any,
    test_sensitive: Any,
    *,
    attackers: Sequence[str] | Mapping[str, Any] = ATTACKERS,
    seed: int = 0,
    alpha: float = 0.05,
    ci_method: str = "bootstrap",
    n_boot: int = 1000,
    progress: bool = True,
) -> LeakageReport:
    """Train fresh attackers to predict the sensitive attribute and score them on the test split.

    Args:
        train_repr, test_repr: representations ``[N_train, d]`` / ``[N_test, d]`` (numpy or torch, any float dtype).
        train_sensitive, test_sensitive: group ids ``[N_train]`` / ``[N_test]`` (ints or strings, 2+ groups).
        attackers: names from ``("logreg", "mlp")`` or a mapping ``{name: unfitted sklearn classifier}`` (cloned).
        seed: seeds the attackers and the bootstrap; the audit is deterministic for a given seed.
        alpha: intervals are at level ``1 - alpha``.
        ci_method: ``"bootstrap"`` (paired percentile bootstrap over test examples, ``n_boot`` replicates: the
            leakage interval accounts for the majority rate varying with the resample too) or ``"wilson"`` (Wilson
            interval on the accuracy; leakage interval = that minus the majority rate).
        progress: show a tqdm bar over attackers.

    Returns:
        A :class:`LeakageReport`. The majority rate is the test-split frequency of the group most frequent there.
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import balanced_accuracy_score
    from tqdm.auto import tqdm

    x_train = check_representations(train_repr, "train_repr")
    x_test = check_representations(test_repr, "test_repr", dim=x_train.shape[1])
    s_train = check_1d(train_sensitive, "train_sensitive")
    s_test = check_1d(test_sensitive, "test_sensitive")
    check_same_length(train_repr=x_train, train_sensitive=s_train)
    check_same_length(test_repr=x_test, test_sensitive=s_test)
    if ci_method not in ("bootstrap", "wilson"):
        raise ValueError(f"unknown ci_method {ci_method!r}; expected 'bootstrap' or 'wilson'")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (e.g. 0.05 for a 95% interval), got {alpha}")
    if ci_method == "bootstrap" and n_boot < 1:
        raise ValueError(f"n_boot must be a positive number of bootstrap replicates, got {n_boot}")
    train_groups, train_counts = np.unique(s_train, return_counts=True)
    test_groups, test_counts = np.unique(s_test, return_counts=True)
    for split, groups in (("train_sensitive", train_groups), ("test_sensitive", test_groups)):
        if groups.size < 2:
            raise ValueError(
                f"{split} has a single value ({_plain(groups[0])!r}); a leakage audit needs at least two groups "
                "in each split"
            )
    unseen = np.setdiff1d(test_groups, train_groups)
    if unseen.size:
        warnings.warn(
            f"test_sensitive has groups never seen in train_sensitive: {unseen[:5].tolist()}; "
            "attackers cannot predict them",
            RuntimeWarning,
            stacklevel=2,
        )
    if isinstance(attackers, Mapping):
        estimators = {str(name): clone(est) for name, est in attackers.items()}
    else:
        if isinstance(attackers, str):
            attackers = (attackers,)
        estimators = {
            name: make_attacker(
                name, seed=seed, n_train=s_train.size, min_class_count=int(train_counts.min())
            )
            for name in attackers
        }
    if not estimators:
        raise ValueError(
            f"no attackers given; expected names from {ATTACKERS} or a mapping name -> estimator"
        )

    majority_group = test_groups[int(np.argmax(test_counts))]
    is_majority = (s_test == majority_group).astype(np.float64)
    majority_rate = float(is_majority.mean())
    n_test = s_test.size

    results: dict[str, AttackerResult] = {}
    bar = tqdm(estimators.items(), desc="leakage audit", unit="attacker", disable=not progress, leave=False)
    for name, estimator in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            estimator.fit(x_train, s_train)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        fit_seconds = time.perf_counter() - start
        pred = estimator.predict(x_test)
        correct = (pred == s_test).astype(np.float64)
        accuracy = float(correct.mean())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            balanced = float(balanced_accuracy_score(s_test, pred))
        if ci_method == "bootstrap":
            acc_ci, leak_ci = _bootstrap_accuracy_and_leakage(correct, is_majority, n_boot, alpha, seed)
        else:
            acc_ci = wilson_interval(int(correct.sum()), n_test, alpha)
            leak_ci = (acc_ci[0] - majority_rate, acc_ci[1] - majority_rate)
        results[name] = AttackerResult(
            name=name,
            accuracy=accuracy,
            accuracy_ci=acc_ci,
            balanced_accuracy=balanced,
            majority_rate=majority_rate,
            leakage=accuracy - majority_rate,
            leakage_ci=leak_ci,
            train_accuracy=float(np.mean(estimator.predict(x_train) == s_train)),
            converged=converged,
            fit_seconds=fit_seconds,
        )
    strongest = max(results, key=lambda k: results[k].accuracy)  # first wins ties
    return LeakageReport(
        attackers=results,
        strongest=strongest,
        majority_rate=majority_rate,
        majority_group=majority_group,
        num_groups=int(np.union1d(train_groups, test_groups).size),
        n_train=int(s_train.size),
        n_test=int(n_test),
        dim=int(x_train.shape[1]),
        alpha=alpha,
        ci_method=ci_method,
        seed=seed,
    )
