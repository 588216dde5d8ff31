"""The student folder's model card: front matter, how-it-was-made, metrics table, license."""

from __future__ import annotations

import yaml

from distill.core import runs
from distill.evaluation.model_card import (
    metrics_table,
    render_model_card,
    teacher_license,
    write_model_card,
)
from distill.lm.models import EMBEDDED

PARAMS = {
    "run": {"name": "default", "seed": 0, "teacher": "smollm2-135m-instruct",
            "precision": "bf16"},
    "teacher_sampling": {"train_size": 384, "max_new_tokens": 64},
    "student_training": {"student": "pruned", "kd_loss": "reverse_kl", "kd_source": "topk",
                         "temperature": 2.0, "epochs": 3, "max_steps": None, "lr": 3e-4,
                         "batch_size": 8},
}
MODELS = {
    "teacher": {"parameters_m": 134.515008, "heldout_kl": 0.0, "perplexity": 7.123456},
    "student_init": {"parameters_m": 81.43, "heldout_kl": 1.23456789, "perplexity": None},
    "student": {"parameters_m": 81.43, "heldout_kl": 0.3456789, "rouge_l": 0.41},
}


def _card(**overrides) -> str:
    kwargs = {"teacher": "smollm2-135m-instruct", "student_name": "smol-student",
              "params": PARAMS, "metrics": MODELS,
              "environment": {"git_commit": "abc1234", "git_dirty": False}}
    return render_model_card(**{**kwargs, **overrides})


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _table_rows(card: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in card.splitlines()
            if line.startswith("| ") and not line.startswith("| model ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_front_matter_for_an_embedded_teacher():
    front = _front(_card(license="apache-2.0"))
    assert front == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                     "tags": ["distillation", "distill"], "license": "apache-2.0",
                     "pipeline_tag": "text-generation", "library_name": "transformers"}


def test_front_matter_for_a_folder_teacher_and_no_license(tmp_path):
    folder = tmp_path / "my-teacher"
    folder.mkdir()
    front = _front(_card(teacher=str(folder)))
    assert front["base_model"] == "my-teacher"
    assert front["license"] == "other"


def test_how_it_was_made_lists_the_recipe():
    card = _card()
    assert "- Pruning recipe: pruned" in card
    assert "reverse_kl" in card and "topk" in card and "temperature 2.0" in card
    assert "384 teacher completions" in card and "64 new tokens" in card
    assert "3 epochs" in card and "learning rate 0.0003" in card and "batch size 8" in card
    assert "Precision: bf16" in card and "abc1234" in card
    assert "uncommitted changes" not in card
    assert "generic_samples" not in card


def test_optional_recipe_keys_appear_when_present():
    params = {**PARAMS,
              "teacher_sampling": {**PARAMS["teacher_sampling"], "generic_samples": 128,
                                   "documents": "docs.jsonl"},
              "student_training": {**PARAMS["student_training"], "prune_recipe": "minitron"}}
    card = _card(params=params)
    assert "- Pruning recipe: minitron" in card
    assert "generic_samples: 128" in card and "documents: docs.jsonl" in card


def test_git_dirty_is_noted():
    card = _card(environment={"git_commit": "abc1234", "git_dirty": True})
    assert "abc1234 (uncommitted changes)" in card


def test_metrics_table_has_one_row_per_model_with_the_numbers():
    rows = _table_rows(_card())
    assert list(rows) == ["teacher", "student_init", "student"]
    header = next(line for line in _card().splitlines() if line.startswith("| model "))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert columns == ["parameters_m", "heldout_kl", "perplexity", "rouge_l"]
    assert rows["teacher"] == ["134.5", "0", "7.123", "–"]
    assert rows["student_init"] == ["81.43", "1.235", "–", "–"]
    assert rows["student"] == ["81.43", "0.3457", "–", "0.41"]


def test_metrics_table_reads_what_write_metrics_stores(tmp_path):
    import pandas as pd

    table = pd.DataFrame({name: {**row, "generation_tokens_per_second": 99.0}
                          for name, row in MODELS.items()}).T
    runs.write_metrics(tmp_path, table, heldout_prompts=8)
    stored = runs.read_metrics(tmp_path)
    for metrics in (stored, stored["models"]):
        text = metrics_table(metrics)
        assert len(text.splitlines()) == 2 + len(MODELS)
        rows = _table_rows(text)
        assert list(rows) == ["teacher", "student_init", "student"]  # not json's sorted order
        header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")][1:]
        assert dict(zip(header, rows["student"])) == {
            "heldout_kl": "0.3457", "parameters_m": "81.43", "perplexity": "–",
            "rouge_l": "0.41"}
        assert "generation_tokens_per_second" not in text  # speed varies run to run
        assert "schema_version" not in text and "speed" not in text


def test_license_from_the_embedded_registry():
    assert EMBEDDED["smollm2-135m-instruct"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert teacher_license("smollm2-135m-instruct") == "apache-2.0"


def test_license_from_a_folder_readme(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# Teacher\n")
    assert teacher_license(str(tmp_path)) == "mit"


def test_license_absent(tmp_path):
    assert teacher_license(str(tmp_path)) is None  # no README
    (tmp_path / "README.md").write_text("# Teacher\n\nlicense: mit, but not front matter\n")
    assert teacher_license(str(tmp_path)) is None
    (tmp_path / "README.md").write_text("---\ntags: [x]\n---\n")
    assert teacher_license(str(tmp_path)) is None
    assert teacher_license("someone/not-a-local-model") is None


def test_write_model_card_writes_readme(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n")
    student = tmp_path / "student"
    path = write_model_card(student, teacher=str(teacher), student_name="s", params=PARAMS,
                            metrics=MODELS)
    assert path == student / "README.md" and path.is_file()
    text = path.read_text()
    assert _front(text)["license"] == "mit"  # the teacher's, when none is given
    assert "## Metrics" in text and "## How to use" in text and "## Limitations" in text
    assert not [p for p in student.iterdir() if p.name.startswith(".")]  # no temp file left


def test_usage_follows_the_students_tokenizer(tmp_path):
    """A student whose tokenizer has no chat template (a base model's) is shown on plain
    text: apply_chat_template would fail there."""
    from distill.evaluation.model_card import write_model_card

    (tmp_path / "tokenizer_config.json").write_text("{}")
    kwargs = {"teacher": "smollm2-135m-instruct", "student_name": "s", "params": {},
              "metrics": {"models": {}}}
    card = write_model_card(tmp_path, **kwargs).read_text()
    assert "apply_chat_template" not in card and 'tokenizer("What is' in card
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    assert "apply_chat_template" in write_model_card(tmp_path, **kwargs).read_text()
