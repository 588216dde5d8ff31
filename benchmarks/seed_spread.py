"""Seed-to-seed against split-to-split spread, from one seeds folder.

    python benchmarks/seed_spread.py outputs/<name>-seeds-<time>

Each seed of `distill run PARAMS --seeds ...` draws its own held-out split (unless
run.heldout_seed fixes it) and trains its own student. Figures on the split (held-out
KL, top-1, the split's graded prompts) move with both; figures on items every seed
shares (the prose windows, the 120 written graded prompts) move with the training seed
alone. Per figure: the student's value per seed, the standard deviation across seeds,
and the mean width of the seeds' own 95% bootstrap intervals.

Premise, asserted: the shared items are the same items in every seed.
"""

import argparse
from pathlib import Path

import pandas as pd

from distill.evaluation import intervals
from distill.evaluation.seeds import seed_runs

# (figure, which items): "split" = the seed's held-out split, "shared" = the same in every seed
VIEWS = [("heldout_kl", "split"), ("top1_agreement", "split"), ("bits_per_byte", "split"),
         ("reference_in_answer", "split"), ("reference_in_answer", "shared"),
         ("prose_kl", "shared"), ("prose_top1_agreement", "shared")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", type=Path)
    args = parser.parse_args()
    rows, shared_items = [], {}
    for run in seed_runs(args.group):
        items = intervals.read_items(run)
        student = items[items["model"] == "student"]
        for figure, view in VIEWS:
            mine = student[student["figure"] == figure]
            graded = mine["item"].str.startswith("graded-")
            if figure == "reference_in_answer":
                mine = mine[graded] if view == "shared" else mine[~graded]
            if view == "shared":
                names = frozenset(mine["item"])
                assert shared_items.setdefault(figure, names) == names, (run, figure)
            low, high = intervals.interval(mine["value"], mine["weight"])
            value = float((mine["value"] * mine["weight"]).sum() / mine["weight"].sum())
            rows.append({"seed": run.name, "figure": figure, "items": view, "n": len(mine),
                         "value": value, "width": high - low})
    table = pd.DataFrame(rows)
    print(table.pivot_table(index=["figure", "items"], columns="seed", values="value",
                            sort=False).round(4).to_string())
    summary = table.groupby(["figure", "items"], sort=False).agg(
        n=("n", "mean"), mean=("value", "mean"), sd_across_seeds=("value", "std"),
        mean_interval_width=("width", "mean"))
    print("\n" + summary.round(4).to_string())


if __name__ == "__main__":
    main()
