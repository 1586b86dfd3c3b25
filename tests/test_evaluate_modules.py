"""The evaluate modules: loaded offline by path, equal to the hf_knife.metrics functions and to fairlearn, usable
the way transformers' ``run_classification.py`` uses ``--metric_name``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

evaluate = pytest.importorskip("evaluate")
fairlearn_metrics = pytest.importorskip("fairlearn.metrics")

from hf_knife import metrics as M  # noqa: E402

NAMES = ("tpr_gap", "demographic_parity_difference", "equalized_odds_difference", "leakage_audit")


@pytest.fixture(scope="module")
def modules() -> dict[str, object]:
    """Every module through ``evaluate.load(<folder path>)``."""
    return {name: evaluate.load(M.evaluate_module_path(name)) for name in NAMES}


def _biased_predictions(n: int, num_classes: int, num_groups: int, seed: int):
    """``(y [N], pred [N], groups [N])``: group g is right with probability 0.9 - 0.2 g, else a random class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    g = rng.integers(0, num_groups, n)
    right = rng.random(n) < 0.9 - 0.2 * g
    pred = np.where(right, y, rng.integers(0, num_classes, n))
    return y, pred, g


# ------------------------------------------------------------------------------------------------ fairlearn oracles
def _fairlearn_tpr_gap(y, pred, g) -> float:
    """RMS over classes of fairlearn's between-group difference of the one-vs-rest true-positive rate."""
    gaps = [
        fairlearn_metrics.MetricFrame(
            metrics=fairlearn_metrics.true_positive_rate,
            y_true=(y == c).astype(int),
            y_pred=(pred == c).astype(int),
            sensitive_features=g,
        ).difference()
        for c in np.unique(np.concatenate([y, pred]))
    ]
    return math.sqrt(float(np.mean(np.square(gaps))))


def _fairlearn_one_vs_rest(fn, y, pred, g) -> float:
    classes = np.unique(np.concatenate([y, pred]))
    return max(
        float(fn((y == c).astype(int), (pred == c).astype(int), sensitive_features=g)) for c in classes
    )


# ------------------------------------------------------------------------------------------------ loading
def test_modules_load_offline_by_folder_and_by_script_path(modules):
    expected = {"tpr_gap": "TPRGap", "demographic_parity_difference": "DemographicParityDifference",
                "equalized_odds_difference": "EqualizedOddsDifference", "leakage_audit": "LeakageAudit"}  # fmt: skip
    assert M.EVALUATE_MODULES == expected
    for name, module in modules.items():
        folder = Path(M.evaluate_module_path(name))
        assert folder.is_dir() and (folder / f"{name}.py").is_file()
        assert (folder / "__init__.py").is_file()  # a package, so setuptools ships it in the wheel
        assert type(module).__name__ == expected[name]
        assert module.name == name
        by_script = evaluate.load(str(folder / f"{name}.py"))
        assert type(by_script).__name__ == expected[name]
    assert isinstance(modules["leakage_audit"], evaluate.Measurement)
    assert all(isinstance(modules[n], evaluate.Metric) for n in NAMES[:3])


def test_classes_importable_from_hf_knife_metrics():
    assert issubclass(M.TPRGap, evaluate.Metric)
    assert issubclass(M.DemographicParityDifference, evaluate.Metric)
    assert issubclass(M.EqualizedOddsDifference, evaluate.Metric)
    assert issubclass(M.LeakageAudit, evaluate.Measurement)
    y, pred, g = _biased_predictions(300, 3, 2, seed=5)
    direct = M.TPRGap().compute(predictions=pred, references=y, sensitive=g)
    assert direct["tpr_gap"] == pytest.approx(M.tpr_gap_rms(y, pred, g), abs=1e-12)


def test_unknown_module_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="tpr_gap"):
        M.evaluate_module_path("accuracy")


