"""The low-resource fine-tuning recipe (recipes/fine_tuning.py) end to end on a tiny BERT and tiny local datasets."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("fine_tuning_recipe", ROOT / "recipes" / "fine_tuning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ft = _load_recipe()

TOPICS = {
    "animals": "cat dog pet fur paw",
    "cars": "car road wheel engine brake",
    "food": "apple fruit pear juice bread",
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny BERT (hidden 32, 2 layers) with the MiniLM tokenizer, and three tiny csv datasets."""
    from common.data import default_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("fine_tuning")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    names = sorted(TOPICS)

    def sentence(topic):
        return " ".join(rng.choice(TOPICS[topic].split(), 5)) + " the end"

    classes = [names[c] for c in rng.integers(0, 3, 72)]
    pd.DataFrame({"text": [sentence(t) for t in classes], "label": classes}).to_csv(
        root / "cls.csv", index=False
    )
    # STS-B style: a sentence pair and a similarity score in [0, 5]
    a, b = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    score = np.where(a == b, 4.0, 1.0) + rng.uniform(-0.5, 0.5, 60)
    pd.DataFrame(
        {
            "s1": [sentence(names[i]) for i in a],
            "s2": [sentence(names[j]) for j in b],
            "score": score.round(3),
        }
    ).to_csv(root / "sts.csv", index=False)
    # MRPC style: a sentence pair and a binary label
    pd.DataFrame(
        {
            "s1": [sentence(names[i]) for i in a],
            "s2": [sentence(names[j]) for j in b],
            "same": (a == b).astype(int),
        }
    ).to_csv(root / "pairs.csv", index=False)
    return root


