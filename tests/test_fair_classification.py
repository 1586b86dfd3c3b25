"""recipes/fair_classification.py end to end on a tiny local model and dataset (3 sensitive groups)."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fair_classification.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("fair_classification", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fair_classification"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from common.data import default_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    rng = random.Random(0)
    jobs = {"writer": "writes books", "doctor": "treats patients", "coach": "trains the team"}
    groups = {"north": "from the hills", "south": "from the coast", "east": "from the plains"}
    rows = ["text,occupation,region"]
    for i in range(90):
        job = list(jobs)[i % 3]
        region = rng.choice(list(groups))
        rows.append(f"the person {jobs[job]} and comes {groups[region]} number {i},{job},{region}")
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def recipe_args(model_dir, csv, output_dir, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--data_files", str(csv), "--label_column", "occupation",
        "--sensitive_column", "region", "--train_size", "36", "--validation_size", "15", "--test_size", "30",
        "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
        "--audit_bootstrap", "20", "--max_length", "24", "--disable_tqdm", "True", *extra,
    ]  # fmt: skip


def test_recipe_end_to_end_writes_results_and_plot(tiny_model_dir, tiny_csv, tmp_path):
    recipe = load_recipe()
    rows = recipe.main(
        recipe_args(tiny_model_dir, tiny_csv, tmp_path, "--weights", "0.5,2", "--adversary_weights", "0.5,2",
                    "--knife_num_components", "4")
    )
    assert [(r["method"], r["weight"]) for r in rows] == [
        ("none", 0.0), ("knife", 0.5), ("knife", 2.0), ("adversarial", 0.5), ("adversarial", 2.0)
    ]  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 5 and len(results["summary"]) == 5
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["majority_rate"] >= 1 / 3 - 1e-9  # three groups
        assert row["leakage"] == pytest.approx(row["attacker_accuracy"] - row["majority_rate"])
        assert {"logreg_accuracy", "mlp_accuracy", "tpr_gap", "dp_diff", "eo_diff", "mi_estimate"} <= set(row)
        # the own head next to a linear probe refitted on the same Z (C chosen on validation)
        assert 0.0 <= row["refit_accuracy"] <= 1.0 and 0.0 <= row["refit_val_accuracy"] <= 1.0
    assert all("refit_accuracy" in e for e in results["summary"])
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"method", "weight", "accuracy", "macro_f1", "leakage", "tpr_gap", "train_time_s"} <= set(header)
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000


@pytest.mark.parametrize("representation", ["pooler", "mean"])
def test_push_to_hub_card_reports_the_audit(tiny_model_dir, tiny_csv, tmp_path, fake_hub, representation):
    """--push_to_hub pushes the knife model with an audit section in its card (fake Hub); with mean pooling the card
    says how to load a model whose head reads mean(Z), and that loader gives it back."""
    recipe = load_recipe()
    recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", "--methods", "none,knife", "--push_to_hub",
                            "--hub_model_id", "me/fair", "--max_accuracy_drop", "1.0",
                            "--representation", representation))  # fmt: skip
    uploaded = fake_hub.target
    card = (uploaded / "README.md").read_text()
    assert "Leakage audit" in card and "knife" in card
    assert (uploaded / "knife_config.json").exists()
    assert ("identity layer" in card) == (representation == "mean")
    if representation == "mean":
        from hf_knife.erasure import AutoErasedModelForSequenceClassification

        model = AutoErasedModelForSequenceClassification.from_pretrained(uploaded)
        assert model.config.erasure["method"] == "identity" and model.config.erasure["representation"] == "mean"


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--methods", "none,fair"], "unknown method 'fair'"),
        (["--weights", "-1"], "weights must be finite"),
        (["--adversary_weights", "0.1,nan"], "--adversary_weights must be finite"),
        (["--adversary_weights", "a"], "--adversary_weights must be a number or comma-separated numbers"),
        (["--sensitive_column", "nope"], "nope"),
        (["--label_column", "missing"], "missing"),
    ],
)
def test_bad_input_fails_before_training(tiny_model_dir, tiny_csv, tmp_path, extra, match):
    recipe = load_recipe()
    with pytest.raises(ValueError, match=match):
        recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path, *extra))


def test_single_valued_sensitive_attribute_is_refused(tiny_model_dir, tmp_path):
    csv = tmp_path / "one.csv"
    csv.write_text(
        "text,occupation,region\n" + "".join(f"text {i},{'ab'[i % 2]},north\n" for i in range(120))
    )
    recipe = load_recipe()
    with pytest.raises(ValueError, match="single value|one value|only one"):
        recipe.main(recipe_args(tiny_model_dir, csv, tmp_path / "out"))


def _fake_row(method: str, weight: float, seed: int, accuracy: float) -> dict:
    return {
        "method": method, "weight": weight, "seed": seed, "accuracy": accuracy, "macro_f1": accuracy / 2,
        "attacker_accuracy": 0.9, "majority_rate": 0.8, "leakage": 0.1, "leakage_ci_low": 0.05,
        "leakage_ci_high": 0.15, "tpr_gap": 0.1, "dp_diff": 0.2, "eo_diff": 0.3, "mi_estimate": 0.0,
    }  # fmt: skip


def test_merge_from_combines_runs_and_refuses_duplicates(tmp_path):
    recipe = load_recipe()
    parts = {
        "a": [_fake_row("none", 0.0, 0, 0.5), _fake_row("knife", 0.1, 0, 0.4)],
        "b": [_fake_row("adversarial", 0.1, 0, 0.3), _fake_row("knife", 0.1, 1, 0.6), _fake_row("none", 0.0, 1, 0.7)],
    }  # fmt: skip
    for name, rows in parts.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"runs": rows}))
    out = tmp_path / "merged"
    rows = recipe.main(["--merge_from", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--output_dir", str(out)])
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("none", 0), ("knife", 0), ("adversarial", 0), ("none", 1), ("knife", 1)
    ]  # fmt: skip
    summary = {(e["method"], e["weight"]): e for e in json.loads((out / "results.json").read_text())["summary"]}
    assert summary[("knife", 0.1)]["num_seeds"] == 2
    assert summary[("knife", 0.1)]["accuracy"] == pytest.approx(0.5)
    assert summary[("none", 0.0)]["accuracy"] == pytest.approx(0.6)
    assert (out / "tradeoff.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="appears twice"):
        recipe.main(["--merge_from", f"{tmp_path / 'a'},{tmp_path / 'a'}", "--output_dir", str(out)])
    with pytest.raises(FileNotFoundError, match="no results.json"):
        recipe.main(["--merge_from", str(tmp_path / "missing"), "--output_dir", str(out)])


def test_accelerate_launch_two_processes(tiny_model_dir, tiny_csv, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu` (gloo): both processes train, one reports."""
    import os
    import subprocess

    launcher = Path(sys.executable).parent / "accelerate"
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE),
               *recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", "--methods", "none,knife", "--use_cpu")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("=== knife") == 1  # the main process reports, once
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [(r["method"], r["weight"]) for r in rows] == [("none", 0.0), ("knife", 1.0)]


