"""End to end, speech: `distill run params/speech/smoke.yaml` labels synthetic speech with
the embedded Whisper tiny.en, trains a two-layer-decoder student and evaluates all three."""

import json
from pathlib import Path

import pandas as pd
import pytest

from distill.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def test_the_speech_smoke_run_distils_whisper(tmp_path):
    from transformers import WhisperForConditionalGeneration

    run_dir = run_pipeline(ROOT / "params" / "speech" / "smoke.yaml",
                           [f"run.output_dir={tmp_path}"])
    for name in ("speech_01_labelling.ipynb", "speech_02_training.ipynb",
                 "speech_03_evaluation.ipynb", "speech/labels-00000.parquet",
                 "speech/labels-00001.parquet", "labelling_stats.json", "train_log.csv",
                 "student/model.safetensors", "student_init/model.safetensors",
                 "figures/label_wer.png", "figures/training_curves.png",
                 "figures/model_comparison.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoints").exists()  # keep_checkpoints: false
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    student = WhisperForConditionalGeneration.from_pretrained(run_dir / "student")
    assert student.config.decoder_layers == 2 and student.config.encoder_layers == 4
    log = pd.read_csv(run_dir / "train_log.csv")
    assert len(log) == 4 and log["loss"].iloc[-1] < log["loss"].iloc[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    models, speed = metrics["models"], metrics["speed"]
    assert set(models) == {"teacher", "student_init", "student"}
    assert models["teacher"]["wer_vs_teacher"] == 0 and models["teacher"]["heldout_kl"] < 1e-3
    assert 0 <= models["teacher"]["wer"] < 1  # Whisper understands eSpeak
    # training moved the student toward its teacher, teacher-forced
    assert models["student"]["heldout_kl"] < models["student_init"]["heldout_kl"]
    assert models["student"]["parameters_m"] < models["teacher"]["parameters_m"]
    assert speed["student"]["real_time_factor"] > 0 and speed["teacher"]["speedup_vs_teacher"] == 1
    for figure in ("wer", "wer_vs_teacher", "heldout_kl", "top1_agreement"):  # per clip
        low, high = metrics["intervals"]["student"][figure]
        assert low <= models["student"][figure] <= high, figure
    assert "heldout_kl" in metrics["paired"]["student - student_init"]