def _argv(assets, out, *extra):
    return [
        "--model_name_or_path", str(assets / "model"), "--output_dir", str(out), "--max_steps", "2",
        "--max_length", "16", "--per_device_train_batch_size", "4", "--use_cpu", "--disable_tqdm", "true",
        "--knife_init_num_samples", "16", "--knife_inner_steps", "2", "--knife_num_components", "4",
        "--bottleneck_dim", "8", *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------- end to end
def test_classification_all_methods_paired_seeds(assets, tmp_path):
    out = tmp_path / "cls"
    argv = _argv(assets, out, "--train_file", str(assets / "cls.csv"), "--num_train_per_class", "4",
                 "--seeds", "1,2", "--validation_size", "12", "--test_size", "12")  # fmt: skip
    payload = ft.main(argv)
    rows = payload["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        (m, s) for s in (1, 2) for m in ("none", "vib", "knife")
    ]
    assert all(r["num_train"] == 12 and r["steps"] == 2 for r in rows)
    assert all(0 <= r["test_accuracy"] <= 1 and math.isfinite(r["validation_accuracy"]) for r in rows)
    knife = [r for r in rows if r["method"] == "knife"]
    assert all(math.isfinite(r["final_knife_logs"]["knife/mutual_information"]) for r in knife)
    vib = [r for r in rows if r["method"] == "vib"]
    assert all("knife/vib_kl" in r["final_knife_logs"] for r in vib)
    assert all(r["beta"] == 0.001 for r in knife) and all(r["beta"] == 0.01 for r in vib)
    assert all(r["anneal_steps"] == 1 for r in knife + vib)  # 30% of 2 steps, rounded
    summary = payload["summary"]
    assert summary["metric"] == "accuracy" and set(summary["methods"]) == {"none", "vib", "knife"}
    diff = summary["paired_difference_to_none"]["knife"]
    by = {(r["method"], r["seed"]): r["test_accuracy"] for r in rows}
    assert diff["differences"] == [by["knife", s] - by["none", s] for s in (1, 2)]
    assert len(diff["ci95"]) == 2 and payload["complete"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["methods"]["none"]["n"] == 2
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and {"method", "seed", "test_accuracy", "best_epoch"} <= set(table.columns)
    assert (out / "results.png").stat().st_size > 1000
    assert "| knife |" in (out / "summary.md").read_text()
    assert not (out / "runs").exists()  # nothing saved per run unless pushed
    # --resume: the none / vib runs are reused (same setting, seed and beta); knife (new beta) and seed 3 run
    resumed = ft.main([*argv[:-6], "--seeds", "1,2,3", "--validation_size", "12", "--test_size", "12",
                       "--resume", "--beta", "0.02", "--vib_beta", "0.01"])  # fmt: skip
    reused = {(r["method"], r["seed"]) for r in resumed["rows"] if r.get("reused")}
    assert reused == {(m, s) for m in ("none", "vib") for s in (1, 2)} and len(resumed["rows"]) == 9
    assert all(r["beta"] == 0.02 for r in resumed["rows"] if r["method"] == "knife")
    with pytest.raises(ValueError, match="different setting.*max_length"):
        ft.main([*argv, "--resume", "--max_length", "12"])
    saved = json.loads((out / "results.json").read_text())
    # an interrupted run (knife missing for seed 2): --report_only summarises the seeds every method finished
    saved["rows"] = [r for r in saved["rows"] if (r["method"], r["seed"]) != ("knife", 2)]
    (out / "results.json").write_text(json.dumps(saved))
    partial = ft.main(["--output_dir", str(out), "--report_only"])
    assert partial["summary"]["complete_seeds"] == [1, 3] and partial["summary"]["methods"]["none"]["n"] == 2
    assert len(pd.read_csv(out / "results.csv")) == 8


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_frozen_probe_reads_the_pretrained_pooled_vectors_in_the_same_table(assets, tmp_path, pooling):
    """``frozen``: a logistic-regression probe on the untouched encoder's pooled vectors, paired with ``none``."""
    out = tmp_path / "frozen"
    payload = ft.main(_argv(assets, out, "--train_file", str(assets / "cls.csv"), "--num_train_per_class", "4",
                            "--seeds", "1,2", "--validation_size", "12", "--test_size", "12", "--no_plot",
                            "--methods", "frozen,none", "--pooling", pooling))  # fmt: skip
    frozen = [r for r in payload["rows"] if r["method"] == "frozen"]
    assert [r["seed"] for r in frozen] == [1, 2] and all(r["steps"] == 0 and r["probe_C"] > 0 for r in frozen)
    assert all(0 <= r["test_accuracy"] <= 1 and 0 <= r["validation_accuracy"] <= 1 for r in frozen)
    by = {(r["method"], r["seed"]): r["test_accuracy"] for r in payload["rows"]}
    diff = payload["summary"]["paired_difference_to_none"]["frozen"]
    assert diff["differences"] == [by["frozen", s] - by["none", s] for s in (1, 2)]
    assert not (out / "runs").exists()
    # the vectors are the pre-trained encoder's masked mean (or first token) of the last hidden state
    tokenizer = ft.AutoTokenizer.from_pretrained(assets / "model")
    template = ft.build_template(str(assets / "model"), 3, "classification", pooling, 8).eval()
    texts = ["alice met bob", "a much longer sentence about carol and dave"]
    dataset = ft.tokenize(Dataset.from_dict({"text": texts, "label": [0, 1]}), tokenizer, 16, False)
    shared = ft.Shared(ft.ScriptArguments(pooling=pooling), ft.FineTuningArguments(output_dir=str(tmp_path)),
                       "accuracy", tokenizer, None, None, template, None, "none", 1)  # fmt: skip
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = template.backbone(**batch).last_hidden_state  # [2, T, d]
    mask = batch["attention_mask"].unsqueeze(-1).float()  # [2, T, 1]
    expected = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(ft.pooled_vectors(shared, dataset), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_regression_sentence_pairs(assets, tmp_path):
    """STS-B style: numeric labels -> regression (MSE head, Pearson / Spearman), token_type_ids for the pair."""
    out = tmp_path / "sts"
    argv = _argv(assets, out, "--train_file", str(assets / "sts.csv"), "--text_column", "s1",
                 "--text_pair_column", "s2", "--label_column", "score", "--num_train_samples", "16",
                 "--seeds", "3", "--validation_size", "10", "--test_size", "10", "--no_plot")  # fmt: skip
    payload = ft.main(argv)
    assert payload["setting"]["task"] == "regression" and payload["setting"]["num_labels"] == 1
    assert payload["summary"]["metric"] == "pearson"
    for row in payload["rows"]:
        assert {"test_pearson", "test_spearman", "test_mse"} <= set(row)
    assert not (out / "results.png").exists()


def test_sentence_pair_classification_uses_both_texts(assets, tmp_path):
    out = tmp_path / "pairs"
    argv = _argv(assets, out, "--train_file", str(assets / "pairs.csv"), "--text_column", "s1",
                 "--text_pair_column", "s2", "--label_column", "same", "--num_train_per_class", "6",
                 "--seeds", "1", "--methods", "knife", "--metric", "macro_f1", "--validation_size", "10",
                 "--test_size", "10")  # fmt: skip
    payload = ft.main(argv)
    assert payload["setting"]["task"] == "classification" and payload["summary"]["metric"] == "macro_f1"
    script, _ = ft.parse_args(argv)
    data, _ = ft.load_splits(script, 1)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(assets / "model")
    encoded = ft.tokenize(data["train"], tokenizer, 32, pair=True)
    assert set(encoded[0]["token_type_ids"]) == {0, 1}  # both sentences reach the model


def test_pairing_same_subset_and_initialisation_per_seed(assets):
    script, _ = ft.parse_args(["--train_file", str(assets / "cls.csv"), "--num_train_per_class", "3",
                               "--validation_size", "9", "--test_size", "9"])  # fmt: skip
    a1, a2, b = (ft.load_splits(script, s)[0] for s in (1, 1, 2))
    assert a1["train"]["text"] == a2["train"]["text"] and a1["train"]["text"] != b["train"]["text"]
    assert a1["test"]["text"] == b["test"]["text"] and a1["validation"]["text"] == b["validation"]["text"]
    assert not set(a1["validation"]["text"]) & set(a1["test"]["text"])
    template = ft.build_template(str(assets / "model"), 3, "classification", "mean", 8)
    heads = []
    for seed in (1, 1, 2):
        model = __import__("copy").deepcopy(template)
        model.reset_head(seed)
        heads.append(torch.cat([model.bottleneck.weight.flatten(), model.classifier.weight.flatten()]))
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_dataset_alias_and_defaults():
    script, training = ft.parse_args(["--dataset", "20newsgroups", "--seeds", "1,2,3,4,5"])
    assert script.dataset_name == "20newsgroups" and ft.check_script_arguments(script)[1] == [1, 2, 3, 4, 5]
    assert training.eval_strategy == "epoch" and training.save_strategy == "no"
    assert script.bottleneck_dim == 64 and script.pooling == "mean"
    glue, _ = ft.parse_args(["--dataset_name", "glue", "--dataset_config_name", "stsb"])
    ft.apply_dataset_defaults(glue)
    assert (glue.text_column, glue.text_pair_column, glue.task) == ("sentence1", "sentence2", "auto")


# ---------------------------------------------------------------------------- the Gaussian head
def test_conditional_entropy_of_the_gaussian_head_matches_torch_distributions(tmp_path):
    """h(Z|X) = mean_n sum_j log sigma_nj + d/2 log(2 pi e), with sigma depending on x (the existing penalty test
    covers a constant sigma against the formula only)."""
    from hf_knife.penalties import build_penalty
    from hf_knife.trainer import KNIFETrainingArguments

    torch.manual_seed(0)
    d = 6
    args = KNIFETrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", knife_num_components=3,
                                  knife_penalty="information_bottleneck", knife_ib_init_sigma=0.3)  # fmt: skip
    penalty = build_penalty(args.to_knife_config(), d)
    with torch.no_grad():
        penalty.head.log_sigma.weight.normal_(0, 0.3)
    h = torch.randn(32, d)
    penalty.init_from_samples(h)
    penalty.train()
    z, extra = penalty.transform(h)
    out = penalty(z, **extra)
    sigma = penalty.head.log_sigma(h).exp()
    oracle = torch.distributions.Normal(h, sigma).entropy().sum(1).mean()
    torch.testing.assert_close(out.metrics["conditional_entropy"], oracle, rtol=1e-5, atol=1e-5)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(h, sigma), torch.distributions.Normal(torch.zeros_like(h), 1.0)
    )
    torch.testing.assert_close(out.metrics["vib_kl"], kl.sum(1).mean(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_file", "{cls}", "--num_train_samples", "2"], "3 classes|every class|at least one"),
        (["--dataset", "bbc_news", "--num_train_samples", "3"], "fewer than the 5 classes"),
        (["--train_file", "{sts}", "--text_column", "s1", "--label_column", "score", "--metric", "accuracy"],
         "classification metric but the task is regression"),
        (["--train_file", "{cls}", "--metric", "pearson"], "regression metric but the task is classification"),
        (["--train_file", "{sts}", "--text_column", "s1", "--label_column", "score", "--task", "classification"],
         "regression target, but a classification task"),
        (["--train_file", "{cls}", "--task", "regression", "--num_train_samples", "10"], "regression needs numeric"),
        (["--train_file", "{cls}", "--text_column", "body"], r"column\(s\) \['body'\] not found"),
        (["--train_file", "{pairs}", "--text_column", "s1", "--text_pair_column", "s3", "--label_column", "same"],
         r"\['s3'\] not found"),
        (["--train_file", "{cls}", "--methods", "none,ib"], "unknown method"),
        (["--train_file", "{cls}", "--seeds", "1,x"], "comma-separated integers"),
        (["--train_file", "{cls}", "--knife_penalty", "mutual_information"], "information bottleneck"),
        (["--train_file", "{cls}", "--beta", "0.001,-1"], "--beta must be finite numbers >= 0"),
        (["--train_file", "{cls}", "--vib_beta", "0.01,x"], "--vib_beta must be a number or comma-separated"),
        (["--train_file", "{cls}", "--beta", "0.1,0.1"], "--beta has duplicates"),
        (["--train_file", "{sts}", "--text_column", "s1", "--label_column", "score", "--methods", "frozen,none"],
         "frozen is a logistic-regression probe: it needs a classification task, not regression"),
    ],
)  # fmt: skip
def test_bad_input_fails_before_training(assets, tmp_path, extra, message):
    files = {"cls": assets / "cls.csv", "sts": assets / "sts.csv", "pairs": assets / "pairs.csv"}
    extra = [e.format(**files) for e in extra]
    with pytest.raises(ValueError, match=message):
        ft.main(_argv(assets, tmp_path / "out", *extra))
    assert not (tmp_path / "out" / "runs").exists()


# ---------------------------------------------------------------------------- Hub
def test_push_to_hub_pushes_the_chosen_run_and_it_reloads(assets, tmp_path, fake_hub):
    out = tmp_path / "push"
    argv = _argv(assets, out, "--train_file", str(assets / "cls.csv"), "--num_train_per_class", "3",
                 "--seeds", "1", "--methods", "none,knife", "--push_to_hub", "--hub_model_id", "ft-test",
                 "--validation_size", "9", "--test_size", "9", "--no_plot")  # fmt: skip
    ft.main(argv)
    hub = tmp_path / "hub"
    assert (hub / "model.safetensors").is_file() and (hub / "knife_config.json").is_file()
    from hf_knife.config import KNIFEConfig

    assert KNIFEConfig.from_pretrained(hub).information_bottleneck.estimator == "knife"  # --push_method: the last
    assert fake_hub.uploads and all(repo == "user/ft-test" for repo in fake_hub.uploads)
    uploads_before = len(fake_hub.uploads)
    from common.bottleneck import load_model

    model = load_model(hub).eval()
    assert model.knife_config.module_name == "bottleneck"
    ids = torch.tensor([[101, 2000, 2001, 102]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
    # a grid of weights for the pushed method is refused before training: choose the weight first
    with pytest.raises(ValueError, match="grid of weights for knife"):
        ft.main([*argv, "--beta", "0.001,0.01"])
    assert len(fake_hub.uploads) == uploads_before


# ---------------------------------------------------------------------------- seed statistics (recipes/common/stats.py)
def test_seed_statistics_match_scipy():
    """The one home of the recipes' seed statistics: t-interval, paired differences, mean / std tables."""
    from common.stats import describe, paired_difference, summarise, t_interval
    from scipy import stats

    values = [0.71, 0.74, 0.69, 0.80]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    d = describe(values)
    assert (d.n, d.mean, d.std) == (4, pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)))
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert t_interval([0.5, math.nan])[0] == 0.5 and all(math.isnan(v) for v in t_interval([0.5])[1:])
    assert all(math.isnan(v) for v in t_interval([]))
    diff = paired_difference({1: 0.8, 2: 0.7, 3: 0.9}, {1: 0.6, 2: 0.65, 4: 0.1})
    assert diff["seeds"] == [1, 2] and diff["differences"] == pytest.approx([0.2, 0.05]) and diff["n"] == 2
    assert diff["ci95"][0] < diff["mean"] < diff["ci95"][1] and diff["above_zero"] is False  # 2 seeds: wide
    rows = [{"k": "a", "v": 1.0}, {"k": "b", "v": 2.0}, {"k": "a", "v": 3.0}, {"k": "b", "v": None}]
    assert summarise(rows, ["k"], ["v"]) == [
        {"k": "a", "num_seeds": 2, "v_mean": 2.0, "v_std": pytest.approx(math.sqrt(2))},
        {"k": "b", "num_seeds": 2, "v_mean": 2.0, "v_std": 0.0},  # one value: std 0 (synthetic tables)
    ]


# ---------------------------------------------------------------------------- a weight grid chosen on validation
def test_select_betas_reads_validation_only_over_common_seeds():
    from common.paired_report import select_betas

    def row(method, beta, seed, val, test):
        return {"method": method, "beta": beta, "seed": seed, "validation_accuracy": val, "test_accuracy": test}

    rows = [
        row("none", None, 1, 0.50, 0.50), row("none", None, 2, 0.52, 0.52),
        row("knife", 0.1, 1, 0.60, 0.10), row("knife", 0.1, 2, 0.58, 0.10),  # best on validation, worst on test
        row("knife", 1.0, 1, 0.55, 0.90), row("knife", 1.0, 2, 0.56, 0.90),
        row("knife", 1.0, 3, 0.99, 0.90),  # seed 3 only for 1.0: not comparable, not counted
        row("vib", 0.01, 1, 0.40, 0.4), row("vib", 0.03, 1, 0.40, 0.5),  # a tie: the first weight run
    ]  # fmt: skip
    chosen, selection = select_betas(rows, "accuracy")
    assert selection["knife"]["chosen"] == 0.1 and selection["knife"]["seeds"] == [1, 2]
    assert selection["knife"]["validation_mean"] == {0.1: pytest.approx(0.59), 1.0: pytest.approx(0.555)}
    assert selection["vib"]["chosen"] == 0.01 and selection["none"]["chosen"] is None
    assert [(r["method"], r["beta"], r["seed"]) for r in chosen] == [
        ("none", None, 1), ("none", None, 2), ("knife", 0.1, 1), ("knife", 0.1, 2), ("vib", 0.01, 1)
    ]  # fmt: skip


def test_a_beta_grid_trains_every_weight_and_reports_the_validation_choice(assets, tmp_path):
    out = tmp_path / "grid"
    argv = _argv(assets, out, "--train_file", str(assets / "cls.csv"), "--num_train_per_class", "4",
                 "--seeds", "1,2", "--validation_size", "12", "--test_size", "12", "--methods", "none,knife",
                 "--beta", "0.001,0.5")  # fmt: skip
    payload = ft.main(argv)
    rows = payload["rows"]
    assert [(r["method"], r["beta"], r["seed"]) for r in rows] == [
        (m, b, s) for s in (1, 2) for m, b in (("none", None), ("knife", 0.001), ("knife", 0.5))
    ]
    means = {b: np.mean([r["validation_accuracy"] for r in rows if r["beta"] == b]) for b in (0.001, 0.5)}
    best = max((0.001, 0.5), key=lambda b: (means[b], b == 0.001))  # ties: the first weight
    selection = payload["beta_selection"]["knife"]
    assert selection["chosen"] == best and selection["validation_mean"] == {b: pytest.approx(means[b]) for b in means}
    by = {(r["method"], r["seed"]): r["test_accuracy"] for r in rows if r["beta"] in (None, best)}
    diff = payload["summary"]["paired_difference_to_none"]["knife"]
    assert diff["differences"] == [by["knife", s] - by["none", s] for s in (1, 2)]
    assert payload["summary"]["methods"]["knife"]["n"] == 2
    # every run stays in the files; the summary and --report_only use the chosen weight
    assert len(pd.read_csv(out / "results.csv")) == 6
    again = ft.main(["--output_dir", str(out), "--report_only"])
    assert again["beta_selection"]["knife"]["chosen"] == best
    assert again["summary"]["paired_difference_to_none"]["knife"]["differences"] == diff["differences"]
    # --resume reuses every (method, seed, beta) already run
    resumed = ft.main([*argv, "--resume"])
    assert all(r.get("reused") for r in resumed["rows"])


def test_merge_from_joins_methods_run_in_parallel_processes(assets, tmp_path):
    common = ["--train_file", str(assets / "cls.csv"), "--num_train_per_class", "4", "--seeds", "1,2",
              "--validation_size", "12", "--test_size", "12", "--no_plot"]  # fmt: skip
    a = ft.main(_argv(assets, tmp_path / "a", *common, "--methods", "none,vib", "--vib_beta", "0.01,0.1"))
    b = ft.main(_argv(assets, tmp_path / "b", *common, "--methods", "knife"))
    merged = ft.main(["--merge_from", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--output_dir", str(tmp_path / "m"),
                      "--no_plot"])  # fmt: skip
    assert merged["setting"]["methods"] == ["none", "vib", "knife"] and len(merged["rows"]) == 8
    assert merged["beta_selection"]["vib"] == a["beta_selection"]["vib"]
    by = {(r["method"], r["seed"]): r["test_accuracy"] for r in a["rows"] + b["rows"]
          if r["method"] != "vib" or r["beta"] == a["beta_selection"]["vib"]["chosen"]}  # fmt: skip
    for method in ("vib", "knife"):
        diff = merged["summary"]["paired_difference_to_none"][method]
        assert diff["differences"] == [by[method, s] - by["none", s] for s in (1, 2)]
    assert "paired_difference_knife_minus_vib" in merged["summary"]
    with pytest.raises(ValueError, match="repeats the run"):
        ft.main(["--merge_from", f"{tmp_path / 'a'},{tmp_path / 'a'}", "--output_dir", str(tmp_path / "m2")])
    other = ft.main(_argv(assets, tmp_path / "c", *common, "--methods", "knife", "--bottleneck_dim", "6"))
    assert other["rows"]
    with pytest.raises(ValueError, match="different setting.*bottleneck_dim"):
        ft.main(["--merge_from", f"{tmp_path / 'a'},{tmp_path / 'c'}", "--output_dir", str(tmp_path / "m3")])
