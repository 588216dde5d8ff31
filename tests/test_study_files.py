"""Study files and `distill provenance`'s arguments are checked against the studies' params
sections (distill.studies.params) before any folder exists; a study folder goes on with its
own parameters; and the steps the studies share (distill.studies.shared, trained_copy)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from distill import cli
from distill.core.params import STUDY_SECTIONS, ParamsError, describe, section_params
from distill.core.runs import CHECKPOINTS
from distill.lm.samples import Example
from distill.pipeline import STUDIES, run_provenance, run_study
from distill.studies import runner, shared
from distill.studies.params import DriftParams
from distill.training.finetune import trained_copy

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted((ROOT / "params" / "studies").glob("*.yaml"))


def _study(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\n" + text)
    return path


def test_every_study_reads_a_registered_section():
    assert set(STUDIES) == set(runner.SECTIONS)
    assert set(runner.SECTIONS.values()) | {"provenance"} == set(STUDY_SECTIONS)


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_shipped_study_files_load(path, monkeypatch):
    monkeypatch.setenv("DISTILL_WATERMARK_KEY", "a key of sixteen characters")
    study, config, folder = runner.load_study(path, {})
    assert folder is None and runner.SECTIONS[study] in STUDY_SECTIONS
    assert config.output_dir == "outputs"


@pytest.mark.parametrize("text,key,message", [
    ("study: drift\nno_such_key: 1\n", "drift.no_such_key", "unknown key"),
    ("study: drift\nlr: fast\n", "drift.lr", "expected float"),
    ("study: drift\ndrift_steps: [0]\n", "drift.drift_steps", "the largest"),
    ("study: drift\nreplay_share: 1.0\n", "drift.replay_share", "[0, 1)"),
    ("study: drift\ntrain_prompts: 100000\n", "drift.prompts", "fewer than"),
    ("study: collapse\nconditions: [refresh]\n", "collapse.conditions", "replace_real"),
    ("study: collapse\nreal_share: 0\n", "collapse.real_share", "between 0 and 1"),
    ("study: collapse\ngenerations: 0\n", "collapse.generations", "> 0"),
    ("study: provenance\narms: {reference: 3}\nwatermark_key_env: null\n",
     "provenance_study.arms", "needs teacher students"),
    ("study: provenance\narms: {teacher: 1, diluted: 2}\nwatermark_key_env: null\n",
     "provenance_study.arms", "unknown arm"),
    ("study: provenance\nother_teacher: 'changed:some'\nwatermark_key_env: null\n",
     "provenance_study.other_teacher", "changed:N"),
    ("study: provenance\npermutations: 9\nwatermark_key_env: null\n",
     "provenance_study.permutations", "at least 19"),
    ("study: provenance\nwatermark_key_env: NO_SUCH_KEY_VARIABLE\n",
     "provenance_study.watermark_key_env", "is not set"),
    ("study: survey\n", "study", "not one of provenance, drift, collapse"),
])
def test_a_bad_study_file_stops_before_any_folder(tmp_path, text, key, message):
    path = _study(tmp_path, text)
    with pytest.raises(ParamsError) as error:
        run_study(path, {})
    assert f"{path}: {key}" in str(error.value) and message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_overrides_are_checked_like_the_file(tmp_path):
    path = _study(tmp_path, "study: collapse\n")
    with pytest.raises(ParamsError, match="collapse.steps: must be > 0"):
        run_study(path, {"steps": 0})
    assert runner.load_study(path, {"steps": 2})[1].steps == 2


def test_a_study_folder_goes_on_with_its_parameters(tmp_path):
    """A folder's manifest holds what it was started with (older folders only the keys
    they were given): the rest are the defaults, and overrides still apply."""
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"study": "drift", "parameters": {"output_dir": str(tmp_path), "distill_steps": 4}}))
    study, config, folder = runner.load_study(tmp_path, {"redistill_steps": 2})
    assert (study, folder) == ("drift", tmp_path)
    assert dataclasses.asdict(config) == {**dataclasses.asdict(DriftParams()),
                                          "output_dir": str(tmp_path), "distill_steps": 4,
                                          "redistill_steps": 2}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParamsError, match="not a study folder"):
        runner.load_study(tmp_path / "empty", {})


@pytest.mark.parametrize("given,key,message", [
    ({"candidates": []}, "provenance.candidates", "at least one"),
    ({"candidates": ["a-teacher"], "control": "suspect-model"}, "provenance.suspect",
     "also a candidate or the control"),
    ({"n_prompts": 0}, "provenance.n_prompts", "> 0"),
    ({"alpha": 1.5}, "provenance.alpha", "between 0 and 1"),
    ({"dtype": "fp8"}, "provenance.dtype", "fp32, bf16 or fp16"),
    ({"no_such_setting": 1}, "provenance.no_such_setting", "unknown key"),
])
def test_provenance_arguments_are_checked_before_any_model(tmp_path, given, key, message):
    parameters = {"suspect": "suspect-model", "output_dir": str(tmp_path / "out"), **given}
    with pytest.raises(ParamsError) as error:
        run_provenance(parameters)
    assert f"distill provenance: {key}" in str(error.value) and message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_command_line_says_which_key(tmp_path, capsys):
    path = _study(tmp_path, "study: drift\n")
    assert cli.main(["study", str(path), "--set", "target=-1"]) == 2
    assert "drift.target: must be > 0, got -1" in capsys.readouterr().err


def test_distill_params_lists_the_study_sections():
    text = describe()
    for name in STUDY_SECTIONS:
        assert f"\n{name}:\n" in text
    assert "replay_share:" in text and "warm + replay" in text


def test_a_notebook_run_by_hand_checks_its_section_too():
    values = dataclasses.asdict(DriftParams())
    assert section_params("drift", values) == DriftParams()
    with pytest.raises(ParamsError, match="notebook parameters: drift.drift_steps"):
        section_params("drift", {**values, "drift_steps": []})


def test_split_prompts_is_seeded_and_disjoint():
    train, test = shared.split_prompts("builtin", 10, 5, seed=3)
    assert (len(train), len(test)) == (10, 5)
    assert not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in test}
    again, _ = shared.split_prompts("builtin", 12, 0, seed=3)
    assert [p["prompt_id"] for p in again[:10]] == [p["prompt_id"] for p in train]


def test_trained_copy_trains_a_copy_and_keeps_no_checkpoint(tmp_path):
    start = make_tiny_model(seed=0)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    examples = [Example([1, 2, 3, 4, 5], [-100, 3, 4, 5], [[]] * 3, [[]] * 3) for _ in range(4)]
    config = shared.training_config("fp32", ce_weight=1.0, kd_weight=0.0, max_steps=2,
                                    epochs=10**6, batch_size=2, lr=1e-2)
    copy, log = trained_copy(start, examples, tmp_path, config, dtype="bfloat16", seed=0)
    assert len(log) == 2 and not (tmp_path / CHECKPOINTS).exists()
    assert copy.dtype == torch.bfloat16 and not copy.training
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in before.items())  # left as it was
    assert not torch.equal(copy.lm_head.weight.float(), start.lm_head.weight.float())
