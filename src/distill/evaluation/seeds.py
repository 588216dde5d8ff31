"""Seeds as one experiment: what `distill run PARAMS --seeds 0,1,2` writes beside its runs.

Each seed is a whole run (its own split unless `run.heldout_seed` fixes it, its own
initialisation and data order), with its own 95% bootstrap intervals over items. The
aggregate puts, per model and quality figure, the seeds' mean, standard deviation and
the 95% t-interval of the mean beside each seed's value and interval: the spread across
seeds says how much the result depends on the seed; the mean width of the seeds' own
intervals, how much on the items drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from ..core.runs import PARAMS, TRAIN_LOG, read_metrics, write_json
from .intervals import t_interval

AGGREGATE = "aggregate.csv"
AGGREGATE_JSON = "aggregate.json"


def seed_figures(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run, model and quality figure: the run's seed, held-out seed, the
    figure's value and its 95% interval (NaN where the run has none)."""
    rows = []
    for run_dir in run_dirs:
        metrics = read_metrics(run_dir)
        run = yaml.safe_load((Path(run_dir) / PARAMS).read_text())["run"]
        heldout_seed = run.get("heldout_seed")
        for model, figures in metrics["models"].items():
            bounds = metrics.get("intervals", {}).get(model, {})
            for figure, value in figures.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                low, high = bounds.get(figure, (math.nan, math.nan))
                rows.append({"seed": run["seed"], "heldout_seed": run["seed"] if heldout_seed
                             is None else heldout_seed, "model": model, "figure": figure,
                             "value": value, "low": low, "high": high})
    return pd.DataFrame(rows)


def aggregate(run_dirs: list[Path]) -> pd.DataFrame:
    """Per model and figure with an interval: the seeds' mean, sd and t-interval
    (`low`, `high`), the mean width of the seeds' own bootstrap intervals
    (`item_interval_width`) and each seed's value (`seed <n>`)."""
    frame = seed_figures(run_dirs)
    frame = frame[frame["low"].notna()]  # quality figures: those with an item interval
    rows = []
    for (model, figure), group in frame.groupby(["model", "figure"], sort=False):
        rows.append({"model": model, "figure": figure, **t_interval(group["value"]),
                     "item_interval_width": float((group["high"] - group["low"]).mean()),
                     **{f"seed {s}": v for s, v in zip(group["seed"], group["value"])}})
    return pd.DataFrame(rows).set_index(["model", "figure"])


def write_aggregate(group: Path, run_dirs: list[Path]) -> pd.DataFrame:
    """aggregate.csv and aggregate.json in the seeds folder, and the validation curves of
    every seed as a band (figures/seed_curves.png)."""
    from .plots import seed_curves

    table = aggregate(run_dirs)
    table.to_csv(group / AGGREGATE)
    write_json(group / AGGREGATE_JSON, {
        "runs": [str(Path(d).name) for d in run_dirs],
        "figures": {f"{model}/{figure}": {k: None if isinstance(v, float) and math.isnan(v)
                                          else v for k, v in row.items()}
                    for (model, figure), row in table.to_dict("index").items()}})
    logs = {Path(d).name: pd.read_csv(Path(d) / TRAIN_LOG) for d in run_dirs
            if (Path(d) / TRAIN_LOG).exists()}
    if logs:
        seed_curves(logs, group)
    return table


def seed_runs(group: Path) -> list[Path]:
    """The finished runs of a seeds folder (those with metrics), in seed order."""
    found = [d for d in Path(group).glob("seed-*") if (d / "metrics.json").exists()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def compare_groups(a: Path, b: Path, model: str = "student") -> pd.DataFrame:
    """Two seeds folders that differ in one setting (say run.precision fp32 and bf16),
    paired by seed: per quality figure of `model`, the difference b - a of each seed both
    ran, and across those seeds its mean and 95% t-interval, absolute and relative to a
    (b / a - 1). `same_split` says whether each pair was evaluated on the same held-out
    split (run.heldout_seed fixed), as a paired comparison of one setting wants."""
    pairs = seed_figures(seed_runs(a)).merge(seed_figures(seed_runs(b)),
                                             on=["seed", "model", "figure"], suffixes=("_a", "_b"))
    pairs = pairs[(pairs["model"] == model) & pairs["low_a"].notna()]
    pairs = pairs.assign(difference=pairs["value_b"] - pairs["value_a"],
                         relative=pairs["value_b"] / pairs["value_a"] - 1)
    rows = []
    for figure, group in pairs.groupby("figure", sort=False):
        absolute, relative = t_interval(group["difference"]), t_interval(group["relative"])
        rows.append({"figure": figure, "seeds": absolute["seeds"], "a": group["value_a"].mean(),
                     "b": group["value_b"].mean(), "difference": absolute["mean"],
                     "low": absolute["low"], "high": absolute["high"],
                     "relative": relative["mean"], "relative_low": relative["low"],
                     "relative_high": relative["high"],
                     "same_split": bool(group["heldout_seed_a"].eq(group["heldout_seed_b"]).all())})
    return pd.DataFrame(rows).set_index("figure")