# ------------------------------------------------------------------------------------------------ same numbers
@pytest.mark.parametrize("num_classes,num_groups", [(2, 2), (2, 3), (4, 2), (5, 3)])
def test_fairness_modules_equal_functions_and_fairlearn(modules, num_classes, num_groups):
    y, pred, g = _biased_predictions(1500, num_classes, num_groups, seed=num_classes + 10 * num_groups)
    kwargs = dict(predictions=pred, references=y, sensitive=g)
    tpr = modules["tpr_gap"].compute(**kwargs)["tpr_gap"]
    dp = modules["demographic_parity_difference"].compute(**kwargs)["demographic_parity_difference"]
    eo = modules["equalized_odds_difference"].compute(**kwargs)["equalized_odds_difference"]
    # one implementation: exactly the hf_knife.metrics functions
    assert tpr == M.tpr_gap_rms(y, pred, g)
    assert dp == M.demographic_parity_difference(y, pred, g)
    assert eo == M.equalized_odds_difference(y, pred, g)
    # and fairlearn (no empty cell at this size)
    assert tpr == pytest.approx(_fairlearn_tpr_gap(y, pred, g), abs=1e-12)
    assert dp == pytest.approx(
        _fairlearn_one_vs_rest(fairlearn_metrics.demographic_parity_difference, y, pred, g), abs=1e-12
    )
    assert eo == pytest.approx(
        _fairlearn_one_vs_rest(fairlearn_metrics.equalized_odds_difference, y, pred, g), abs=1e-12
    )
    if num_classes == 2:  # binary: fairlearn's own functions, no one-vs-rest
        assert dp == pytest.approx(
            fairlearn_metrics.demographic_parity_difference(y, pred, sensitive_features=g)
        )
        assert eo == pytest.approx(fairlearn_metrics.equalized_odds_difference(y, pred, sensitive_features=g))
    assert tpr > 0.05 and eo > 0.05  # the planted bias is seen (the test can fail)


def test_string_labels_and_groups_stay_strings(modules):
    y, pred, g = _biased_predictions(600, 3, 2, seed=3)
    names, groups = np.array(["business", "sport", "tech"]), np.array(["female", "male"])
    got = modules["tpr_gap"].compute(predictions=names[pred].tolist(), references=names[y].tolist(),
                                     sensitive=groups[g].tolist(), per_class=True)  # fmt: skip
    assert got["tpr_gap"] == pytest.approx(M.tpr_gap_rms(y, pred, g), abs=1e-12)
    assert set(got["tpr_gap_by_class"]) == set(names)
    # a numeric-looking string group stays a string group
    dp = modules["demographic_parity_difference"].compute(
        predictions=pred, references=y, sensitive=[str(v) for v in g]
    )
    assert dp["demographic_parity_difference"] == M.demographic_parity_difference(y, pred, g)


def test_tpr_gap_interval_and_batches(modules):
    y, pred, g = _biased_predictions(400, 3, 2, seed=8)
    metric = modules["tpr_gap"]
    got = metric.compute(predictions=pred, references=y, sensitive=g, n_boot=200, seed=3)
    est = M.tpr_gap_ci(y, pred, g, n_boot=200, seed=3)
    assert (got["tpr_gap"], got["tpr_gap_ci_low"], got["tpr_gap_ci_high"]) == tuple(est)
    for start in range(0, 400, 150):  # evaluate's streaming API: add_batch per evaluation batch, then compute
        stop = start + 150
        metric.add_batch(predictions=pred[start:stop], references=y[start:stop], sensitive=g[start:stop])
    assert metric.compute()["tpr_gap"] == M.tpr_gap_rms(y, pred, g)


def test_missing_sensitive_is_a_clear_error(modules):
    with pytest.raises(ValueError, match="sensitive"):
        modules["tpr_gap"].compute(predictions=[0, 1], references=[0, 1])


