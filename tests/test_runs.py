"""distill.core.runs: atomic writes, artifact hashes, the manifest."""

import hashlib
import json

import pytest

from distill.core import runs


class Boom(Exception):
    pass


def test_atomic_file_writes_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with runs.atomic_file(target) as handle:
        handle.write("hello")
        assert not target.exists()  # not visible until the body finishes
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_file_leaves_nothing_when_the_body_raises(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(Boom), runs.atomic_file(target, "wb") as handle:
        handle.write(b"partial")
        raise Boom
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_keeps_the_old_version_when_the_body_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), runs.atomic_file(target) as handle:
        handle.write("new")
        raise Boom
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with runs.atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"123")
        assert (target / "stale.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_leaves_nothing_when_the_body_raises(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(Boom), runs.atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"1")
        raise Boom
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_artifact_hashes_skip_checkpoints_notebooks_manifest_and_hidden(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "part-00000.parquet").write_bytes(b"shard")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-000002" / "model.safetensors").write_bytes(b"w")
    (tmp_path / "01_teacher_sampling.ipynb").write_text("{}")
    (tmp_path / runs.MANIFEST).write_text("{}")
    (tmp_path / ".metrics.json.abc.tmp").write_text("partial")
    hashes = runs.artifact_hashes(tmp_path)
    assert set(hashes) == {"samples/part-00000.parquet", "metrics.json"}
    assert hashes["samples/part-00000.parquet"] == hashlib.sha256(b"shard").hexdigest()
    assert hashes["metrics.json"] == hashlib.sha256(b"{}").hexdigest()


def test_update_manifest_merges_nested_dicts(tmp_path):
    runs.update_manifest(tmp_path, stages={"teacher_sampling": {"status": "done"}}, name="a")
    manifest = runs.update_manifest(tmp_path, stages={"student_training": {"status": "running"}},
                                    artifacts={"x": "1"})
    assert manifest["stages"] == {"teacher_sampling": {"status": "done"},
                                  "student_training": {"status": "running"}}
    assert manifest["name"] == "a" and manifest["artifacts"] == {"x": "1"}
    # a nested dict key is replaced, and non-dict values overwrite
    manifest = runs.update_manifest(tmp_path, stages={"student_training": {"status": "done"}},
                                    name="b")
    assert manifest["stages"]["student_training"] == {"status": "done"}
    assert manifest["stages"]["teacher_sampling"] == {"status": "done"}
    assert manifest["name"] == "b"
    assert json.loads((tmp_path / runs.MANIFEST).read_text()) == manifest


def test_json_round_trip_and_default(tmp_path):
    runs.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert runs.read_json(tmp_path / "a.json") == {"a": [1, 2], "b": 1}
    assert runs.read_json(tmp_path / "missing.json", default={"x": 0}) == {"x": 0}


def test_metrics_are_written_and_read_in_one_schema(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"teacher": {"heldout_kl": 0.0, "generation_tokens_per_second": 50.0},
                          "student": {"heldout_kl": 2.5, "generation_tokens_per_second": 80.0}}).T
    written = runs.write_metrics(tmp_path, table, heldout_prompts=8)
    read = runs.read_metrics(tmp_path)
    assert read == written
    assert read["schema_version"] == runs.METRICS_SCHEMA_VERSION and read["heldout_prompts"] == 8
    # speed varies between runs of the same params: kept apart from the quality figures
    assert read["models"]["student"] == {"heldout_kl": 2.5}
    assert read["speed"]["student"] == {"generation_tokens_per_second": 80.0}


def test_notebook_run_dir_defaults_to_a_notebook_folder(tmp_path):
    given = runs.notebook_run_dir(tmp_path / "run", "unused", "x")
    assert given == tmp_path / "run" and given.is_dir()
    by_hand = runs.notebook_run_dir(None, tmp_path / "outputs", "trial")
    assert by_hand == tmp_path / "outputs" / "trial-notebook" and by_hand.is_dir()


def test_figures_land_in_the_run_folder(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    assert runs.save_figure(figure, tmp_path, "curve") is figure
    assert (tmp_path / runs.FIGURES / "curve.png").stat().st_size > 0
    assert runs.save_figure(figure, None, "nowhere") is figure
