"""Leakage audit: how well fresh attackers read the sensitive attribute from frozen representations.

The protocol the field trusts (docs/design.md §4): extract representations of the train and test splits from the frozen
encoder, train fresh attackers on the train split to predict the sensitive attribute, and report their held-out
accuracy next to the majority-class rate of the test split. ``leakage = accuracy - majority_rate``; the headline is
the strongest attacker's (highest held-out accuracy).

The attacker suite (:data:`ATTACKERS`, all of them by default): ``logreg`` (standardised logistic regression),
``mlp`` (one hidden layer, early stopping), ``mlp_converged`` (two hidden layers trained to convergence of the
training loss, no early stopping), ``svm_rbf`` (RBF SVM, ``C`` chosen on a stratified validation split of 20% of the
training examples, then refitted on all of them, at most ``svm_max_samples``) and ``gbt`` (histogram gradient-boosted
trees, the number of trees chosen by early stopping on 10% of the train split). Linear attackers and the
early-stopped MLP under-report nonlinear leakage; the last three find what they miss.

Before anything is standardised, constant and near-constant coordinates of the train split (spread below
``near_constant_tol`` times the typical spread, :func:`hf_knife.estimators.degenerate.find_degenerate_directions`)
are dropped from both splits: standardising a numerically dead coordinate (a spread of 1e-9 or 1e-19, e.g. the
residue that linear erasure leaves there) scales rounding noise, or a copy of an erased direction, back up to unit
variance, and the attackers read it as leakage. The report lists what was dropped (``dropped``).

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

__all__ = [
    "ATTACKERS",
    "AttackerResult",
    "LeakageReport",
    "SVM_C_GRID",
    "SVM_MAX_SAMPLES",
    "SubsampledClassifier",
    "audit_leakage",
    "make_attacker",
    "wilson_interval",
]

#: every attacker :func:`make_attacker` knows; the default suite of :func:`audit_leakage`.
ATTACKERS = ("logreg", "mlp", "mlp_converged", "svm_rbf", "gbt")
#: ``C`` values the RBF SVM tries on its validation split.
SVM_C_GRID = (1.0, 10.0)
#: the RBF SVM learns from at most this many training examples (its fit costs about N^2 d).
SVM_MAX_SAMPLES = 3000


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
    details: dict[str, Any] = field(default_factory=dict)

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
    dropped: list[int] = field(default_factory=list)
    dropped_note: str = ""
    #: attacker name -> accuracy on the validation split (empty without one)
    validation: dict[str, float] = field(default_factory=dict)
    validation_majority_rate: float | None = None

    @property
    def validation_leakage(self) -> float | None:
        """The strongest attacker's validation accuracy minus the validation majority rate (None without one)."""
        if not self.validation or self.validation_majority_rate is None:
            return None
        return max(self.validation.values()) - self.validation_majority_rate

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
            "num_dropped": len(self.dropped),
        }
        if self.validation:
            head["validation_leakage"] = self.validation_leakage
        if not flat:
            head.update(
                accuracy_ci=list(self.accuracy_ci),
                leakage_ci=list(self.leakage_ci),
                attackers={name: r.to_dict() for name, r in self.attackers.items()},
                dropped=list(self.dropped),
                dropped_note=self.dropped_note,
                validation=dict(self.validation),
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
        if self.dropped:
            lines.append(f"  {self.dropped_note}")
        for name, r in self.attackers.items():
            mark = " *" if name == self.strongest else ""
            lines.append(
                f"  {name:>13}: accuracy {r.accuracy:.3f} (balanced {r.balanced_accuracy:.3f}), leakage {r.leakage:+.3f} "
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


class SubsampledClassifier:
    """Fit ``estimator`` on at most ``max_samples`` training examples (a stratified subsample; all when fewer).

    For attackers whose cost grows faster than linearly with ``N`` (the RBF SVM: quadratic memory, about cubic time).
    A scikit-learn classifier: ``fit(x [N, d], y [N])``, ``predict(x [M, d]) -> [M]``; clonable.
    """

    _estimator_type = "classifier"

    def __init__(self, estimator: Any, max_samples: int | None = SVM_MAX_SAMPLES, random_state: int = 0) -> None:
        self.estimator = estimator
        self.max_samples = max_samples
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = {"estimator": self.estimator, "max_samples": self.max_samples, "random_state": self.random_state}
        if deep and hasattr(self.estimator, "get_params"):
            params.update({f"estimator__{k}": v for k, v in self.estimator.get_params(deep=True).items()})
        return params

    def set_params(self, **params: Any) -> SubsampledClassifier:
        inner = {k.split("__", 1)[1]: v for k, v in params.items() if k.startswith("estimator__")}
        for key, value in params.items():
            if not key.startswith("estimator__"):
                setattr(self, key, value)
        if inner:
            self.estimator.set_params(**inner)
        return self

    def fit(self, x: np.ndarray, y: np.ndarray) -> SubsampledClassifier:
        from sklearn.base import clone
        from sklearn.model_selection import train_test_split

        self.n_fit_ = len(y)
        if self.max_samples is not None and len(y) > self.max_samples:
            _, counts = np.unique(y, return_counts=True)
            stratify = y if counts.min() >= 2 else None
            x, _, y, _ = train_test_split(
                x, y, train_size=self.max_samples, stratify=stratify, random_state=self.random_state
            )
            self.n_fit_ = self.max_samples
        self.estimator_ = clone(self.estimator).fit(x, y)
        self.classes_ = self.estimator_.classes_
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.estimator_.predict(x)


def make_attacker(
    name: str,
    seed: int = 0,
    n_train: int | None = None,
    min_class_count: int | None = None,
    *,
    svm_max_samples: int | None = SVM_MAX_SAMPLES,
) -> Any:
    """A fresh, unfitted scikit-learn attacker, one of :data:`ATTACKERS`:

    - ``"logreg"``: standardise + multinomial logistic regression;
    - ``"mlp"``: standardise + one hidden layer of 256 ReLU units, Adam, early stopping on 10% of the train split;
    - ``"mlp_converged"``: standardise + two hidden layers (256, 256), Adam, no early stopping: trained until the
      training loss stops improving (at most 1,000 epochs);
    - ``"svm_rbf"``: standardise + RBF SVM (``gamma="scale"``), ``C`` in :data:`SVM_C_GRID` chosen on a stratified
      validation split (20% of the training examples), then refitted on all of them; at most ``svm_max_samples``
      of them (a stratified subsample; ``None``: all). On 3,000 x 384 features: 3 fits, about 20-40 s on one core;
    - ``"gbt"``: histogram gradient-boosted trees (no scaling needed), up to 500 trees of 31 leaves, learning rate
      0.1, the number of trees chosen by early stopping on 10% of the train split.

    Early stopping (``mlp``, ``gbt``) and the SVM's validation split are switched off when the train split is too
    small for a stratified held-out part (fewer than 100 examples or a group with fewer than 10).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedShuffleSplit
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    held_out = (n_train is None or n_train >= 100) and (min_class_count is None or min_class_count >= 10)
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    if name in ("mlp", "mlp_converged"):
        converged = name == "mlp_converged"
        return make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden_layer_sizes=(256, 256) if converged else (256,),
                alpha=1e-4,
                early_stopping=held_out and not converged,
                validation_fraction=0.1,
                n_iter_no_change=10,
                max_iter=1000 if converged else 300,
                random_state=seed,
            ),
        )
    if name == "svm_rbf":
        svc = SVC(kernel="rbf", gamma="scale", C=1.0, random_state=seed)
        if held_out:
            cv = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
            svc = GridSearchCV(svc, {"C": list(SVM_C_GRID)}, cv=cv, scoring="accuracy")
        return SubsampledClassifier(
            make_pipeline(StandardScaler(), svc), max_samples=svm_max_samples, random_state=seed
        )
    if name == "gbt":
        return HistGradientBoostingClassifier(
            max_iter=500,
            learning_rate=0.1,
            max_leaf_nodes=31,
            early_stopping=held_out,
            validation_fraction=0.1 if held_out else None,
            n_iter_no_change=20,
            random_state=seed,
        )
    raise ValueError(
        f"unknown attacker {name!r}; expected one of {', '.join(map(repr, ATTACKERS))} or an estimator"
    )


def _attacker_details(estimator: Any) -> dict[str, Any]:
    """What the fit chose: SVM ``C`` and training-set size, epochs of an MLP, trees of the boosted model."""
    details: dict[str, Any] = {}
    if isinstance(estimator, SubsampledClassifier):
        details["n_fit"] = int(estimator.n_fit_)
        estimator = estimator.estimator_
    for step in getattr(estimator, "steps", [(None, estimator)]):
        model = step[1]
        if hasattr(model, "best_params_"):
            details.update({k: _plain(v) for k, v in model.best_params_.items()})
        elif type(model).__name__ == "SVC":
            details["C"] = float(model.C)
        if type(model).__name__ in ("MLPClassifier", "HistGradientBoostingClassifier") and hasattr(model, "n_iter_"):
            details["n_iter"] = int(model.n_iter_)
    return details


def _drop_degenerate(
    x_train: np.ndarray, others: list[np.ndarray], near_constant_tol: float
) -> tuple[np.ndarray, list[np.ndarray], list[int], str]:
    """Remove the train split's constant and near-constant coordinates from it and from the ``others`` splits.

    Returns ``(x_train [N, d'], others [[M, d'], ...], dropped coordinate ids, a sentence saying what was dropped)``;
    when every coordinate is degenerate one zero column is kept (the attackers then predict the majority group).
    """
    import torch

    from ..estimators.degenerate import find_degenerate_directions

    found = find_degenerate_directions(torch.from_numpy(x_train), near_constant_tol=near_constant_tol)
    dropped = sorted(found.constant + found.near_constant)
    if not dropped:
        return x_train, others, [], ""
    keep = np.setdiff1d(np.arange(x_train.shape[1]), dropped)
    shown = ", ".join(map(str, dropped[:10])) + (f", ... ({len(dropped)} in all)" if len(dropped) > 10 else "")
    note = (
        f"dropped {len(dropped)} of {x_train.shape[1]} coordinates before standardising "
        f"({len(found.constant)} constant, {len(found.near_constant)} near-constant: spread below "
        f"{near_constant_tol:g} of the typical {found.scale:.3g}; ids {shown})"
    )
    if keep.size == 0:
        return np.zeros((len(x_train), 1)), [np.zeros((len(x), 1)) for x in others], dropped, note
    return x_train[:, keep], [x[:, keep] for x in others], dropped, note


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
    drop_degenerate: bool = True,
    near_constant_tol: float = 1e-4,
    svm_max_samples: int | None = SVM_MAX_SAMPLES,
    validation_repr: Any | None = None,
    validation_sensitive: Any | None = None,
) -> LeakageReport:
    """Train fresh attackers to predict the sensitive attribute and score them on the test split.

    Args:
        train_repr, test_repr: representations ``[N_train, d]`` / ``[N_test, d]`` (numpy or torch, any float dtype).
        train_sensitive, test_sensitive: group ids ``[N_train]`` / ``[N_test]`` (ints or strings, 2+ groups).
        attackers: names from :data:`ATTACKERS` (default: all of them) or a mapping
            ``{name: unfitted sklearn classifier}`` (cloned).
        seed: seeds the attackers and the bootstrap; the audit is deterministic for a given seed.
        alpha: intervals are at level ``1 - alpha``.
        ci_method: ``"bootstrap"`` (paired percentile bootstrap over test examples, ``n_boot`` replicates: the
            leakage interval accounts for the majority rate varying with the resample too) or ``"wilson"`` (Wilson
            interval on the accuracy; leakage interval = that minus the majority rate).
        progress: show a tqdm bar over attackers.
        drop_degenerate: drop the train split's constant and near-constant coordinates (spread below
            ``near_constant_tol`` times the typical spread) from both splits before fitting; listed in ``dropped``.
        svm_max_samples: the RBF SVM learns from at most this many training examples (``None``: all).
        validation_repr, validation_sensitive: an optional validation split ``[N_val, d]`` / ``[N_val]``: the same
            fitted attackers are also scored on it (``report.validation``, ``report.validation_leakage``), so that
            a setting can be selected without looking at the test split and without fitting the attackers twice.

    Returns:
        A :class:`LeakageReport`. The majority rate is the test-split frequency of the group most frequent there.
        ``dim`` is the input dimension (before dropping).
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
    if (validation_repr is None) != (validation_sensitive is None):
        raise ValueError("pass validation_repr and validation_sensitive together (or neither)")
    if validation_repr is not None:
        x_val = check_representations(validation_repr, "validation_repr", dim=x_train.shape[1])
        s_val = check_1d(validation_sensitive, "validation_sensitive")
        check_same_length(validation_repr=x_val, validation_sensitive=s_val)
    else:
        x_val, s_val = x_test[:0], s_test[:0]
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
                name,
                seed=seed,
                n_train=s_train.size,
                min_class_count=int(train_counts.min()),
                svm_max_samples=svm_max_samples,
            )
            for name in attackers
        }
    if not estimators:
        raise ValueError(
            f"no attackers given; expected names from {ATTACKERS} or a mapping name -> estimator"
        )

    dim = int(x_train.shape[1])
    dropped: list[int] = []
    dropped_note = ""
    if drop_degenerate:
        x_train, (x_test, x_val), dropped, dropped_note = _drop_degenerate(x_train, [x_test, x_val], near_constant_tol)

    majority_group = test_groups[int(np.argmax(test_counts))]
    is_majority = (s_test == majority_group).astype(np.float64)
    majority_rate = float(is_majority.mean())
    n_test = s_test.size

    results: dict[str, AttackerResult] = {}
    validation: dict[str, float] = {}
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
        if s_val.size:
            validation[name] = float(np.mean(estimator.predict(x_val) == s_val))
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
            details=_attacker_details(estimator),
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
        dim=dim,
        alpha=alpha,
        ci_method=ci_method,
        seed=seed,
        dropped=dropped,
        dropped_note=dropped_note,
        validation=validation,
        validation_majority_rate=_majority_rate(s_val) if s_val.size else None,
    )


def _majority_rate(groups: np.ndarray) -> float:
    """The frequency of the most frequent group of ``groups [N]``."""
    _, counts = np.unique(groups, return_counts=True)
    return float(counts.max() / groups.size)
