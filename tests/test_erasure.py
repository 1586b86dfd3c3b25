"""Erasure (LEACE, INLP) as a layer inside a tiny BERT classifier: no linear leakage, exact save/reload, errors."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from hf_knife.erasure import (
    AutoErasedModelForSequenceClassification,
    ErasureLayer,
    MissingErasurePackageError,
    add_erasure,
    fit_inlp,
    fit_leace,
    fit_linear_head,
)

pytest.importorskip("concept_erasure")


def _tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)  # fmt: skip
    return BertForSequenceClassification(config).eval()


def _batch(n: int = 400, seed: int = 0):
    """Token ids ``[n, 10]`` whose token 1 spells the group (``s [n]``) and token 2 the label (``y [n]``)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 60, size=(n, 10))
    s = rng.integers(0, 2, n)
    y = rng.integers(0, 3, n)
    ids[:, 1] = 3 + s  # tokens 3 / 4
    ids[:, 2] = 5 + y  # tokens 5 / 6 / 7
    mask = np.ones_like(ids)
    mask[:, 8:] = rng.integers(0, 2, size=(n, 2))
    return torch.as_tensor(ids), torch.as_tensor(mask), s, y


@torch.no_grad()
def _mean_pooled(model, ids, mask) -> np.ndarray:
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # [n, T, d]
    m = mask[..., None].float()
    return ((hidden * m).sum(1) / m.sum(1)).numpy()  # [n, d]


