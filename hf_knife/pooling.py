"""Temporary alias of :mod:`hf_knife.representation` while the recipes move over (removed before release)."""

from .representation import FeatureCapture, Representation  # noqa: F401


def resolve_source(model, config):  # noqa: ANN001, ANN201
    rep = Representation.from_config(model, config)
    return rep.module(model), rep.description