def test_leakage_measurement_equals_audit_leakage(modules):
    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, 500)
    x = rng.normal(size=(500, 6))
    x[:, 0] += 1.5 * s  # planted leakage
    measurement = modules["leakage_audit"]
    got = measurement.compute(representations=x[:350], sensitive=s[:350], test_representations=x[350:],
                              test_sensitive=s[350:], attackers=("logreg",), n_boot=200)  # fmt: skip
    want = M.audit_leakage(
        x[:350], s[:350], x[350:], s[350:], attackers=("logreg",), n_boot=200, progress=False
    )
    flat = want.to_dict(flat=True)
    assert set(got) == set(flat)
    for key, value in flat.items():
        assert got[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float) else value), key
    assert got["leakage"] > 0.15  # found the planted leakage
    # without a test split: a seeded stratified split, deterministic, 30% held out
    first = measurement.compute(representations=x, sensitive=s, attackers=("logreg",), n_boot=50, seed=1)
    again = measurement.compute(representations=x, sensitive=s, attackers=("logreg",), n_boot=50, seed=1)
    assert first == again and first["n_test"] == 150 and first["n_train"] == 350
    with pytest.raises(ValueError, match="both"):
        measurement.compute(representations=x, sensitive=s, test_representations=x)


# ------------------------------------------------------------------------------------------------ Trainer pattern
@dataclass
class DataTrainingArguments:
    """The option of transformers' examples/pytorch/text-classification/run_classification.py."""

    metric_name: str | None = field(default=None, metadata={"help": "The metric to use for evaluation."})


def test_run_classification_metric_name_pattern(modules, tmp_path):
    """``--metric_name <module folder>`` + ``evaluate.load(data_args.metric_name)``; sensitive values come in
    through ``label_names=["labels", "gender"]`` and ``make_evaluate_compute_metrics``."""
    from conftest import synthetic_dataset, tiny_model
    from transformers import EvalPrediction, HfArgumentParser, Trainer, TrainingArguments

    (data_args,) = HfArgumentParser(DataTrainingArguments).parse_args_into_dataclasses(
        args=["--metric_name", M.evaluate_module_path("tpr_gap")]
    )
    metric = evaluate.load(data_args.metric_name)  # as the script does
    eval_data = synthetic_dataset(96, seed=4)
    args = TrainingArguments(
        str(tmp_path), per_device_eval_batch_size=32, report_to="none", use_cpu=True, disable_tqdm=True,
        label_names=["labels", "gender"],  # label_ids arrive as (labels, gender)
        remove_unused_columns=False,  # keep "gender" in the batch (plain Trainer would drop it)
    )  # fmt: skip
    dp = modules["demographic_parity_difference"]
    trainer = Trainer(model=tiny_model(seed=2), args=args, eval_dataset=eval_data,
                      compute_metrics=M.make_evaluate_compute_metrics(metric, dp))  # fmt: skip
    result = trainer.evaluate()
    logits = trainer.predict(eval_data).predictions
    preds = np.argmax(logits, axis=1)
    labels, gender = np.array(eval_data["labels"]), np.array(eval_data["gender"])
    assert result["eval_tpr_gap"] == pytest.approx(M.tpr_gap_rms(labels, preds, gender), abs=1e-12)
    assert result["eval_demographic_parity_difference"] == pytest.approx(
        M.demographic_parity_difference(labels, preds, gender), abs=1e-12
    )

    # the script's own compute_metrics passes label_ids unchanged: with a fairness metric that is an error,
    # and the one-line fix is to split (labels, sensitive)
    def script_compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return metric.compute(predictions=np.argmax(preds, axis=1), references=p.label_ids)

    def fixed_compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        labels, sensitive = p.label_ids
        return metric.compute(predictions=np.argmax(preds, axis=1), references=labels, sensitive=sensitive)

    prediction = EvalPrediction(predictions=logits, label_ids=(labels, gender))
    with pytest.raises((ValueError, TypeError)):
        script_compute_metrics(prediction)
    assert fixed_compute_metrics(prediction)["tpr_gap"] == pytest.approx(result["eval_tpr_gap"], abs=1e-12)

    # and a Trainer without the sensitive column says what to do
    only_labels = M.make_evaluate_compute_metrics(metric)
    with pytest.raises(ValueError, match="label_names"):
        only_labels(EvalPrediction(predictions=logits, label_ids=labels))
