"""Seaborn figures for the notebooks; each returns its figure and can save it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..core.runs import save_figure

sns.set_theme(style="whitegrid", context="notebook")


def completion_lengths(samples: pd.DataFrame, run_dir=None):
    """Histogram of completion lengths, coloured by why generation stopped."""
    frame = samples.assign(tokens=samples["completion_ids"].map(len))
    figure, axis = plt.subplots(figsize=(7, 3.5))
    sns.histplot(frame, x="tokens", hue="finish_reason", multiple="stack", bins=30, ax=axis)
    axis.set(title="Teacher completion lengths", xlabel="tokens per completion")
    return save_figure(figure, run_dir, "completion_lengths")


def training_curves(log: pd.DataFrame, run_dir=None):
    """Loss parts per step (left) with the validation KL where it was measured (dots),
    and the learning rate schedule (right)."""
    parts = [c for c in ("loss", "ce", "kd") if c in log]
    long = log.melt(id_vars="step", value_vars=parts, var_name="term", value_name="value")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5),
                                         gridspec_kw={"width_ratios": [2, 1]})
    sns.lineplot(long, x="step", y="value", hue="term", ax=left)
    validation = [c for c in log if c.endswith("_kl")]
    if validation:  # over-fitting shows as a validation KL that rises while the loss falls
        measured = log.melt(id_vars="step", value_vars=validation, var_name="term",
                            value_name="value").dropna()
        sns.lineplot(measured, x="step", y="value", hue="term", marker="o", ax=left,
                     palette="dark")
    left.set(title="Training loss and validation KL", ylabel="loss / KL")
    sns.lineplot(log, x="step", y="lr", ax=right)
    right.set(title="Learning rate", ylabel="")
    figure.tight_layout()
    return save_figure(figure, run_dir, "training_curves")


def _error_bars(axis, values, bounds: list, horizontal: bool = False) -> None:
    """Draw each bar's 95% interval (`bounds`: one [low, high] or None per bar, in order)."""
    for position, (value, bound) in enumerate(zip(values, bounds)):
        if bound is None or pd.isna(value) or any(pd.isna(b) for b in bound):
            continue
        error = [[max(value - bound[0], 0)], [max(bound[1] - value, 0)]]
        if horizontal:
            axis.errorbar(value, position, xerr=error, color="black", capsize=3, lw=1)
        else:
            axis.errorbar(position, value, yerr=error, color="black", capsize=3, lw=1)


def model_comparison(table: pd.DataFrame, run_dir=None, intervals: dict | None = None):
    """One bar chart per metric, a bar per model (rows of `table`, indexed by model), with
    the 95% interval of each figure that has one (`intervals`: {model: {figure: [low,
    high]}}, as metrics.json keeps them) as an error bar."""
    metrics = {"heldout_kl": "KL(teacher || model), lower is better",
               "top1_agreement": "top-1 agreement with teacher",
               "rouge_l_vs_teacher": "ROUGE-L vs teacher answer",
               "perplexity": "corpus perplexity (log scale), lower is better",
               "bits_per_byte": "bits per byte, lower is better",
               "next_word_agreement": "next-word agreement with teacher",
               "generation_tokens_per_second": "generation tokens/s",
               "wer": "WER vs true text, lower is better",
               "wer_vs_teacher": "WER vs teacher transcript",
               "real_time_factor": "real-time factor, lower is faster",
               "transcription_tokens_per_second": "transcription tokens/s",
               "parameters_m": "parameters (millions)"}
    metrics = {k: v for k, v in metrics.items() if k in table and table[k].notna().any()}
    columns = 4
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows),
                                squeeze=False)
    frame = table.reset_index().rename(columns={"index": "model"})
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    for axis, (metric, title) in zip(axes.flat, metrics.items()):
        sns.barplot(frame, x="model", y=metric, hue="model", ax=axis, legend=False)
        _error_bars(axis, frame[metric], [(intervals or {}).get(m, {}).get(metric)
                                          for m in frame["model"]])
        axis.set(title=title, xlabel="", ylabel="")
        if metric == "perplexity":  # a broken student is orders of magnitude off
            axis.set_yscale("log")
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    return save_figure(figure, run_dir, "model_comparison")


