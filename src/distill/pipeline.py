"""Run the three notebooks in order with papermill, one run folder per run.

Each stage reads only its parameters and the files earlier stages wrote into the
run folder, so `from_stage` can re-run any suffix of the pipeline on an existing
run; the stages themselves skip finished work (sample shards, checkpoints).
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from .params import STAGES, Params, load_params
from .runs import MANIFEST, PARAMS, artifact_hashes, atomic_file, new_run_dir, update_manifest

NOTEBOOKS = {
    "teacher_sampling": "01_teacher_sampling.ipynb",
    "student_training": "02_student_training.ipynb",
    "evaluation": "03_evaluation.ipynb",
}


class StageFailed(RuntimeError):
    def __init__(self, stage: str, notebook: Path, cause: Exception):
        self.stage, self.notebook = stage, notebook
        super().__init__(f"stage {stage} failed; the executed notebook with the error is "
                         f"{notebook}\n{type(cause).__name__}: {cause}")


def notebooks_dir() -> Path:
    folder = Path(__file__).resolve().parents[2] / "notebooks"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: notebooks not found; install distill from a "
                                "checkout with `pip install -e .`")
    return folder


def parse_stage(text: str) -> str:
    """'2', '02', 'student_training' or '02_student_training' -> 'student_training'."""
    for index, stage in enumerate(STAGES, start=1):
        if text in (str(index), f"{index:02d}", stage, Path(NOTEBOOKS[stage]).stem):
            return stage
    raise ValueError(f"--from {text}: unknown stage; use one of "
                     + ", ".join(Path(NOTEBOOKS[s]).stem for s in STAGES))


def check_teacher(params: Params) -> None:
    """An API teacher is checked before anything is written: the key's variable is
    set, the endpoint answers, accepts the key and serves the model."""
    sampling = params.teacher_sampling
    if sampling.backend == "openai":
        from .api.client import check_endpoint, endpoint_from_params

        check_endpoint(endpoint_from_params(sampling, params.run.teacher))


def prepare_run(source: str | Path, overrides: list[str] = (),
                will_sample: bool = True) -> tuple[Path, Params]:
    """A new run folder for a params file, or an existing run folder to continue.
    Writes the resolved params.yaml; invalid params, and a teacher endpoint that
    cannot be used (when the run will sample), stop it before any write."""
    source = Path(source)
    if source.is_dir():
        run_dir = source
        params = load_params(run_dir / PARAMS, overrides)
    else:
        params = load_params(source, overrides)
    if will_sample:
        check_teacher(params)
    if not source.is_dir():
        run_dir = new_run_dir(params.run.output_dir, params.run.name)
        update_manifest(run_dir, params_file=str(source), overrides=list(overrides),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    with atomic_file(run_dir / PARAMS) as handle:
        yaml.safe_dump(params.to_dict(), handle, sort_keys=False)
    return run_dir.resolve(), params


def run_pipeline(source: str | Path, overrides: list[str] = (), from_stage: str | None = None,
                 log_output: bool = False) -> Path:
    """Execute the stages (all, or from `from_stage` on) and return the run folder."""
    import papermill

    from .runs import environment

    first = STAGES.index(parse_stage(from_stage)) if from_stage else 0
    run_dir, params = prepare_run(source, overrides, will_sample=first == 0)
    update_manifest(run_dir, environment=environment(), seed=params.run.seed)
    print(f"Run folder: {run_dir}")
    for stage in STAGES[first:]:
        notebook = run_dir / NOTEBOOKS[stage]
        print(f"== {notebook.stem}")
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebooks_dir() / NOTEBOOKS[stage]), str(notebook),
                parameters=params.notebook_parameters(stage, run_dir),
                kernel_name="python3", log_output=log_output, progress_bar=not log_output)
        except Exception as error:
            update_manifest(run_dir, stages={stage: {"status": "failed", "notebook": notebook.name,
                                                     "seconds": time.perf_counter() - started}})
            raise StageFailed(stage, notebook, error) from error
        seconds = time.perf_counter() - started
        update_manifest(run_dir, stages={stage: {"status": "done", "notebook": notebook.name,
                                                 "seconds": round(seconds, 1)}})
        print(f"   {stage} done in {seconds:.0f} s")
    update_manifest(run_dir, artifacts=artifact_hashes(run_dir))
    print(f"Done: {run_dir / MANIFEST}")
    return run_dir


def run_sweep(path: str | Path, overrides: list[str] = ()) -> list[Path]:
    """Run every variant of a sweep file (see distill.compare); the first variant
    samples the teacher, the others reuse its samples and run from stage 02."""
    from .compare import load_sweep, share_samples

    base, variants = load_sweep(path)
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
