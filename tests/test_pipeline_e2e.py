"""End to end: `distill run params/smoke.yaml` executes the three notebooks with
papermill on the embedded teacher, and the run folder holds what DESIGN.md
promises. Minutes, not seconds: marked e2e (`make test-unit` skips them)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from distill.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def test_distilled_student_is_closer_to_the_teacher(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())["models"]
    assert metrics["teacher"]["heldout_kl"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["student"]["heldout_kl"] < metrics["student_init"]["heldout_kl"]
    assert metrics["student"]["top1_agreement"] >= metrics["student_init"]["top1_agreement"]
    assert metrics["student"]["parameters_m"] < metrics["teacher"]["parameters_m"]
    precision = json.loads((smoke_run / "manifest.json").read_text())["precision"]
    assert precision["choice"] in ("fp32", "bf16") and precision["requested"] == "auto"
    if precision["choice"] == "fp32":  # greedy float32 answers do not depend on the batch
        assert metrics["teacher"]["rouge_l_vs_teacher"] == pytest.approx(1.0)
    else:  # bf16 rounding differs with the batch's padding: nearly, not exactly, the same
        assert metrics["teacher"]["rouge_l_vs_teacher"] > 0.6


def test_run_folder_holds_every_artifact(smoke_run):
    for name in ("params.yaml", "manifest.json", "metrics.json", "train_log.csv",
                 "student/config.json", "student/model.safetensors", "student/tokenizer.json",
                 "student_init/model.safetensors", "figures/training_curves.png",
                 "figures/model_comparison.png", "figures/completion_lengths.png",
                 "samples/part-00000.parquet", "samples/part-00001.parquet",
                 "samples/generic-00000.parquet", "samples/validation-00000.parquet",
                 "student/README.md"):
        assert (smoke_run / name).is_file(), name
    assert not (smoke_run / "checkpoints").exists()  # smoke.yaml: keep_checkpoints false
    for notebook in ("01_teacher_sampling", "02_student_training", "03_evaluation"):
        executed = nbformat.read(smoke_run / f"{notebook}.ipynb", as_version=4)
        tags = [c.metadata.get("tags", []) for c in executed.cells]
        assert ["injected-parameters"] in tags
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    metrics = json.loads((smoke_run / "metrics.json").read_text())["models"]
    for figures in metrics.values():  # tokenizer-free figures, for every model
        assert figures["bits_per_byte"] > 0 and 0 <= figures["next_word_agreement"] <= 1
    assert set(manifest["stages"]) == {"teacher_sampling", "student_training", "evaluation"}
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert manifest["artifacts"]["student/model.safetensors"]
    assert manifest["environment"]["versions"]["torch"]
    params = yaml.safe_load((smoke_run / "params.yaml").read_text())
    assert params["run"]["name"] == "smoke"
    log = pd.read_csv(smoke_run / "train_log.csv")
    assert log["val_kl"].notna().sum() == 4 and log["prose_kl"].notna().sum() == 4  # every 2 of 8
    card = (smoke_run / "student" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "| student |" in card


def test_student_loads_with_transformers(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smoke_run / "student")
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "student")
    assert model.config.distill_prune_recipe == "width"  # smoke.yaml
    assert model.config.num_hidden_layers == 30 and model.config.intermediate_size < 1536
    assert tokenizer.chat_template


def test_speed_and_draft_figures_are_measured_for_teacher_and_student(smoke_run):
    """Stage 03's serving figures (smoke.yaml: batch 1 and 4) and what the student is
    worth as the teacher's draft model."""
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    speed, models = metrics["speed"], metrics["models"]
    for batch in (1, 4):
        assert speed["teacher"][f"decode_speedup_batch{batch}"] == 1.0
        assert speed["student"][f"decode_tokens_per_second_batch{batch}"] > 0
    assert speed["student"]["scoring_speedup"] > 0 and speed["student"]["assisted_speedup"] > 0
    assert speed["student_init"]["decode_speedup_batch1"] is None  # the student's shape: not timed
    assert models["teacher"]["draft_acceptance"] == pytest.approx(1.0, abs=1e-4)
    drafts = [models[m]["draft_acceptance"] for m in ("student_init", "student")]
    assert 0 < drafts[0] < drafts[1] < 1  # distillation made a better draft
    assert 1 < models["student"]["draft_tokens_per_step_gamma4"] < 5
    precision = json.loads((smoke_run / "manifest.json").read_text())["precision"]["choice"]
    if precision == "fp32":  # speculative decoding leaves the teacher's greedy output as it is
        assert speed["student"]["assisted_identical"] == 1.0
    assert "## Speed" in (smoke_run / "student" / "README.md").read_text()