def test_check_task_refuses_empty_splits_and_non_class_labels():
    from datasets import Dataset, DatasetDict

    recipe = load_recipe()
    split = Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1], "gender": [0, 1]})
    assert recipe.check_task(DatasetDict(train=split, validation=split, test=split), "gender") == (2, 2)
    empty = split.select([])
    with pytest.raises(ValueError, match="the 'test' split is empty"):
        recipe.check_task(DatasetDict(train=split, validation=split, test=empty), "gender")
    floats = split.map(lambda row: {"label": row["label"] + 0.5})
    with pytest.raises(ValueError, match="labels must be integer class ids for classification, got dtype float"):
        recipe.check_task(DatasetDict(train=floats, validation=floats, test=floats), "gender")


# ---------------------------------------------------------------------------------------------- erasure, pooling, budgets
def test_erasure_methods_end_to_end(tiny_model_dir, tiny_csv, tmp_path):
    """Frozen leace / inlp and knife+leace (one training for knife and knife+leace), audited like every method."""
    pytest.importorskip("concept_erasure")
    from hf_knife.metrics.leakage import ATTACKERS

    recipe = load_recipe()
    rows = recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path, "--methods",
                                   "leace,inlp,none,knife,knife+leace,frozen", "--weights", "0.5",
                                   "--knife_num_components", "4", "--inlp_iterations", "5"))  # fmt: skip
    assert [(r["method"], r["weight"]) for r in rows] == [
        ("leace", 0.0), ("inlp", 0.0), ("frozen", 0.0), ("none", 0.0), ("knife", 0.5), ("knife+leace", 0.5)
    ]  # fmt: skip
    by_method = {r["method"]: r for r in rows}
    for row in rows:
        assert row["representation"] == "pooler"  # a plain BERT folder: not a sentence-transformers checkpoint
        assert {f"{a}_accuracy" for a in ATTACKERS} <= set(row)
        assert row["leakage"] == pytest.approx(max(row[f"{a}_accuracy"] for a in ATTACKERS) - row["majority_rate"])
        assert 0.0 <= row["accuracy"] <= 1.0
    for method in ("leace", "inlp", "knife+leace"):
        assert by_method[method]["erasure_rank"] >= (1 if method != "inlp" else 0)
        assert by_method[method]["head_C"] > 0
    assert by_method["knife+leace"]["train_time_s"] >= by_method["knife"]["train_time_s"]
    assert by_method["knife+leace"]["accuracy_before_erasure"] == pytest.approx(by_method["knife"]["accuracy"])
    assert "accuracy_before_erasure" not in by_method["leace"]  # frozen encoder: no own head
    assert by_method["frozen"]["head_C"] > 0 and "erasure_rank" not in by_method["frozen"]
    saved = json.loads((tmp_path / "results.json").read_text())
    audit = saved["runs"][0]["audit"]
    assert set(audit["attackers"]) == set(ATTACKERS) and "fit_seconds" in audit["attackers"]["gbt"]
    assert saved["config"]["representation_reason"].startswith("not a sentence-transformers checkpoint")
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert "audit" not in header and "svm_rbf_accuracy" in header


