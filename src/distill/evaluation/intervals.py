"""How sure a figure is: per-item results, bootstrap intervals, paired comparisons.

Every quality figure of metrics.json is a mean over items (held-out prompts, prose
windows, code tasks, utterances), each item weighted as the figure weighs it (its
tokens for KL, its bytes for bits per byte, 1 for a graded answer). Stage 03 keeps one
row per model, figure and item in `items.parquet` (`ITEMS_COLUMNS`); from it:

- **intervals**: a 95% percentile bootstrap over items (`RESAMPLES` resamples, seeded),
  the figure recomputed as the weighted mean of each resample;
- **paired differences** between two models on the same items: a paired bootstrap
  (both resampled with the same items) gives the interval; the p-value is a sign-flip
  test for continuous figures and McNemar's exact test for pass/fail figures
  (`BINARY_FIGURES`);
- across seeds (distill.evaluation.seeds), a t-interval of the seeds' values.

A figure that is a monotone function of another (perplexity = exp(prose nll)) gets the
function of that figure's interval (`DERIVED`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..lm.speed import DRAFT_GAMMA, expected_accepted_tokens

ITEMS = "items.parquet"
ITEMS_SCHEMA_VERSION = 1
ITEMS_COLUMNS = ["model", "figure", "item", "value", "weight"]
LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
ALPHA = 0.05  # a difference is called real where its p-value is below this
# per-item 0/1 figures: their paired comparison is McNemar's test on the discordant items
BINARY_FIGURES = ("exact_match", "reference_in_answer", "pass@1_greedy")


# figure of metrics.json -> (the item figure it is a monotone increasing function of, f)
DERIVED = {"perplexity": ("prose_nll", math.exp),
           f"draft_tokens_per_step_gamma{DRAFT_GAMMA}": ("draft_acceptance",
                                                         expected_accepted_tokens)}


def method() -> dict:
    """What metrics.json says about how its intervals were made."""
    return {"method": "percentile bootstrap over items", "level": LEVEL,
            "resamples": RESAMPLES, "seed": SEED, "items_file": ITEMS,
            "items_schema_version": ITEMS_SCHEMA_VERSION}


def uncertainty(bounds: dict, paired: dict[str, pd.DataFrame]) -> dict:
    """What metrics.json adds (runs.write_metrics): the intervals, how they were made,
    and the paired comparisons ({"a - b": a `compare` table})."""
    return {"intervals": bounds, "interval_method": method(),
            "paired": {name: paired_record(table) for name, table in paired.items()}}


# --- building the items table --------------------------------------------------------

def long_items(frame: pd.DataFrame, figures: dict[str, tuple[str, str | None]],
               model: str | None = None) -> pd.DataFrame:
    """A wide per-item frame (columns `item`, maybe `model`, figures, weights) in the
    items table's long form. `figures` maps a column to (figure name, its weight column
    or None for weight 1). Rows where the value is NaN or the weight 0 carry no evidence
    for that figure and are left out."""
    parts = []
    for column, (figure, weight) in figures.items():
        part = pd.DataFrame({
            "model": frame["model"] if model is None else model, "figure": figure,
            "item": frame["item"].astype(str), "value": frame[column].astype(float),
            "weight": 1.0 if weight is None else frame[weight].astype(float)})
        parts.append(part[part["value"].notna() & (part["weight"] > 0)])
    return pd.concat(parts, ignore_index=True)[ITEMS_COLUMNS]


def fidelity_items(items: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """`metrics.teacher_forced_items` in long form: the held-out figures (prefix "") or
    the prose ones (prefix "prose_"), each item weighted by its tokens."""
    names = ({"kl": "heldout_kl", "top1_agreement": "top1_agreement",
              "acceptance": "draft_acceptance"} if not prefix else
             {"kl": "prose_kl", "top1_agreement": "prose_top1_agreement", "nll": "prose_nll"})
    return long_items(items, {column: (figure, "tokens") for column, figure in names.items()})


def text_items(items: pd.DataFrame, model: str) -> pd.DataFrame:
    """`metrics.tokenizer_free_items` in long form: bits per byte (weighted by bytes) and
    next-word agreement (weighted by counted words)."""
    frame = items.assign(bits_per_byte=items["bits"] / items["bytes"].where(items["bytes"] > 0),
                         next_word=items["agree"] / items["words"].where(items["words"] > 0))
    return long_items(frame, {"bits_per_byte": ("bits_per_byte", "bytes"),
                              "next_word": ("next_word_agreement", "words")}, model)


def answer_figure_items(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """`metrics.answer_items` in long form, every answer of weight 1."""
    return long_items(frame, {f: (f, None) for f in ("rouge_l_vs_teacher", "exact_match",
                                                     "reference_in_answer")}, model)


def write_items(run_dir, items: pd.DataFrame) -> pd.DataFrame:
    """Write the items table to the run folder, its schema version in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..core.runs import atomic_file

    table = pa.Table.from_pandas(items[ITEMS_COLUMNS].reset_index(drop=True),
                                 preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"distill_items_schema": str(ITEMS_SCHEMA_VERSION)})
    with atomic_file(f"{run_dir}/{ITEMS}", mode="wb") as handle:
        pq.write_table(table, handle)
    return items


