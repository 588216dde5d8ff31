"""Experiments of several runs of one params file: a sweep (variants on shared teacher
samples) and seeds (one whole run per seed, then their aggregate)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .core.params import STAGES, ParamsError, load_params
from .core.runs import MANIFEST, PARAMS, new_run_dir, read_json, write_json
from .pipeline import preflight, prepare_run, run_pipeline


def run_sweep(path: str | Path, overrides: list[str] = ()) -> list[Path]:
    """Run every variant of a sweep file (see distill.evaluation.compare); the first variant
    samples the teacher, the others reuse its samples and run from stage 02."""
    from .evaluation.compare import load_sweep, share_samples

    base, variants = load_sweep(path)
    for variant_overrides in variants.values():  # every variant, before the first runs
        preflight(load_params(base, [*variant_overrides, *overrides]), base, will_sample=False)
    run_dirs: list[Path] = []
    for name, variant_overrides in variants.items():
        print(f"==== variant {name}")
        if not run_dirs:
            run_dirs.append(run_pipeline(base, [*variant_overrides, *overrides]))
            continue
        run_dir, _ = prepare_run(base, [*variant_overrides, *overrides], will_sample=False)
        share_samples(run_dirs[0], run_dir)
        run_dirs.append(run_pipeline(run_dir, from_stage="student_training"))
    return run_dirs


# --- seeds: one params file, several seeds, one folder ---------------------------------

SEEDS_FILE = "seeds.json"  # what a seeds folder was started with: source, overrides, seeds


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-2' -> [0, 1, 2]; ValueError says what is expected."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    except ValueError:
        raise ValueError(f"--seeds {text}: expected seeds such as 0,1,2 or 0-2") from None
    if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text}: expected distinct seeds >= 0, such as 0,1,2")
    return seeds


def is_seeds_folder(source: str | Path) -> bool:
    return (Path(source) / SEEDS_FILE).is_file()


def seed_dir(group: Path, seed: int) -> Path:
    return group / f"seed-{seed}"


def run_seeds(source: str | Path, seeds: list[int] | None = None, overrides: list[str] = (),
              log_output: bool = False) -> Path:
    """`distill run PARAMS --seeds 0,1,2`: one full run per seed (run.seed set), each in
    <output_dir>/<name>-seeds-<time>/seed-<n>/, then the aggregate across seeds
    (distill.evaluation.seeds: mean, standard deviation and t-interval per figure).
    Given such a folder instead, it goes on: finished seeds are kept, a seed stopped
    part-way resumes at the stage that did not finish, missing ones run."""
    from .evaluation.seeds import write_aggregate

    source = Path(source)
    if source.is_dir():
        group = source
        started = read_json(group / SEEDS_FILE)
        if started is None:
            raise ParamsError(f"{group}: not a seeds folder (no {SEEDS_FILE}); resume a single "
                              "run with `distill run RUN_FOLDER` and no --seeds")
        if seeds and seeds != started["seeds"]:
            raise ParamsError(f"{group}: started with seeds {started['seeds']}, not {seeds}; "
                              "drop --seeds to go on with them")
        if overrides:
            raise ParamsError(f"{group}: a seeds folder goes on with the params it was "
                              "started with; drop --set")
        base, overrides, seeds = Path(started["params_file"]), started["overrides"], \
            started["seeds"]
    else:
        if not seeds:
            raise ParamsError("--seeds: give the seeds to run, such as 0,1,2")
        base = source
        for seed in seeds:  # every seed's params, before anything is written
            preflight(load_params(base, [*overrides, f"run.seed={seed}"]), base)
        params = load_params(base, overrides)
        group = new_run_dir(params.run.output_dir, f"{params.run.name}-seeds")
        write_json(group / SEEDS_FILE, {"params_file": str(base.resolve()),
                                        "overrides": list(overrides), "seeds": seeds})
    for seed in seeds:
        folder = seed_dir(group, seed)
        print(f"==== seed {seed}: {folder}")
        unfinished = _unfinished_stage(folder)
        if not (folder / PARAMS).exists():
            if folder.exists():  # stopped before its params were written: start it again
                shutil.rmtree(folder)
            run_pipeline(base, [*overrides, f"run.seed={seed}"], log_output=log_output,
                         run_dir=folder)
        elif unfinished:
            run_pipeline(folder, from_stage=unfinished, log_output=log_output)
        else:
            print("   done before: kept")
    write_aggregate(group, [seed_dir(group, seed) for seed in seeds])
    print(f"Aggregate of {len(seeds)} seeds: {group}")
    return group


def _unfinished_stage(run_dir: Path) -> str | None:
    """The first stage a run folder has not finished, or None when all three are done."""
    stages = read_json(run_dir / MANIFEST, {}).get("stages", {})
    for stage in STAGES:
        if stages.get(stage, {}).get("status") != "done":
            return stage
    return None