@pytest.mark.parametrize("representation", ["pooler", "mean"])
def test_push_to_hub_knife_leace_pushes_the_erased_model(tiny_model_dir, tiny_csv, tmp_path, fake_hub, representation):
    """With mean pooling the trained head reads mean(Z) (pool_into_head's identity layer) and LEACE replaces it."""
    pytest.importorskip("concept_erasure")
    import torch

    from hf_knife.erasure import AutoErasedModelForSequenceClassification

    recipe = load_recipe()
    recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", "--methods", "none,knife,knife+leace",
                            "--push_to_hub", "--hub_model_id", "me/fair", "--max_accuracy_drop", "1.0",
                            "--knife_num_components", "4", "--representation", representation))  # fmt: skip
    uploaded = fake_hub.target
    config = json.loads((uploaded / "config.json").read_text())
    assert config["erasure"]["method"] == "leace" and config["erasure"]["representation"] == representation
    card = (uploaded / "README.md").read_text()
    assert "Leakage audit" in card and "knife+leace" in card and "LEACE erasure layer" in card
    model = AutoErasedModelForSequenceClassification.from_pretrained(uploaded).eval()
    assert type(model).__name__ == "ErasedKNIFEBertForSequenceClassification"
    assert model.erasure.rank >= 1 and torch.count_nonzero(model.erasure.left) > 0


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--methods", "adversarial", "--targets", "0.01"], "adversarial take --adversary_weights"),
        (["--methods", "knife,adversarial+leace", "--targets", "0.01"], "adversarial\\+leace take --adversary_weights"),
        (["--adversary_lr", "0"], "--adversary_lr must be a finite number > 0"),
        (["--methods", "none", "--targets", "0.01"], "needs a method that takes a budget"),
        (["--methods", "knife", "--targets", "-0.5"], "finite budgets > 0"),
        (["--methods", "knife", "--targets", "a,b"], "comma-separated numbers"),
        (["--methods", "knife", "--targets", "0.01", "--knife_target", "0.02"], "not both"),
        (["--methods", "knife+pca"], "unknown method 'knife\\+pca'"),
        (["--audit_attackers", "logreg,forest"], "forest"),
        (["--classifier_input", "pooler"], "--classifier_input must be"),
    ],
)
def test_bad_options_fail_before_loading_data(tiny_model_dir, tiny_csv, tmp_path, monkeypatch, extra, match):
    recipe = load_recipe()
    monkeypatch.setattr(recipe, "load_task", lambda *a, **k: pytest.fail("loaded data despite bad options"))
    with pytest.raises(ValueError, match=match):
        recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path, *extra))


def test_leace_without_the_package_names_the_extra_before_training(tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    from hf_knife.erasure import MissingErasurePackageError

    recipe = load_recipe()
    monkeypatch.setitem(sys.modules, "concept_erasure", None)  # `import concept_erasure` raises ImportError
    monkeypatch.setattr(recipe, "load_task", lambda *a, **k: pytest.fail("loaded data before checking the package"))
    for methods in ("leace", "none,knife+leace"):
        with pytest.raises(MissingErasurePackageError, match=r'pip install "hf-knife\[erasure\]"'):
            recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path, "--methods", methods))


