"""distill.teachers.local (the local teacher backend) and distill.lm.samples (the shard store):
shards written atomically with their settings, resume, and read back."""

import pytest

from distill.lm import samples
from distill.lm.data import encode_chat
from distill.teachers import local as sampling


def _prompts(n):
    return [{"prompt_id": f"p{i}", "kind": "test", "reference": "4" if i % 2 else None,
             "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]}
            for i in range(n)]


SETTINGS = {"max_new_tokens": 3, "do_sample": True, "temperature": 1.0, "top_p": 1.0,
            "top_k_logprobs": 2}


def _sample(model, tokenizer, run_dir, **changes):
    prompts = _prompts(5)
    return sampling.sample_teacher(model, tokenizer, prompts[1:], prompts[:1], run_dir,
                                   seed=3, shard_size=2, batch_size=2,
                                   **{**SETTINGS, **changes})


def test_sample_teacher_writes_shards_and_resumes(tmp_path, tiny_model_teacher_vocab,
                                                  teacher_tokenizer):
    model, tokenizer = tiny_model_teacher_vocab, teacher_tokenizer
    stats = _sample(model, tokenizer, tmp_path)
    paths = [samples.shard_path(tmp_path, i) for i in range(3)]
    assert all(p.is_file() for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [p.name for p in paths]
    assert (stats["shards_written"], stats["shards_skipped"]) == (3, 0)
    assert stats["tokens"] > 0
    first = [p.read_bytes() for p in paths]

    frame = samples.read_samples(tmp_path)
    assert list(frame["prompt_id"]) == ["p0", "p1", "p2", "p3", "p4"]
    assert list(frame["split"]) == ["heldout", "train", "train", "train", "train"]
    assert len(samples.read_samples(tmp_path, "train")) == 4
    assert list(samples.read_samples(tmp_path, "heldout")["prompt_id"]) == ["p0"]
    for prompt, row in zip(_prompts(5), frame.itertuples()):
        assert list(row.prompt_ids) == encode_chat(tokenizer, prompt["messages"])
        assert 1 <= len(row.completion_ids) <= 3
        assert len(row.topk_ids) == len(row.topk_logprobs) == len(row.completion_ids)
        assert all(len(t) == 2 for t in row.topk_ids)
        assert row.finish_reason in ("stop", "length")
        # pandas reads a missing string back as None or NaN; the notebooks map both to None
        assert (row.reference if isinstance(row.reference, str) else None) == prompt["reference"]
        assert row.completion == tokenizer.decode(list(row.completion_ids),
                                                  skip_special_tokens=True)

    paths[-1].unlink()
    stats = _sample(model, tokenizer, tmp_path)
    assert (stats["shards_written"], stats["shards_skipped"]) == (1, 2)
    assert [p.read_bytes() for p in paths] == first

    # nothing to do on a complete run
    stats = _sample(model, tokenizer, tmp_path)
    assert (stats["shards_written"], stats["shards_skipped"]) == (0, 3)

    with pytest.raises(samples.SamplesError, match="other settings"):
        _sample(model, tokenizer, tmp_path, max_new_tokens=4)
    assert [p.read_bytes() for p in paths] == first


def test_read_samples_without_shards(tmp_path):
    with pytest.raises(samples.SamplesError, match="01_teacher_sampling"):
        samples.read_samples(tmp_path)
