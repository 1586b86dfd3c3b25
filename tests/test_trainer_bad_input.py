"""Bad input through KNIFETrainer, end to end: each fails with an error that says what was wrong and what was
expected, when the trainer is built or at the latest at the first step (never late, never a silent NaN)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from conftest import SEQ_LEN, synthetic_dataset, tiny_model, training_args
from transformers import default_data_collator

from hf_knife.config import KNIFEConfig
from hf_knife.distributed import check_gather
from hf_knife.modeling import get_knife_module
from hf_knife.trainer import KNIFETrainer

SOURCE = r"the representation Z \(cls of layer 2 of KNIFEBertForSequenceClassification\)"


def _config(penalty: str = "mutual_information", **kwargs) -> KNIFEConfig:
    return KNIFEConfig(penalty=penalty, sensitive_column="gender", num_components=4, inner_steps=1, **kwargs)


def _trainer(tmp_path, knife_config, dataset, model=None, **args) -> KNIFETrainer:
    return KNIFETrainer(
        model=model if model is not None else tiny_model("bert"),
        args=training_args(tmp_path, **args),
        train_dataset=dataset,
        data_collator=default_data_collator,
        knife_config=knife_config,
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- the sensitive column
@pytest.mark.parametrize("penalty", ["mutual_information", "adversarial"])
def test_missing_sensitive_column(tmp_path, penalty):
    data = synthetic_dataset(16).remove_columns("gender")
    expected = "sensitive column 'gender' is not in the training dataset; its columns are: input_ids, attention_mask, labels"
    with pytest.raises(ValueError, match=re.escape(expected)):
        _trainer(tmp_path, _config(penalty), data)
    rows = [dict(row) for row in data]  # a plain map-style dataset of dicts: its first example is checked
    with pytest.raises(ValueError, match=re.escape(expected)):
        _trainer(tmp_path, _config(penalty, num_sensitive_classes=2), rows)
    with pytest.raises(ValueError, match=f"the {penalty} penalty needs sensitive_column"):
        _trainer(tmp_path, KNIFEConfig(penalty=penalty, num_components=4), synthetic_dataset(16))


def test_sensitive_column_of_strings(tmp_path):
    data = synthetic_dataset(32).map(lambda row: {"gender": "male" if row["gender"] else "female"})
    with pytest.raises(ValueError, match=r"sensitive column 'gender' holds strings \(e.g. '(male|female)', "
                                         r"'(male|female)'\); the mutual_information penalty needs integer class "
                                         r"ids 0..C-1: encode them, e.g. dataset = dataset.class_encode_column"
                                         r"\('gender'\)"):  # fmt: skip
        _trainer(tmp_path, _config(), data)
    with pytest.raises(ValueError, match="holds strings .* adversarial penalty needs integer class ids"):
        _trainer(tmp_path, _config("adversarial", num_sensitive_classes=2), data)
    with pytest.raises(ValueError, match="holds strings .* penalty needs numbers"):
        _trainer(tmp_path, _config(sensitive_type="continuous"), data)
    with pytest.raises(ValueError, match="sensitive column 'gender' holds strings in its first example"):
        _trainer(tmp_path, _config(num_sensitive_classes=2), [dict(row) for row in data])
    # the advice works: a ClassLabel column trains, and its number of classes is read from the feature
    encoded = data.class_encode_column("gender")
    trainer = _trainer(tmp_path, _config(), encoded, max_steps=1)
    assert trainer.knife_config.num_sensitive_classes == 2
    trainer.train()
    assert trainer.state.global_step == 1


def test_continuous_sensitive_nan_is_refused_up_front(tmp_path):
    data = synthetic_dataset(16).map(
        lambda row, i: {"gender": float("nan") if i == 3 else 0.5}, with_indices=True
    )
    with pytest.raises(FloatingPointError, match=r"sensitive column 'gender' holds 1 NaN or Inf values \(first at "
                                                 r"position 3\); a continuous S must be finite"):  # fmt: skip
        _trainer(tmp_path, _config(sensitive_type="continuous"), data)


# ---------------------------------------------------------------------------- task labels
def test_task_labels_out_of_range(tmp_path):
    data = synthetic_dataset(32)
    bad = data.map(lambda row, i: {"labels": {3: 2, 9: 7, 11: -3}.get(i, row["labels"])}, with_indices=True)
    with pytest.raises(ValueError, match=r"label column 'labels' holds class ids -3, 2, 7 outside \[0, 1\] \(3 of 32 "
                                         r"labels\): BertForSequenceClassification has num_labels=2. Build the model "
                                         r"with the number of classes \(e.g. num_labels=8\)"):  # fmt: skip
        _trainer(tmp_path, _config(), bad)
    renamed = bad.rename_column("labels", "label")  # the collators rename 'label' to 'labels'
    with pytest.raises(ValueError, match=r"label column 'label' holds class ids -3, 2, 7 outside \[0, 1\]"):
        _trainer(tmp_path, _config(), renamed)
    with pytest.raises(ValueError, match="label column 'labels' holds strings .* expects class ids 0..1"):
        _trainer(tmp_path, _config(), data.map(lambda row: {"labels": "pos" if row["labels"] else "neg"}))
    # the same labels are valid for a model with 8 classes, and -100 (ignored by the loss) is accepted
    ignored = data.map(lambda row, i: {"labels": -100 if i == 3 else row["labels"] * 7}, with_indices=True)
    trainer = _trainer(tmp_path, _config(), ignored, model=tiny_model("bert", num_labels=8), max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------------------- NaN in the representation
def _nan_embeddings(model: torch.nn.Module) -> None:
    """Make the embedding output NaN for every example (a model that diverged, or bad inputs)."""
    model.bert.embeddings.register_forward_hook(lambda module, args, output: output * float("nan"))


def test_nan_representation_at_the_first_step(tmp_path):
    model = tiny_model("bert")
    _nan_embeddings(model)
    trainer = _trainer(tmp_path, _config(init_from_data=False), synthetic_dataset(32), model=model)
    before = _state(trainer.model)
    with pytest.raises(FloatingPointError, match=SOURCE + r" at step 0: 256 NaN and 0 Inf of 256 values"):
        trainer.train()
    assert trainer.state.global_step == 0
    after = _state(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "parameters changed before the error"


def test_nan_representation_at_estimator_initialisation(tmp_path):
    model = tiny_model("bert")
    _nan_embeddings(model)
    trainer = _trainer(tmp_path, _config(), synthetic_dataset(32), model=model)
    with pytest.raises(FloatingPointError, match=SOURCE + " at step 0"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not bool(get_knife_module(trainer.model).initialized)


def test_nan_inputs_embeds_name_the_step(tmp_path):
    """One example with NaN ``inputs_embeds``: the error names the step that met it and the representation."""
    n, poisoned = 64, 40
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(n, SEQ_LEN, 32, generator=g)
    embeds[poisoned, 5] = float("nan")
    data = synthetic_dataset(n).remove_columns("input_ids").add_column("inputs_embeds", embeds.tolist())
    trainer = _trainer(tmp_path, _config(init_num_samples=8), data, max_steps=8)  # one epoch: it meets row 40
    with pytest.raises(FloatingPointError, match=SOURCE + r" at step (\d+): 32 NaN") as error:
        trainer.train()
    step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    assert step == trainer.state.global_step  # the step the batch belongs to, not a later one
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()), (
        "a NaN reached the parameters"
    )


# ---------------------------------------------------------------------------- empty data, gathering
def test_empty_training_dataset(tmp_path):
    empty = synthetic_dataset(16).select([])
    with pytest.raises(ValueError, match=r"the training dataset is empty \(0 examples, Dataset\): KNIFETrainer needs "
                                         r"training examples"):  # fmt: skip
        _trainer(tmp_path, _config(), empty)
    with pytest.raises(ValueError, match=r"the training dataset is empty \(0 examples, list\)"):
        _trainer(tmp_path, _config("entropy"), [])


def test_gather_features_in_a_single_process_warns_and_changes_nothing(tmp_path):
    data = synthetic_dataset(32)
    with pytest.warns(
        UserWarning, match=r"gather_features=True has no effect in a single process \(world_size=1\)"
    ):
        gathered = _trainer(tmp_path / "a", _config(gather_features=True), data, max_steps=2)
    gathered.train()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="gather_features")
        local = _trainer(tmp_path / "b", _config(gather_features=False), data, max_steps=2)
    local.train()
    a, b = _state(gathered.model), _state(local.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gather_features_without_a_process_group():
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="gather_features=True with world_size=2, but torch.distributed has no "
                                         "process group: launch with accelerate launch or torchrun"):  # fmt: skip
        check_gather(True, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_gather(False, 2)  # off: nothing to check
