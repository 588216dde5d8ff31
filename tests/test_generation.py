"""distill.lm.generation: stop tokens, greedy and sampled generation with raw-logit top-k
log-probs, batching equal to one at a time, length-sorted batches."""

import copy
import functools
import itertools

import pytest
import torch

from distill.lm import generation

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
    tokenizer = mini_tokenizer(eos_token_id=5)
    assert generation.stop_token_ids(tokenizer) == [5]
    assert generation.stop_token_ids(tokenizer, tiny_model.generation_config) == [5]
    config = copy.deepcopy(tiny_model.generation_config)
    config.eos_token_id = [9, 5]  # a chat model's end-of-turn beside the tokenizer's EOS
    assert generation.stop_token_ids(tokenizer, config) == [5, 9]


def test_abandoned_rows_stop_generating(tiny_model, mini_tokenizer):
    """Rows whose caller has gone count as finished from the step that notices it: once
    no row is wanted the batch ends, instead of running to max_new_tokens."""
    tokenizer = mini_tokenizer(eos_token_id=63)
    asked = []

    def abandoned():
        asked.append(1)
        return [len(asked) >= 3] * 2  # both callers leave after the third token

    outputs = generation.generate(tiny_model, tokenizer, PROMPTS[:2], max_new_tokens=8,
                                  abandoned=abandoned)
    assert len(asked) == 3
    assert [len(o["completion_ids"]) for o in outputs] == [3, 3]
    (alone,) = generation.generate(tiny_model, tokenizer, PROMPTS[:1], max_new_tokens=8,
                                   abandoned=lambda: [True])
    assert len(alone["completion_ids"]) == 1
    (kept,) = generation.generate(tiny_model, tokenizer, PROMPTS[:1], max_new_tokens=8,
                                  abandoned=lambda: [False])
    assert len(kept["completion_ids"]) == 8


def test_generate_stops_at_and_includes_eos(tiny_model, mini_tokenizer):
    prompt = PROMPTS[0]
    free = _greedy_reference(tiny_model, prompt, 8)
    position, eos = _eos_after_a_few_tokens(free)
    (result,) = generation.generate(tiny_model, mini_tokenizer(eos_token_id=eos), [prompt],
                                  max_new_tokens=8)
    assert result["completion_ids"] == free[:position + 1]
    assert result["completion_ids"][-1] == eos
    assert result["finish_reason"] == "stop"
    assert "topk_ids" not in result  # top_k_logprobs=0 records none


