"""The speed/quality frontier of finished runs: each student's quality against its
measured decode speed-up (stage 03), as a table and as notebook 04's figure.

    python benchmarks/frontier.py RUN [RUN ...] [--figure docs/figures/frontier.png]

Runs without serving figures (evaluation.speed_batch_sizes: []) are listed but not drawn.
The teacher's point is the first run's teacher row.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from distill.evaluation import compare, plots  # noqa: E402

COLUMNS = ["layers", "decode_speedup_batch1", "decode_speedup_batch32", "heldout_kl",
           "prose_kl", "top1_agreement", "perplexity", "reference_in_answer",
           "draft_acceptance", "assisted_speedup", "train_tokens_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--figure", type=Path, default=Path("frontier.png"))
    args = parser.parse_args()
    table = compare.compare_runs(args.runs)
    print(table[[c for c in COLUMNS if c in table]].round(3).to_string())
    timed = table.dropna(subset=["decode_speedup_batch1"]) \
        if "decode_speedup_batch1" in table else table.iloc[:0]
    if timed.empty:
        raise SystemExit("no run measured its decode speed-up: nothing to draw")
    figure = plots.frontier(timed, compare.teacher_figures(args.runs[0]))
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.figure, dpi=90, bbox_inches="tight")
    print("figure:", args.figure)


if __name__ == "__main__":
    main()
