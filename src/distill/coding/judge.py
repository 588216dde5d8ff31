"""Judge models by running their code: one results row per model, task and answer, and
the tables notebook 03 shows (pass@k, pass rate by task kind, failure kinds).

Answer 0 of each task is the greedy one (pass@1 greedy); answers 1..n, where asked for,
are sampled, and pass@k is estimated from them without bias (`tasks.pass_at_k`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..core.runs import save_figure
from ..evaluation.intervals import ITEMS_COLUMNS
from . import sandbox
from .tasks import pass_at_k, run_answers

CONSENT = ("Executing model-written code (evaluation.execute_code is true). Each answer runs "
           "in its own process and folder, with the limits and confinement in the table "
           "below, as measured just now. Code written by a model can still do harm where a "
           "mechanism does not hold; run untrusted models only where that is acceptable.")
PASS_K = (1, 5, 10)  # pass@k reported for each k up to the answers sampled per task


def judge(answers: dict[str, list[list[str]]], tasks: list[dict], limits: sandbox.Limits,
          workers: int = 2) -> pd.DataFrame:
    """Rows (model, prompt_id, kind, answer, outcome, detail, seconds) for `answers`:
    {model: one list of answers per task, the greedy one first}."""
    frames = []
    for model, per_task in answers.items():
        flat = [(task, index, answer) for task, task_answers in zip(tasks, per_task)
                for index, answer in enumerate(task_answers)]
        outcomes = run_answers([a for _, _, a in flat], [t for t, _, _ in flat], limits,
                               workers, desc=f"{model}: running code")
        frames.append(pd.DataFrame({
            "model": model, "prompt_id": [t["prompt_id"] for t, _, _ in flat],
            "kind": [t["kind"] for t, _, _ in flat], "answer": [i for _, i, _ in flat],
            "outcome": [o.kind for o in outcomes], "detail": [o.detail for o in outcomes],
            "seconds": [o.seconds for o in outcomes]}))
    return pd.concat(frames, ignore_index=True)


def sampled_answers(model, tokenizer, chats: list[list[dict]], samples: int,
                    max_new_tokens: int, batch_size: int, temperature: float, seed: int,
                    desc: str) -> list[list[str]]:
    """`samples` answers to each chat at `temperature`, one list per chat ([] each when
    `samples` is 0)."""
    if not samples:
        return [[] for _ in chats]
    import torch

    from ..lm.generation import chat_answers

    torch.manual_seed(seed)
    flat, _ = chat_answers(model, tokenizer, chats * samples, max_new_tokens, batch_size, desc,
                           do_sample=True, temperature=temperature, stop_after_fences=True)
    return [flat[index::len(chats)] for index in range(len(chats))]


def pass_rates(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model: `pass@1_greedy`, and `pass@k` (k in PASS_K, up to the sampled
    answers per task) averaged over tasks; `code_tasks` and `sandbox_seconds_per_answer`."""
    rows = {}
    for model, frame in results.groupby("model", sort=False):
        greedy = frame[frame["answer"] == 0]
        row = {"code_tasks": len(greedy), "pass@1_greedy": greedy["outcome"].eq("passed").mean()}
        sampled = frame[frame["answer"] > 0].groupby("prompt_id")["outcome"]
        counts = sampled.agg(n="size", correct=lambda o: int(o.eq("passed").sum()))
        if len(counts):
            n = int(counts["n"].min())
            for k in (k for k in PASS_K if k <= n):
                row[f"pass@{k}"] = sum(pass_at_k(total, correct, k) for total, correct
                                       in zip(counts["n"], counts["correct"])) / len(counts)
        row["sandbox_seconds_per_answer"] = frame["seconds"].mean()
        rows[model] = row
    return pd.DataFrame(rows).T


def item_results(results: pd.DataFrame) -> pd.DataFrame:
    """Per task and model, in the items table's long form (distill.evaluation.intervals):
    `pass@1_greedy` (1 or 0) and, where answers were sampled, each `pass@k` estimate."""
    rows = []
    for (model, task), frame in results.groupby(["model", "prompt_id"], sort=False):
        greedy = frame[frame["answer"] == 0]["outcome"].eq("passed")
        rows.append({"model": model, "figure": "pass@1_greedy", "item": str(task),
                     "value": float(greedy.iloc[0]), "weight": 1.0})
        sampled = frame[frame["answer"] > 0]["outcome"].eq("passed")
        for k in (k for k in PASS_K if k <= len(sampled)):
            rows.append({"model": model, "figure": f"pass@{k}", "item": str(task),
                         "value": pass_at_k(len(sampled), int(sampled.sum()), k), "weight": 1.0})
    return pd.DataFrame(rows, columns=ITEMS_COLUMNS)


def by_kind(results: pd.DataFrame) -> pd.DataFrame:
    """Greedy pass rate per task kind (rows) and model (columns), the easiest kinds first
    (by the mean over models)."""
    greedy = results[results["answer"] == 0]
    table = greedy.pivot_table(index="kind", columns="model", values="outcome",
                               aggfunc=lambda o: o.eq("passed").mean(), sort=False)
    table = table[list(dict.fromkeys(greedy["model"]))]
    return table.loc[table.mean(axis=1).sort_values(ascending=False).index]


def failure_kinds(results: pd.DataFrame) -> pd.DataFrame:
    """How every answer ended, counted per model (rows) and outcome (columns, in
    `sandbox.KINDS` order)."""
    counts = pd.crosstab(results["model"], results["outcome"])
    counts = counts.reindex(columns=[k for k in sandbox.KINDS if k in counts], fill_value=0)
    return counts.loc[list(dict.fromkeys(results["model"]))]


def plot_outcomes(counts: pd.DataFrame, run_dir=None):
    """How each model's answers to code tasks ended (`failure_kinds`): one stacked bar
    per model, passed first; figures/code_outcomes.png."""
    shares = counts.div(counts.sum(axis=1), axis=0)
    figure, axis = plt.subplots(figsize=(8, 0.6 * len(shares) + 1.6))
    kinds = sandbox.KINDS  # a kind keeps its colour
    colours = dict(zip(kinds, sns.color_palette("tab10", len(kinds))))
    shares.plot.barh(stacked=True, ax=axis, width=0.7, color=[colours[k] for k in shares])
    axis.set(title="Code tasks: how the answers ended", xlabel="share of answers", ylabel="")
    axis.invert_yaxis()
    axis.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    figure.tight_layout()
    return save_figure(figure, run_dir, "code_outcomes")
