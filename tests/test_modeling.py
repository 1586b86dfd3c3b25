"""Model mixins on tiny BERT / RoBERTa / DistilBERT: forward, signature, save/load, init, representations, PEFT."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from conftest import LEGACY_FILE, SEQ_LEN, synthetic_dataset, tiny_config, tiny_model
from transformers import AutoModelForSequenceClassification

from hf_knife.config import KNIFE_CONFIG_NAME, BottleneckOptions, KNIFEConfig
from hf_knife.modeling import AutoKNIFEModelForSequenceClassification, add_knife, get_knife_module

ARCHS = ["bert", "roberta", "distilbert"]


def _batch(n=8):
    ds = synthetic_dataset(n)
    return {k: torch.tensor(ds[k]) for k in ("input_ids", "attention_mask", "labels")}, torch.tensor(
        ds["gender"]
    )


def _mi_config(**kwargs):
    return KNIFEConfig(num_sensitive_classes=2, num_components=4, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_signature_and_save_load(arch, tmp_path):
    model = add_knife(tiny_model(arch), _mi_config())
    params = inspect.signature(model.forward).parameters
    assert "labels" in params and "input_ids" in params and "sensitive" in params
    batch, s = _batch()
    model.train()
    out = model(**batch, sensitive=s)
    assert out.knife_mutual_information is not None and out.logits.shape == (8, 2)
    task = AutoModelForSequenceClassification.from_config(model.config)  # same class of loss, no penalty
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert "knife" in model.model_tags and task is not None
    torch.testing.assert_close(
        out.loss - out.knife_loss, torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    )

    model.save_pretrained(tmp_path)
    assert (tmp_path / KNIFE_CONFIG_NAME).is_file()
    loaded = AutoKNIFEModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded).__name__ == f"KNIFE{type(task).__name__}"
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(plain) is type(task)
    model.eval(), plain.eval()
    torch.testing.assert_close(plain(**batch).logits, model(**batch).logits)


def test_estimator_is_initialised_when_missing_from_checkpoint(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path)  # a plain checkpoint: no knife.* keys
    model = AutoKNIFEModelForSequenceClassification.from_pretrained(tmp_path, knife_config=_mi_config())
    knife = model.knife
    assert torch.equal(
        knife.estimator.conditional.log_diag, torch.zeros_like(knife.estimator.conditional.log_diag)
    )
    assert torch.equal(knife.standardizer.var, torch.ones_like(knife.standardizer.var))
    assert torch.equal(
        knife.estimator.conditional.mixture_logits,
        torch.zeros_like(knife.estimator.conditional.mixture_logits),
    )
    assert knife.estimator.conditional.loc.abs().max() < 10 and not bool(knife.initialized)


@pytest.mark.parametrize(
    "arch, options, dim",
    [
        ("bert", dict(representation="pooler"), 32),
        ("bert", dict(representation="mean", layer=1), 32),
        ("bert", dict(representation="cls", layer=0), 32),
        ("distilbert", dict(representation="module", module_name="pre_classifier"), 32),
        ("roberta", dict(representation="module", module_name="classifier.dense"), 32),
    ],
)
def test_representations(arch, options, dim):
    model = add_knife(tiny_model(arch), _mi_config(**options))
    batch, s = _batch()
    z = model.knife_features(**batch)
    assert z.shape == (8, dim)
    model.train()
    assert torch.isfinite(model(**batch, sensitive=s).loss)


def test_mean_pooling_respects_the_attention_mask():
    model = add_knife(tiny_model("bert"), _mi_config(representation="mean")).eval()
    batch, _ = _batch(4)
    batch["attention_mask"][:, SEQ_LEN // 2 :] = 0
    z = model.knife_features(**batch)
    hidden = model.bert(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    expected = hidden[:, : SEQ_LEN // 2].mean(1)
    torch.testing.assert_close(z, expected)


def test_bad_representation_errors():
    with pytest.raises(
        ValueError, match="module_name 'bert.poolr' does not exist .*close names: bert.pooler"
    ):
        add_knife(tiny_model("bert"), _mi_config(representation="module", module_name="bert.poolr"))
    with pytest.raises(ValueError, match="representation='pooler' needs a pooler module"):
        add_knife(tiny_model("roberta"), _mi_config(representation="pooler"))
    with pytest.raises(ValueError, match="layer 5 is out of range for a model with 2 layers"):
        add_knife(tiny_model("bert"), _mi_config(layer=5))


def test_information_bottleneck_head_feeds_the_classifier():
    config = KNIFEConfig(
        penalty="information_bottleneck", representation="pooler", num_components=4, information_bottleneck=BottleneckOptions(init_sigma=1.0)
    )
    model = add_knife(tiny_model("bert"), config)
    batch, _ = _batch()
    model.train()
    a, b = model(**batch).logits, model(**batch).logits
    assert not torch.allclose(a, b)  # noise reaches the classifier
    model.eval()
    torch.testing.assert_close(model(**batch).logits, model(**batch).logits)
    out = model(**batch)
    assert out.knife_conditional_entropy is not None


def test_eval_without_sensitive_skips_the_penalty():
    model = add_knife(tiny_model("bert"), _mi_config()).eval()
    batch, _ = _batch()
    out = model(**batch)
    assert getattr(out, "knife_loss", None) is None
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, batch["labels"]))


def test_peft_lora_trains_and_restores_the_estimator(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = add_knife(tiny_model("bert"), _mi_config())
    peft_model = get_peft_model(
        model, LoraConfig(target_modules=["query", "value"], r=2, modules_to_save=["knife", "classifier"])
    )
    knife = get_knife_module(peft_model)
    assert all(p.requires_grad for p in knife.estimator.parameters())
    batch, s = _batch()
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    before = knife.estimator.conditional.loc.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**batch, sensitive=s).loss.backward()
        optimizer.step()
    assert not torch.equal(before, knife.estimator.conditional.loc)
    peft_model.save_pretrained(tmp_path)
    base = add_knife(tiny_model("bert"), _mi_config())
    restored = PeftModel.from_pretrained(base, tmp_path)
    for (name, a), b in zip(knife.state_dict().items(), get_knife_module(restored).state_dict().values()):
        assert torch.equal(a, b), name


def test_bf16_weights_keep_the_estimator_in_fp32(tmp_path):
    model = add_knife(tiny_model("bert"), _mi_config())
    model.save_pretrained(tmp_path)
    loaded = AutoKNIFEModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert loaded.knife.estimator.conditional.loc.dtype == torch.float32


def test_add_knife_refuses_wrapped_or_repeated(tmp_path):
    model = add_knife(tiny_model("bert"), _mi_config())
    with pytest.raises(ValueError, match="already has a KNIFE penalty"):
        add_knife(model, _mi_config())
    config = tiny_config("bert")
    assert (
        AutoKNIFEModelForSequenceClassification.from_config(config, knife_config=_mi_config()).knife
        is not None
    )


def test_checkpoints_of_hf_knife_0_1_still_load(tmp_path):
    """hf_knife 0.1 kept the KNIFE config inside config.json and named the running statistics and the inner Adam
    state ``knife.feature_*`` / ``knife.inner_state.*``: such a folder loads with every tensor in place."""
    from safetensors.torch import load_file, save_file

    model = add_knife(tiny_model("bert"), _mi_config())
    batch, s = _batch()
    model.train()
    for step in range(2):  # move the statistics and the Adam state away from their initial values
        model.knife.begin_step(step)
        model(**batch, sensitive=s).loss.backward()
        model.knife.end_step()
    model.save_pretrained(tmp_path)
    (tmp_path / KNIFE_CONFIG_NAME).unlink()  # 0.1 wrote it too, but its config.json entry was what loaded
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "knife": {**LEGACY_FILE, "num_components": 4}}))
    renames = {"knife.standardizer.mean": "knife.feature_mean", "knife.standardizer.var": "knife.feature_var"}
    weights = load_file(tmp_path / "model.safetensors")
    old = {renames.get(k, k.replace("knife.fitter.", "knife.inner_state.")): v for k, v in weights.items()}
    assert "knife.feature_mean" in old and any(k.startswith("knife.inner_state.exp_avg") for k in old)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded = AutoKNIFEModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.knife_config.mutual_information.fit == "posterior" and loaded.knife_config.target == 0.2
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
