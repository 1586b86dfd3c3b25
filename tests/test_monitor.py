"""KNIFEMonitorCallback: scalars at the right steps through Trainer.log, the plot, the collapse warning, training
left unchanged, and an entropy oracle on Gaussian "hidden states"."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import synthetic_dataset, tiny_model
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_knife import KNIFEMonitorCallback
from hf_knife.estimators.baselines import gaussian_entropy

FAST = dict(fit_steps=30, max_samples=64)  # small fits: these tests check the plumbing, not the estimates


def _args(tmp_path, **kwargs) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=32, max_steps=5,
        learning_rate=1e-3, report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    defaults.update(kwargs)
    return TrainingArguments(**defaults)


def _monitor_logs(trainer) -> dict[int, dict]:
    return {e["step"]: e for e in trainer.state.log_history if any(k.startswith("knife_monitor/") for k in e)}


class FakeSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is not a dependency): records scalars."""

    scalars: list[tuple[str, float, int]] = []

    def __init__(self, *args, **kwargs) -> None:
        FakeSummaryWriter.scalars = []

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.append((tag, value, step))

    def add_text(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def tensorboard_callback(monkeypatch):
    """transformers' own TensorBoardCallback (what report_to="tensorboard" adds), writing to a FakeSummaryWriter."""
    import sys
    import types

    from transformers.integrations import integration_utils

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    return integration_utils.TensorBoardCallback()


def test_scalars_logged_at_the_right_steps_plot_written_training_unchanged(tmp_path, tensorboard_callback):
    train, held_out = synthetic_dataset(64), synthetic_dataset(64, seed=1)
    monitor = KNIFEMonitorCallback(held_out, every_n_steps=2, sensitive_column="gender", **FAST)
    trainer = Trainer(model=tiny_model(dropout=0.1), args=_args(tmp_path / "monitored"), train_dataset=train,
                      callbacks=[tensorboard_callback, monitor])  # fmt: skip
    trainer.train()

    logged = _monitor_logs(trainer)
    assert sorted(logged) == [0, 2, 4, 5]  # start, every 2 optimizer steps, and the last step
    keys = {f"knife_monitor/layer_{i}/{q}" for i in (1, 2) for q in ("entropy", "mi_labels", "mi_sensitive")}
    for entry in logged.values():
        assert keys | {"knife_monitor/seconds"} <= set(entry)
        assert all(math.isfinite(entry[k]) for k in keys)
    # TensorBoard (transformers' callback, placed first as report_to does) got them, prefixed with "train/"
    written = {(tag, step) for tag, _, step in FakeSummaryWriter.scalars}
    assert {(f"train/{key}", step) for key in keys for step in (0, 2, 4, 5)} <= written
    # the plot and the history
    png = tmp_path / "monitored" / "knife_information_plane.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and monitor.plot_path == str(png)
    history = json.loads((tmp_path / "monitored" / "knife_monitor.json").read_text())
    assert {(h["step"], h["layer"]) for h in history} == {(s, i) for s in (0, 2, 4, 5) for i in (1, 2)}

    # the monitor neither consumes training randomness (dropout) nor leaves the model in eval mode
    plain = Trainer(model=tiny_model(dropout=0.1), args=_args(tmp_path / "plain"), train_dataset=train)
    plain.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses == [e["loss"] for e in plain.state.log_history if "loss" in e]
    assert trainer.model.training == plain.model.training


class Collapse(TrainerCallback):
    """From optimizer step ``at`` on, scales the output of the first encoder layer (hidden_states[1]) by 1e-3."""

    def __init__(self, model: nn.Module, at: int) -> None:
        self.at, self.active = at, False
        model.bert.encoder.layer[0].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if not self.active:
            return None
        if isinstance(output, tuple):
            return (output[0] * 1e-3, *output[1:])
        return output * 1e-3

    def on_step_end(self, args, state, control, **kwargs):
        self.active = state.global_step >= self.at


def test_collapse_warning_fires_on_a_synthetic_collapse(tmp_path):
    train, held_out = synthetic_dataset(48), synthetic_dataset(64, seed=1)
    model = tiny_model()
    monitor = KNIFEMonitorCallback(held_out, every_n_steps=2, layers=[1], **FAST)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=4), train_dataset=train,
                      callbacks=[Collapse(model, at=2), monitor])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="layer 1 is collapsing") as caught:
        trainer.train()
    assert sum("collapsing" in str(w.message) for w in caught) == 1  # once per layer
    entropy = {s: e["knife_monitor/layer_1/entropy"] for s, e in _monitor_logs(trainer).items()}
    assert entropy[0] - entropy[2] > 8 * math.log(100)  # 8 dims shrunk 1000x: about 55 nats

    # control: the same run without the collapse does not warn
    quiet = KNIFEMonitorCallback(held_out, every_n_steps=2, layers=[1], **FAST)
    control = Trainer(model=tiny_model(), args=_args(tmp_path / "control", max_steps=4), train_dataset=train,
                      callbacks=[quiet])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        control.train()


