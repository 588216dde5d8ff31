"""Teacher backends behind one interface (distill.teachers). A third backend, registered
here inside the test, is what adding one takes: a TeacherBackend subclass and one
`register_teacher_backend` call. With nothing else changed it is a valid
teacher_sampling.backend, the params refuse what its capabilities rule out, it is checked
before a run folder is written, and it samples shards that stage 02 reads."""

import dataclasses
import json
from pathlib import Path

import pytest

from distill import teachers
from distill.core.params import ParamsError, load_params
from distill.core.params_fields import (
    TEACHER_BACKENDS,
    TeacherCapabilities,
    register_teacher_backend,
)
from distill.lm import samples
from distill.lm.data import encode_chat
from distill.pipeline import prepare_run
from distill.teachers import local

PROMPTS = [{"prompt_id": f"p{i}", "kind": "test", "reference": None,
            "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]}
           for i in range(5)]


class Replay(teachers.TeacherBackend):
    """Answers recorded in a JSON Lines file ({"prompt_id", "completion"} a line), replayed
    as text: no log-probs, no given text read, nothing run in this process."""

    capabilities = TeacherCapabilities(scores_text=False, logprobs=False, tokenizer=False)
    # Set by the fixture. A backend in distill/teachers would read its file from a params
    # key of its own, as the openai backend reads base_url.
    answers: Path = Path("answers.jsonl")
    run_tokenizer = None

    @classmethod
    def check(cls, sampling, teacher, source):
        if not cls.answers.is_file():
            raise ParamsError(f"{source}: teacher_sampling.backend: replay has no recorded "
                              f"answers at {cls.answers}; record them first")

    def __init__(self, sampling, teacher, dtype="float32"):
        super().__init__(sampling, teacher, dtype)
        self.tokenizer = self.run_tokenizer

    def sample(self, train, heldout, run_dir, seed, watermark=None):
        recorded = {row["prompt_id"]: row["completion"]
                    for row in map(json.loads, self.answers.read_text().splitlines())}

        def sample_shard(index, shard, progress):
            progress.update(len(shard))
            return [None if prompt["prompt_id"] not in recorded else samples.make_row(
                prompt, split, encode_chat(self.tokenizer, prompt["messages"]),
                self.tokenizer(recorded[prompt["prompt_id"]], add_special_tokens=False)[
                    "input_ids"], recorded[prompt["prompt_id"]], [], [], "stop")
                for prompt, split in shard]

        stamp = {"backend": "replay", "answers": str(self.answers)}
        return samples.sample_shards(run_dir, train, heldout, self.sampling.shard_size,
                                     stamp, sample_shard)


@pytest.fixture
def replay(tmp_path, teacher_tokenizer, monkeypatch):
    """The replay backend registered, with answers for every prompt but p3."""
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"prompt_id": p["prompt_id"],
                                           "completion": f"It is {2 * i}."}) + "\n"
                               for i, p in enumerate(PROMPTS) if p["prompt_id"] != "p3"))
    monkeypatch.setattr(Replay, "answers", answers)
    monkeypatch.setattr(Replay, "run_tokenizer", teacher_tokenizer)
    register_teacher_backend("replay", Replay)
    yield Replay
    del TEACHER_BACKENDS["replay"]


TEXT_ONLY = ["teacher_sampling.backend=replay", "teacher_sampling.top_k_logprobs=0",
             "student_training.kd_weight=0", "student_training.ce_weight=1"]


def test_a_registered_backend_is_a_value_of_the_backend_key(replay):
    params = load_params(overrides=TEXT_ONLY)
    assert params.teacher_sampling.backend == "replay"
    # the builtin validation prose is left out by a backend that reads no text, not refused
    assert params.teacher_sampling.validation_prose == "builtin"
    with pytest.raises(ParamsError, match="must be one of local, openai, replay"):
        load_params(overrides=["teacher_sampling.backend=recorded"])


@pytest.mark.parametrize("change,key,capable", [
    ("teacher_sampling.top_k_logprobs=20", "teacher_sampling.top_k_logprobs",
     "returns top-k log-probs (the local or openai backend)"),
    ("teacher_sampling.documents=docs/*.txt", "teacher_sampling",
     "reads given text and returns its top-k (the local backend)"),
    ("teacher_sampling.generic_samples=8", "teacher_sampling", "(the local backend)"),
    ("teacher_sampling.validation_prose=my_prose.txt", "teacher_sampling.validation_prose",
     "(the local backend)"),
    ("teacher_sampling.watermark=true", "teacher_sampling.watermark",
     "runs in this process with the run's tokenizer (the local backend)"),
    ("student_training.kd_source=online", "student_training", "(the local backend)"),
    ("student_training.hidden_weight=1", "student_training", "(the local backend)"),
])
def test_what_the_capabilities_rule_out_is_refused(replay, tmp_path, change, key, capable):
    path = tmp_path / "p.yaml"
    path.write_text("")
    with pytest.raises(ParamsError) as error:  # kd_weight above 0: online KD is asked for
        load_params(path, [*TEXT_ONLY, "student_training.kd_weight=1", change])
    message = str(error.value)
    assert message.startswith(f"{path}: {key}: ")
    assert capable in message and "the replay backend does not: " in message


