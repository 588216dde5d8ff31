"""Students teaching students (notebook 08): each generation's training data under the
three conditions, the metrics of a generation, and the figures and the reading.

Conditions (Shumailov et al. 2024 replace; Gerstgrasser et al. 2024 accumulate):
- replace: generation k trains on generation k-1's samples alone;
- replace_real: the same, with real data making up `real_share` of the set;
- accumulate: every earlier generation's samples, plus all the real data.
G0 trains on the real data (the teacher's samples); every generation starts from the
same initialisation and trains for the same number of steps.

Metrics of a generation, on held-out real text (teacher-forced): perplexity (the
headline), mean next-token entropy, and the probability mass on rare tokens (the
bottom half, by frequency rank, of the tokens the real text uses); on its own samples:
distinct-1/2/3 and each sample's perplexity under G0.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch

from ..lm.samples import IGNORE_INDEX, Example, collate

CONDITIONS = ("replace", "replace_real", "accumulate")
METRICS = {"perplexity": "perplexity of held-out real text", "entropy": "mean next-token "
           "entropy (nats)", "rare_mass": "probability on rare tokens", "distinct_1":
           "distinct-1 of samples", "distinct_2": "distinct-2 of samples", "distinct_3":
           "distinct-3 of samples"}


def training_data(condition: str, real: list[Example], history: list[list[Example]],
                  real_share: float, rng: np.random.Generator) -> list[Example]:
    """Generation k's data: `history` holds the samples of generations 0..k-1 of this
    chain (the last is the parent's)."""
    if condition == "replace":
        return list(history[-1])
    if condition == "replace_real":
        count = min(len(real), round(len(history[-1]) * real_share / (1 - real_share)))
        return list(history[-1]) + [real[i] for i in rng.choice(len(real), count, replace=False)]
    if condition == "accumulate":
        return list(real) + [e for samples in history for e in samples]
    raise ValueError(f"condition {condition!r}: must be one of {', '.join(CONDITIONS)}")


def rare_tokens(real_ids: list[list[int]], vocab_size: int) -> torch.Tensor:
    """A mask of the rare tokens: the less frequent half of the distinct tokens the real
    text uses (ties broken by token id, so the set is fixed)."""
    counts = Counter(token for ids in real_ids for token in ids)
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[ranked[len(ranked) // 2:]] = True
    return mask


@torch.inference_mode()
def _scored_batches(model, examples: list[Example], pad_id: int, batch_size: int):
    """Per batch of teacher-forced `examples`: the model's next-token logits (float, on
    the CPU) and the labels they are scored against (IGNORE_INDEX where not scored)."""
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits[:, :-1]
        yield logits.float().cpu(), batch["labels"]


def text_metrics(model, examples: list[Example], rare: torch.Tensor, pad_id: int,
                 batch_size: int = 8) -> dict:
    """Perplexity, mean next-token entropy and mean probability on `rare` tokens over
    the scored positions of teacher-forced `examples`."""
    nll = entropy = rare_mass = 0.0
    tokens = 0
    for logits, labels in _scored_batches(model, examples, pad_id, batch_size):
        keep = labels != IGNORE_INDEX
        logprobs = torch.log_softmax(logits[keep], -1)
        probs = logprobs.exp()
        nll -= float(logprobs.gather(-1, labels[keep][:, None]).sum())
        entropy -= float((probs * logprobs).sum())
        rare_mass += float(probs[:, rare].sum())
        tokens += int(keep.sum())
    return {"perplexity": float(np.exp(nll / tokens)), "entropy": entropy / tokens,
            "rare_mass": rare_mass / tokens}


def sample_perplexities(model, examples: list[Example], pad_id: int,
                        batch_size: int = 8) -> list[float]:
    """Each example's perplexity (over its completion) under `model`."""
    found = []
    for logits, labels in _scored_batches(model, examples, pad_id, batch_size):
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels,
                                                   reduction="none")
        found += (losses.sum(1) / (labels != IGNORE_INDEX).sum(1).clamp(min=1)).exp().tolist()
    return found


def distinct(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the texts' words (Li et al. 2016)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def plot(table: pd.DataFrame, histograms: pd.DataFrame, run_dir=None):
    """One panel per metric (generation on x, a line per condition, bars over seeds),
    and the samples' perplexity under G0 per generation, a panel per condition."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..core.runs import save_figure

    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, (metric, title) in zip(axes.flat, METRICS.items()):
        sns.lineplot(table, x="generation", y=metric, hue="condition", marker="o",
                     errorbar=("pi", 100), ax=axis)
        axis.set(title=title, xticks=sorted(table["generation"].unique()))
    figure.tight_layout()
    save_figure(figure, run_dir, "collapse_metrics")
    conditions = [c for c in CONDITIONS if c in set(histograms["condition"])]
    second, axes = plt.subplots(1, len(conditions), figsize=(4.5 * len(conditions), 3.6),
                                sharey=True, squeeze=False)
    for axis, condition in zip(axes[0], conditions):
        part = histograms[histograms["condition"] == condition]
        sns.histplot(part, x="perplexity_under_g0", hue="generation", log_scale=True,
                     element="step", fill=False, stat="density", common_norm=False, ax=axis,
                     palette="viridis")
        axis.set(title=f"{condition}: samples' perplexity under G0")
    second.tight_layout()
    save_figure(second, run_dir, "collapse_sample_perplexity")
    return figure, second


def reading(table: pd.DataFrame) -> str:
    """What this run's table shows, in sentences: the headline metric from G0 to the last
    generation per condition, and the tails (rare-token mass, distinct-3)."""
    means = table.groupby(["condition", "generation"]).mean(numeric_only=True)
    last = int(table["generation"].max())
    lines = []
    for condition in [c for c in CONDITIONS if c in table["condition"].unique()]:
        first, final = means.loc[(condition, 0)], means.loc[(condition, last)]
        lines.append(
            f"{condition}: perplexity of held-out real text {first['perplexity']:.1f} at G0 -> "
            f"{final['perplexity']:.1f} at G{last} "
            f"({final['perplexity'] / first['perplexity'] - 1:+.0%}); "
            f"rare-token mass {first['rare_mass']:.4f} -> {final['rare_mass']:.4f}; "
            f"distinct-3 {first['distinct_3']:.3f} -> {final['distinct_3']:.3f}; "
            f"entropy {first['entropy']:.2f} -> {final['entropy']:.2f} nats.")
    order = means.xs(last, level="generation")["perplexity"].sort_values()
    lines.append(f"At G{last} the lowest held-out perplexity is under {order.index[0]}, the "
                 f"highest under {order.index[-1]} (means over seeds).")
    return "\n".join(lines)
