"""Support of ``recipes/fair_classification.py``: task checks, the representation Z (which one, and its extraction),
the scoring of a run (accuracy, fairness, leakage audit, I(Z; S)), the summary over seeds and the result files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hf_knife
from hf_knife.columns import count_classes
from hf_knife.erasure import ERASURE_METHODS
from hf_knife.metrics import audit_leakage, fairness_report
from hf_knife.representation import Representation, extract_features

from .reporting import pyplot, read_results, write_csv, write_json
from .stats import describe, group_by, paired_difference


# ----------------------------------------------------------------------------------------------- data
def check_task(data: Any, sensitive: str) -> tuple[int, int]:
    """Clear errors before training: columns, empty splits, classification labels, >= 2 groups."""
    for split in ("train", "validation", "test"):
        if split not in data:
            raise ValueError(f"the dataset has no {split!r} split; splits present: {sorted(data)}")
        if len(data[split]) == 0:
            raise ValueError(f"the {split!r} split is empty")
        missing = [c for c in ("text", "label", sensitive) if c not in data[split].column_names]
        if missing:
            raise ValueError(
                f"{split!r} split lacks column(s) {missing}; columns present: {data[split].column_names}"
            )
    labels = np.asarray(data["train"]["label"])
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class ids for classification, got dtype {labels.dtype}")
    for split in ("train", "test"):  # the penalty, the erasure and the audit's attackers need two groups
        groups = np.unique(np.asarray(data[split][sensitive]))
        if len(groups) < 2:
            raise ValueError(
                f"the sensitive attribute {sensitive!r} takes a single value ({_plain(groups[0])!r}) in {split}; "
                "hiding it or auditing its leakage needs at least two groups"
            )
    return _num_classes(data, "label"), _num_classes(data, sensitive)


def _num_classes(data: Any, column: str) -> int:
    """The number of classes of ``column`` over all splits (its ClassLabel, else the largest id + 1)."""
    return max(count_classes(data[split], column) or 0 for split in data)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------------------- representation
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling")


def default_representation(model_name_or_path: str) -> tuple[str, str]:
    """``(representation, why)`` for ``--representation auto``.

    Sentence-transformers checkpoints are trained for the pooling their ``1_Pooling/config.json`` names (mean for
    all-MiniLM-L6-v2): a local folder holding ``modules.json``, ``sentence_bert_config.json`` or ``1_Pooling``, a Hub
    id whose ``modules.json`` is in the local Hub cache, or a ``sentence-transformers/`` Hub id. Anything else: the
    pooler output (the input of BERT's classification head).
    """
    path = Path(model_name_or_path)
    found = [name for name in SENTENCE_TRANSFORMERS_FILES if (path / name).exists()] if path.is_dir() else []
    if not found and not path.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_name_or_path), "modules.json")
            if isinstance(cached, str):
                found, path = ["modules.json (Hub cache)"], Path(cached).parent
        except Exception:  # not a valid repo id: a plain local name
            pass
    if not found and str(model_name_or_path).startswith("sentence-transformers/"):
        return "mean", "a sentence-transformers/ Hub id: mean pooling"
    if not found:
        return "pooler", "not a sentence-transformers checkpoint: the pooler output (what the head reads)"
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = json.loads(pooling.read_text())
        if modes.get("pooling_mode_cls_token") and not modes.get("pooling_mode_mean_tokens"):
            return "cls", f"a sentence-transformers checkpoint ({', '.join(found)}) pooling the [CLS] token"
    return "mean", f"a sentence-transformers checkpoint ({', '.join(found)}): mean pooling"


def parse_method(method: str) -> tuple[str | None, str | None]:
    """``(trained, eraser)``: ``"knife+leace" -> ("knife", "leace")``, ``"leace" -> (None, "leace")`` (frozen
    encoder), ``"frozen" -> (None, None)``."""
    if method == "frozen":
        return None, None
    if method in ERASURE_METHODS:
        return None, method
    trained, _, eraser = method.partition("+")
    return trained, eraser or None


@torch.no_grad()
def encode(
    model: Any, dataset: Any, collator: Any, representation: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One pass of the model over ``dataset``: Z (the representation the penalty acts on) ``[N, d]`` and the
    model's logits ``[N, C]``."""
    columns = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    loader = torch.utils.data.DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator
    )
    rep = Representation.resolve(model, representation)
    features, logits = extract_features(model, loader, rep, return_logits=True, progress=True)
    return features.numpy(), logits.numpy()


