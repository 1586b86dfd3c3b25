"""The model of ``recipes/domain_adaptation.py``: a content and a domain encoder from Transformers image backbones,
a label head and a domain head, the penalty on ``I(Z; S)`` (S = the domain features) as ``model.knife``, CLUB and
InfoNCE registered in KNIFE's slot, and the trainer that initialises the estimator from (Z, S) pairs."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hf_knife.config import KNIFEConfig
from hf_knife.estimators.base import init_functions
from hf_knife.estimators.variational import CLUB, InfoNCE
from hf_knife.modeling import get_knife_module, knife_output_fields
from hf_knife.ops import scale_gradient
from hf_knife.penalties import KNIFEPenalty, PenaltyOutput, build_penalty
from hf_knife.penalties.base import upcast, value_with_grad
from hf_knife.penalties.mutual_information import check_sensitive_labels
from hf_knife.penalties.standardizer import RunningStandardizer
from hf_knife.registry import PENALTY_REGISTRY
from hf_knife.trainer import KNIFETrainer

IGNORE_INDEX = -100  # label of the unlabelled target images (ignored by the cross-entropy)
BACKBONES = {  # small backbones built from a config (ConvNeXt: LayerNorm, no batch statistics)
    "convnext": dict(model_type="convnext", num_channels=3, patch_size=2, hidden_sizes=[32, 64], depths=[1, 1],
                     num_stages=2, layer_scale_init_value=1.0),
    "resnet": dict(model_type="resnet", num_channels=3, embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1],
                   layer_type="basic", downsample_in_first_stage=False),
}  # fmt: skip


def _reset_linears(module: nn.Module) -> None:
    """PyTorch's default Linear initialisation (HF init functions: tensors loaded from a checkpoint are kept)."""
    init = init_functions()
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            if layer.bias is not None:
                init.uniform_(layer.bias, -(layer.in_features**-0.5), layer.in_features**-0.5)


class VariationalBoundPenalty(KNIFEPenalty):
    """CLUB or InfoNCE (``hf_knife.estimators.variational``) on ``I(Z; S)`` in the penalty slot: the bound's own
    parameters are fitted on detached features (CLUB: the likelihood of q(s|z); InfoNCE: the critic maximises the
    bound) and Z gets ``weight * grad`` of the bound."""

    bound: type[nn.Module] = CLUB
    needs_sensitive = True
    metric_names = ("mutual_information",)

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        self.estimator = self.bound(self.dim, config.sensitive_dim, config.hidden_dims)
        self.estimator.reset_parameters = lambda: _reset_linears(self.estimator)
        self._finish_init()

    def check_sensitive(self, sensitive: Tensor | None, batch: int) -> Tensor:
        return check_sensitive_labels(self, sensitive, batch)

    def init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        """Starts from its random initialisation (only the feature statistics are set)."""

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z, sensitive).loss

    def compute(self, z: Tensor, s: Tensor | None, weight: float) -> PenaltyOutput:
        if self.bound is InfoNCE:  # the critic gets the gradient of -bound, z that of weight * bound
            out = self.estimator(scale_gradient(z, -weight), s)
            loss, estimate = value_with_grad(weight * out.mutual_information, out.loss), out.mutual_information
        else:  # CLUB: q(s|z) fitted on detached z; z gets weight * grad of the bound through a frozen q
            fit = self.estimator(z.detach(), s).loss
            frozen = {name: p.detach() for name, p in self.estimator.named_parameters()}
            mu = torch.func.functional_call(self.estimator.mu, _sub(frozen, "mu."), (z,))  # [B, ds]
            logvar = torch.func.functional_call(self.estimator.logvar, _sub(frozen, "logvar."), (z,))  # [B, ds]
            inv_var = (-logvar).exp()  # [B, ds]
            positive = -0.5 * ((s - mu).square() * inv_var).sum(-1)  # [B]
            negative = -0.5 * ((s.square().mean(0) - 2 * mu * s.mean(0) + mu.square()) * inv_var).sum(-1)  # [B]
            bound = (positive - negative).mean()
            estimate = bound.detach()
            loss = value_with_grad(weight * estimate, fit, weight * bound)
        return PenaltyOutput(loss=loss, metrics={"mutual_information": estimate})


