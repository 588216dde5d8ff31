"""How well the provenance tests (distill.studies.provenance) detect the students of a
teacher T in the provenance study (distill.studies.provenance_study, notebook 06): what
each student leaves as evidence, its p-values on any number of prompts, and, over the
students, ROC and AUC, the true-positive rate at a false-positive rate, the null
students' calibration, and the figure. `teacher` students are the positives, `other`
and `reference` students the nulls.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import provenance

POSITIVE, NULLS = "teacher", ("other", "reference")
TESTS = {"agreement": "output agreement", "likelihood": "likelihood (R: init)",
         "likelihood_healed": "likelihood (R: init + reference text)", "watermark": "watermark"}


def evidence(answers: list[str], logliks: dict[str, np.ndarray]) -> dict:
    """What the tests need of one student S, per prompt, so that they can be run later
    on any number of the prompts and at any `max_edit` (`p_values`): S's answers, and d
    of the likelihood test with the initialisation as R. `logliks` are keyed
    suspect_teacher, suspect_other, init_teacher, init_other (scorer, whose answers)."""
    return {"answers": answers,
            "d": ((logliks["suspect_teacher"] - logliks["init_teacher"])
                  - (logliks["suspect_other"] - logliks["init_other"])).tolist()}


def healed_shift(init: dict[str, np.ndarray], healed: dict[str, np.ndarray]) -> np.ndarray:
    """What turns a student's d against the initialisation into d against a *healed*
    reference R' (the initialisation trained on reference text, no teacher):
    d' = (S_T - S_C) - (R'_T - R'_C) = d + (init_T - init_C) - (R'_T - R'_C).

    Why: the initialisation is T pruned, and any training heals it back towards T, so
    students of no teacher gain more on T's answers than the bare initialisation does
    (the study measured it). R' has healed as much without T's answers."""
    return ((init["init_teacher"] - init["init_other"])
            - (healed["healed_teacher"] - healed["healed_other"]))


def p_values(evidence: dict, prompts: int, teachers: dict[str, list[str]], tokenizer,
             messages, watermark=None, max_edit: float = 0.0, permutations: int = 2000,
             seed: int = 0, shift=None) -> dict:
    """The p-values of one student on its first `prompts` prompts: output agreement
    with T's answers against T''s (`teachers`: teacher / other; one-sided exact
    McNemar, which Holm leaves as it is with one other model), the likelihood lift over
    the initialisation and, given `shift` (`healed_shift`), over a healed reference
    (sign flips), and the watermark (Binomial; NaN without one). Also the shares of
    answers that agree with each teacher."""
    answers = evidence["answers"][:prompts]
    agrees = {role: [provenance.answers_agree(a, b, max_edit)
                     for a, b in zip(answers, teachers[role])] for role in ("teacher", "other")}
    agree = {role: sum(flags) for role, flags in agrees.items()}
    found = {"agreement": provenance.prefers(agrees["teacher"], agrees["other"]),
             "likelihood": provenance.sign_flip_test(np.asarray(evidence["d"][:prompts]),
                                                     permutations, seed)["p_value"],
             "likelihood_healed": float("nan") if shift is None else provenance.sign_flip_test(
                 (np.asarray(evidence["d"]) + shift)[:prompts], permutations, seed)["p_value"],
             "watermark": float("nan"),
             "agree_teacher": agree["teacher"] / prompts, "agree_other": agree["other"] / prompts}
    if watermark is not None:
        found["watermark"] = provenance.watermark_radioactivity(
            tokenizer, messages[:prompts], answers, watermark)["p_value"]
    return found


def roc(scores_positive, scores_negative) -> tuple[np.ndarray, np.ndarray, float]:
    """(false-positive rates, true-positive rates, AUC) of flagging where p <= threshold,
    over every threshold; AUC as the chance a positive's p is below a negative's (ties
    count half)."""
    pos, neg = np.asarray(scores_positive), np.asarray(scores_negative)
    thresholds = np.unique(np.concatenate([pos, neg, [0.0, 1.0]]))
    fpr = np.array([0.0, *[(neg <= t).mean() for t in thresholds]])
    tpr = np.array([0.0, *[(pos <= t).mean() for t in thresholds]])
    auc = float(np.mean([(p < n) + 0.5 * (p == n) for p in pos for n in neg]))
    return fpr, tpr, auc


def tpr_at_fpr(scores_positive, scores_negative, fpr: float = 0.05) -> float:
    """The share of positives flagged at the largest threshold that flags at most `fpr`
    of the negatives."""
    neg = np.sort(np.asarray(scores_negative))
    allowed = int(np.floor(fpr * len(neg)))  # negatives that may fall at or under it
    threshold = neg[allowed] if allowed < len(neg) else np.inf
    return float((np.asarray(scores_positive) < threshold).mean())


def summary(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per test: AUC and TPR at 5% FPR (teacher vs other + reference students), and the
    null arms' false-positive rate at alpha with its 95% Wilson interval."""
    rows = []
    for test in TESTS:
        if test not in table or table[test].isna().all():  # not run
            continue
        pos = table.loc[table["arm"] == POSITIVE, test]
        neg = table.loc[table["arm"].isin(NULLS), test]
        _, _, auc = roc(pos, neg)
        low, high = wilson((neg <= alpha).sum(), len(neg))
        rows.append({"test": TESTS[test], "auc": auc, "tpr_at_5pct_fpr": tpr_at_fpr(pos, neg),
                     "null_models": len(neg), "fpr_at_alpha": (neg <= alpha).mean(),
                     "fpr_95ci": f"[{low:.2f}, {high:.2f}]",
                     "power_at_alpha": (pos <= alpha).mean()})
    return pd.DataFrame(rows)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def plot(table: pd.DataFrame, power: pd.DataFrame, alpha: float = 0.05):
    """Four panels: ROC per test, the null p-values against uniform (QQ), power against
    the number of prompts, and detection against the share of T's data."""
    import matplotlib.pyplot as plt

    tests = [t for t in TESTS if t in table and not table[t].isna().all()]
    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
    for test in tests:
        pos = table.loc[table["arm"] == POSITIVE, test]
        neg = table.loc[table["arm"].isin(NULLS), test]
        fpr, tpr, auc = roc(pos, neg)
        axes[0].step(fpr, tpr, where="post", label=f"{TESTS[test]} (AUC {auc:.2f})")
        null = np.sort(neg.to_numpy())
        axes[1].plot((np.arange(1, len(null) + 1) - 0.5) / len(null), null, "o-", ms=3,
                     label=TESTS[test])
        rates = power[power["test"] == test]
        axes[2].plot(rates["prompts"], rates["power"], "o-", label=TESTS[test])
        shares = table.dropna(subset=["share"]).groupby("share")[test].apply(
            lambda p: (p <= alpha).mean())
        axes[3].plot(shares.index * 100, shares.to_numpy(), "o-", label=TESTS[test])
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    axes[0].set(xlabel="false-positive rate (other + reference students)",
                ylabel="true-positive rate (teacher students)", title="ROC")
    axes[1].plot([0, 1], [0, 1], ":", color="grey")
    axes[1].set(xlabel="uniform quantile", ylabel="null p-value",
                title="calibration on the null students")
    axes[2].set(xlabel="prompts", ylabel=f"teacher students flagged at alpha={alpha}",
                title="power against prompts", ylim=(0, 1.05))
    axes[3].set(xlabel="% of the student's data from T", ylabel=f"flagged at alpha={alpha}",
                title="detection against dilution", ylim=(0, 1.05))
    for axis in axes:
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