def test_the_refusals_come_from_the_capabilities(replay, monkeypatch):
    """The same params pass once the backend says it can: no list of backend names
    decides them."""
    asks = [*TEXT_ONLY, "teacher_sampling.top_k_logprobs=20", "teacher_sampling.watermark=true"]
    with pytest.raises(ParamsError, match="top_k_logprobs"):
        load_params(overrides=asks)
    able = dataclasses.replace(Replay.capabilities, logprobs=True, tokenizer=True)
    monkeypatch.setattr(Replay, "capabilities", able)
    assert load_params(overrides=asks).teacher_sampling.watermark


def test_the_backend_is_checked_before_a_run_folder_is_written(replay, tmp_path):
    outputs = tmp_path / "outputs"
    path = tmp_path / "p.yaml"
    path.write_text(f"run: {{output_dir: {outputs}}}\n")
    replay.answers.unlink()
    with pytest.raises(ParamsError, match="replay has no recorded answers"):
        prepare_run(path, TEXT_ONLY)
    assert not outputs.exists()


def test_a_registered_backend_samples_into_a_run_folder(replay, tmp_path):
    params = load_params(overrides=[*TEXT_ONLY, "teacher_sampling.shard_size=2"])
    teacher = teachers.open_teacher(params.teacher_sampling, params.run.teacher)
    stats = teacher.sample(PROMPTS[1:], PROMPTS[:1], tmp_path, seed=0)
    assert stats["failed_prompts"] == ["p3"]  # not recorded: missing, asked again on a re-run
    frame = samples.read_samples(tmp_path)
    assert list(frame["prompt_id"]) == ["p0", "p1", "p2", "p4"]
    assert list(frame["completion"]) == ["It is 0.", "It is 2.", "It is 4.", "It is 8."]
    assert (frame["topk_ids"].map(len) == 0).all()  # text only: sequence-level KD
    assert teacher.report() is None
    with pytest.raises(NotImplementedError, match="replay backend has no scores_text"):
        teacher.sample_documents({"a": "some text"}, tmp_path)


def test_the_local_backend_samples_as_sample_teacher_does(tmp_path, tiny_model_teacher_vocab,
                                                          teacher_tokenizer, monkeypatch):
    """What notebook 01 did before backends: the same shards, the same stats keys."""
    monkeypatch.setattr(local, "load_model",
                        lambda name, dtype: (tiny_model_teacher_vocab, teacher_tokenizer))
    params = load_params(overrides=["teacher_sampling.max_new_tokens=3",
                                    "teacher_sampling.top_k_logprobs=2",
                                    "teacher_sampling.shard_size=2"])
    sampling = params.teacher_sampling
    stats = teachers.open_teacher(sampling, params.run.teacher).sample(
        PROMPTS[1:], PROMPTS[:1], tmp_path / "backend", seed=3)
    before = local.sample_teacher(
        tiny_model_teacher_vocab, teacher_tokenizer, PROMPTS[1:], PROMPTS[:1], tmp_path / "direct",
        seed=3, shard_size=2, batch_size=sampling.batch_size, max_new_tokens=3,
        do_sample=False, temperature=1.0, top_p=1.0, top_k_logprobs=2)
    assert set(stats) == set(before)
    for index in range(3):
        assert samples.shard_path(tmp_path / "backend", index).read_bytes() == \
            samples.shard_path(tmp_path / "direct", index).read_bytes()


def test_the_openai_backend_refuses_what_needs_a_teacher_here():
    api = ["teacher_sampling.backend=openai", "teacher_sampling.base_url=http://127.0.0.1:1/v1"]
    assert load_params(overrides=api).teacher_sampling.validation_prose == "builtin"
    for change, key in [("student_training.kd_source=online", "student_training"),
                        ("student_training.lmbda=0.5", "student_training"),
                        ("teacher_sampling.validation_prose=prose.txt",
                         "teacher_sampling.validation_prose")]:
        with pytest.raises(ParamsError, match=f"{key}: .* the openai backend does not"):
            load_params(overrides=[*api, change])