def test_works_with_knife_trainer_without_taking_its_scalars(tmp_path):
    from conftest import training_args

    from hf_knife import KNIFEConfig, KNIFETrainer

    train, held_out = synthetic_dataset(64), synthetic_dataset(64, seed=1)
    monitor = KNIFEMonitorCallback(held_out, every_n_steps=2, layers=[-1], sensitive_column="gender", **FAST)
    config = KNIFEConfig(penalty="mutual_information", sensitive_column="gender", num_sensitive_classes=2)
    trainer = KNIFETrainer(model=tiny_model(), args=training_args(tmp_path, logging_steps=2), train_dataset=train,
                           knife_config=config, callbacks=[monitor])  # fmt: skip
    trainer.train()
    assert sorted(_monitor_logs(trainer)) == [0, 2, 4]
    loss_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(loss_logs) == 2 and all(any(k.startswith("knife/") for k in e) for e in loss_logs)
    assert not any(k.startswith("knife/") for e in _monitor_logs(trainer).values() for k in e)


def test_bad_arguments():
    data = {"input_ids": torch.zeros(20, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match="every_n_steps"):
        KNIFEMonitorCallback(data, every_n_steps=0)
    with pytest.raises(ValueError, match="pooling"):
        KNIFEMonitorCallback(data, pooling="max")
    with pytest.raises(ValueError, match="projection"):
        KNIFEMonitorCallback(data, projection="umap")
    monitor = KNIFEMonitorCallback(data, layers=[5])
    with pytest.raises(ValueError, match="out of range"):
        monitor._resolve_layers(3)


# ---------------------------------------------------------------------------------------------- estimate oracle
class TableLayer(nn.Module):
    """Example i (``input_ids[i, 0] = i``) gets row i of ``table [N, d]`` at every position: ``[B, T, d]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids[:, 0]].unsqueeze(1).expand(-1, input_ids.shape[1], -1)  # [B, T, d]


class GaussianStates(nn.Module):
    """A fake model whose first "layer" outputs fixed samples of N(m, S). With ``layers=True`` it has a config and
    a layer list (the callback hooks the layer, as on a real transformer); without, it only returns
    ``hidden_states`` when asked. One trainable scalar gives Trainer something to optimise."""

    def __init__(self, table: torch.Tensor, layers: bool) -> None:
        super().__init__()
        from transformers import PretrainedConfig

        if layers:
            self.config = PretrainedConfig(num_hidden_layers=1)
            self.layers = nn.ModuleList([TableLayer(table)])
        else:
            self.table_layer = TableLayer(table)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        layer = self.layers[0] if hasattr(self, "layers") else self.table_layer
        hidden = layer(input_ids)  # [B, T, d]
        logits = torch.zeros(len(hidden), 2) + self.w
        states = (hidden, hidden) if output_hidden_states and not hasattr(self, "layers") else None
        return SequenceClassifierOutput(loss=(self.w - 1.0) ** 2, logits=logits, hidden_states=states)


def _gaussian(d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = a @ a.T + 0.3 * torch.eye(d, dtype=torch.float64)  # [d, d], correlated, well conditioned
    mean = 3.0 * torch.randn(d, generator=g, dtype=torch.float64)
    x = mean + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return x.float(), cov


@pytest.mark.parametrize("d,with_labels,hooks", [(6, True, True), (6, False, False), (24, True, True)])
def test_entropy_estimate_within_0_1_nats_per_dim_of_the_gaussian_closed_form(
    tmp_path, d, with_labels, hooks
):
    n = 512
    table, cov = _gaussian(d, n, seed=d)
    ids = torch.arange(n).unsqueeze(1).repeat(1, 3)  # [N, 3]
    held_out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if with_labels:
        held_out["labels"] = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(1))
    monitor = KNIFEMonitorCallback(held_out, layers=[1], max_samples=n, every_n_steps=100)  # default fit
    train = [{"input_ids": ids[i], "labels": 0} for i in range(16)]
    trainer = Trainer(model=GaussianStates(table, layers=hooks), args=_args(tmp_path, max_steps=1, per_device_eval_batch_size=128),
                      train_dataset=train, callbacks=[monitor])  # fmt: skip
    trainer.train()
    estimate = monitor.history[0]["entropy"]
    if (
        d > 8
    ):  # projected to 8 dimensions by the fixed orthonormal map P [d, 8]: h(P^T x) = closed form of P^T S P
        p = monitor._projections[1].double()
        assert torch.allclose(p.T @ p, torch.eye(8, dtype=torch.float64), atol=1e-5)
        cov = p.T @ cov @ p
    k = cov.shape[0]
    assert monitor.history[0]["dim"] == k
    truth = gaussian_entropy(cov)
    assert abs(estimate - truth) / k < 0.1, (estimate, truth)
    if with_labels:  # labels independent of the features: I(Z; Y) = 0
        assert abs(monitor.history[0]["mi_labels"]) < 0.15
    assert np.isfinite([h["entropy"] for h in monitor.history]).all()


def test_works_with_peft_lora(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_model(), peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    )
    monitor = KNIFEMonitorCallback(synthetic_dataset(64, seed=1), every_n_steps=2, layers=[1, -1], **FAST)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=synthetic_dataset(32),
                      callbacks=[monitor])  # fmt: skip
    trainer.train()
    logged = _monitor_logs(trainer)
    assert sorted(logged) == [0, 2]
    assert all(math.isfinite(logged[2][f"knife_monitor/layer_{i}/entropy"]) for i in (1, 2))


def test_label_mi_of_separated_clusters_is_the_label_entropy(tmp_path):
    """Y is readable from Z (two clusters 12 standard deviations apart): I(Z; Y) = H(Y); independent S: 0."""
    n, d = 512, 6
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (n,), generator=g)
    s = torch.randint(0, 3, (n,), generator=g)
    table = torch.randn(n, d, generator=g)
    table[:, 0] += 12.0 * y - 6.0
    ids = torch.arange(n).unsqueeze(1).repeat(1, 3)
    held_out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": y, "group": s}
    monitor = KNIFEMonitorCallback(
        held_out, layers=[1], max_samples=n, sensitive_column="group", every_n_steps=100
    )
    train = [{"input_ids": ids[i], "labels": 0} for i in range(16)]
    trainer = Trainer(model=GaussianStates(table, layers=True), args=_args(tmp_path, max_steps=1),
                      train_dataset=train, callbacks=[monitor])  # fmt: skip
    trainer.train()
    p = torch.bincount(y).double() / n
    label_entropy = float(-(p * p.log()).sum())  # about log 2
    first = monitor.history[0]
    assert abs(first["mi_labels"] - label_entropy) < 0.1, (first["mi_labels"], label_entropy)
    assert abs(first["mi_sensitive"]) < 0.15
