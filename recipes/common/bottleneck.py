"""The model of ``recipes/fine_tuning.py`` (an encoder, a pooled sentence vector, a linear bottleneck, a classifier or
regressor), best-epoch selection on validation, and the regression metrics."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, TrainerCallback
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_knife.modeling import find_knife_config, knife_model_class


class BottleneckClassifier(PreTrainedModel):
    """Any ``AutoModel`` encoder with a linear bottleneck (``config.bottleneck_dim``) before the classifier.

    ``config.pooling``: 'mean' (over the attention mask) or 'cls'. ``config.num_labels == 1``: regression (MSE).
    KNIFE / VIB hook the ``bottleneck`` module (``KNIFEConfig(representation="module", module_name="bottleneck")``),
    whose output ``mu`` the stochastic head replaces by ``z = mu + sigma * eps`` during training.
    """

    config_class = AutoConfig  # configs of any encoder; see load_model() for reloading
    base_model_prefix = "backbone"
    _no_split_modules: list[str] = []

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.backbone = AutoModel.from_config(config)
        hidden = config.get_text_config().hidden_size
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.bottleneck = nn.Linear(hidden, config.bottleneck_dim)
        self.classifier = nn.Linear(config.bottleneck_dim, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "bottleneck", None):  # mu keeps the scale of h (std 1/sqrt(hidden))
            nn.init.normal_(module.weight, 0.0, module.in_features**-0.5)
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def reset_head(self, seed: int) -> None:
        """Seeded initialisation of the added layers (the same for every method of a seed)."""
        g = torch.Generator().manual_seed(10_007 * seed + 17)
        for layer, std in ((self.bottleneck, self.bottleneck.in_features**-0.5), (self.classifier, 0.02)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
            layer.bias.zero_()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **extra
        )
        hidden = out.last_hidden_state  # [B, T, d]
        if self.config.pooling == "cls" or attention_mask is None:
            pooled = hidden[:, 0] if self.config.pooling == "cls" else hidden.mean(1)  # [B, d]
        else:
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, d]
        z = self.bottleneck(self.dropout(pooled))  # [B, k]; the stochastic head replaces it (hook)
        logits = self.classifier(z)  # [B, C]
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_template(model_name_or_path: str, num_labels: int, task: str, pooling: str, bottleneck_dim: int):
    """The encoder with pre-trained weights and the added layers (reset per seed by ``reset_head``)."""
    config = AutoConfig.from_pretrained(model_name_or_path)
    config.num_labels = num_labels
    config.problem_type = "regression" if task == "regression" else "single_label_classification"
    config.pooling, config.bottleneck_dim = pooling, bottleneck_dim
    config.architectures = ["BottleneckClassifier"]
    encoder = AutoModel.from_pretrained(model_name_or_path)
    model = BottleneckClassifier(config)
    missing, unexpected = model.backbone.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{model_name_or_path}: encoder weights missing for {missing[:5]}")
    return model


def load_model(folder: str | os.PathLike) -> PreTrainedModel:
    """Reload a model saved by this recipe (with its KNIFE / VIB head when it has one: a ``knife_config.json`` beside
    the weights, or the ``knife`` entry of an older ``config.json``)."""
    config = AutoConfig.from_pretrained(folder)
    has_knife = find_knife_config(folder, config=config) is not None
    cls = knife_model_class(BottleneckClassifier) if has_knife else BottleneckClassifier
    return cls.from_pretrained(folder, config=config)



def regression_metrics(eval_pred: Any) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    preds = np.asarray(
        eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    )
    preds, labels = preds.reshape(-1).astype(np.float64), np.asarray(eval_pred.label_ids).reshape(-1)
    constant = np.std(preds) == 0 or np.std(labels) == 0
    return {
        "pearson": float("nan") if constant else float(pearsonr(preds, labels)[0]),
        "spearman": float("nan") if constant else float(spearmanr(preds, labels)[0]),
        "mse": float(np.mean((preds - labels) ** 2)),
    }


class BestEpochCallback(TrainerCallback):
    """Keep (in memory) the weights of the epoch with the best validation metric; restore them at the end."""

    def __init__(self, metric: str) -> None:
        self.key, self.best, self.best_epoch, self.state = f"eval_{metric}", -math.inf, None, None
        self.history: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics or self.key not in metrics:
            return
        value = float(metrics[self.key])
        self.history.append({"epoch": float(state.epoch or 0), "validation": value})
        if math.isfinite(value) and value > self.best:  # strict: ties keep the earlier epoch
            self.best, self.best_epoch = value, float(state.epoch or 0)
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)

