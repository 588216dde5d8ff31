"""How wide the main figures' 95% intervals are, and what the graded set costs.

    python benchmarks/interval_widths.py outputs/<run> [outputs/<run> ...] [--time-graded]

For each run (evaluated by stage 03 with per-item results), the width of the student's
interval of held-out KL, top-1 agreement and reference in answer: on the held-out split's
items alone (what one run measured before the graded set) and on every graded item (the
split's own and `evaluation.graded_prompts`). With --time-graded, the wall time of
answering the graded set with each of the run's three models (what the set adds to stage
03), in the run's precision, the first run only.

Premise, asserted: the intervals are recomputed from items.parquet, and on all items they
must equal the ones metrics.json reports.
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd

FIGURES = ("heldout_kl", "top1_agreement", "reference_in_answer")


def widths(run: Path) -> list[dict]:
    from distill.core.runs import read_metrics
    from distill.evaluation import intervals

    items = intervals.read_items(run)
    reported = read_metrics(run)["intervals"]["student"]
    rows = []
    for figure in FIGURES:
        mine = items[(items["model"] == "student") & (items["figure"] == figure)]
        low, high = intervals.interval(mine["value"], mine["weight"])
        assert [low, high] == reported[figure], (run, figure, low, high, reported[figure])
        split = mine[~mine["item"].str.startswith("graded-")]
        split_low, split_high = intervals.interval(split["value"], split["weight"])
        rows.append({"run": run.name, "figure": figure, "split_items": len(split),
                     "split_width": split_high - split_low, "all_items": len(mine),
                     "all_width": high - low})
    return rows


def time_graded(run: Path) -> dict:
    import torch
    import yaml

    from distill.core.precision import for_run, weights_dtype
    from distill.core.runs import STUDENT, STUDENT_INIT
    from distill.lm import data, generation, models, samples

    params = yaml.safe_load((run / "params.yaml").read_text())
    evaluation = params["evaluation"]
    trained = {json.loads(m)[-1]["content"]
               for m in samples.read_samples(run, split="train")["messages"]}
    graded = data.load_graded(evaluation["graded_prompts"], evaluation["max_graded_prompts"],
                              trained)
    dtype = getattr(torch, weights_dtype(for_run(run, params["run"]["precision"])[0]))
    seconds = {}
    sources = {"teacher": params["run"]["teacher"], "student_init": str(run / STUDENT_INIT),
               "student": str(run / STUDENT)}
    for name, source in sources.items():
        model, tokenizer = models.load_model(source)
        model.to(dtype)
        started = time.perf_counter()
        generation.chat_answers(model, tokenizer, [p["messages"] for p in graded],
                                evaluation["max_new_tokens"], evaluation["batch_size"], desc=name)
        seconds[name] = time.perf_counter() - started
    return {"graded_prompts": len(graded), **{f"{k}_seconds": v for k, v in seconds.items()},
            "total_seconds": sum(seconds.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--time-graded", action="store_true")
    args = parser.parse_args()
    table = pd.DataFrame([row for run in args.runs for row in widths(run)])
    print(table.round(4).to_string(index=False))
    print("\nMean width over the runs:")
    print(table.groupby("figure")[["split_items", "split_width", "all_items", "all_width"]]
          .mean().round(4).to_string())
    if args.time_graded:
        print("\nAnswering the graded set:", json.dumps(time_graded(args.runs[0]), indent=1))


if __name__ == "__main__":
    main()
