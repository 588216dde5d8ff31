"""distill.lm.data (prompt sets, split, corpus) and the answer metrics of
distill.evaluation.metrics."""

import json

import pandas as pd
import pytest

from distill.evaluation import metrics as evaluation
from distill.lm import data
from distill.lm.data import PromptError


@pytest.fixture(scope="module")
def builtin():
    return data.load_prompts("builtin")


def test_builtin_prompt_set(builtin):
    assert len(builtin) >= 500
    assert len({p["kind"] for p in builtin}) >= 8
    assert sum(p["reference"] is not None for p in builtin) >= 100
    ids = [p["prompt_id"] for p in builtin]
    assert len(set(ids)) == len(ids)
    for prompt in builtin:
        assert prompt["messages"][-1]["role"] == "user"
        assert prompt["messages"][-1]["content"].strip()
        assert prompt["reference"] is None or (isinstance(prompt["reference"], str)
                                               and prompt["reference"].strip())


def test_split_is_deterministic_disjoint_and_sized(builtin):
    train, heldout = data.split_prompts(builtin, heldout_size=50, seed=0)
    again_train, again_heldout = data.split_prompts(builtin, heldout_size=50, seed=0)
    assert [p["prompt_id"] for p in heldout] == [p["prompt_id"] for p in again_heldout]
    assert [p["prompt_id"] for p in train] == [p["prompt_id"] for p in again_train]
    assert len(heldout) == 50 and len(train) == len(builtin) - 50
    train_ids, heldout_ids = {p["prompt_id"] for p in train}, {p["prompt_id"] for p in heldout}
    assert not train_ids & heldout_ids
    assert train_ids | heldout_ids == {p["prompt_id"] for p in builtin}
    _, other = data.split_prompts(builtin, heldout_size=50, seed=1)
    assert {p["prompt_id"] for p in other} != heldout_ids
    # a train_size cap keeps the held-out set unchanged
    capped, capped_heldout = data.split_prompts(builtin, heldout_size=50, seed=0, train_size=10)
    assert len(capped) == 10 and capped_heldout == heldout
    assert [p["prompt_id"] for p in capped] == [p["prompt_id"] for p in train[:10]]


@pytest.mark.parametrize("heldout_size", [3, 4])
def test_split_needs_training_prompts(heldout_size):
    prompts = [{"prompt_id": str(i)} for i in range(3)]
    with pytest.raises(PromptError, match="heldout_size"):
        data.split_prompts(prompts, heldout_size=heldout_size, seed=0)


ROWS = [{"id": "a", "kind": "k1", "question": "What is 2 + 2?", "reference": "4"},
        {"id": "b", "kind": "k2", "question": "Name a colour.", "reference": ""}]


def _check_rows(prompts):
    assert [p["prompt_id"] for p in prompts] == ["a", "b"]
    assert [p["kind"] for p in prompts] == ["k1", "k2"]
    assert prompts[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "What is 2 + 2?"}]
    assert [p["reference"] for p in prompts] == ["4", None]


def test_jsonl_prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    _check_rows(data.load_prompts(str(path), prompt_field="question", system_prompt="Be brief."))


def test_csv_prompt_file(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    _check_rows(data.load_prompts(str(path), prompt_field="question", system_prompt="Be brief."))


def test_parquet_prompt_file(tmp_path):
    path = tmp_path / "prompts.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    _check_rows(data.load_prompts(str(path), prompt_field="question", system_prompt="Be brief."))


def test_rows_without_ids_are_numbered(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    prompts = data.load_prompts(str(path))
    assert [p["prompt_id"] for p in prompts] == ["row-000001", "row-000002"]
    assert prompts[1]["messages"] == [{"role": "user", "content": "two"}]
    assert prompts[0]["kind"] == "unknown" and prompts[0]["reference"] is None


def test_messages_column_is_used(tmp_path):
    path = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    path.write_text(json.dumps({"id": "x", "messages": messages}) + "\n")
    # a system message already present is kept, not doubled
    assert data.load_prompts(str(path), system_prompt="other")[0]["messages"] == messages


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    with pytest.raises(PromptError) as error:
        data.load_prompts(str(path))
    assert str(path) in str(error.value) and "line 2" in str(error.value)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_row_without_prompt_field_names_file_and_row(tmp_path, suffix):
    path = tmp_path / f"missing.{suffix}"
    rows = [{"prompt": "fine", "other": "x"}, {"prompt": "fine too", "other": "y"},
            {"prompt": "", "other": "z"}]
    if suffix == "jsonl":
        rows[2] = {"other": "z"}
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(PromptError) as error:
        data.load_prompts(str(path))
    assert str(path) in str(error.value) and "row 3" in str(error.value)
    assert "'prompt'" in str(error.value)


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"),
                                       ("empty.csv", "prompt\n")])
