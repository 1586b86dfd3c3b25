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
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hf_knife.data import default_model_path

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
        recipe_args(tiny_model_dir, tiny_csv, tmp_path, "--weights", "0.5,2", "--knife_num_components", "4")
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
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"method", "weight", "accuracy", "macro_f1", "leakage", "tpr_gap", "train_time_s"} <= set(header)
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000


def test_push_to_hub_card_reports_the_audit(tiny_model_dir, tiny_csv, tmp_path, fake_hub):
    """--push_to_hub pushes the knife model with an audit section in its card (fake Hub)."""
    recipe = load_recipe()
    recipe.main(recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", "--methods", "none,knife", "--push_to_hub",
                            "--hub_model_id", "me/fair", "--max_accuracy_drop", "1.0"))  # fmt: skip
    uploaded = fake_hub.target
    card = (uploaded / "README.md").read_text()
    assert "Leakage audit" in card and "knife" in card
    assert (uploaded / "knife_config.json").exists()


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--methods", "none,fair"], "unknown method 'fair'"),
        (["--weights", "-1"], "weights must be finite"),
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