def test_every_quality_figure_has_an_interval_and_items_behind_it(smoke_run):
    from distill.evaluation import intervals

    metrics = json.loads((smoke_run / "metrics.json").read_text())
    items = intervals.read_items(smoke_run)
    for model in ("teacher", "student_init", "student"):
        bounds = metrics["intervals"][model]
        for figure in ("heldout_kl", "top1_agreement", "prose_kl", "perplexity", "bits_per_byte",
                       "next_word_agreement", "rouge_l_vs_teacher", "reference_in_answer"):
            low, high = bounds[figure]
            assert low <= metrics["models"][model][figure] <= high, (model, figure)
    # the graded answers: the split's own and the smoke's 8 of the written set
    graded = items[(items["model"] == "student") & (items["figure"] == "reference_in_answer")]
    assert graded["item"].str.startswith("graded-").sum() == 8
    assert metrics["models"]["student"]["graded_prompts"] == len(graded) > 8
    paired = metrics["paired"]["student - student_init"]["heldout_kl"]
    assert paired["items"] == metrics["heldout_prompts"] and paired["low"] <= paired["high"]
    assert paired["difference"] < 0  # distillation lowered the KL


def test_rerunning_evaluation_gives_identical_metrics(smoke_run):
    before = json.loads((smoke_run / "metrics.json").read_text())["models"]
    run_pipeline(smoke_run, from_stage="03")
    after = json.loads((smoke_run / "metrics.json").read_text())["models"]
    assert after == before


def test_training_on_two_processes_from_the_smoke_samples(smoke_run, tmp_path):
    """Stage 02 again (alone: --to 02) on the smoke run's samples with processes=2, from
    the recipe auto chose there (width: the recipes are not scored again): notebook 02
    launches `accelerate launch -m distill.training`, the children reuse the run's
    precision (no second probe) and train on the same global batches."""
    folder = tmp_path / "two"
    shutil.copytree(smoke_run / "samples", folder / "samples")
    for name in ("params.yaml", "manifest.json"):
        shutil.copy(smoke_run / name, folder / name)
    run_pipeline(folder, ["student_training.processes=2", "student_training.prune_recipe=width"],
                 from_stage="02", to_stage="02")
    assert not (folder / "metrics.json").exists()  # stage 03 did not run
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == json.loads((smoke_run / "manifest.json").read_text())[
        "precision"]  # the parent's verdict, figures and all: nothing probed again
    job = json.loads((folder / "training_job.json").read_text())
    assert job["student_training"]["processes"] == 2
    assert job["precision"] == manifest["precision"]["choice"]
    assert job["student_training"]["mixed_precision"] is None  # the notebook left it alone
    one, two = (pd.read_csv(f / "train_log.csv") for f in (smoke_run, folder))
    assert two["tokens"].tolist() == one["tokens"].tolist()  # the same global batches
    # bf16 autocast rounds differently at each process's batch shape: close, not equal
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=0.05)
    assert two["loss"].iloc[-1] < two["loss"].iloc[0]  # and it learnt
    executed = nbformat.read(folder / "02_student_training.ipynb", as_version=4)
    assert "2 processes" in "".join(o.get("text", "") for c in executed.cells
                                    for o in c.get("outputs", []))


def test_cli_reports_bad_params_and_failed_stage(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student_training:\n  lr: -1\n")
    result = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "student_training.lr" in result.stderr

    # A missing file stops the run before its folder exists (exit 2); what only a stage
    # can find out fails that stage (exit 1): here, a held-out set as large as the prompts.
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", str(ROOT / "params" / "smoke.yaml"),
         "--set", f"run.output_dir={tmp_path}", "--set", "teacher_sampling.prompts=missing.jsonl"],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "missing.jsonl" in result.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no run folder
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", str(ROOT / "params" / "smoke.yaml"),
         "--set", f"run.output_dir={tmp_path}", "--set", "teacher_sampling.heldout_size=100000"],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "stage teacher_sampling failed" in result.stderr
    assert "01_teacher_sampling.ipynb" in result.stderr
    assert "heldout_size" in result.stderr


def test_provenance_command_writes_a_verdict(smoke_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE_MARK", "a secret watermark key")
    init = smoke_run / "student_init"
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "provenance", str(smoke_run),
         "--candidate", "smollm2-135m-instruct", "--control", str(init), "--reference", str(init),
         "--n-prompts", "12", "--watermark-key-env", "SMOKE_MARK", "--output-dir", str(tmp_path),
         "--set", "max_new_tokens=12", "--set", "permutations=999"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = tmp_path.glob("provenance-*")
    table = pd.read_csv(folder / "provenance.csv")
    assert list(table["test"]) == ["output agreement", "likelihood", "watermark"]
    assert table["p_value"].between(0, 1).all()  # every test ran and gave a p-value
    assert "output agreement" in result.stdout  # the table is printed
    # the smoke student never saw watermarked text: no detection of the key
    assert table.set_index("test").loc["watermark", "p_value"] > 1e-3
    assert (folder / "05_provenance.ipynb").exists() and (folder / "answers").is_dir()
    manifest = (folder / "manifest.json").read_text()
    assert json.loads(manifest)["stages"]["05_provenance"]["status"] == "done"
    executed = (folder / "05_provenance.ipynb").read_text()
    assert "a secret watermark key" not in manifest + executed
