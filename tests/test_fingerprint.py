"""Teacher fingerprints (distill.teachers.fingerprint) against `distill serve`: a restart of
the same model is the same model; another model, the same weights in bf16, and a copy
fine-tuned for 10 steps are not. Tiny models with the teacher's vocabulary keep it
fast; their weights are drawn large (initializer_range 1) so their log-probs are as
spread as a trained model's, not all near log(1/V)."""

import json

import pytest

from conftest import make_tiny_model
from distill import cli
from distill.lm import data, samples
from distill.lm.models import load_model, save_model
from distill.serve.server import create_app
from distill.teachers import fingerprint
from distill.teachers.api_client import endpoint_from_spec
from distill.testing import BackgroundServer
from distill.training.finetune import changed_teacher

TINY = {"vocab_size": 49152, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "initializer_range": 1.0}


def _served(model, tokenizer, name="teacher"):
    return BackgroundServer(create_app(model, tokenizer, name))


def _probes(url: str, name="teacher"):
    return fingerprint.EndpointProbes(endpoint_from_spec(f"{url}/v1#{name}"))


@pytest.fixture(scope="module")
def teacher(teacher_tokenizer, tmp_path_factory):
    """The tiny teacher saved to a folder (a restart loads it from there), and its
    fingerprint recorded through a server."""
    folder = tmp_path_factory.mktemp("teacher")
    save_model(make_tiny_model(seed=3, **TINY), teacher_tokenizer, folder)
    model = load_model(str(folder))[0]
    with _served(model, teacher_tokenizer) as url:
        recorded = fingerprint.record(_probes(url), "teacher")
    return folder, model, recorded


@pytest.fixture(scope="module", autouse=True)
def _key():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "unused-by-a-server-without-keys")
        yield


def _decision(model, tokenizer, recorded) -> fingerprint.Check:
    with _served(model, tokenizer) as url:
        return fingerprint.check(recorded, _probes(url))


def test_a_restart_of_the_same_model_is_the_same_model(teacher, teacher_tokenizer):
    folder, _, recorded = teacher
    found = _decision(load_model(str(folder))[0], teacher_tokenizer, recorded)
    assert found.decision == fingerprint.SAME, found.summary()
    assert found.texts_compared and len(found.divergence) == 24  # 16 canaries + 8 texts


def test_the_served_model_and_the_same_model_in_process_agree(teacher, teacher_tokenizer):
    _, model, recorded = teacher
    found = fingerprint.check(recorded, fingerprint.LocalProbes(model, teacher_tokenizer))
    assert found.decision == fingerprint.SAME, found.summary()


def test_another_model_is_detected(teacher, teacher_tokenizer):
    found = _decision(make_tiny_model(seed=4, **TINY), teacher_tokenizer, teacher[2])
    assert found.decision == fingerprint.CHANGED
    assert found.median >= 10 * found.threshold


def test_the_same_weights_in_bf16_are_detected(teacher, teacher_tokenizer):
    folder, _, recorded = teacher
    found = _decision(load_model(str(folder), dtype="bfloat16")[0], teacher_tokenizer, recorded)
    assert found.decision == fingerprint.CHANGED, found.summary()


def test_a_copy_fine_tuned_for_ten_steps_is_detected(teacher, teacher_tokenizer, tmp_path):
    _, model, recorded = teacher
    examples = samples.prose_examples(teacher_tokenizer, data.load_corpus(), 2000, 32)
    changed = changed_teacher(model, teacher_tokenizer, examples, 10, tmp_path / "v2", lr=1e-3)
    assert changed is not model and (tmp_path / "v2" / "config.json").exists()
    found = _decision(changed, teacher_tokenizer, recorded)
    assert found.decision == fingerprint.CHANGED, found.summary()
    # the original was not trained in place: it still matches its fingerprint
    assert fingerprint.check(recorded, fingerprint.LocalProbes(model, teacher_tokenizer)
                             ).decision == fingerprint.SAME


def test_divergence_compares_answers_up_to_where_they_part():
    old = [["a", -0.1, {"a": -0.1, "b": -2.0}], ["c", -0.5, {"c": -0.5}], ["d", -0.3, {}]]
    same = fingerprint._positions_divergence(old, old, up_to_parting=True)
    parted = [["a", -0.1, {"a": -0.1, "b": -2.0}], ["x", -0.4, {"x": -0.4, "c": -0.6}],
              ["zzz", -9.0, {}]]
    assert same == 0.0
    # position 2 is past the parting (contexts differ) and does not count
    assert fingerprint._positions_divergence(old, parted, True) == pytest.approx(0.05)
    # a text cut into other tokens is another tokenizer: the most divergent
    assert fingerprint._positions_divergence(old, parted, False) == fingerprint.NOVEL


def test_the_cli_records_then_checks(teacher, teacher_tokenizer, tmp_path, capsys):
    folder, model, _ = teacher
    file = tmp_path / "fp.json"
    with _served(model, teacher_tokenizer) as url:
        assert cli.main(["fingerprint", f"{url}/v1#teacher", "-o", str(file)]) == 0
        assert cli.main(["fingerprint", "--check", str(file), f"{url}/v1#teacher"]) == 0
    assert "same model" in capsys.readouterr().out
    assert json.loads(file.read_text())["threshold"] >= fingerprint.FLOOR
    other = make_tiny_model(seed=5, **TINY)
    with _served(other, teacher_tokenizer) as url:
        assert cli.main(["fingerprint", "--check", str(file), f"{url}/v1#teacher"]) == 1
    assert "changed" in capsys.readouterr().out
    assert cli.main(["fingerprint", "--check", str(tmp_path / "none.json"), str(folder)]) == 2


def test_an_endpoint_without_echo_is_fingerprinted_by_its_answers(teacher, teacher_tokenizer):
    """No /v1/completions (a chat-only vendor API): the canary answers alone."""
    _, model, _ = teacher
    app = create_app(model, teacher_tokenizer, "teacher")
    app.router.routes = [r for r in app.router.routes
                         if getattr(r, "path", "") != "/v1/completions"]
    with BackgroundServer(app) as url:
        recorded = fingerprint.record(_probes(url), "teacher")
        found = fingerprint.check(recorded, _probes(url))
    assert recorded["measurement"]["texts"] is None
    assert found.decision == fingerprint.SAME and not found.texts_compared
    assert len(found.divergence) == 16 and "canary answers only" in found.summary()
