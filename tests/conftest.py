"""Shared fixtures: tiny models built from configs, synthetic token data, quiet offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

VOCAB = 64
SEQ_LEN = 12


def tiny_config(
    arch: str = "bert", num_labels: int = 2, dropout: float = 0.0, initializer_range: float = 0.2
):
    """A 2-layer, hidden-32 config of ``arch`` ('bert', 'roberta' or 'distilbert').

    ``initializer_range=0.2``: with the usual 0.02, a random tiny model maps every input to nearly the same [CLS]
    state (spread 0.003, where pretrained models have spreads near 1), an unrealistic start for a density estimator.
    """
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=40,
            dropout=dropout, attention_dropout=dropout, seq_classif_dropout=dropout, num_labels=num_labels,
            initializer_range=initializer_range,
        )  # fmt: skip
    cls = {"bert": BertConfig, "roberta": RobertaConfig}[arch]
    extra = {"pad_token_id": 1} if arch == "roberta" else {}
    return cls(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        num_labels=num_labels, initializer_range=initializer_range, **extra,
    )  # fmt: skip


def tiny_model(arch: str = "bert", seed: int = 0, **kwargs):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, **kwargs))


def synthetic_dataset(
    n: int = 64, seed: int = 0, sensitive_strength: float = 1.0, label_from_sensitive: float = 0.0
):
    """Token data with a binary label and a binary sensitive column ``gender``.

    The label sets a token at a random position (the real signal); ``gender`` sets token 5 or 6 at position 1
    with probability ``sensitive_strength`` (else a random token). With ``label_from_sensitive = p`` the label
    equals ``gender`` with probability ``p`` and is independent of it otherwise.
    """
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    gender = torch.randint(0, 2, (n,), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    tie = torch.rand(n, generator=g) < label_from_sensitive
    labels = torch.where(tie, gender, labels)
    ids = torch.randint(10, VOCAB, (n, SEQ_LEN), generator=g)
    ids[:, 0] = 2  # [CLS]-like start token
    shown = torch.rand(n, generator=g) < sensitive_strength
    ids[:, 1] = torch.where(shown, 5 + gender, ids[:, 1])
    pos = torch.randint(2, SEQ_LEN, (n,), generator=g)
    ids[torch.arange(n), pos] = 3 + labels
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones(n, SEQ_LEN, dtype=torch.long).tolist(),
            "labels": labels.tolist(),
            "gender": gender.tolist(),
        }
    )


def training_args(output_dir, **kwargs):
    from hf_knife.trainer import KNIFETrainingArguments

    defaults = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16, max_steps=4,
        learning_rate=1e-3, report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
    )  # fmt: skip
    defaults.update(kwargs)
    return KNIFETrainingArguments(**defaults)


def train_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


class FakeHfApi:
    """Offline stand-in for ``transformers.trainer.hf_api()``: uploads are copied into ``target``."""

    def __init__(self, target):
        self.target, self.uploads = target, []

    def create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=f"user/{repo_id}")

    def upload_folder(
        self, repo_id, folder_path, run_as_future=False, path_in_repo=None, ignore_patterns=(), **kw
    ):
        import concurrent.futures
        import shutil
        from types import SimpleNamespace

        shutil.copytree(folder_path, self.target / (path_in_repo or ""), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*(ignore_patterns or ())))  # fmt: skip
        self.uploads.append(repo_id)
        if run_as_future:
            future = concurrent.futures.Future()
            future.set_result(None)
            return future
        return SimpleNamespace(repo_id=repo_id)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Patch every Trainer Hub call (``transformers.trainer.hf_api``); the fake's ``target`` holds the uploads."""
    import transformers.trainer

    fake = FakeHfApi(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *args, **kwargs: fake)
    return fake


@pytest.fixture
def dataset():
    return synthetic_dataset()


#: A knife_config.json as hf_knife 0.1.0 wrote it (flat per-penalty keys, before the nested options).
LEGACY_FILE = {
    "anneal_steps": 0, "bandwidth_bounds": None, "budget_rate": 0.3, "budget_smoothing": 0.5, "check_finite": True,
    "covariance": "diagonal", "discrete_fit": "posterior", "discrete_marginal": "mixture", "entropy_direction": "raise",
    "estimator_lr": 0.01, "gather_features": False, "hf_knife_version": "0.1.0", "hidden_dims": [128, 128],
    "ib_estimator": "vib", "ib_init_sigma": 0.2, "init_from_data": True, "init_num_samples": 256, "inner_steps": 10,
    "layer": None, "module_name": None, "num_components": 16, "num_sensitive_classes": 2, "penalty": "mutual_information",
    "positive_part": False, "projection_dim": None, "rank": None, "representation": "cls", "sensitive_column": "gender",
    "sensitive_dim": 1, "sensitive_type": "discrete", "standardize": True, "target": 0.2, "warmup_steps": 0,
    "weight": 1.0,
}  # fmt: skip
