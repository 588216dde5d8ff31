"""Accounting and a health report of an API teacher, as an uptime monitor shows it.

Input: the request log of `distill.teachers.api_client` (one record per attempt, plus one
per cache hit). Output: a summary (requests, retries, failures by kind, latency
percentiles, throughput, tokens and estimated cost), a time series of error
rates, and their figure, saved in the run folder beside the samples.
"""

from __future__ import annotations

import math

import pandas as pd

from ..core.runs import save_figure

ERROR_KINDS = ("rate_limited", "server_error", "timeout", "connection", "client_error", "other")
# one colour per outcome, the same in every plot
COLOURS = {"ok": "tab:blue", "rate_limited": "tab:orange", "server_error": "tab:red",
           "timeout": "tab:purple", "connection": "tab:brown", "client_error": "tab:gray",
           "other": "tab:olive"}
COLUMNS = ["prompt_id", "attempt", "start_s", "latency_s", "outcome", "status",
           "prompt_tokens", "completion_tokens", "error"]


def requests_frame(records: list[dict]) -> pd.DataFrame:
    """The request log as a table, in start order."""
    frame = pd.DataFrame(records, columns=COLUMNS)
    return frame.sort_values("start_s", kind="stable").reset_index(drop=True)


def summarize(frame: pd.DataFrame, prompts: int, failed_prompts: int,
              price_input_per_million: float = 0.0,
              price_output_per_million: float = 0.0) -> dict:
    """Accounting and health of one sampling run. `prompts`: prompts asked for;
    `failed_prompts`: those still without a sample after every retry."""
    sent = frame[frame["outcome"] != "cached"]
    ok = sent[sent["outcome"] == "ok"]
    cached = frame[frame["outcome"] == "cached"]
    span = float((sent["start_s"] + sent["latency_s"]).max() - sent["start_s"].min()) \
        if len(sent) else 0.0
    prompt_tokens, completion_tokens = int(ok["prompt_tokens"].sum()), \
        int(ok["completion_tokens"].sum())
    latency = ok["latency_s"]
    return {
        "prompts": prompts,
        "samples_lost": failed_prompts,
        "requests": len(sent),
        "succeeded": len(ok),
        "retries": int((sent["attempt"] > 0).sum()),
        "errors": {kind: int((sent["outcome"] == kind).sum()) for kind in ERROR_KINDS},
        "error_rate": _ratio(len(sent) - len(ok), len(sent)),
        "cache_hits": len(cached),
        "latency_s": {name: _percentile(latency, q) for name, q in
                      (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))},
        "wall_s": span,
        "requests_per_second": _ratio(len(sent), span),
        "completion_tokens_per_second": _ratio(completion_tokens, span),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": (prompt_tokens * price_input_per_million
                     + completion_tokens * price_output_per_million) / 1e6,
        "cached_completion_tokens": int(cached["completion_tokens"].sum()),
    }


def over_time(frame: pd.DataFrame, buckets: int = 20) -> pd.DataFrame:
    """Attempts per time bucket (every bucket, empty ones too) and the share of each
    error kind among them; `t_s` is the bucket's middle, `width_s` its width."""
    sent = frame[frame["outcome"] != "cached"]
    columns = ["t_s", "width_s", "attempts", *ERROR_KINDS]
    if sent.empty:
        return pd.DataFrame(columns=columns)
    start = sent["start_s"].min()
    width = max(sent["start_s"].max() - start, 1e-9) / buckets
    bucket = ((sent["start_s"] - start) // width).clip(upper=buckets - 1).astype(int)
    table = pd.crosstab(bucket, sent["outcome"]).reindex(
        index=range(buckets), columns=["ok", *ERROR_KINDS], fill_value=0)
    attempts = table.sum(axis=1)
    rates = table[list(ERROR_KINDS)].div(attempts.where(attempts > 0), axis=0).fillna(0.0)
    result = rates.assign(attempts=attempts, width_s=width,
                          t_s=start + (table.index + 0.5) * width)
    result.columns.name = None
    return result.reset_index(drop=True)[columns]


def summary_table(summary: dict) -> pd.DataFrame:
    """The summary as one readable two-column table (for the notebook)."""
    rows = {key: value for key, value in summary.items() if not isinstance(value, dict)}
    rows.update({f"errors.{k}": v for k, v in summary["errors"].items()})
    rows.update({f"latency_s.{k}": v for k, v in summary["latency_s"].items()})
    return pd.Series(rows, name="value").to_frame()


def _percentile(values: pd.Series, q: float) -> float | None:
    return float(values.quantile(q)) if len(values) else None


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator and not math.isnan(denominator) else None


def plot(requests: pd.DataFrame, rates: pd.DataFrame, run_dir=None):
    """An uptime monitor's view of an API teacher: latency of each attempt over time
    (coloured by outcome) and the error rate by kind per time bucket (`health.over_time`)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sent = requests[requests["outcome"] != "cached"]
    figure, (latency, errors) = plt.subplots(1, 2, figsize=(12, 3.8))
    if not sent.empty:
        outcomes = [o for o in COLOURS if o in set(sent["outcome"])]
        sns.scatterplot(sent, x="start_s", y="latency_s", hue="outcome", hue_order=outcomes,
                        palette=COLOURS, style="outcome", style_order=outcomes, ax=latency,
                        s=18)
    latency.set(title="Latency of each attempt", xlabel="seconds since sampling began",
                ylabel="latency (s)")
    bottom = pd.Series(0.0, index=rates.index)
    for kind in ERROR_KINDS:
        if kind in rates and rates[kind].sum() > 0:
            errors.bar(rates["t_s"], rates[kind], width=rates["width_s"] * 0.9, bottom=bottom,
                       color=COLOURS[kind], label=kind)
            bottom = bottom + rates[kind]
    if bottom.sum() > 0:
        errors.legend()
    else:
        errors.text(0.5, 0.5, "no errors", ha="center", va="center", transform=errors.transAxes)
    errors.set(title="Error rate by kind over time", xlabel="seconds since sampling began",
               ylabel="share of attempts", xlim=latency.get_xlim())
    figure.tight_layout()
    return save_figure(figure, run_dir, "api_health")
