"""The ``equalized_odds_difference`` evaluate module (load it with ``evaluate.load(<this folder>)``)."""
