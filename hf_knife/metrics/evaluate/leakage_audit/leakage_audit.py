"""The leakage audit as an ``evaluate.Measurement`` over :func:`hf_knife.metrics.audit_leakage`.

measurement = evaluate.load(hf_knife.metrics.evaluate_module_path("leakage_audit"))
measurement.compute(representations=z, sensitive=s)                       # seeded stratified 70/30 split
measurement.compute(representations=z_train, sensitive=s_train,          # or your own test split
                    test_representations=z_test, test_sensitive=s_test)
"""

from __future__ import annotations

from typing import Any

import evaluate
import numpy as np

from hf_knife.metrics.evaluate._common import CITATION, as_array, representation_features
from hf_knife.metrics.leakage import audit_leakage

_DESCRIPTION = """\
Leakage audit: fresh attackers (by default every attacker of hf_knife.metrics.ATTACKERS, or any scikit-learn
classifiers) are trained to predict the sensitive attribute from frozen representations and scored on held-out
examples.
leakage = held-out accuracy - majority-class rate of the test split; the headline is the strongest attacker's.
Computed by hf_knife.metrics.audit_leakage.
"""

_KWARGS_DESCRIPTION = """\
Args:
    representations (list of float lists, or an array [N, d]): one vector per example (the training split of the
        attackers when test_representations is given).
    sensitive (list of int or str): group of each example [N].
    test_representations ([N_test, d], optional), test_sensitive ([N_test], optional): the held-out split. Without
        them, a seeded split stratified by group holds out test_size of the examples.
    test_size (float, default 0.3): fraction held out when no test split is given.
    seed (int, default 0): seeds the split and the audit.
    Any other keyword (attackers, alpha, ci_method, n_boot, ...) goes to hf_knife.metrics.audit_leakage, with its
    defaults (progress bar off).
Returns:
    The flat report (LeakageReport.to_dict(flat=True)): leakage, accuracy, majority_rate, strongest,
    leakage_ci_low / leakage_ci_high, <attacker>_accuracy, <attacker>_leakage, ...
"""


def _split(
    x: np.ndarray, s: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / test split ``(x_train, s_train, x_test, s_test)``, stratified when every group has 2+ rows."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    _, counts = np.unique(s, return_counts=True)
    stratify = s if counts.min() >= 2 else None
    x_train, x_test, s_train, s_test = train_test_split(
        x, s, test_size=test_size, random_state=seed, stratify=stratify
    )
    return x_train, s_train, x_test, s_test


class LeakageAudit(evaluate.Measurement):
    """``evaluate`` measurement of leakage; inputs ``representations`` ``[N, d]`` and ``sensitive`` ``[N]``."""

    def _info(self) -> evaluate.MeasurementInfo:
        return evaluate.MeasurementInfo(
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=representation_features(),
        )

    def _compute(
        self,
        representations: Any,
        sensitive: Any,
        test_representations: Any | None = None,
        test_sensitive: Any | None = None,
        test_size: float = 0.3,
        seed: int = 0,
        **audit_options: Any,
    ) -> dict[str, Any]:
        x, s = as_array(representations), as_array(sensitive)
        if (test_representations is None) != (test_sensitive is None):
            raise ValueError(
                "give both test_representations and test_sensitive, or neither (to split the data)"
            )
        if test_representations is None:
            x_train, s_train, x_test, s_test = _split(x, s, test_size, seed)
        else:
            x_train, s_train, x_test, s_test = x, s, test_representations, test_sensitive
        audit_options.setdefault("progress", False)
        report = audit_leakage(x_train, s_train, x_test, s_test, seed=seed, **audit_options)
        return report.to_dict(flat=True)
