"""End to end: the teacher-drift study (notebook 07) and one tiny generation loop of the
recursive-collapse study (notebook 08), each from its smoke study file through
`distill study`, into a folder with the executed notebook, its tables and figures. Both
on the tiny teacher (conftest.tiny_teacher): every step runs, in seconds of compute."""

import json

import pandas as pd
import pytest

from conftest import TINY_TEACHER_STUDENT_SIZE
from distill import cli
from distill.pipeline import run_study
from distill.studies.runner import SUMMARY

pytestmark = pytest.mark.e2e
STUDIES = "params/studies"


def test_drift_study_measures_the_curve_and_the_arms(tmp_path, capsys, tiny_teacher):
    assert cli.main(["study", f"{STUDIES}/teacher_drift_smoke.yaml",
                     "--set", f"output_dir={tmp_path}", "--set", f"teacher={tiny_teacher}",
                     "--set", f"student_size={TINY_TEACHER_STUDENT_SIZE}"]) == 0
    (folder,) = tmp_path.glob("teacher_drift_smoke-*")
    curve = pd.read_csv(folder / "drift_curve.csv")
    assert curve["drift_steps"].tolist() == [0, 2]
    unchanged = curve.iloc[0]  # N = 0 is T_v1 itself: both comparisons are the same one
    assert unchanged["top1_vs_changed"] == pytest.approx(unchanged["top1_vs_original"])
    assert unchanged["kl_vs_changed"] == pytest.approx(unchanged["kl_vs_original"], rel=1e-3)
    assert curve["teacher_perplexity"].iloc[1] != curve["teacher_perplexity"].iloc[0]  # it moved
    summary = pd.read_csv(folder / SUMMARY)
    assert summary["arm"].tolist() == ["warm", "cold", "warm_replay"]
    assert summary["final_new_top1"].between(0, 1).all()
    assert "warm_replay" in capsys.readouterr().out  # the summary is printed
    assert (folder / "figures" / "teacher_drift.png").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["study"] == "drift"
    assert manifest["stages"]["07_teacher_drift"]["status"] == "done"


def test_collapse_study_runs_generations_and_resumes_without_training(tmp_path, tiny_teacher):
    folder = run_study(f"{STUDIES}/recursive_collapse_smoke.yaml",
                       {"output_dir": str(tmp_path), "teacher": tiny_teacher,
                        "student_size": TINY_TEACHER_STUDENT_SIZE})
    table = pd.read_csv(folder / "collapse_generations.csv")
    assert len(table) == 3 * 3  # 3 conditions x (G0 + 2 generations), one seed
    assert table["perplexity"].gt(1).all() and table["rare_mass"].between(0, 1).all()
    accumulate = table[table["condition"] == "accumulate"].set_index("generation")
    replace = table[table["condition"] == "replace"].set_index("generation")
    assert accumulate.loc[2, "training_examples"] > replace.loc[2, "training_examples"]
    for figure in ("collapse_metrics", "collapse_sample_perplexity"):
        assert (folder / "figures" / f"{figure}.png").is_file()
    executed = (folder / "08_recursive_collapse.ipynb").read_text()
    assert "perplexity of held-out real text" in executed  # the reading was written
    measured = {p: p.stat().st_mtime for p in folder.glob("chains/**/metrics.json")}
    run_study(folder, {})  # the folder's own study and parameters, from its manifest
    assert {p: p.stat().st_mtime for p in folder.glob("chains/**/metrics.json")} == measured
    assert pd.read_csv(folder / "collapse_generations.csv").equals(table)
