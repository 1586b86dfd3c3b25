"""The mutual-information penalty: minimise ``I(Z; S) = h(Z) - h(Z | S)`` for a discrete or continuous S."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..distributed import all_gather_with_grad, is_distributed
from ..estimators import build_mi_estimator
from ..estimators.mutual_information import calibrated_log_posterior, fit_temperature
from ..estimators.validation import check_labels
from ..registry import PENALTY_REGISTRY
from .base import KNIFEPenalty, PenaltyOutput, scale_rows, value_with_grad

if TYPE_CHECKING:
    from ..config import KNIFEConfig

__all__ = ["MutualInformationPenalty", "check_sensitive_labels"]


def check_sensitive_labels(penalty: KNIFEPenalty, sensitive: Tensor | None, batch: int) -> Tensor:
    """The sensitive variable of a batch of ``batch`` rows: ``[B]`` class ids (discrete S) or ``[B, c]`` floats."""
    config = penalty.config
    column = config.sensitive_column or "sensitive"
    if sensitive is None:
        raise ValueError(
            f"the {penalty.name} penalty needs the sensitive variable: pass sensitive=... to the model "
            f"(KNIFETrainer reads the dataset column {column!r})"
        )
    if not isinstance(sensitive, Tensor):
        sensitive = torch.as_tensor(sensitive)
    if config.sensitive_type == "discrete":
        return check_labels(sensitive, f"sensitive column {column!r}", config.num_sensitive_classes, length=batch)
    y = sensitive.reshape(batch, -1).to(penalty.compute_dtype)  # [B, c]
    if y.shape[1] != config.sensitive_dim:
        raise ValueError(
            f"sensitive column {column!r} has {y.shape[1]} values per example, expected "
            f"sensitive_dim={config.sensitive_dim}"
        )
    if not bool(torch.isfinite(y).all()):
        raise FloatingPointError(f"sensitive column {column!r} holds NaN or Inf at step {penalty.step}")
    return y


@PENALTY_REGISTRY.register("mutual_information")
class MutualInformationPenalty(KNIFEPenalty):
    """Minimise ``I(Z; S) = h(Z) - h(Z | S)`` (or ``I(Z; S | Y)`` with ``given='labels'``); options in
    ``config.mutual_information`` (marginal, fit, positive_part, given)."""

    name = "mutual_information"
    needs_sensitive = True
    supports_target = True
    budget_metric = "mutual_information"
    metric_names = ("mutual_information", "marginal_entropy", "conditional_entropy", "estimator_nll", "temperature")

    @classmethod
    def check_config(cls, config: KNIFEConfig) -> None:
        options = config.mutual_information
        if config.sensitive_type == "discrete" and options.marginal != "mixture" and (
            options.fit != "likelihood" or options.calibrate
        ):
            raise ValueError(
                "mutual_information.marginal='kernel' (a separate marginal kernel) is fitted by likelihood and read "
                "as is: set fit='likelihood' and calibrate=False with it (the posterior fit and the calibration need "
                f"the class posterior of marginal='mixture'); got fit={options.fit!r}, calibrate={options.calibrate}"
            )
        if config.sensitive_type == "discrete" and options.calibrate and options.positive_part:
            raise ValueError(
                "mutual_information.calibrate penalises the calibrated estimate as is: set positive_part=False with "
                "it (or calibrate=False)"
            )
        if config.mutual_information.given == "labels" and config.sensitive_type != "discrete":
            raise ValueError(
                "mutual_information.given='labels' (I(Z;S|Y)) needs a discrete S (sensitive_type='discrete'), got "
                f"sensitive_type={config.sensitive_type!r}"
            )

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        options = config.mutual_information
        self.num_groups = 1  # > 1: I(Z;S|Y), the sensitive ids become joint ids y * C + s
        if config.sensitive_type == "discrete":
            if config.num_sensitive_classes is None:
                raise ValueError(
                    "mutual_information with a discrete S needs num_sensitive_classes (KNIFETrainer infers it from "
                    "the sensitive column of the training data)"
                )
            if options.given == "labels":
                if options.num_label_classes is None:
                    raise ValueError(
                        "mutual_information.given='labels' needs num_label_classes, the number of task classes "
                        "(add_knife takes the model's config.num_labels)"
                    )
                self.num_groups = options.num_label_classes
            condition = dict(num_classes=config.num_sensitive_classes, num_groups=self.num_groups)
        else:
            condition = dict(cond_dim=config.sensitive_dim, hidden_dims=tuple(config.hidden_dims))
        self.estimator = build_mi_estimator(
            self.dim, marginal=options.marginal, fit=options.fit, **condition, **self.kernel_options()
        )
        self._finish_init()

    @property
    def needs_labels(self) -> bool:
        """Whether the penalty reads the task labels (``given='labels'``)."""
        return self.num_groups > 1

    def joint_labels(self, sensitive: Tensor | None, labels: Tensor | None, batch: int) -> Tensor | None:
        """``[B]`` joint ids ``y * C + s`` from the sensitive classes ``s`` and task labels ``y`` (``given='labels'``);
        ``sensitive`` unchanged otherwise."""
        if not self.needs_labels or sensitive is None:
            return sensitive
        s = check_sensitive_labels(self, sensitive, batch)
        if labels is None:
            raise ValueError(
                "the mutual_information penalty with given='labels' estimates I(Z;S|Y) and needs the task labels: "
                "pass labels=... to the model (KNIFETrainer passes the dataset's label column)"
            )
        y = check_labels(torch.as_tensor(labels), "task labels", self.num_groups, length=batch)
        return y * self.config.num_sensitive_classes + s

    def forward(
        self, features: Tensor, sensitive: Tensor | None = None, labels: Tensor | None = None, **extra: Tensor
    ) -> PenaltyOutput:
        """As :meth:`KNIFEPenalty.forward`; ``labels [B]`` (the task's class ids) with ``given='labels'``."""
        return super().forward(features, self.joint_labels(sensitive, labels, features.shape[0]), **extra)

    @torch.no_grad()
    def init_from_samples(
        self, features: Tensor, sensitive: Tensor | None = None, labels: Tensor | None = None
    ) -> MutualInformationPenalty:
        """As :meth:`KNIFEPenalty.init_from_samples`; ``labels [N]`` with ``given='labels'``."""
        return super().init_from_samples(features, self.joint_labels(sensitive, labels, features.shape[0]))

    def check_sensitive(self, sensitive: Tensor | None, batch: int) -> Tensor:
        if self.needs_labels and sensitive is not None:  # joint ids, checked by joint_labels
            classes = self.config.num_sensitive_classes * self.num_groups
            return check_labels(sensitive, "joint (label, sensitive) ids", classes, length=batch)
        return check_sensitive_labels(self, sensitive, batch)

    def init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        self.estimator.init_from_samples(z, sensitive)

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z, sensitive).loss

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        if self.config.mutual_information.calibrate and self.config.sensitive_type == "discrete":
            return self.compute_calibrated(z, sensitive, weight)
        estimator = self.estimator
        positive_part = self.config.mutual_information.positive_part
        scale = torch.full(z.shape[:1], weight, device=z.device)  # [B]
        if positive_part:
            with torch.no_grad():  # which samples have a positive pointwise MI (invariant to standardisation)
                pointwise = estimator.conditional_log_prob(z, sensitive) - estimator.marginal_log_prob(z, sensitive)  # [B]
            scale = scale * (pointwise > 0)
        # the estimator gets the gradient of its fitting loss a h(Z) + b h(Z|S); the rows of z are scaled so that
        # z gets w * grad (h(Z) - h(Z|S)) whatever (a, b) are
        a, b = estimator.fit_coefficients
        marginal_nll = -estimator.marginal_log_prob(scale_rows(z, scale / a), sensitive)  # [B]: z gets +w grad h
        conditional_nll = -estimator.conditional_log_prob(scale_rows(z, -scale / b), sensitive)  # [B]
        h_marginal, h_conditional = marginal_nll.mean(), conditional_nll.mean()
        mutual_information = h_marginal - h_conditional
        fit = a * h_marginal + b * h_conditional
        penalty = (marginal_nll - conditional_nll).clamp_min(0).mean() if positive_part else mutual_information
        metrics = self._metrics(h_marginal, h_conditional, mutual_information, fit)
        return PenaltyOutput(loss=value_with_grad(weight * penalty, fit), metrics=metrics)

    def _metrics(self, h_marginal: Tensor, h_conditional: Tensor, mutual_information: Tensor, fit: Tensor) -> dict:
        """The logged scalars (entropies in the units of the raw features)."""
        log_scale = self.standardizer.log_scale()
        return {
            "marginal_entropy": (h_marginal + log_scale).detach(),
            "conditional_entropy": (h_conditional + log_scale).detach(),
            "mutual_information": mutual_information.detach(),
            "estimator_nll": fit.detach(),
        }

    def compute_calibrated(self, z: Tensor, labels: Tensor, weight: float) -> PenaltyOutput:
        """``calibrate=True``: the estimator gets the gradient of its fitting loss on detached ``z [B, dim]``; ``z``
        gets ``w * grad mean_n log q_T(s_n | z_n) / p(s_n)`` with the estimator frozen, ``T`` fitted on this batch
        (:func:`~hf_knife.estimators.mutual_information.fit_temperature`; with ``given='labels'`` the posterior of
        S within each sample's label). The batch is the micro-batch of all processes together (the same T with 1 or N
        processes); like batch normalisation, T depends on the micro-batch size, so gradient accumulation changes it.
        Measured: fitting T on the previous step's rows instead (GA-invariant) reads -2.8 nats where the truth is 0.41,
        as the estimator's inner steps change its confidence between the two steps."""
        estimator = self.estimator
        a, b = estimator.fit_coefficients
        marginal_nll, conditional_nll = estimator.pointwise(z.detach(), labels)  # [B] each: the estimator's graph
        h_marginal, h_conditional = marginal_nll.mean(), conditional_nll.mean()
        fit = a * h_marginal + b * h_conditional
        frozen = [p for p in estimator.parameters() if p.requires_grad]
        for p in frozen:  # the model's graph: z only
            p.requires_grad_(False)
        try:
            class_log_probs = estimator.all_log_probs(z)  # [B, G * C]
        finally:
            for p in frozen:
                p.requires_grad_(True)
        own_group, log_prior, s = estimator.own_group(class_log_probs, labels)  # [B, C], [B, C], [B]
        with torch.no_grad():  # one temperature for the whole batch, over all processes
            gather = is_distributed() and not self.fitter.gathered
            ll, prior, ss = (all_gather_with_grad(t) for t in (own_group.detach(), log_prior, s)) if gather else (
                own_group.detach(), log_prior, s)  # fmt: skip
            temperature = fit_temperature(ll, ss, prior)
        log_posterior = calibrated_log_posterior(own_group, log_prior, temperature)  # [B, C]
        pointwise = (log_posterior - log_prior).gather(1, s.unsqueeze(1)).squeeze(1)  # [B]
        mutual_information = pointwise.mean()
        metrics = self._metrics(h_marginal, h_conditional, mutual_information, fit)
        metrics["temperature"] = torch.tensor(float(temperature), device=z.device)
        penalty = weight * mutual_information
        return PenaltyOutput(loss=value_with_grad(penalty, penalty, fit), metrics=metrics)