def _logreg_accuracy(x: np.ndarray, s: np.ndarray) -> float:
    """In-sample accuracy of a standardised logistic regression predicting s from x (the fitted data)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, s)
    return float(clf.score(x, s))


@pytest.fixture(scope="module")
def fitted():
    """A tiny BERT, its mean-pooled Z on a batch, the LEACE layer fitted on it and a head refitted on erased Z."""
    model = _tiny_bert()
    ids, mask, s, y = _batch()
    z = _mean_pooled(model, ids, mask)
    layer = fit_leace(z, s)
    head = fit_linear_head(layer.erase(z), y, layer.erase(z), y, num_labels=3)
    return model, ids, mask, s, y, z, layer, head


def test_leace_layer_leaves_no_linear_leakage_on_fitted_data(fitted):
    _, _, _, s, _, z, layer, _ = fitted
    majority = max(np.mean(s), 1 - np.mean(s))
    assert _logreg_accuracy(z, s) > majority + 0.2  # the planted group is linearly readable before erasure
    erased = layer.erase(z)
    assert erased.shape == z.shape and erased.dtype == np.float32
    # LEACE: zero cross-covariance with S, so the best linear classifier is a constant (the majority group)
    assert _logreg_accuracy(erased, s) <= majority + 0.02
    centred = erased - erased.mean(0)
    cross = centred.T @ (s - s.mean()) / len(s)  # [d]
    assert np.abs(cross).max() < 1e-4 * np.abs(z - z.mean(0)).max()


def test_erased_model_predicts_from_erased_z_and_round_trips_exactly(fitted, tmp_path):
    model, ids, mask, s, y, z, layer, head = fitted
    model = add_erasure(model, layer, representation="mean", head=head)
    assert type(model).__name__ == "ErasedBertForSequenceClassification"
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.numpy()  # [n, 3]
    expected = layer.erase(z) @ head.weight.T + head.bias
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    predictions = logits.argmax(-1)
    assert (predictions == y).mean() > 0.5  # the label survives erasure (it is not the group)
    # the logits are linear in the erased Z: no linear leakage in them either
    assert _logreg_accuracy(logits, s) <= max(np.mean(s), 1 - np.mean(s)) + 0.02

    model.save_pretrained(tmp_path)
    reloaded = AutoErasedModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert reloaded.config.erasure == model.config.erasure
    assert reloaded.config.erasure["representation"] == "mean" and reloaded.config.erasure["method"] == "leace"
    for name, buffer in model.erasure.named_buffers():
        assert torch.equal(buffer, getattr(reloaded.erasure, name)), name
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_array_equal(again, logits)
    assert (again.argmax(-1) == predictions).all()


def test_plain_loading_drops_the_layer_and_loader_refuses_unerased_checkpoints(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _tiny_bert()
    ids, mask, s, y = _batch(200, seed=1)
    z = _mean_pooled(model, ids, mask)
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="no erasure layer"):
        AutoErasedModelForSequenceClassification.from_pretrained(tmp_path / "plain")
    add_erasure(model, fit_leace(z, s), representation="mean").save_pretrained(tmp_path / "erased")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "erased")
    assert not hasattr(plain, "erasure")  # documented: the plain Auto class ignores the layer


def test_knife_model_with_erasure_round_trips_with_its_penalty(tmp_path):
    from hf_knife import KNIFEConfig
    from hf_knife.modeling import add_knife

    model = add_knife(_tiny_bert(), KNIFEConfig(penalty="mutual_information", sensitive_column="gender",
                                                num_sensitive_classes=2, representation="mean"))  # fmt: skip
    model.eval()
    ids, mask, s, y = _batch(200, seed=2)
    z = model.knife_features(input_ids=ids, attention_mask=mask).numpy()
    layer = fit_leace(z, s)
    add_erasure(model, layer, representation="mean",
                head=fit_linear_head(layer.erase(z), y, layer.erase(z), y, num_labels=3))  # fmt: skip
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "knife_config.json").exists()
    reloaded = AutoErasedModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "ErasedKNIFEBertForSequenceClassification"
    assert reloaded.knife_config.penalty == "mutual_information"
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits, logits)


def test_inlp_is_an_orthogonal_projection_that_removes_linear_leakage():
    rng = np.random.default_rng(0)
    n, d = 1200, 12
    s = rng.integers(0, 2, n)
    z = rng.normal(size=(n, d))
    z[:, :3] += 1.5 * s[:, None] * np.array([1.0, -0.5, 0.8])  # leakage along one direction
    layer = fit_inlp(z, s, num_iterations=10)
    assert layer.method == "inlp" and 1 <= layer.rank < d
    p = layer.projection.double().numpy()
    np.testing.assert_allclose(p @ p, p, atol=1e-5)
    np.testing.assert_allclose(p, p.T, atol=1e-5)
    majority = max(np.mean(s), 1 - np.mean(s))
    assert _logreg_accuracy(z, s) > majority + 0.2
    assert _logreg_accuracy(layer.erase(z), s) <= majority + 0.04


def test_leace_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "concept_erasure", None)  # `import concept_erasure` now raises ImportError
    with pytest.raises(MissingErasurePackageError, match=r"hf-knife\[erasure\]"):
        fit_leace(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2)


def test_bad_inputs_raise_clear_errors(fitted):
    _, _, _, s, _, z, layer, _ = fitted
    with pytest.raises(ValueError, match="single value"):
        fit_leace(z, np.zeros(len(z), int))
    with pytest.raises(ValueError, match="shape"):
        fit_inlp(z[:10], s)
    with pytest.raises(ValueError, match="fitted on 16 features"):
        layer(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="no head module 'score'"):
        add_erasure(_tiny_bert(), layer, representation="mean", head_module="score")
    with pytest.raises(ValueError, match="must be an nn.Linear reading 16"):
        add_erasure(_tiny_bert(), layer, representation="mean", head_module="bert.pooler")
    with pytest.raises(ValueError, match="refitted head has shape"):
        wrong = fit_linear_head(z, np.arange(len(z)) % 2, z, np.arange(len(z)) % 2, num_labels=2)
        add_erasure(_tiny_bert(), layer, representation="mean", head=wrong)
    empty = ErasureLayer(16, 0)
    np.testing.assert_array_equal(empty.erase(z), z.astype(np.float32))


def test_pool_into_head_feeds_mean_pooled_z_trains_with_a_penalty_and_takes_an_eraser_later(tmp_path):
    """The head reads mean-pooled Z exactly; KNIFETrainer trains it with the MI penalty on that Z; a fitted eraser
    later replaces the identity layer; the result round-trips exactly."""
    from conftest import synthetic_dataset, training_args
    from transformers import default_data_collator

    from hf_knife import KNIFEConfig
    from hf_knife.erasure import pool_into_head
    from hf_knife.trainer import KNIFETrainer

    model = pool_into_head(_tiny_bert(), "mean").eval()
    assert model.erasure.rank == 0 and model.config.erasure["method"] == "identity"
    ids, mask, s, y = _batch(64, seed=3)
    head = model.classifier
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.numpy()  # [n, 3]
    z = _mean_pooled(model, ids, mask)  # [n, d]
    expected = z @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)  # the head reads mean(Z), not the pooler

    before = head.weight.detach().clone()
    knife = KNIFEConfig(penalty="mutual_information", sensitive_column="gender", num_sensitive_classes=2,
                        num_components=4, representation="mean")  # fmt: skip
    data = synthetic_dataset(64).map(lambda row: {"input_ids": [t % 60 for t in row["input_ids"]]})
    trainer = KNIFETrainer(model=model, args=training_args(tmp_path / "run", max_steps=3), train_dataset=data,
                           data_collator=default_data_collator, knife_config=knife)  # fmt: skip
    trainer.train()
    model = trainer.model.eval()
    assert type(model).__name__ == "KNIFEErasedBertForSequenceClassification"
    assert not torch.equal(model.classifier.weight, before)  # the head trained on mean(Z)
    assert all(math.isfinite(r["loss"]) for r in trainer.state.log_history if "loss" in r)

    z = model.knife_features(input_ids=ids, attention_mask=mask).numpy()
    np.testing.assert_allclose(z, _mean_pooled(model, ids, mask), atol=1e-5)
    layer = fit_leace(z, s)
    add_erasure(model, layer, representation="mean",
                head=fit_linear_head(layer.erase(z), y, layer.erase(z), y, num_labels=3))  # fmt: skip
    assert model.erasure.rank == layer.rank > 0 and model.config.erasure["method"] == "leace"
    with torch.no_grad():
        erased_logits = model(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(erased_logits, layer.erase(z) @ model.classifier.weight.detach().numpy().T
                               + model.classifier.bias.detach().numpy(), atol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="already has an erasure layer"):
        add_erasure(model, layer, representation="mean")  # a fitted eraser is not replaced silently
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoErasedModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(input_ids=ids, attention_mask=mask).logits.numpy(), erased_logits)