def encode_splits(
    model: Any, tokenized: Any, tokenizer: Any, representation: str, batch_size: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Z ``[N, d]`` and the model's own predictions ``[N]`` on the train, validation and test splits."""
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    z, predictions = {}, {}
    for split in ("train", "validation", "test"):
        z[split], logits = encode(model, tokenized[split], collator, representation, batch_size)
        predictions[split] = logits.argmax(-1)
    return z, predictions


@torch.no_grad()
def erased_head_predictions(model: Any, erased: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The erased model's head on the erased Z of each split: exactly what its forward computes."""
    linear = model.get_submodule(model.config.erasure["head"])
    weight, bias = linear.weight.detach().float().cpu(), linear.bias.detach().float().cpu()
    return {split: torch.nn.functional.linear(torch.from_numpy(v), weight, bias).argmax(-1).numpy()
            for split, v in erased.items()}  # fmt: skip


# ----------------------------------------------------------------------------------------------- scoring
def score_run(
    row: dict[str, Any], z: dict[str, np.ndarray], predictions: dict[str, np.ndarray], script, data, sensitive: str,
    seed: int,
) -> Any:
    """Add accuracy, fairness, the leakage audit of ``z`` and the I(PCA(Z); S) estimate to ``row``; the audit."""
    row["val_accuracy"] = float((predictions["validation"] == np.asarray(data["validation"]["label"])).mean())
    labels, groups = np.asarray(data["test"]["label"]), np.asarray(data["test"][sensitive])
    report = fairness_report(labels, predictions["test"], groups, n_boot=script.audit_bootstrap, seed=seed)
    row.update({k: report[k] for k in ("accuracy", "macro_f1", "tpr_gap", "tpr_gap_ci_low", "tpr_gap_ci_high",
                                      "dp_diff", "eo_diff") if k in report})  # fmt: skip
    n_audit = len(z["train"]) if script.audit_train_size is None else min(script.audit_train_size, len(z["train"]))
    z_train = z["train"][:n_audit]
    s_train = np.asarray(data["train"][sensitive])[:n_audit]
    s_test = np.asarray(data["test"][sensitive])
    attackers = [a.strip() for a in script.audit_attackers.split(",") if a.strip()]
    # the same attackers are scored on the validation split: what --max_leakage selects on (never the test split)
    audit = audit_leakage(z_train, s_train, z["test"], s_test, attackers=attackers, seed=seed,
                          n_boot=script.audit_bootstrap, validation_repr=z["validation"],
                          validation_sensitive=np.asarray(data["validation"][sensitive]))  # fmt: skip
    row.update(
        majority_rate=audit.majority_rate,
        attacker=audit.strongest,
        attacker_accuracy=audit.accuracy,
        leakage=audit.leakage,
        leakage_ci_low=audit.leakage_ci[0],
        leakage_ci_high=audit.leakage_ci[1],
        audit_dropped_coordinates=len(audit.dropped),
    )
    for name, result in audit.attackers.items():
        row[f"{name}_accuracy"] = result.accuracy
        row[f"{name}_leakage"] = result.leakage
    row["val_leakage"] = audit.validation_leakage
    row["audit"] = {
        "dropped": audit.dropped,
        "dropped_note": audit.dropped_note,
        "attackers": {name: {"accuracy": r.accuracy, "leakage": r.leakage, "leakage_ci": list(r.leakage_ci),
                             "fit_seconds": round(r.fit_seconds, 2), "details": r.details}
                      for name, r in audit.attackers.items()},
    }  # fmt: skip
    # KNIFE on 384+ dimensions from ~2,000 samples is unreliable; estimate I(P(Z); S) after a PCA P fitted on the
    # training representations (a lower bound on I(Z; S) by data processing).
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(script.mi_pca_dim, z_train.shape[1], len(z_train)), random_state=seed).fit(z_train)
    mi = hf_knife.estimate_mutual_information(pca.transform(z["test"]), s_test.astype(np.int64), seed=seed)
    row.update(mi_estimate=float(mi), mi_stderr=mi.stderr)
    return audit


# ----------------------------------------------------------------------------------------------- reporting
SUMMARY_KEYS = ("accuracy", "macro_f1", "attacker_accuracy", "leakage", "tpr_gap", "dp_diff", "eo_diff", "mi_estimate",
                "val_accuracy", "val_leakage", "refit_accuracy")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% t-interval half-width over seeds, per (method, weight, target)."""
    out = []
    for (method, weight, target), group in group_by(rows, ("method", "weight", "target")).items():
        entry: dict[str, Any] = {"method": method, "weight": weight, "num_seeds": len(group),
                                 "majority_rate": describe(r["majority_rate"] for r in group).mean}  # fmt: skip
        if target is not None:
            entry["target"] = target
        for key in SUMMARY_KEYS:
            d = describe(r[key] for r in group if key in r and r[key] is not None)
            if d.n == 0:
                continue
            entry[key] = d.mean
            if d.n > 1:
                entry[f"{key}_ci95"] = d.half_width
        if len(group) == 1:  # one seed: the leakage interval is the audit's bootstrap interval
            entry["leakage_ci_low"], entry["leakage_ci_high"] = group[0]["leakage_ci_low"], group[0]["leakage_ci_high"]
        out.append(entry)
    return out


def paired_differences(rows: list[dict[str, Any]], references: tuple[str, ...] = ("none", "leace")) -> list[dict]:
    """Per setting and reference method: the paired-seed difference (setting - reference) of test accuracy and
    leakage, mean and 95% t-interval over the seeds both ran."""
    out = []
    for (method, weight, target), group in group_by(rows, ("method", "weight", "target")).items():
        for reference in references:
            base = [r for r in rows if r["method"] == reference]
            if method == reference or not base:
                continue
            entry: dict[str, Any] = {"method": method, "weight": weight, "target": target, "reference": reference}
            for key in ("accuracy", "leakage"):
                diff = paired_difference({r["seed"]: r[key] for r in group}, {r["seed"]: r[key] for r in base})
                entry[key] = {k: diff[k] for k in ("n", "mean", "ci95")}
            if entry["accuracy"]["n"]:
                out.append(entry)
    return out


def print_paired(paired: list[dict[str, Any]]) -> None:
    if not paired:
        return
    print(f"\n{'paired difference (seeds)':<34} {'accuracy [95% CI]':>26} {'leakage [95% CI]':>26}")
    for e in paired:
        setting = _setting(e)
        cells = []
        for key in ("accuracy", "leakage"):
            d = e[key]
            low, high = d["ci95"]
            cells.append(f"{d['mean']:+.3f} [{low:+.3f}, {high:+.3f}]" if d["n"] > 1 else f"{d['mean']:+.3f}")
        print(f"{setting + ' - ' + e['reference'] + ' (' + str(e['accuracy']['n']) + ')':<34} {cells[0]:>26} {cells[1]:>26}")


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()


    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = {"none": "s", "knife": "o", "adversarial": "^", "leace": "D", "inlp": "v"}
    for method in dict.fromkeys(e["method"] for e in summary):
        points = sorted((e for e in summary if e["method"] == method),
                        key=lambda e: (e["weight"], e.get("target") or 0.0))  # fmt: skip
        marker = markers.get(parse_method(method)[1] or method, "o")
        style = {"ls": "--"} if "+" in method else {}
        x = [e["leakage"] for e in points]
        y = [e["accuracy"] for e in points]
        if "leakage_ci95" in points[0]:
            xerr = [[e.get("leakage_ci95", 0) for e in points]] * 2
        else:
            xerr = [[e["leakage"] - e.get("leakage_ci_low", e["leakage"]) for e in points],
                    [e.get("leakage_ci_high", e["leakage"]) - e["leakage"] for e in points]]  # fmt: skip
        yerr = [e.get("accuracy_ci95", 0) for e in points]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker=marker, capsize=3, label=method, **style)
        for e in points:
            if parse_method(method)[0] not in (None, "none"):
                label = f"t={e['target']:g}" if e.get("target") is not None else f"{e['weight']:g}"
                ax.annotate(label, (e["leakage"], e["accuracy"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("leakage: strongest attacker accuracy − majority rate (lower is better)")
    ax.set_ylabel("main-task accuracy (test)")
    ax.set_title("Accuracy vs leakage of the sensitive attribute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], output_dir: Path, config: dict,
    paired: list[dict[str, Any]] | None = None,
) -> None:
    """``results.json`` (config, runs, summary, paired differences), ``results.csv`` (the scalar columns of the runs),
    ``tradeoff.png``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "runs": rows, "summary": summary, "paired": paired or []}
    write_json(output_dir / "results.json", payload, indent=2)
    write_csv(rows, output_dir / "results.csv")
    plot(summary, output_dir / "tradeoff.png")