def test_targets_sweep_replaces_the_weight_sweep_for_knife(tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    recipe = load_recipe()
    plan = recipe.plan_runs(["none", "knife", "knife+inlp"], [0.1, 1.0], [0.005, 0.02])
    assert plan == [
        ("none", 0.0, None, ["none"]),
        ("knife", 0.1, 0.005, ["knife", "knife+inlp"]),
        ("knife", 0.1, 0.02, ["knife", "knife+inlp"]),
    ]
    assert recipe.plan_runs(["leace", "adversarial", "inlp"], [0.1, 0, 1.0], None) == [
        (None, 0.0, None, ["leace", "inlp"]), ("adversarial", 0.1, None, ["adversarial"]),
        ("adversarial", 1.0, None, ["adversarial"]),
    ]  # fmt: skip
    # the adversary sweeps its own weights; knife keeps --weights
    assert recipe.plan_runs(["knife", "adversarial", "adversarial+leace"], [1.0], None, [0.01, 0.03]) == [
        ("knife", 1.0, None, ["knife"]), ("adversarial", 0.01, None, ["adversarial", "adversarial+leace"]),
        ("adversarial", 0.03, None, ["adversarial", "adversarial+leace"]),
    ]  # fmt: skip
    seen = []
    real = recipe.knife_config_for

    def spy(*args, **kwargs):
        config = real(*args, **kwargs)
        seen.append((config.weight, config.target))
        return config

    monkeypatch.setattr(recipe, "knife_config_for", spy)
    rows = recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path, "--methods", "knife", "--targets", "0.005,0.02",
                                   "--weights", "0.3", "--knife_num_components", "4",
                                   "--audit_attackers", "logreg"))  # fmt: skip
    assert seen == [(0.3, 0.005), (0.3, 0.02)]
    assert [(r["method"], r["weight"], r["target"]) for r in rows] == [("knife", 0.3, 0.005), ("knife", 0.3, 0.02)]
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert [e["target"] for e in summary] == [0.005, 0.02]
    assert set(rows[0]) >= {"logreg_accuracy"} and "gbt_accuracy" not in rows[0]


def test_default_representation_detects_sentence_transformers_checkpoints(tiny_model_dir, tmp_path):
    from common.data import default_model_path

    recipe = load_recipe()
    representation, why = recipe.default_representation(str(default_model_path()))
    assert representation == "mean" and "sentence-transformers" in why and "modules.json" in why
    assert recipe.default_representation(str(tiny_model_dir))[0] == "pooler"
    cls_folder = tmp_path / "st-cls"
    (cls_folder / "1_Pooling").mkdir(parents=True)
    (cls_folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert recipe.default_representation(str(cls_folder)) == (
        "cls", "a sentence-transformers checkpoint (1_Pooling) pooling the [CLS] token"
    )  # fmt: skip
    assert recipe.default_representation("sentence-transformers/all-mpnet-base-v2")[0] == "mean"
    assert recipe.default_representation("bert-base-uncased")[0] == "pooler"


def test_check_task_refuses_a_single_group_in_the_test_split():
    from datasets import Dataset, DatasetDict

    recipe = load_recipe()
    split = Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1], "gender": [0, 1]})
    one_group = Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1], "gender": [1, 1]})
    with pytest.raises(ValueError, match="single value \\(1\\) in test"):
        recipe.check_task(DatasetDict(train=split, validation=split, test=one_group), "gender")


def test_recommend_selects_on_validation_and_prefers_the_cheaper_method():
    from common.fair_audit import recommend

    def entry(method, val_accuracy, val_leakage, accuracy=0.0, target=None, weight=0.0):
        return dict(method=method, weight=weight, target=target, val_accuracy=val_accuracy, val_leakage=val_leakage,
                    accuracy=accuracy)  # fmt: skip

    summary = [
        entry("none", 0.60, 0.15, accuracy=0.99),  # the best test accuracy must not matter
        entry("leace", 0.575, 0.010),
        entry("knife", 0.580, 0.005, target=0.01, weight=1.0),
        entry("adversarial", 0.50, 0.0, weight=1.0),
    ]
    best, reason = recommend(summary, max_leakage=0.02, max_accuracy_drop=0.01)
    assert best["method"] == "leace" and "leace" in reason  # within 0.01 of knife's 0.580 and cheaper
    best, reason = recommend(summary, max_leakage=0.02, max_accuracy_drop=0.001)
    assert best["method"] == "knife" and "target 0.01" in reason
    best, reason = recommend(summary, max_leakage=-0.01, max_accuracy_drop=0.01)
    assert best["method"] == "adversarial" and "no setting" in reason
    with pytest.raises(ValueError, match="no summary entry"):
        recommend([dict(method="none", weight=0.0, accuracy=0.5)], 0.02, 0.01)
    # the demo's case: 0.796 - 0.776 is +0.020 on paper and 0.020000000000000018 in floating point
    demo = [entry("none", 0.614, 0.138), entry("leace", 0.556, 0.008), entry("knife", 0.584, 0.796 - 0.776, weight=1.0)]
    assert 0.796 - 0.776 > 0.02
    best, reason = recommend(demo, max_leakage=0.02, max_accuracy_drop=0.02)
    assert best["method"] == "knife" and "others under it: leace 0.556" in reason
    best, reason = recommend(demo[:2], max_leakage=0.02, max_accuracy_drop=0.02)
    assert "no other setting is under it" in reason