def run_comparison(table: pd.DataFrame, run_dir=None, intervals: dict | None = None):
    """One bar chart per figure of `distill.evaluation.compare.compare_runs`' table (its numeric
    columns, in order), a bar per run, each with its 95% interval where `intervals`
    ({run: {figure: [low, high]}}) has one."""
    metrics = [c for c in table.select_dtypes("number") if table[c].notna().any()]
    columns = 3
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows),
                                squeeze=False)
    frame = table.reset_index()
    # label bars by objective; add the run name where two runs share one
    repeated = frame["objective"].duplicated(keep=False)
    frame["label"] = frame["objective"].where(~repeated, frame["objective"] + " · " + frame["run"])
    for axis, metric in zip(axes.flat, metrics):
        sns.barplot(frame, y="label", x=metric, hue="label", ax=axis, legend=False)
        _error_bars(axis, frame[metric], [(intervals or {}).get(r, {}).get(metric)
                                          for r in frame["run"]], horizontal=True)
        axis.set(title=metric, ylabel="", xlabel="")
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    figure.tight_layout()
    return save_figure(figure, run_dir, "run_comparison")


FRONTIER_QUALITY = {"heldout_kl": "held-out KL (lower is better)",
                    "prose_kl": "prose KL (lower is better)",
                    "top1_agreement": "top-1 agreement",
                    "reference_in_answer": "reference in answer (graded)"}


def frontier(table: pd.DataFrame, teacher: dict, run_dir=None):
    """Quality against measured decode speed-up, one panel per figure: a point per run
    (rows of `compare.compare_runs`, labelled by layer count), at its batch-1 speed-up
    (filled) and batch-32 speed-up (hollow), and the teacher (`teacher`: its metrics
    row) at speed-up 1."""
    quality = {k: v for k, v in FRONTIER_QUALITY.items() if k in table}
    figure, axes = plt.subplots(1, len(quality), figsize=(4.2 * len(quality), 3.6),
                                squeeze=False)
    frame = table.sort_values("decode_speedup_batch1")
    for axis, (metric, title) in zip(axes.flat, quality.items()):
        for batch, style in (("batch1", {}), ("batch32", {"facecolor": "none"})):
            column = f"decode_speedup_{batch}"
            if column in frame:
                axis.scatter(frame[column], frame[metric], edgecolor="C0", s=40,
                             label=f"student, {batch.replace('batch', 'batch ')}", **style)
        axis.plot(frame["decode_speedup_batch1"], frame[metric], color="C0", alpha=0.4)
        for _, row in frame.iterrows():
            if pd.notna(row.get("layers")):
                axis.annotate(f"{int(row['layers'])}L", (row["decode_speedup_batch1"], row[metric]),
                              textcoords="offset points", xytext=(4, 4), fontsize=8)
        value = {"heldout_kl": 0.0, "prose_kl": 0.0, "top1_agreement": 1.0}.get(
            metric, teacher.get(metric))
        if value is not None:
            axis.scatter([1.0], [value], marker="*", s=160, color="C3", label="teacher")
        axis.set(title=title, xlabel="decode speed-up over the teacher", ylabel="")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, run_dir, "frontier")


def seed_curves(logs: dict[str, pd.DataFrame], run_dir=None):
    """The training loss and the validation KLs of several seeds of one run, per step: the
    mean as a line and the seeds' spread (min to max) as a band."""
    frame = pd.concat([log.assign(run=name) for name, log in logs.items()], ignore_index=True)
    curves = [c for c in ("loss", "val_kl", "prose_kl") if c in frame and frame[c].notna().any()]
    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
    for axis, curve in zip(axes.flat, curves):
        sns.lineplot(frame.dropna(subset=[curve]), x="step", y=curve, errorbar=("pi", 100),
                     marker="o" if curve != "loss" else None, ax=axis)
        axis.set(title=f"{curve}: mean and range over {len(logs)} seeds", ylabel="")
    figure.tight_layout()
    return save_figure(figure, run_dir, "seed_curves")