def read_items(run_dir) -> pd.DataFrame:
    """A run's items table, checked against the schema this code reads."""
    import pyarrow.parquet as pq

    path = f"{run_dir}/{ITEMS}"
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no per-item results; (re-)run 03_evaluation with "
                                "this distill to write them") from None
    version = (table.schema.metadata or {}).get(b"distill_items_schema", b"?").decode()
    if version != str(ITEMS_SCHEMA_VERSION):
        raise ValueError(f"{path}: items schema version {version}, this distill reads "
                         f"{ITEMS_SCHEMA_VERSION}; re-run 03_evaluation")
    return table.to_pandas()


# --- intervals -----------------------------------------------------------------------

def _weighted_mean(values, weights, axis=-1):
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    return (values * weights).sum(axis) / weights.sum(axis)


def _bootstrap(data: tuple, statistic, seed: int) -> np.ndarray:
    """The bootstrap distribution of `statistic` over items (the arrays of `data`
    resampled together, item by item)."""
    result = stats.bootstrap(data, statistic, paired=True, vectorized=True,
                             n_resamples=RESAMPLES, confidence_level=LEVEL,
                             method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(result.bootstrap_distribution)


def _percentiles(distribution: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(distribution, [tail, 100 - tail])
    return float(low), float(high)


def interval(values, weights=None, seed: int = SEED) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the weighted mean of per-item `values`."""
    values = np.asarray(values, dtype=float)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):  # nothing to resample
        mean = float(_weighted_mean(values, weights)) if len(values) else math.nan
        return mean, mean
    return _percentiles(_bootstrap((values, weights), _weighted_mean, seed))


def figure_intervals(items: pd.DataFrame, seed: int = SEED) -> dict[str, dict[str, list]]:
    """{model: {figure: [low, high]}} for every figure of the items table, and for the
    figures `DERIVED` from them."""
    found: dict[str, dict[str, list]] = {}
    for (model, figure), group in items.groupby(["model", "figure"], sort=False):
        found.setdefault(model, {})[figure] = list(interval(group["value"], group["weight"], seed))
    for bounds in found.values():
        for derived, (base, function) in DERIVED.items():
            if base in bounds:
                bounds[derived] = [function(bound) for bound in bounds[base]]
    return found


def means(items: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{model: {figure: weighted mean over its items}}: the figures an items table gives."""
    found: dict[str, dict[str, float]] = {}
    for (model, figure), group in items.groupby(["model", "figure"], sort=False):
        found.setdefault(model, {})[figure] = float(_weighted_mean(group["value"], group["weight"]))
    return found


def check_items_match(items: pd.DataFrame, table: pd.DataFrame, tolerance: float = 1e-6) -> None:
    """Every figure of the items table, averaged, is the figure in `table` (the summary
    that metrics.json records): the intervals are of the numbers reported. AssertionError
    names the first that is not."""
    for (model, figure), group in items.groupby(["model", "figure"]):
        if figure not in table.columns or model not in table.index:
            continue
        reported = table.loc[model, figure]
        mean = float(_weighted_mean(group["value"].to_numpy(), group["weight"].to_numpy()))
        if reported is not None and not pd.isna(reported) and \
                abs(mean - float(reported)) > tolerance * max(1.0, abs(float(reported))):
            raise AssertionError(f"{model} {figure}: items average {mean}, table has {reported}")


# --- paired comparisons --------------------------------------------------------------

def compare(items: pd.DataFrame, a: str, b: str, other: pd.DataFrame | None = None,
            seed: int = SEED) -> pd.DataFrame:
    """One row per figure: the difference `a` - `b` (models of `items`; with `other`,
    model `a` of `items` against model `b` of `other`, such as two runs' students), its
    95% interval (paired bootstrap) and p-value, on the items both have. Pass/fail figures
    are tested with McNemar's exact test, the others by sign flips. Where the two share no
    item (runs with different held-out sets) the difference is not paired: the two are
    resampled independently, and `paired` says so."""
    other = items if other is None else other
    rows = []
    for figure in items.loc[items["model"] == a, "figure"].unique():
        mine = items[(items["model"] == a) & (items["figure"] == figure)].set_index("item")
        theirs = other[(other["model"] == b) & (other["figure"] == figure)].set_index("item")
        if theirs.empty:
            continue
        shared = mine.index.intersection(theirs.index)
        row = {"figure": figure, "a": float(_weighted_mean(mine["value"], mine["weight"])),
               "b": float(_weighted_mean(theirs["value"], theirs["weight"])),
               "items": len(shared), "items_a": len(mine), "items_b": len(theirs),
               "paired": len(shared) > 0}
        if len(shared):
            row.update(_paired(figure, mine.loc[shared], theirs.loc[shared], seed))
        else:
            row.update(_unpaired(mine, theirs, seed))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["figure", "a", "b", "difference", "low", "high",
                                        "p_value", "test", "items", "items_a", "items_b",
                                        "paired"])
    frame["real"] = frame["p_value"] < ALPHA
    return frame.set_index("figure")


def _paired(figure: str, mine: pd.DataFrame, theirs: pd.DataFrame, seed: int) -> dict:
    # the same items on both sides, weighted as the first side weighs them (a weight such
    # as tokens can differ between tokenizers; for one model family it is the same)
    values = (mine["value"].to_numpy(float), theirs["value"].to_numpy(float),
              mine["weight"].to_numpy(float), theirs["weight"].to_numpy(float))
    difference = float(_weighted_mean(values[0], values[2]) - _weighted_mean(values[1], values[3]))
    if np.array_equal(values[0], values[1]):
        return {"difference": difference, "low": difference, "high": difference,
                "p_value": 1.0, "test": "identical on every item"}
    distribution = _bootstrap(values, lambda x, y, wx, wy, axis=-1:
                              _weighted_mean(x, wx, axis) - _weighted_mean(y, wy, axis), seed)
    low, high = _percentiles(distribution)
    if figure in BINARY_FIGURES:
        a_only = int(((values[0] == 1) & (values[1] == 0)).sum())
        b_only = int(((values[0] == 0) & (values[1] == 1)).sum())
        p_value = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        return {"difference": difference, "low": low, "high": high, "p_value": float(p_value),
                "test": f"McNemar exact ({a_only} vs {b_only} discordant)"}
    # the interval from the bootstrap; the p-value from flipping the sign of each item's
    # difference, which stays valid for a handful of items (a bootstrap p-value does not)
    contributions = (values[0] * values[2] / values[2].sum()
                     - values[1] * values[3] / values[3].sum())
    return {"difference": difference, "low": low, "high": high,
            "p_value": sign_flip_p(contributions, seed),
            "test": "paired bootstrap interval, sign-flip p-value"}


def _unpaired(mine: pd.DataFrame, theirs: pd.DataFrame, seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def resampled(frame):
        values, weights = frame["value"].to_numpy(float), frame["weight"].to_numpy(float)
        picks = rng.integers(0, len(values), (RESAMPLES, len(values)))
        return _weighted_mean(values[picks], weights[picks])

    distribution = resampled(mine) - resampled(theirs)
    low, high = _percentiles(distribution)
    difference = float(_weighted_mean(mine["value"], mine["weight"])
                       - _weighted_mean(theirs["value"], theirs["weight"]))
    return {"difference": difference, "low": low, "high": high,
            "p_value": _bootstrap_p(distribution), "test": "unpaired bootstrap: no shared items"}


def sign_flip_p(contributions: np.ndarray, seed: int = SEED) -> float:
    """Two-sided p-value of 'no difference' for paired items whose contributions to the
    difference sum to it: the share of sign flips of the items giving a sum at least as
    far from 0. Exact up to 12 items, else RESAMPLES random flips (+1 on both sides)."""
    observed = abs(contributions.sum())
    n = len(contributions)
    if n <= 12:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float((np.abs(signs @ contributions) >= observed - 1e-12).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], (RESAMPLES, n))
    return float((1 + (np.abs(signs @ contributions) >= observed - 1e-12).sum())
                 / (RESAMPLES + 1))


def _bootstrap_p(distribution: np.ndarray) -> float:
    """Two-sided p-value of 'no difference' from a bootstrap distribution of the
    difference: twice the share on the far side of 0, with the +1 that keeps it above 0."""
    below, above = (distribution <= 0).sum(), (distribution >= 0).sum()
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(distribution) + 1)))