def test_generate_without_eos_runs_to_length(tiny_model, mini_tokenizer):
    prompt = PROMPTS[0]
    free = _greedy_reference(tiny_model, prompt, 6)
    eos = next(t for t in range(64) if t not in free)
    (result,) = generation.generate(tiny_model, mini_tokenizer(eos_token_id=eos), [prompt],
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
    results = generation.generate(tiny_model, tokenizer, PROMPTS[:3], max_new_tokens=6,
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
    batched = generation.generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=7,
                                top_k_logprobs=4)
    assert batched[1]["completion_ids"] == free[:position + 1]  # this one stops early
    for prompt, together in zip(PROMPTS, batched):
        (alone,) = generation.generate(tiny_model, tokenizer, [prompt], max_new_tokens=7,
                                     top_k_logprobs=4)
        assert together["completion_ids"] == alone["completion_ids"]
        assert together["finish_reason"] == alone["finish_reason"]
        assert together["topk_ids"] == alone["topk_ids"]
        assert torch.allclose(torch.tensor(together["topk_logprobs"]),
                              torch.tensor(alone["topk_logprobs"]), atol=1e-4)
    # generate_all (length-sorted batches) keeps input order
    through_all = generation.generate_all(tiny_model, tokenizer, PROMPTS, batch_size=3,
                                        max_new_tokens=7, top_k_logprobs=4)
    assert [r["completion_ids"] for r in through_all] == \
        [r["completion_ids"] for r in batched]


SHARED = [3, 14, 15, 9, 2, 6, 5, 35, 8, 9]  # a system prompt every prompt opens with
WITH_SHARED_PREFIX = [SHARED + [7], SHARED + [1, 2, 3, 4], SHARED + [60, 61], SHARED + [12]]


@pytest.mark.parametrize("prompts", [PROMPTS, WITH_SHARED_PREFIX])
def test_greedy_equals_transformers_generate(tiny_model, mini_tokenizer, prompts):
    """The own decode loop (finished rows leave the batch, a shared prefix is computed
    once) gives model.generate's greedy tokens, batched, up to each row's stop."""
    free = _greedy_reference(tiny_model, prompts[1], 8)
    position, eos = _eos_after_a_few_tokens(free)
    tokenizer = mini_tokenizer(eos_token_id=eos, pad_token_id=0)
    ours = generation.generate(tiny_model, tokenizer, prompts, max_new_tokens=8,
                               top_k_logprobs=3)
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    theirs = tiny_model.generate(**batch, max_new_tokens=8, do_sample=False,
                                 eos_token_id=eos, pad_token_id=0)[:, batch["input_ids"].shape[1]:]
    assert ours[1]["finish_reason"] == "stop"  # one row leaves the batch early
    for result, reference in zip(ours, theirs.tolist()):
        stop = reference.index(eos) + 1 if eos in reference else len(reference)
        assert result["completion_ids"] == reference[:stop]


def test_shared_prefix_is_computed_once(tiny_model, mini_tokenizer, monkeypatch):
    """Prompts opening alike run as a one-row prefix pass plus the rest, and still give
    each prompt's own results (log-probs included)."""
    tokenizer = mini_tokenizer(eos_token_id=63)
    lengths = []
    forward = tiny_model.forward

    @functools.wraps(forward)  # keeps the signature, which names the cache argument
    def counted(input_ids=None, **kwargs):
        lengths.append(tuple(input_ids.shape))
        return forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(tiny_model, "forward", counted)
    together = generation.generate(tiny_model, tokenizer, WITH_SHARED_PREFIX,
                                   max_new_tokens=3, top_k_logprobs=4)
    assert lengths[:2] == [(1, len(SHARED)), (4, 4)]  # the prefix once, then the rest
    for prompt, result in zip(WITH_SHARED_PREFIX, together):
        (alone,) = generation.generate(tiny_model, tokenizer, [prompt], max_new_tokens=3,
                                       top_k_logprobs=4)
        assert result["completion_ids"] == alone["completion_ids"]
        assert torch.allclose(torch.tensor(result["topk_logprobs"]),
                              torch.tensor(alone["topk_logprobs"]), atol=1e-4)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    torch.manual_seed(0)

    def drawn(top_p):
        return {generation._next_tokens(logits, True, 1.0, top_p).item() for _ in range(200)}

    assert drawn(0.5) == {1}  # the most likely token alone reaches 0.5
    assert drawn(0.8) == {1, 2}
    assert drawn(1.0) == {0, 1, 2}
    assert generation._next_tokens(logits, False, 1.0, 1.0).tolist() == [1]


def test_batches_by_length_groups_similar_lengths():
    lengths = [5, 1, 3, 9, 2, 2, 7, 4]
    batches = generation.batches_by_length(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 2]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for first, second in itertools.pairwise(batches):
        assert max(lengths[i] for i in first) <= min(lengths[i] for i in second)
    assert generation.batches_by_length([], 4) == []


# --- shards: the teacher tokenizer's chat template on a tiny model of its vocabulary ---


def test_a_row_stops_at_the_fence_that_closes_its_code_block(tiny_model, mini_tokenizer):
    tokenizer = mini_tokenizer(eos_token_id=63)
    tokens = _greedy_reference(tiny_model, PROMPTS[0], 10)
    tokenizer._distill_fence_ids = [tokens[1], tokens[3]]  # what fence_token_ids caches
    second = [i for i, t in enumerate(tokens) if t in tokenizer._distill_fence_ids][1]
    (stopped,) = generation.generate(tiny_model, tokenizer, PROMPTS[:1], max_new_tokens=10,
                                     stop_after_fences=True)
    assert stopped["completion_ids"] == tokens[:second + 1]
    assert stopped["finish_reason"] == "stop"
    (free,) = generation.generate(tiny_model, tokenizer, PROMPTS[:1], max_new_tokens=10)
    assert free["completion_ids"] == tokens  # off by default


def test_fence_tokens_of_the_teacher(teacher_tokenizer):
    fences = generation.fence_token_ids(teacher_tokenizer)
    assert fences and all("```" in teacher_tokenizer.decode([i]) for i in fences)
    assert generation.fence_token_ids(teacher_tokenizer) is fences  # found once
