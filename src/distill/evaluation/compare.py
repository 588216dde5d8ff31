"""Compare runs side by side, and run sweeps that share one set of teacher samples.

A sweep file names a base params file and variants, each a set of overrides::

    base: ../default.yaml
    variants:
      forward_kl: {student_training: {kd_loss: forward_kl}}
      reverse_kl: {student_training: {kd_loss: reverse_kl}}

The teacher samples once (stage 01 of the first variant); every variant then trains
and evaluates in its own run folder on the same samples, so differences come from
the objective alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from ..core.params import ParamsError, load_params
from ..core.params_fields import objective_named
from ..core.runs import (
    MANIFEST,
    PARAMS,
    SAMPLES,
    SAMPLING_STATS,
    TRAIN_LOG,
    read_json,
    read_metrics,
)

# what each column of the comparison means, in the order shown
COLUMNS = {
    "heldout_kl": "KL(teacher || student) on held-out completions, lower is better",
    "top1_agreement": "student's top-1 token equals the teacher's",
    "bits_per_byte": "bits per UTF-8 byte of the teacher's held-out answers (any tokenizer), "
                     "lower is better",
    "next_word_agreement": "student's greedy next word equals the teacher's answer's",
    "rouge_l_vs_teacher": "ROUGE-L of the student's answer against the teacher's",
    "exact_match": "answer equals the reference",
    "reference_in_answer": "reference appears in the answer",
    "prose_kl": "KL(teacher || student) on held-out prose, lower is better",
    "perplexity": "corpus perplexity, lower is better",
    "layers": "decoder layers of the student",
    "draft_acceptance": "sum of min(p_teacher, p_student): a drafted token's acceptance rate",
    "decode_speedup_batch1": "greedy decode tokens/s over the teacher's, batch 1 (measured)",
    "decode_speedup_batch32": "greedy decode tokens/s over the teacher's, batch 32 (measured)",
    "train_tokens_per_second": "training throughput (completion tokens)",
    "train_peak_memory_mb": "peak memory while training",
    "wall_seconds": "all stages of the run",
}


def summarize_run(run_dir: str | Path) -> dict:
    """One row: what the run changed (its objective) and how its student did."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    params = yaml.safe_load((run_dir / PARAMS).read_text())
    training = params["student_training"]
    log = pd.read_csv(run_dir / TRAIN_LOG)
    manifest = read_json(run_dir / MANIFEST, {})
    student = {**metrics["models"]["student"], **metrics.get("speed", {}).get("student", {})}
    return {
        "run": run_dir.name,
        "objective": describe_objective(training),
        **{key: student.get(key) for key in COLUMNS if key in student},
        "train_tokens_per_second": log["tokens"].sum() / log["seconds"].sum(),
        "train_peak_memory_mb": log["peak_memory_mb"].max(),
        "wall_seconds": sum(s["seconds"] for s in manifest.get("stages", {}).values()),
    }


def describe_objective(training: dict) -> str:
    """A short label such as 'ce', 'forward_kl (topk)' or '0.5 ce + generalized_jsd(0.5)'."""
    parts = []
    if training.get("ce_weight"):
        parts.append("ce" if training["ce_weight"] == 1 else f"{training['ce_weight']:g} ce")
    if training.get("kd_weight"):
        objective = objective_named(training.get("kd_loss", "forward_kl"))
        parts.append(f"{objective.label(training)} ({training.get('kd_source', 'topk')})")
    if training.get("hidden_weight"):
        parts.append(f"{training['hidden_weight']:g} hidden ({training.get('hidden_loss')})")
    label = " + ".join(parts)
    return f"{label}, on-policy {training['lmbda']:g}" if training.get("lmbda") else label


def teacher_figures(run_dir: str | Path) -> dict:
    """The teacher's row of a run's metrics.json, quality and speed together."""
    metrics = read_metrics(run_dir)
    return {**metrics["models"].get("teacher", {}), **metrics.get("speed", {}).get("teacher", {})}


def compare_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """The comparison table, one row per run, indexed by run folder name."""
    return pd.DataFrame([summarize_run(d) for d in run_dirs]).set_index("run")


def run_intervals(run_dirs: list[str | Path], model: str = "student") -> dict:
    """{run folder name: {figure: [low, high]}}: each run's 95% intervals of `model`'s
    figures, as its metrics.json keeps them (none for a run evaluated before intervals)."""
    return {Path(d).name: read_metrics(d).get("intervals", {}).get(model, {}) for d in run_dirs}


def paired_differences(run_dirs: list[str | Path], model: str = "student") -> pd.DataFrame:
    """Every run's `model` against the first run's, figure by figure, on the items they
    share (distill.evaluation.intervals.compare): the difference, its 95% interval and
    p-value, one row per (run, figure). Runs without per-item results are left out."""
    from .intervals import compare, read_items

    first, *others = [Path(d) for d in run_dirs]
    baseline = read_items(first)
    frames = []
    for run in others:
        try:
            items = read_items(run)
        except (FileNotFoundError, ValueError) as error:
            print(f"{run.name}: no paired comparison ({error})")
            continue
        frames.append(compare(items, model, model, other=baseline).assign(
            run=run.name, against=first.name).reset_index())
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).set_index(["run", "figure"])


def differences_in_words(differences: pd.DataFrame) -> str:
    """`paired_differences` as sentences, one per figure, grouped by run."""
    from .intervals import in_words

    return "\n".join(
        f"{run} against {frame['against'].iloc[0]}:\n"
        + in_words(frame.droplevel("run"), run, frame["against"].iloc[0])
        for run, frame in differences.groupby(level="run", sort=False))


def load_sweep(path: str | Path) -> tuple[Path, dict[str, list[str]]]:
    """(base params file, {variant: overrides}) of a sweep file, each variant validated."""
    path = Path(path)
    sweep = yaml.safe_load(path.read_text()) or {}
    unknown = set(sweep) - {"base", "variants"}
    if unknown or "base" not in sweep or not sweep.get("variants"):
        extra = f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else ""
        raise ParamsError(f"{path}: a sweep needs `base` (a params file) and `variants` "
                          f"(name -> overrides){extra}")
    base = (path.parent / sweep["base"]).resolve()
    variants = {}
    for name, sections in sweep["variants"].items():
        overrides = [f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                     for section, values in (sections or {}).items()
                     for key, value in values.items()]
        shared = [o for o in overrides if o.startswith(("teacher_sampling.", "run.teacher"))]
        if shared:
            raise ParamsError(f"{path}: variants.{name}: {shared[0]} changes the teacher samples, "
                              "which all variants share; put it in the base params")
        load_params(base, overrides + [f"run.name={name}"])  # validate before any work
        variants[name] = overrides + [f"run.name={name}"]
    return base, variants


def share_samples(source_run: Path, target_run: Path) -> None:
    """Give `target_run` the teacher samples of `source_run` (hard links: no copy)."""
    (target_run / SAMPLES).mkdir(parents=True, exist_ok=True)
    for shard in sorted((source_run / SAMPLES).glob("*.parquet")):
        destination = target_run / SAMPLES / shard.name
        if not destination.exists():
            try:
                os.link(shard, destination)
            except OSError:  # another file system
                shutil.copy2(shard, destination)
    if (source_run / SAMPLING_STATS).exists():
        shutil.copy2(source_run / SAMPLING_STATS, target_run / SAMPLING_STATS)
