"""Train / validation / test splits of ``recipes/fine_tuning.py`` over ``common.data`` (offline BBC News and
20 Newsgroups, Hub datasets, local files), and their tokenisation."""

from __future__ import annotations

import logging

from common.data import load_20newsgroups, load_bbc_news, load_text_classification

logger = logging.getLogger("fine_tuning")

OFFLINE = ("bbc_news", "20newsgroups")
#: Default validation / test sizes of the offline datasets (small: every epoch is evaluated on validation).
OFFLINE_SIZES = {"bbc_news": (100, 500), "20newsgroups": (400, 1000)}


def load_splits(script, seed: int):
    """Train / validation / test for one seed (validation and test depend only on ``--split_seed``)."""
    from datasets import ClassLabel

    per_class, total = script.num_train_per_class, script.num_train_samples
    if total is not None:
        per_class = None
    name = script.dataset_name
    if script.train_file is None and name in OFFLINE:
        if script.task == "regression":
            raise ValueError(
                f"{name} is a classification dataset (class labels); it cannot be used with --task regression"
            )
        if script.text_pair_column is not None:
            raise ValueError(f"{name} has a single text column; --text_pair_column does not apply")
        if (script.text_column, script.label_column) != ("text", "label"):
            raise ValueError(
                f"{name} has the columns 'text' and 'label'; do not set --text_column / --label_column"
            )
        default_val, default_test = OFFLINE_SIZES[name]
        loader = load_bbc_news if name == "bbc_news" else load_20newsgroups
        classes = 5 if name == "bbc_news" else 20
        if total is not None and total < classes:
            raise ValueError(
                f"--num_train_samples {total} is fewer than the {classes} classes of {name}: every class needs at "
                "least one training example"
            )
        data = loader(
            per_class,
            train_size=total,
            validation_size=script.validation_size or default_val,
            test_size=script.test_size or default_test,
            seed=seed,
            split_seed=script.split_seed,
        )
        task = "classification"
    else:
        if script.train_file is None and name is None:
            raise ValueError("give --dataset_name (offline name, Hub id or folder) or --train_file")
        data_files = None
        if script.train_file is not None:
            data_files = {"train": script.train_file}
            for split, path in (("validation", script.validation_file), ("test", script.test_file)):
                if path is not None:
                    data_files[split] = path
            name = None
        common = dict(
            text_column=script.text_column,
            text_pair_column=script.text_pair_column,
            label_column=script.label_column,
        )
        task = script.task
        if task == "auto":  # a first load without subsampling tells whether the labels are classes or numbers
            probe = load_text_classification(
                name, script.dataset_config_name, data_files, **common, task="auto", validation_size=0.1,
                test_size=0.2, split_seed=script.split_seed,
            )  # fmt: skip
            task = (
                "classification" if isinstance(probe["train"].features["label"], ClassLabel) else "regression"
            )
            if task == "regression" and script.num_train_per_class is not None and total is None:
                logger.warning(
                    "numeric labels: a regression task; --num_train_per_class is ignored (see --num_train_samples)"
                )
        if task == "regression" and total is None:
            per_class = None  # per-class sampling means nothing for a numeric target: use all (or --num_train_samples)
        data = load_text_classification(
            name,
            script.dataset_config_name,
            data_files,
            **common,
            task=task,
            validation_size=script.validation_size or 0.1,
            test_size=script.test_size or 0.2,
            train_size=total,
            num_train_per_class=per_class,
            max_validation_samples=script.validation_size,
            max_test_samples=script.test_size,
            split_seed=script.split_seed,
            seed=seed,
        )
    if "validation" not in data or "test" not in data:
        raise ValueError(f"need separate validation and test splits, got {sorted(data)}")
    if task == "classification":
        num_classes = data["train"].features["label"].num_classes
        if len(data["train"]) < num_classes:
            raise ValueError(
                f"the training split has {len(data['train'])} examples but there are {num_classes} classes: every "
                "class needs at least one training example (raise --num_train_samples)"
            )
    return data, task


def tokenize(dataset, tokenizer, max_length: int, pair: bool):
    def encode(batch):
        args = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    columns = [c for c in dataset.column_names if c != "label"]
    out = dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")
    return out.rename_column("label", "labels")


#: Text columns of the GLUE tasks (used when --dataset_name glue and --text_column is left at 'text').
GLUE_COLUMNS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}  # fmt: skip


def apply_dataset_defaults(script):
    """GLUE: fill the text columns of the task (STS-B's float labels then make it a regression)."""
    name, config = (script.dataset_name or "").lower(), (script.dataset_config_name or "").lower()
    if script.train_file is None and name in ("glue", "nyu-mll/glue") and config in GLUE_COLUMNS:
        if script.text_column == "text" and script.text_pair_column is None:
            script.text_column, script.text_pair_column = GLUE_COLUMNS[config]
    return script
