"""The notebooks' `parameters` cells carry the same keys and defaults as the params
sections: distill.core.params, distill.speech.params and distill.studies.params."""

import ast
import dataclasses
from pathlib import Path

import nbformat
import papermill
import pytest

from distill.core.params import (
    EvaluationParams,
    RunParams,
    StudentTrainingParams,
    TeacherSamplingParams,
)
from distill.speech.params import (
    SpeechEvaluationParams,
    SpeechLabellingParams,
    SpeechTrainingParams,
)
from distill.studies.params import (
    CollapseParams,
    DriftParams,
    ProvenanceParams,
    ProvenanceStudyParams,
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STAGES = {
    "01_teacher_sampling": TeacherSamplingParams,
    "02_student_training": StudentTrainingParams,
    "03_evaluation": EvaluationParams,
}
# run.task asr: the speech notebooks, whose run defaults are a speech run's
SPEECH_STAGES = {
    "speech_01_labelling": SpeechLabellingParams,
    "speech_02_training": SpeechTrainingParams,
    "speech_03_evaluation": SpeechEvaluationParams,
}
SPEECH_RUN = {"task": "asr", "teacher": "whisper-tiny.en"}
# `distill provenance` and the studies: a section of their own each, no run section
STUDIES = {
    "05_provenance": ProvenanceParams,
    "06_provenance_study": ProvenanceStudyParams,
    "07_teacher_drift": DriftParams,
    "08_recursive_collapse": CollapseParams,
}


def _defaults(cls) -> dict:
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)}


ALL = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def test_every_stage_has_a_notebook_plus_the_comparison_provenance_and_study_notebooks():
    assert ALL == sorted([*STAGES, *SPEECH_STAGES, "04_compare_runs", "05_provenance",
                          "06_provenance_study", "07_teacher_drift", "08_recursive_collapse"])


@pytest.mark.parametrize("name", STUDIES)
def test_provenance_and_study_notebooks_take_literal_commented_parameters(name):
    """What `distill provenance` / `distill study` and papermill pass: each parameter a literal
    with a comment that says what it is (`papermill --help-notebook` shows it)."""
    inferred = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    assert "run_dir" in inferred and "output_dir" in inferred
    for parameter, info in inferred.items():
        ast.literal_eval(info["default"])
        assert info["help"], f"{name}: {parameter} has no comment"


def test_comparison_notebook_parameters():
    inferred = papermill.inspect_notebook(str(NOTEBOOKS / "04_compare_runs.ipynb"))
    defaults = {name: ast.literal_eval(info["default"]) for name, info in inferred.items()}
    assert defaults == {"runs": [], "output_dir": "outputs"}


@pytest.mark.parametrize("stage", ALL)
def test_exactly_one_parameters_cell(stage):
    notebook = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert tagged[0].cell_type == "code"


@pytest.mark.parametrize("stage", ALL)
def test_notebook_is_committed_without_outputs(stage):
    notebook = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.get("outputs", []) == [], cell.source[:80]
        assert cell.get("execution_count") is None, cell.source[:80]


@pytest.mark.parametrize("stage,section", [*STAGES.items(), *SPEECH_STAGES.items()])
def test_parameter_defaults_equal_the_params_dataclasses(stage, section):
    inferred = papermill.inspect_notebook(str(NOTEBOOKS / f"{stage}.ipynb"))
    notebook_defaults = {name: ast.literal_eval(info["default"])
                         for name, info in inferred.items()}
    run = {**_defaults(RunParams), **(SPEECH_RUN if stage in SPEECH_STAGES else {})}
    expected = {**run, **_defaults(section)}
    assert set(notebook_defaults) == {"run_dir"} | set(expected)
    for name, value in expected.items():
        got = notebook_defaults[name]
        assert got == value and type(got) is type(value), (name, got, value)


@pytest.mark.parametrize("name,section", STUDIES.items())
def test_study_parameter_defaults_equal_the_study_sections(name, section):
    """What a study file or `distill provenance` leaves out is the notebook's default."""
    inferred = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    notebook_defaults = {key: ast.literal_eval(info["default"]) for key, info in inferred.items()}
    expected = _defaults(section)
    assert set(notebook_defaults) == {"run_dir"} | set(expected)
    for key, value in expected.items():
        got = notebook_defaults[key]
        assert got == value and type(got) is type(value), (key, got, value)