def paired_record(differences: pd.DataFrame) -> dict:
    """A `compare` table as metrics.json keeps it: {figure: {difference, low, high,
    p_value, test, items, paired}}, NaN as null."""
    return {figure: {k: None if isinstance(v, float) and math.isnan(v) else
                     (bool(v) if isinstance(v, np.bool_) else v)
                     for k, v in row.items() if k not in ("a", "b", "real")}
            for figure, row in differences.to_dict("index").items()}


def interval_table(table: pd.DataFrame, bounds: dict) -> pd.DataFrame:
    """Each model's figures that have an interval, one row per figure: the value and its
    95% interval side by side (models as column groups)."""
    rows = {(figure, model): {"value": table.loc[model, figure], "low": low, "high": high}
            for model, figures in bounds.items() if model in table.index
            for figure, (low, high) in figures.items() if figure in table.columns}
    return pd.DataFrame(rows).T.astype(float).unstack(level=1).swaplevel(axis=1).sort_index(
        axis=1, level=0, sort_remaining=False)


def in_words(differences: pd.DataFrame, a: str, b: str) -> str:
    """What a `compare` table says, one line per figure: real at ALPHA, or not."""
    lines = []
    for figure, row in differences.iterrows():
        verdict = "real" if row["real"] else "not distinguishable from noise"
        paired = "" if row["paired"] else " (not paired: the two share no held-out item)"
        if row["paired"] and row["items"] < max(row["items_a"], row["items_b"]):
            paired = (f" (paired on the {row['items']} items both have, of {row['items_a']} "
                      f"and {row['items_b']}: their held-out sets differ)")
        lines.append(f"- {figure}: {a} - {b} = {row['difference']:+.4f} "
                     f"[{row['low']:+.4f}, {row['high']:+.4f}], p = {row['p_value']:.3g}: "
                     f"{verdict} at {ALPHA}{paired}")
    return "\n".join(lines)


# --- across seeds --------------------------------------------------------------------

def t_interval(values) -> dict:
    """Mean, standard deviation and the 95% t-interval of the mean of `values` (one per
    seed); the interval is NaN with fewer than two values."""
    values = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return {"seeds": n, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
    return {"seeds": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}
