"""The ``leakage_audit`` evaluate measurement (load it with ``evaluate.load(<this folder>)``)."""
