"""distill.sampling: generation with raw-logit top-k log-probs, and resumable shards."""

import itertools

import pytest
import torch

from distill import sampling
from distill.data import encode_chat

PROMPTS = [[1, 5, 9, 3], [7, 2], [4, 4, 8, 6, 10, 12], [11]]


def _greedy_reference(model, prompt, max_new_tokens):
    """Greedy continuation by plain forward passes (no cache, no stop tokens)."""
    sequence = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = model(sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_id], dim=1)
    return sequence[0, len(prompt):].tolist()


def _teacher_forced_logprobs(model, prompt, completion):
    """log_softmax of the model's logits predicting each completion token, (len, vocab)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:len(prompt) + len(completion) - 1]
    return torch.log_softmax(logits.float(), dim=-1)


def _eos_after_a_few_tokens(tokens):
    """A token whose first occurrence in `tokens` is as late as possible but within reach,
    preferring positions >= 2 so the completion has several tokens."""
    for position in range(2, len(tokens)):
        if tokens[position] not in tokens[:position]:
            return position, tokens[position]
    return 0, tokens[0]


def test_stop_token_ids_union_of_tokenizer_and_model(tiny_model, mini_tokenizer):
    assert sampling.stop_token_ids(tiny_model, mini_tokenizer(eos_token_id=5)) == [5]


def test_generate_stops_at_and_includes_eos(tiny_model, mini_tokenizer):
    prompt = PROMPTS[0]
    free = _greedy_reference(tiny_model, prompt, 8)
    position, eos = _eos_after_a_few_tokens(free)
    (result,) = sampling.generate(tiny_model, mini_tokenizer(eos_token_id=eos), [prompt],
                                  max_new_tokens=8)
    assert result["completion_ids"] == free[:position + 1]
    assert result["completion_ids"][-1] == eos
    assert result["finish_reason"] == "stop"
    assert "topk_ids" not in result  # top_k_logprobs=0 records none


def test_generate_without_eos_runs_to_length(tiny_model, mini_tokenizer):
    prompt = PROMPTS[0]
    free = _greedy_reference(tiny_model, prompt, 6)
    eos = next(t for t in range(64) if t not in free)
    (result,) = sampling.generate(tiny_model, mini_tokenizer(eos_token_id=eos), [prompt],
                                  max_new_tokens=6, top_k_logprobs=3)
    assert result["completion_ids"] == free
    assert result["finish_reason"] == "length"
    assert len(result["topk_ids"]) == len(result["topk_logprobs"]) == 6


@pytest.mark.parametrize("do_sample", [False, True])
def test_topk_logprobs_are_raw_logit_log_softmax(tiny_model, mini_tokenizer, do_sample):
    """The recorded top-k equals log_softmax of the model's own logits, recomputed by a
    teacher-forced pass, even when sampling uses a temperature and top-p."""
    tokenizer = mini_tokenizer(eos_token_id=63)
    torch.manual_seed(0)
    settings = {"do_sample": True, "temperature": 0.5, "top_p": 0.8} if do_sample else {}
    results = sampling.generate(tiny_model, tokenizer, PROMPTS[:3], max_new_tokens=6,
                                top_k_logprobs=5, **settings)
    for prompt, result in zip(PROMPTS, results):
        completion = result["completion_ids"]
        assert completion
        values = torch.tensor(result["topk_logprobs"])
        ids = torch.tensor(result["topk_ids"])
        assert values.shape == ids.shape == (len(completion), 5)
        assert (values[:, :-1] >= values[:, 1:]).all()  # sorted, most likely first
        assert (values <= 0).all()
        reference = _teacher_forced_logprobs(tiny_model, prompt, completion)
        assert torch.allclose(values, reference.gather(-1, ids), atol=1e-4)
        assert torch.allclose(values, reference.topk(5, dim=-1).values, atol=1e-4)
        if not do_sample:  # greedy: each token is the top-1
            assert ids[:, 0].tolist() == completion


def test_batched_equals_one_at_a_time(tiny_model, mini_tokenizer):
    free = _greedy_reference(tiny_model, PROMPTS[1], 7)
    position, eos = _eos_after_a_few_tokens(free)
    tokenizer = mini_tokenizer(eos_token_id=eos, pad_token_id=0)
    batched = sampling.generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=7,
                                top_k_logprobs=4)
    assert batched[1]["completion_ids"] == free[:position + 1]  # this one stops early
    for prompt, together in zip(PROMPTS, batched):
        (alone,) = sampling.generate(tiny_model, tokenizer, [prompt], max_new_tokens=7,
                                     top_k_logprobs=4)
        assert together["completion_ids"] == alone["completion_ids"]
        assert together["finish_reason"] == alone["finish_reason"]
        assert together["topk_ids"] == alone["topk_ids"]
        assert torch.allclose(torch.tensor(together["topk_logprobs"]),
                              torch.tensor(alone["topk_logprobs"]), atol=1e-4)
    # generate_all (length-sorted batches) keeps input order
    through_all = sampling.generate_all(tiny_model, tokenizer, PROMPTS, batch_size=3,
                                        max_new_tokens=7, top_k_logprobs=4)
    assert [r["completion_ids"] for r in through_all] == \
        [r["completion_ids"] for r in batched]


def test_batches_by_length_groups_similar_lengths():
    lengths = [5, 1, 3, 9, 2, 2, 7, 4]
    batches = sampling.batches_by_length(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 2]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for first, second in itertools.pairwise(batches):
        assert max(lengths[i] for i in first) <= min(lengths[i] for i in second)
    assert sampling.batches_by_length([], 4) == []


# --- shards: the teacher tokenizer's chat template on a tiny model of its vocabulary ---

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
    paths = [sampling.shard_path(tmp_path, i) for i in range(3)]
    assert all(p.is_file() for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [p.name for p in paths]
    assert (stats["shards_written"], stats["shards_skipped"]) == (3, 0)
    assert stats["tokens"] > 0
    first = [p.read_bytes() for p in paths]

    frame = sampling.read_samples(tmp_path)
    assert list(frame["prompt_id"]) == ["p0", "p1", "p2", "p3", "p4"]
    assert list(frame["split"]) == ["heldout", "train", "train", "train", "train"]
    assert len(sampling.read_samples(tmp_path, "train")) == 4
    assert list(sampling.read_samples(tmp_path, "heldout")["prompt_id"]) == ["p0"]
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

    with pytest.raises(sampling.SamplingError, match="other settings"):
        _sample(model, tokenizer, tmp_path, max_new_tokens=4)
    assert [p.read_bytes() for p in paths] == first


def test_read_samples_without_shards(tmp_path):
    with pytest.raises(sampling.SamplingError, match="01_teacher_sampling"):
        sampling.read_samples(tmp_path)
