"""End to end, code: `distill run params/code_smoke.yaml` samples the teacher on code
tasks, distils a student, and judges all three models by running their code."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from distill.coding import sandbox
from distill.lm.samples import read_samples
from distill.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def test_the_code_smoke_run_judges_three_models_by_their_code(tmp_path):
    run_dir = run_pipeline(ROOT / "params" / "code_smoke.yaml", [f"run.output_dir={tmp_path}"])
    hidden = [json.loads(line) for line in (run_dir / "code_tasks.jsonl").read_text().splitlines()]
    assert len(hidden) == 10 and all(row["tests"] and row["entry_point"] for row in hidden)
    answers = read_samples(run_dir)
    # the teacher saw the prompt, never the tests; its answers end with their code block
    assert not any(row["tests"] in messages for row in hidden for messages in answers["messages"])
    closed = answers[answers["completion"].str.count("```") >= 2]
    assert all(text.rstrip().endswith("```") for text in closed["completion"])
    assert set(closed["finish_reason"]) <= {"stop"}

    results = pd.read_csv(run_dir / "code_results.csv")
    # 4 held-out tasks x (1 greedy + 1 sampled answer) x 3 models
    assert len(results) == 24 and set(results["answer"]) == {0, 1}
    assert set(results["model"]) == {"teacher", "student_init", "student"}
    assert set(results["outcome"]) <= set(sandbox.KINDS)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for model, figures in metrics["models"].items():
        greedy = results[(results["model"] == model) & (results["answer"] == 0)]
        assert figures["pass@1_greedy"] == pytest.approx(greedy["outcome"].eq("passed").mean())
        assert figures["code_tasks"] == 4 and "pass@1" in figures
        assert metrics["speed"][model]["sandbox_seconds_per_answer"] > 0
        low, high = metrics["intervals"][model]["pass@1_greedy"]  # over the 4 tasks
        assert low <= figures["pass@1_greedy"] <= high
    assert (run_dir / "figures" / "code_outcomes.png").is_file()
    notebook = nbformat.read(run_dir / "03_evaluation.ipynb", as_version=4)
    printed = "".join(output.get("text", "") + json.dumps(output.get("data", {}))
                      for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "Executing model-written code" in printed  # the consent message
    assert "network namespace" in printed  # the probe's table of mechanisms
