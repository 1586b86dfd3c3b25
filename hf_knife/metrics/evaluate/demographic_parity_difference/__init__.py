"""The ``demographic_parity_difference`` evaluate module (load it with ``evaluate.load(<this folder>)``)."""