def _sub(parameters: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {name[len(prefix) :]: p for name, p in parameters.items() if name.startswith(prefix)}


for _name, _bound in (("club", CLUB), ("infonce", InfoNCE)):
    if _name not in PENALTY_REGISTRY:
        PENALTY_REGISTRY.register(_name)(type(f"{_name.upper()}Penalty", (VariationalBoundPenalty,),
                                              {"bound": _bound, "name": _name}))  # fmt: skip


# --------------------------------------------------------------------------- the model
class DomainAdaptationConfig(PretrainedConfig):
    """``backbone`` / ``domain_backbone``: backbone configs as dicts (with ``model_type``; no domain encoder when
    ``domain_backbone`` is None); ``knife``: the KNIFEConfig dict or None."""

    model_type = "knife_domain_adaptation"
    keys_to_ignore_at_inference = ["domain_logits"]

    def __init__(self, backbone: dict | None = None, domain_backbone: dict | None = None, content_dim: int = 16,
                 domain_dim: int = 2, knife: dict | None = None, method: str = "knife",
                 **kwargs: Any) -> None:  # fmt: skip
        self.backbone, self.domain_backbone = dict(backbone or BACKBONES["convnext"]), domain_backbone
        self.content_dim, self.domain_dim, self.knife, self.method = content_dim, domain_dim, knife, method
        super().__init__(**kwargs)


DomainAdaptationOutput = dataclasses.make_dataclass(
    "DomainAdaptationOutput",
    [(n, Tensor | None, None) for n in ("loss", "logits", "domain_logits", *knife_output_fields())],
    bases=(ModelOutput,),
)
OUTPUT_FIELDS = {f.name for f in dataclasses.fields(DomainAdaptationOutput)}


def _backbone(values: dict) -> nn.Module:
    values = dict(values)
    return AutoModel.from_config(AutoConfig.for_model(values.pop("model_type"), **values))


def _pooled(encoder: nn.Module, pixel_values: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, c]``: the backbone's pooled output."""
    return encoder(pixel_values=pixel_values.to(encoder.dtype)).pooler_output.flatten(1)


class DomainAdaptationModel(PreTrainedModel):
    """Content encoder + label head; domain encoder + domain head (MI methods); ``knife``: the penalty on the
    content features, with S = the detached domain features (continuous) or the domain label (``dann``)."""

    config_class = DomainAdaptationConfig
    main_input_name = "pixel_values"

    def __init__(self, config: DomainAdaptationConfig) -> None:
        super().__init__(config)
        self.content_encoder = _backbone(config.backbone)  # registered first: same init for every method
        self.content_projection = nn.Linear(self.feature_dim(self.content_encoder), config.content_dim)
        self.classifier = nn.Linear(config.content_dim, config.num_labels)
        if config.domain_backbone is not None:
            self.domain_encoder = _backbone(config.domain_backbone)
            self.domain_projection = nn.Linear(self.feature_dim(self.domain_encoder), config.domain_dim)
            self.domain_classifier = nn.Linear(config.domain_dim, 2)
            self.domain_standardizer = RunningStandardizer(config.domain_dim)
        self.knife = build_penalty(KNIFEConfig.from_dict(config.knife), config.content_dim) if config.knife else None
        self.post_init()

    @staticmethod
    def feature_dim(encoder: nn.Module) -> int:
        c = encoder.config
        return int(c.hidden_sizes[-1] if getattr(c, "hidden_sizes", None) else c.hidden_size)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "content_projection", None) or module is getattr(self, "domain_projection", None):
            init_functions().normal_(module.weight, 0.0, module.in_features**-0.5)  # Z, D: the pooled scale
            init_functions().zeros_(module.bias)
        if isinstance(module, KNIFEPenalty):  # after its children: undo the generic init
            module.reset_parameters()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Weights and config.json, plus knife_config.json when the model has a penalty."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.knife is not None and kwargs.get("is_main_process", True):
            self.knife.config.save_pretrained(save_directory)
        return result

    def penalty_inputs(self, pixel_values: Tensor, domain: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(Z [B, c], S, domain logits or None)``; S is ``D.detach() [B, d]`` or the domain label ``[B]``."""
        z = self.content_projection(_pooled(self.content_encoder, pixel_values))  # [B, content_dim]
        if self.config.domain_backbone is None:
            return z, domain, None
        d = self.domain_projection(_pooled(self.domain_encoder, pixel_values))  # [B, domain_dim]
        if self.training:  # S is standardised with running statistics (folded per forward, all-reduced): the
            self.domain_standardizer.track(d)  # estimator's conditional MLP keeps reading it on its initial scale
            self.domain_standardizer.fold()  # while the domain head grows its features
        return z, self.domain_standardizer(d.detach()), self.domain_classifier(d)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, domain: Tensor | None = None,
                sensitive: Tensor | None = None, **kwargs: Any) -> ModelOutput:  # fmt: skip
        """``labels``: class ids (-100 on target images); ``domain``: 0 source, 1 target (KNIFETrainer passes the
        dataset's ``domain`` column as ``sensitive=``). Loss terms are averaged over the whole batch (target rows add
        0 to the label term), so they do not depend on how a batch is split over processes."""
        domain = sensitive if domain is None else domain
        z, s, domain_logits = self.penalty_inputs(pixel_values, domain)
        logits = self.classifier(z)  # [B, classes]
        out: dict[str, Tensor | None] = {"logits": logits, "domain_logits": domain_logits}
        losses = []
        if labels is not None:
            ce = F.cross_entropy(upcast(logits), labels.long(), ignore_index=IGNORE_INDEX, reduction="sum")
            losses.append(ce / labels.shape[0])
        if domain_logits is not None and domain is not None:
            losses.append(F.cross_entropy(upcast(domain_logits), domain.long()))
        if self.knife is not None and self.training and domain is not None:
            penalty = self.knife(z, sensitive=s)
            losses.append(penalty.loss)
            out.update({f"knife_{k}": v for k, v in penalty.metrics.items() if f"knife_{k}" in OUTPUT_FIELDS})
        out["loss"] = sum(losses) if losses else None
        return DomainAdaptationOutput(**out)


class DomainAdaptationTrainer(KNIFETrainer):
    """KNIFETrainer whose estimator starts at (Z, S) of the model's own features (``init_num_samples`` rows)."""

    @torch.no_grad()
    def initialize_estimator(self) -> None:
        model, knife = self.accelerator.unwrap_model(self.model), get_knife_module(self.model)
        n = len(self.train_dataset)  # evenly spaced rows (both domains), the same on every process
        rows = self.train_dataset[torch.linspace(0, n - 1, min(n, knife.config.init_num_samples)).long()]
        was_training = model.training
        model.eval()
        with torch.random.fork_rng():
            pixels, domain = rows["pixel_values"].to(self.args.device), rows["domain"].to(self.args.device)
            z, s, _ = model.penalty_inputs(pixels, domain)
            standardizer = getattr(model, "domain_standardizer", None)
            if standardizer is not None:  # S's running statistics start at those of these rows
                standardizer.set(s)
                s = standardizer(s)
        knife.init_from_samples(z, s)
        model.train(was_training)
