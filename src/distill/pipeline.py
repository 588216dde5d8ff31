"""Run the three notebooks in order with papermill, one run folder per run.

Each stage reads only its parameters and the files earlier stages wrote into the
run folder, so `from_stage` can re-run any suffix of the pipeline on an existing
run; the stages themselves skip finished work (sample shards, checkpoints).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import yaml

from .core.params import STAGES, Params, ParamsError, load_params, load_section
from .core.params_fields import teacher_backend_named
from .core.runs import MANIFEST, PARAMS, artifact_hashes, atomic_file, new_run_dir, update_manifest

NOTEBOOKS = {
    "teacher_sampling": "01_teacher_sampling.ipynb",
    "student_training": "02_student_training.ipynb",
    "evaluation": "03_evaluation.ipynb",
}
# run.task asr: the same stages, Distil-Whisper's notebooks (distill.speech)
SPEECH_NOTEBOOKS = {
    "teacher_sampling": "speech_01_labelling.ipynb",
    "student_training": "speech_02_training.ipynb",
    "evaluation": "speech_03_evaluation.ipynb",
}
NOTEBOOKS_BY_TASK = {"text": NOTEBOOKS, "asr": SPEECH_NOTEBOOKS}
PROVENANCE_NOTEBOOK = "05_provenance.ipynb"
# A study file's `study:` key names its notebook (provenance when absent)
STUDIES = {"provenance": "06_provenance_study.ipynb", "drift": "07_teacher_drift.ipynb",
           "collapse": "08_recursive_collapse.ipynb"}


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
        if text in (str(index), f"{index:02d}", stage, Path(NOTEBOOKS[stage]).stem,
                    Path(SPEECH_NOTEBOOKS[stage]).stem):
            return stage
    raise ValueError(f"unknown stage {text!r}; use one of "
                     + ", ".join(Path(NOTEBOOKS[s]).stem for s in STAGES))


def check_teacher(params: Params, source: str | Path) -> None:
    """The teacher's backend checks what the params point at before anything is written
    (an API teacher: the key's variable is set, the endpoint answers, accepts the key and
    serves the model)."""
    sampling = params.teacher_sampling
    teacher_backend_named(sampling.backend).check(sampling, params.run.teacher, str(source))


def preflight(params: Params, source: str | Path, will_sample: bool = True) -> None:
    """Cheap checks of what the stages will read, before any run folder exists:
    the files and model names the params point to (existence only: nothing is
    loaded or converted; the prompt file only when the run will sample) and, when
    the run will sample, the teacher's backend (`check_teacher`: an API teacher's endpoint).
    Raises ParamsError naming `source` (the params file), the key and the value,
    and saying what to do; ApiTeacherError from the endpoint check."""
    from .lm.data import PROMPT_SUFFIXES, PromptError, check_corpus_source, check_prompt_source
    from .lm.models import ModelNotFound, check_model_name

    if params.run.task == "asr":  # the speech sections alone are read
        from .speech import check_params

        return check_params(params, source)

    def check(key: str, value: str, checker, advice: str) -> None:
        try:
            checker(value)
        except (PromptError, ModelNotFound) as error:
            raise ParamsError(f"{source}: {key}: {error}{advice}") from None

    def missing(value: str, kind: str) -> str:  # what to do about a file that is not there
        if Path(value).exists():
            return ""  # there, but unusable: the message says what to use
        where = "" if Path(value).is_absolute() else f" (relative paths start at {Path.cwd()})"
        return f"; give an existing {kind}{where}, builtin (shipped with distill), or hf:<dataset>"

    if will_sample:
        prompts = params.teacher_sampling.prompts
        check("teacher_sampling.prompts", prompts, check_prompt_source,
              missing(prompts, f"{', '.join(PROMPT_SUFFIXES[:-1])} or {PROMPT_SUFFIXES[-1]} file"))
    check("run.teacher", params.run.teacher, check_model_name, "")  # 02 and 03 load it too
    corpus = params.evaluation.corpus
    check("evaluation.corpus", corpus, check_corpus_source, missing(corpus, "text file"))
    student = params.student_training.student
    if student not in ("pruned", "config"):
        check("student_training.student", student, check_model_name,
              " Or use pruned (the teacher minus layers) or config (a small model from "
              "scratch).")
    config_file = params.student_training.accelerate_config
    if config_file is not None and not Path(config_file).is_file():
        raise ParamsError(f"{source}: student_training.accelerate_config: {config_file} is not "
                          f"a file (relative paths start at {Path.cwd()}); give an accelerate "
                          "config file, such as those in configs/accelerate/, or null")
    if will_sample and params.teacher_sampling.watermark:
        from .lm.watermark import from_env

        sampling = params.teacher_sampling
        try:
            from_env(sampling.watermark_key_env)
        except ValueError as error:
            raise ParamsError(f"{source}: teacher_sampling.watermark: {error}") from None
    if will_sample:
        check_teacher(params, source)


def prepare_run(source: str | Path, overrides: list[str] = (),
                will_sample: bool = True, run_dir: Path | None = None) -> tuple[Path, Params]:
    """A new run folder for a params file (`run_dir`, else <output_dir>/<name>-<time>),
    or an existing run folder to continue. Writes the resolved params.yaml; invalid
    params, files or model names that do not exist, and a teacher endpoint that cannot
    be used (the last three checked as `preflight` says) stop it before any write."""
    source = Path(source)
    if source.is_dir():
        run_dir = source
        params_file = run_dir / PARAMS
    else:
        params_file = source
    params = load_params(params_file, overrides)
    preflight(params, params_file, will_sample)
    if not source.is_dir():
        if run_dir is None:
            run_dir = new_run_dir(params.run.output_dir, params.run.name)
        else:
            run_dir.mkdir(parents=True, exist_ok=False)
        update_manifest(run_dir, params_file=str(source), overrides=list(overrides),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    with atomic_file(run_dir / PARAMS) as handle:
        yaml.safe_dump(params.to_dict(), handle, sort_keys=False)
    return run_dir.resolve(), params


def run_pipeline(source: str | Path, overrides: list[str] = (), from_stage: str | None = None,
                 log_output: bool = False, to_stage: str | None = None,
                 run_dir: Path | None = None) -> Path:
    """Execute the stages (all, or from `from_stage` on, up to `to_stage`) and return the
    run folder (`run_dir` for a new run where given)."""
    from .core.precision import describe as describe_precision
    from .core.precision import for_run
    from .core.runs import environment

    first = STAGES.index(parse_stage(from_stage)) if from_stage else 0
    last = STAGES.index(parse_stage(to_stage)) if to_stage else len(STAGES) - 1
    if last < first:
        raise ParamsError(f"--to {to_stage} comes before --from {from_stage}")
    run_dir, params = prepare_run(source, overrides, will_sample=first == 0, run_dir=run_dir)
    update_manifest(run_dir, environment=environment(), seed=params.run.seed)
    print(f"Run folder: {run_dir}")
    # Probed once here; every notebook finds the verdict in the manifest.
    print(describe_precision(*for_run(run_dir, params.run.precision)))
    for stage in STAGES[first:last + 1]:
        _execute(stage, NOTEBOOKS_BY_TASK[params.run.task][stage], run_dir,
                 params.notebook_parameters(stage, run_dir), log_output)
    update_manifest(run_dir, artifacts=artifact_hashes(run_dir))
    print(f"Done: {run_dir / MANIFEST}")
    return run_dir


def _execute(stage: str, notebook_name: str, run_dir: Path, parameters: dict,
             log_output: bool) -> None:
    """Execute one notebook into the run folder with papermill, its status and wall time
    in the manifest; StageFailed names the executed notebook that holds the error."""
    import papermill

    notebook = run_dir / notebook_name
    print(f"== {notebook.stem}")
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebooks_dir() / notebook_name), str(notebook), parameters=parameters,
            kernel_name="python3", log_output=log_output, progress_bar=not log_output)
    except Exception as error:
        update_manifest(run_dir, stages={stage: {"status": "failed", "notebook": notebook.name,
                                                 "seconds": time.perf_counter() - started}})
        raise StageFailed(stage, notebook, error) from error
    seconds = time.perf_counter() - started
    update_manifest(run_dir, stages={stage: {"status": "done", "notebook": notebook.name,
                                             "seconds": round(seconds, 1)}})
    print(f"   {stage} done in {seconds:.0f} s")


def run_notebook(notebook_name: str, name: str, parameters: dict, log_output: bool = False,
                 run_dir: Path | None = None, study: str | None = None) -> Path:
    """A notebook outside the three stages (05 to 08) in a new folder
    <output_dir>/<name>-<time>/ (or again in `run_dir`, which it resumes), on
    `parameters`: its params section, already validated (distill.studies.params), which
    the manifest records. `study` goes into the manifest too: the kind of study a folder
    resumes as."""
    from .core.runs import environment

    run_dir = (run_dir or new_run_dir(parameters["output_dir"], name)).resolve()
    update_manifest(run_dir, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    parameters=parameters, environment=environment(),
                    **({"study": study} if study else {}))
    print(f"Folder: {run_dir}")
    _execute(Path(notebook_name).stem, notebook_name, run_dir,
             {"run_dir": str(run_dir), **parameters}, log_output)
    update_manifest(run_dir, artifacts=artifact_hashes(run_dir))
    return run_dir


def check_models(names: list[str], api_key_env: str = "OPENAI_API_KEY") -> None:
    """Every model can be loaded (ModelNotFound) or reached (ApiTeacherError), checked
    before any folder is written."""
    from .lm.models import check_model_name
    from .teachers.api_client import check_endpoint, endpoint_from_spec, is_endpoint

    for name in names:
        if is_endpoint(name):
            check_endpoint(endpoint_from_spec(name, api_key_env))
        else:
            check_model_name(name)


def run_provenance(parameters: dict, log_output: bool = False) -> Path:
    """`distill provenance`: notebook 05 on `parameters`, the keys of the provenance
    section (`distill params` lists them); every key and every model checked first."""
    config = load_section("provenance", parameters, "distill provenance")
    names = [config.suspect, *config.candidates, config.control, config.reference]
    check_models([name for name in names if name], config.api_key_env)
    return run_notebook(PROVENANCE_NOTEBOOK, "provenance", dataclasses.asdict(config),
                        log_output)


def run_study(path: str | Path, overrides: dict, log_output: bool = False) -> Path:
    """`distill study FILE`: the notebook a study file names with its `study:` key
    (STUDIES; provenance when absent), on the file's other keys and `overrides`, every
    key (distill.studies.params) and the teachers checked first. Given a study folder
    instead, it goes on there with the parameters it was started with, and `overrides`."""
    from .studies.runner import load_study

    study, config, folder = load_study(path, overrides)
    if folder is None:
        names = [getattr(config, role, None) for role in ("teacher", "other_teacher")]
        # a changed:N teacher is made by the study itself
        check_models([name for name in names if name and not name.startswith("changed:")])
    return run_notebook(STUDIES[study], Path(path).stem, dataclasses.asdict(config), log_output,
                        run_dir=folder, study=study)
