"""End to end: `distill provenance` refusing what it cannot load, and the provenance
study (notebook 06) at smoke size. `distill provenance` on the smoke run's student is
in test_pipeline_e2e.py, with the other readers of the smoke run (one worker makes it)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import TINY_TEACHER_STUDENT_SIZE

pytestmark = pytest.mark.e2e


def test_provenance_command_refuses_a_model_it_cannot_load(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "provenance", str(tmp_path / "nothing"),
         "--candidate", "smollm2-135m-instruct", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nothing" in result.stderr and "not an existing folder" in result.stderr
    assert not list(tmp_path.glob("provenance-*"))  # nothing written


def test_provenance_study_at_smoke_size(tmp_path, monkeypatch, tiny_teacher):
    """Notebook 06 end to end, on the tiny teacher (conftest.tiny_teacher): both teachers
    sample (T under the watermark), every arm trains its students from one shared
    initialisation, and every test gets a p-value per student, a summary and the figure."""
    monkeypatch.setenv("DISTILL_WATERMARK_KEY", "a secret study key")
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "provenance-study",
         "params/studies/provenance_study_smoke.yaml", "--set", f"output_dir={tmp_path}",
         "--set", f"teacher={tiny_teacher}", "--set", f"student_size={TINY_TEACHER_STUDENT_SIZE}"],
        capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = tmp_path.glob("provenance_study_smoke-*")
    students = pd.read_csv(folder / "study_students.csv")
    assert sorted(students["arm"].unique()) == ["dilute_25", "other", "reference", "teacher"]
    assert len(students) == 7
    tests = ["agreement", "likelihood", "likelihood_healed", "watermark"]
    assert students[tests].stack().between(0, 1).all()
    summary = pd.read_csv(folder / "study_summary.csv")
    assert list(summary["test"]) == ["output agreement", "likelihood (R: init)",
                                     "likelihood (R: init + reference text)", "watermark"]
    assert (folder / "healed_reference.json").exists()
    assert (folder / "other_teacher" / "config.json").exists()  # T' = changed:2, made here
    assert (folder / "figures" / "provenance_study.png").exists()
    assert len(list((folder / "students").glob("*/evidence.json"))) == 7
    assert not list((folder / "students").glob("*/checkpoints"))  # weights are not kept
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["watermark"]["key_id"]
    assert manifest["stages"]["06_provenance_study"]["status"] == "done"
    written = [folder / "manifest.json", folder / "06_provenance_study.ipynb"]
    assert not any("a secret study key" in path.read_text() for path in written)