def test_paired_differences_pair_seeds_and_skip_unpaired_references():
    from common.fair_audit import paired_differences

    rows = [dict(method=m, weight=w, target=None, seed=seed, accuracy=a, leakage=leak)
            for m, w, seed, a, leak in [("none", 0.0, 0, 0.50, 0.20), ("none", 0.0, 1, 0.60, 0.10),
                                     ("knife", 1.0, 0, 0.48, 0.02), ("knife", 1.0, 1, 0.59, 0.04),
                                     ("knife", 1.0, 2, 0.99, 0.00)]]  # fmt: skip
    (entry,) = paired_differences(rows)  # no leace rows: one reference
    assert (entry["method"], entry["reference"], entry["accuracy"]["n"]) == ("knife", "none", 2)  # seed 2 unpaired
    assert entry["accuracy"]["mean"] == pytest.approx(((0.48 - 0.50) + (0.59 - 0.60)) / 2)
    assert entry["leakage"]["mean"] == pytest.approx(((0.02 - 0.20) + (0.04 - 0.10)) / 2)
    low, high = entry["leakage"]["ci95"]
    assert low < entry["leakage"]["mean"] < high


@pytest.mark.parametrize("classifier_input", ["representation", "model"])
def test_trained_head_reads_the_pooled_representation(tiny_model_dir, tiny_csv, tmp_path, classifier_input):
    """--representation mean: the trained classifier's logits are its linear head on mean(Z) (the Z the penalty and
    the audit see); --classifier_input model keeps BERT's pooler path."""
    import numpy as np
    import torch
    from common.fair_audit import encode_splits
    from transformers import AutoTokenizer, HfArgumentParser

    recipe = load_recipe()
    parser = HfArgumentParser((recipe.FairClassificationArguments, recipe.KNIFETrainingArguments))
    script, args = parser.parse_args_into_dataclasses(args=recipe.RECIPE_DEFAULTS + recipe_args(
        tiny_model_dir, tiny_csv, tmp_path, "--representation", "mean", "--classifier_input", classifier_input))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data, sensitive = recipe.load_task(script, 0)
    tokenized = recipe.tokenize(data, tokenizer, script.max_length)
    model, _, _ = recipe.train_model("none", 0.0, None, 0, script, args, tokenized, sensitive, 3, tokenizer)
    z, own = encode_splits(model.eval(), tokenized, tokenizer, "mean", 16)
    head = model.classifier
    with torch.no_grad():
        on_z = head(torch.from_numpy(z["test"])).argmax(-1).numpy()  # the head applied to mean(Z)
    if classifier_input == "representation":
        assert model.config.erasure["method"] == "identity"
        np.testing.assert_array_equal(own["test"], on_z)
    else:
        assert not hasattr(model, "erasure")


def test_the_adversary_gets_its_own_learning_rate_and_knife_keeps_the_estimators(tmp_path):
    from types import SimpleNamespace

    from hf_knife.trainer import KNIFETrainingArguments

    recipe = load_recipe()
    args = KNIFETrainingArguments(output_dir=str(tmp_path), knife_estimator_lr=0.02, report_to="none", use_cpu=True)
    script = SimpleNamespace(representation="mean", adversary_hidden_dim=16, adversary_lr=3e-4)
    adversary = recipe.knife_config_for("adversarial", 0.03, args, script, "gender")
    assert (adversary.penalty, adversary.weight, adversary.estimator_lr) == ("adversarial", 0.03, 3e-4)
    assert adversary.hidden_dims == [16]
    knife = recipe.knife_config_for("knife", 1.0, args, script, "gender")
    assert (knife.penalty, knife.estimator_lr) == ("mutual_information", 0.02)