def test_empty_prompt_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PromptError, match="empty"):
        data.load_prompts(str(path))


def test_missing_unsupported_and_duplicate_files(tmp_path):
    with pytest.raises(PromptError, match="no such prompt file"):
        data.load_prompts(str(tmp_path / "nope.jsonl"))
    text = tmp_path / "prompts.txt"
    text.write_text("hello\n")
    with pytest.raises(PromptError, match="unsupported"):
        data.load_prompts(str(text))
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(PromptError, match="'a'"):
        data.load_prompts(str(duplicate))


def test_builtin_corpus():
    corpus = data.load_corpus()
    assert len(corpus.split()) > 1000
    assert not any(line.startswith("#") for line in corpus.splitlines())


def test_corpus_file_and_missing_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("some text here")
    assert data.load_corpus(str(path)) == "some text here"
    with pytest.raises(PromptError, match="evaluation.corpus"):
        data.load_corpus(str(tmp_path / "missing.txt"))


def test_encode_chat_with_and_without_template(teacher_tokenizer, mini_tokenizer):
    messages = [{"role": "user", "content": "Hello there"}]
    ids = data.encode_chat(teacher_tokenizer, messages)
    text = teacher_tokenizer.decode(ids)
    assert "Hello there" in text
    assert text.rstrip().endswith("assistant")  # ready for the answer

    class Plain:
        chat_template = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}
    assert data.encode_chat(Plain(), messages) == [ord(c) for c in "Hello there\n"]


@pytest.mark.parametrize("answer,reference,expected", [
    ("Paris", "Paris", True), (" paris. ", "Paris", True), ("The capital is Paris.", "Paris",
                                                            False),
    ("4", "4", True), ("42", "4", False)])
def test_exact_match(answer, reference, expected):
    assert evaluation.exact_match(answer, reference) is expected


@pytest.mark.parametrize("answer,reference,expected", [
    ("The capital is Paris.", "Paris", True), ("Parisian food", "Paris", False),
    ("It is 42.", "4", False), ("It is 4.", "4", True), ("NEW YORK, of course", "New York", True),
    ("York", "New York", False)])
def test_reference_in_answer(answer, reference, expected):
    assert evaluation.reference_in_answer(answer, reference) is expected


def test_rouge_l_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    scores = evaluation.rouge_l(["the cat sat on the mat", "alpha beta", "the cat sat"],
                                ["the cat sat on the mat", "gamma delta", "the cat sat down"])
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0)
    assert 0 < scores[2] < 1
    scores = evaluation.answer_scores(["Paris", "The answer is 4"], ["Paris", "4"],
                                      ["paris", None])
    assert scores["rouge_l_vs_teacher"] == pytest.approx((1.0 + 0.4) / 2)  # P=1/4, R=1: F=0.4
    assert scores["graded_prompts"] == 1
    assert scores["exact_match"] == 1.0 and scores["reference_in_answer"] == 1.0


def test_parquet_with_missing_references_and_ids_gives_none_not_nan(tmp_path):
    import pandas as pd

    from distill.lm.data import load_prompts

    path = tmp_path / "prompts.parquet"
    pd.DataFrame({"prompt": ["a?", "b?"], "reference": ["1", None],
                  "id": ["x", None]}).to_parquet(path)
    prompts = load_prompts(str(path))
    assert [p["reference"] for p in prompts] == ["1", None]
    assert [p["prompt_id"] for p in prompts] == ["x", "row-000002"]


def test_sequences_open_with_bos_where_the_tokenizer_adds_one(teacher_tokenizer):
    """Gemma-like tokenizers add <bos> by default and degrade without it; SmolLM2's adds
    nothing. Prompts and texts that open a sequence get it once, continuations never."""
    from distill.lm.data import encode_chat, encode_start

    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    plain = teacher_tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    assert encode_start(teacher_tokenizer, "Hello there") == plain  # SmolLM2: no BOS

    class WithBos:  # the teacher's tokenizer, made to add a BOS as Gemma's does
        chat_template = None
        bos_token_id = 7

        def __call__(self, text, add_special_tokens=True):
            ids = teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
            return {"input_ids": ([7] if add_special_tokens else []) + ids}

    assert encode_start(WithBos(), "Hello there") == [7, *plain]
    assert encode_chat(WithBos(), messages)[:1] == [7]
    assert encode_chat(WithBos(), messages).count(7) == 1
