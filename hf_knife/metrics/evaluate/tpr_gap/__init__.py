"""The ``tpr_gap`` evaluate module (``evaluate.load(hf_knife.metrics.evaluate_module_path("tpr_gap"))``)."""