def merge_results(folders: list[Path], output_dir: Path, order: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of several finished runs (their ``results.json``) -> one table, summary and plot in ``output_dir``; rows
    sorted by seed, then method (in the order of ``order``), weight and target."""
    rows = [row for folder in folders for row in read_results(folder, "--merge_from", missing=FileNotFoundError)["runs"]]
    counts = Counter((r["method"], r["weight"], r.get("target"), r["seed"]) for r in rows)
    repeated = sorted((k for k, n in counts.items() if n > 1), key=str)
    if repeated:
        raise ValueError(f"--merge_from: the same (method, weight, target, seed) appears twice: {repeated}")
    rows.sort(key=lambda r: (r["seed"], order.index(r["method"]), r["weight"], r.get("target") or 0.0))
    summary = summarise(rows)
    paired = paired_differences(rows)
    write_results(rows, summary, output_dir, {"merged_from": [str(folder) for folder in folders]}, paired)
    print_summary(summary)
    print_paired(paired)
    return rows


def print_summary(summary: list[dict[str, Any]]) -> None:
    print(f"\n{'method':<18} {'weight':>8} {'seeds':>5} {'accuracy':>9} {'refit':>6} {'macro-F1':>9} {'attacker':>9} "
          f"{'majority':>9} {'leakage':>8} {'TPR-GAP':>8} {'I(Z;S)':>7}")  # fmt: skip
    for e in summary:
        weight = f"t={e['target']:g}" if e.get("target") is not None else f"{e['weight']:g}"
        refit = f"{e['refit_accuracy']:.3f}" if e.get("refit_accuracy") is not None else "-"
        print(f"{e['method']:<18} {weight:>8} {e['num_seeds']:>5} {e['accuracy']:>9.3f} {refit:>6} {e['macro_f1']:>9.3f} "
              f"{e['attacker_accuracy']:>9.3f} {e['majority_rate']:>9.3f} {e['leakage']:>+8.3f} "
              f"{e.get('tpr_gap', float('nan')):>8.3f} {e['mi_estimate']:>7.3f}")  # fmt: skip


#: slack on the recommendation's comparisons, for differences of rates that are exact on paper
FLOAT_SLACK = 1e-9


def recommend(summary: list[dict[str, Any]], max_leakage: float, max_accuracy_drop: float) -> tuple[dict, str]:
    """The method a user should take, chosen on the validation split only: among the settings whose mean validation
    leakage (strongest attacker - majority) is at most ``max_leakage``, the most accurate on validation, preferring
    the cheaper method (post-hoc before trained) when validation accuracies are within ``max_accuracy_drop``; if none
    meets the leakage bound, the least leaky. Returns the summary entry and a one-paragraph reason."""
    rows = [e for e in summary if e.get("val_leakage") is not None and e.get("val_accuracy") is not None]
    if not rows:
        raise ValueError("no summary entry has validation accuracy and leakage to recommend from")
    cost = {"frozen": 0, "leace": 1, "inlp": 2}  # post-hoc on frozen features: seconds, no training
    # leakage = accuracy - majority rate: on 500 validation rows exactly +0.020 computes as 0.020000000000000018
    eligible = [e for e in rows if e["val_leakage"] <= max_leakage + FLOAT_SLACK]
    if not eligible:
        best = min(rows, key=lambda e: e["val_leakage"])
        return best, (
            f"no setting keeps the validation leakage at or below {max_leakage:+.3f}; the least leaky is "
            f"{_setting(best)} (validation leakage {best['val_leakage']:+.3f}, accuracy {best['val_accuracy']:.3f})"
        )
    top = max(e["val_accuracy"] for e in eligible)
    close = [e for e in eligible if e["val_accuracy"] >= top - max_accuracy_drop - FLOAT_SLACK]
    best = min(close, key=lambda e: (cost.get(e["method"], 3), -e["val_accuracy"]))
    others = ", ".join(f"{_setting(e)} {e['val_accuracy']:.3f}" for e in sorted(eligible, key=lambda e: -e["val_accuracy"])
                       if e is not best)  # fmt: skip
    none = next((e for e in rows if e["method"] == "none"), None)
    versus = (f"; `none` reads {none['val_accuracy']:.3f} at leakage {none['val_leakage']:+.3f}" if none else "")
    return best, (
        f"{_setting(best)}: validation accuracy {best['val_accuracy']:.3f} at validation leakage "
        f"{best['val_leakage']:+.3f} (<= {max_leakage:+.3f}); the cheapest setting within {max_accuracy_drop:.3f} of the "
        f"most accurate one under the leakage bound ({f'others under it: {others}' if others else 'no other setting is under it'}){versus}"
    )


def _setting(entry: dict[str, Any]) -> str:
    if entry.get("target") is not None:
        return f"{entry['method']} (target {entry['target']:g} nats)"
    return entry["method"] if entry["method"] in ("none", "frozen", "leace", "inlp") else (
        f"{entry['method']} (weight {entry['weight']:g})")


def audit_markdown(row: dict[str, Any], audit: Any) -> str:
    attackers = ", ".join(f"{name} {r.accuracy:.3f}" for name, r in audit.attackers.items())
    erasure = ""
    if "+" in row["method"]:
        eraser = parse_method(row["method"])[1].upper()
        erasure = (
            f"The model carries a {eraser} erasure layer (rank {row.get('erasure_rank')}) on its representation "
            f"({row.get('representation')}) and a linear head refitted on the erased training representations; "
            "load it with `hf_knife.erasure.AutoErasedModelForSequenceClassification.from_pretrained` (the plain "
            "`AutoModelForSequenceClassification` ignores the layer). Accuracy of the model before erasure: "
            f"{row.get('accuracy_before_erasure', float('nan')):.3f}.\n"
        )
    elif row.get("head_reads_z") and row.get("representation") != "pooler":
        erasure = (
            f"The classifier reads the {row.get('representation')}-pooled representation (the one audited below) "
            "through an identity layer; load it with "
            "`hf_knife.erasure.AutoErasedModelForSequenceClassification.from_pretrained` (the plain "
            "`AutoModelForSequenceClassification` would feed the head BERT's pooler instead).\n"
        )
    return (
        "## Leakage audit (hf_knife)\n\n"
        f"Method {row['method']} (weight {row['weight']:g}). {erasure}"
        f"Test accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}, TPR-GAP {row.get('tpr_gap', float('nan')):.3f}.\n"
        f"Strongest attacker ({audit.strongest}) reads the sensitive attribute at {audit.accuracy:.3f} against a "
        f"majority rate of {audit.majority_rate:.3f}: leakage {audit.leakage:+.3f} "
        f"(95% CI {audit.leakage_ci[0]:+.3f} to {audit.leakage_ci[1]:+.3f}); all attackers: {attackers}. "
        f"KNIFE estimate of I(Z;S) on the test split: {row['mi_estimate']:.3f} nats.\n"
    )

