"""distill.core.params: YAML loading, overrides, and validation errors that name file and key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from distill.core.params import SECTIONS, ParamsError, RunParams, StudentTrainingParams, load_params

ROOT = Path(__file__).resolve().parents[1]
# every params file; sweep files (base + variants) are checked in test_distill_modes
# run params; sweeps (variants) and studies (a study notebook's parameters) apart
PARAM_FILES = sorted(p for p in (ROOT / "params").glob("**/*.yaml")
                     if "variants" not in (yaml.safe_load(p.read_text()) or {})
                     and p.parent.name != "studies")


def _write(tmp_path, text, name="params.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _defaults(cls):
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)}


def test_defaults_load_without_a_file():
    params = load_params(None)
    for name, cls in SECTIONS.items():
        assert dataclasses.asdict(getattr(params, name)) == _defaults(cls)
    assert params.student_training.lr == 1e-4


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(_write(tmp_path, "")).to_dict() == load_params(None).to_dict()


def test_values_from_the_file_are_applied(tmp_path):
    path = _write(tmp_path, "run:\n  name: mine\n  seed: 7\n"
                            "student_training:\n  lr: 3.0e-4\n  student_layers: [0, 5, 29]\n"
                            "  student_config: {num_hidden_layers: 2}\n"
                            "teacher_sampling:\n  train_size: null\n  do_sample: true\n")
    params = load_params(path)
    assert (params.run.name, params.run.seed) == ("mine", 7)
    assert params.student_training.lr == 3e-4
    assert params.student_training.student_layers == [0, 5, 29]
    assert params.student_training.student_config == {"num_hidden_layers": 2}
    assert params.teacher_sampling.do_sample is True
    assert params.teacher_sampling.train_size is None
    assert params.evaluation.max_new_tokens == 64  # untouched sections keep defaults


def test_mutable_defaults_are_not_shared():
    first, second = load_params(None), load_params(None)
    first.student_training.student_config["hidden_size"] = 8
    assert second.student_training.student_config == {}


@pytest.mark.parametrize("text,key", [
    ("trainer:\n  lr: 0.1\n", "trainer"),
    ("student_training:\n  lrr: 0.1\n", "student_training.lrr"),
    ("student_training:\n  lr: fast\n", "student_training.lr"),
    ("student_training:\n  epochs: 1.5\n", "student_training.epochs"),
    ("student_training:\n  epochs: true\n", "student_training.epochs"),
    ("teacher_sampling:\n  do_sample: \"yes\"\n", "teacher_sampling.do_sample"),
    ("teacher_sampling:\n  max_new_tokens: \"64\"\n", "teacher_sampling.max_new_tokens"),
    ("run:\n  seed: null\n", "run.seed"),
    ("student_training:\n  student_layers: 3\n", "student_training.student_layers"),
    ("student_training:\n  lr: -0.001\n", "student_training.lr"),
    ("student_training:\n  lr: 0\n", "student_training.lr"),
    ("teacher_sampling:\n  top_p: 1.5\n", "teacher_sampling.top_p"),
    ("teacher_sampling:\n  heldout_size: -1\n", "teacher_sampling.heldout_size"),
    ("teacher_sampling:\n  dtype: float64\n", "teacher_sampling.dtype"),
    ("run:\n  precision: float32\n", "run.precision"),
    ("student_training:\n  mixed_precision: fp8\n", "student_training.mixed_precision"),
    ("teacher_sampling:\n  top_k_logprobs: 49153\n", "teacher_sampling.top_k_logprobs"),
    ("student_training:\n  kd_source: offline\n", "student_training.kd_source"),
    ("student_training:\n  max_steps: 0\n", "student_training.max_steps"),
    ("student_training:\n  student_layers: [0, 30]\n", "student_training.student_layers"),
    ("student_training:\n  student_layers: [-1, 2]\n", "student_training.student_layers"),
    ("student_training:\n  student_layers: []\n", "student_training.student_layers"),
    ("teacher_sampling:\n  backend: vllm\n", "teacher_sampling.backend"),
    ("teacher_sampling:\n  backend: openai\n", "teacher_sampling.base_url"),
    ("teacher_sampling:\n  backend: openai\n  base_url: http://h/v1\n  top_k_logprobs: 21\n",
     "teacher_sampling.top_k_logprobs"),
    ("teacher_sampling:\n  api_key_env: sk-live-1234\n", "teacher_sampling.api_key_env"),
    ("teacher_sampling:\n  backend: openai\n  base_url: https://me:sk-1@h/v1\n",
     "teacher_sampling.base_url"),
    ("teacher_sampling:\n  backend: openai\n  base_url: https://h/v1?api-key=sk-1\n",
     "teacher_sampling.base_url"),
    ("teacher_sampling:\n  concurrency: 0\n", "teacher_sampling.concurrency"),
    ("teacher_sampling:\n  top_k_logprobs: -1\n", "teacher_sampling.top_k_logprobs"),
])
def test_invalid_values_name_file_and_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(path) in str(error.value)
    assert key in str(error.value)


def test_top_k_logprobs_equal_to_the_vocabulary_is_allowed(tmp_path):
    params = load_params(_write(tmp_path, "teacher_sampling:\n  top_k_logprobs: 49152\n"))
    assert params.teacher_sampling.top_k_logprobs == 49152


def test_both_weights_zero_is_rejected(tmp_path):
    path = _write(tmp_path, "student_training:\n  ce_weight: 0\n  kd_weight: 0.0\n")
    with pytest.raises(ParamsError) as error:
        load_params(path)
    message = str(error.value)
    assert str(path) in message and "student_training" in message
    assert "ce_weight" in message and "kd_weight" in message
    # one of them above zero is fine
    assert load_params(path, ["student_training.ce_weight=1"]).student_training.ce_weight == 1


def test_ints_are_accepted_for_float_keys(tmp_path):
    params = load_params(_write(tmp_path, "student_training:\n  lr: 1\n  temperature: 2\n"
                                          "  ce_weight: 1\n"))
    assert params.student_training.lr == 1
    assert params.student_training.temperature == 2
    assert params.student_training.ce_weight == 1


def test_not_a_mapping_and_bad_yaml_and_missing_file(tmp_path):
    for text in ("- a\n- b\n", "student_training: [1, 2]\n", "a: [unclosed\n"):
        path = _write(tmp_path, text)
        with pytest.raises(ParamsError, match=str(path)):
            load_params(path)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ParamsError, match="missing.yaml"):
        load_params(missing)


def test_overrides_apply(tmp_path):
    path = _write(tmp_path, "student_training:\n  lr: 1.0e-3\n  epochs: 3\n")
    params = load_params(path, ["student_training.lr=3.0e-4", "run.name=other",
                                "teacher_sampling.train_size=null",
                                "student_training.student_layers=[0, 2]"])
    assert params.student_training.lr == 3e-4
    assert params.student_training.epochs == 3  # from the file, not overridden
    assert params.run.name == "other"
    assert params.teacher_sampling.train_size is None
    assert params.student_training.student_layers == [0, 2]


def test_override_in_the_documented_form_3e_minus_4():
    # `--set student_training.lr=3e-4` is the example the error message itself gives
    params = load_params(None, ["student_training.lr=3e-4"])
    assert params.student_training.lr == pytest.approx(3e-4)


def test_exponent_floats_in_a_params_file(tmp_path):
    params = load_params(_write(tmp_path, "student_training:\n  lr: 1e-4\n"))
    assert params.student_training.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("override,key", [
    ("student_training.lr=fast", "student_training.lr"),
    ("student_training.epochs=1.5", "student_training.epochs"),
    ("student_training.nope=1", "student_training.nope"),
    ("teacher_sampling.top_p=2", "teacher_sampling.top_p"),
    ("trainer.lr=1", "trainer"),
])
def test_overrides_are_validated(tmp_path, override, key):
    path = _write(tmp_path, "run:\n  seed: 1\n")
    with pytest.raises(ParamsError) as error:
        load_params(path, [override])
    assert key in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("override", ["student_training.lr", "lr=3e-4", "=1", "student_training"])
def test_malformed_override_raises(override):
    with pytest.raises(ParamsError, match="section.key=value"):
        load_params(None, [override])


def test_notebook_parameters_are_run_plus_stage(tmp_path):
    params = load_params(None)
    injected = params.notebook_parameters("student_training", tmp_path)
    assert injected["run_dir"] == str(tmp_path)
    assert set(injected) == ({"run_dir"} | set(_defaults(RunParams))
                             | set(_defaults(StudentTrainingParams)))
    assert "prompts" not in injected and "top_k_logprobs" not in injected  # other stages'
    assert injected["lr"] == 1e-4 and injected["seed"] == 0


@pytest.mark.parametrize("path", PARAM_FILES, ids=[str(p.relative_to(ROOT)) for p in PARAM_FILES])
def test_shipped_params_files_load(path):
    params = load_params(path)
    assert params.run.teacher


def test_shipped_params_files_exist():
    names = {p.name for p in PARAM_FILES}
    assert {"smoke.yaml", "default.yaml"} <= names


STUDY_FILES = sorted((ROOT / "params" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_files_name_their_notebook_and_only_its_parameters(path):
    """A study file is a study notebook's parameters (distill study): its `study:` key
    names the notebook, every other key is in that notebook's parameters cell, and its
    header states the study's CPU budget or that it is a smoke size."""
    import papermill

    from distill.pipeline import STUDIES, notebooks_dir

    loaded = yaml.safe_load(path.read_text())
    assert loaded["study"] in STUDIES
    known = papermill.inspect_notebook(str(notebooks_dir() / STUDIES[loaded.pop("study")]))
    assert set(loaded) <= set(known), sorted(set(loaded) - set(known))
    header = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "smoke" in path.name or " min" in header
