"""End to end across tokenizers: `distill run params/cross/smoke.yaml` distils the
embedded Gemma 3 270M (vocabulary 262,144) into SmolLM2-135M-Instruct (49,152).
Minutes, not seconds: marked e2e (`make test-unit` skips it)."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from distill.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, tiny_teacher):
    """The smoke run, its student the tiny model with SmolLM2's tokenizer (conftest): the
    teacher and its alignment are Gemma's own, the student's training is seconds."""
    output_dir = tmp_path_factory.mktemp("outputs")
    yield run_pipeline(ROOT / "params" / "cross" / "smoke.yaml", [
        f"run.output_dir={output_dir}", f"student_training.student={tiny_teacher}"])
    shutil.rmtree(output_dir)  # GBs of weights: CI's disk holds a few runs, not all


def test_the_student_keeps_its_own_tokenizer_and_moves_toward_the_teacher(cross_run):
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(cross_run / "student")) == 49152
    metrics = json.loads((cross_run / "metrics.json").read_text())["models"]
    # per-token figures are undefined across vocabularies: null, not a number
    for name in ("student", "student_init"):
        assert metrics[name]["heldout_kl"] is None and metrics[name]["perplexity"] is None
    assert metrics["teacher"]["heldout_kl"] == 0.0
    # the tokenizer-free figures compare every model; distillation lowered the student's
    # bits per byte on the teacher's held-out answers
    assert metrics["student"]["bits_per_byte"] < metrics["student_init"]["bits_per_byte"]
    assert metrics["teacher"]["bits_per_byte"] < metrics["student_init"]["bits_per_byte"]


def test_stage_02_reports_the_alignment_and_trains_on_it(cross_run):
    executed = nbformat.read(cross_run / "02_student_training.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "re-read in the student's tokens" in text and "one-to-one spans" in text
    shard = next((cross_run / "samples").glob("part-*.parquet"))
    import pyarrow.parquet as pq

    assert pq.read_schema(shard).metadata[b"distill.schema_version"] == b"2"
    row = pq.read_table(shard).to_pylist()[0]
    assert b"".join(row["completion_bytes"]).decode("utf-8", "replace").startswith(
        row["completion"][:5])
    assert len(row["topk_bytes"]) == len(row["completion_ids"]) == len(row["completion_logprobs"])
