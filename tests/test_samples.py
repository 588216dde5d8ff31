"""distill.lm.samples, the training view: examples from samples, labels aligned with next
tokens, text-only samples, and collation of the teacher's top-k onto target positions."""

import math

import pandas as pd
import pytest
import torch

from distill.lm import samples
from distill.lm.losses import IGNORE_INDEX

K = 4
TEACHER_PROBS = [0.7, 0.1, 0.05, 0.05]  # the top-4 of a fixed teacher; tail 0.1


def _teacher_row(token):
    """The fixed teacher's top-k after `token`: token + 1 most likely, then +2, +3, +4."""
    return [(token + j) % 64 for j in range(1, K + 1)], [math.log(p) for p in TEACHER_PROBS]


def _samples(n=8, seed=0, empty_rows=0):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        prompt = torch.randint(1, 64, (3 + i % 3,), generator=generator).tolist()
        completion, last = [], prompt[-1]
        for _ in range(4 + i % 3):  # the teacher's greedy continuation
            last = (last + 1) % 64
            completion.append(last)
        context = [prompt[-1]] + completion[:-1]
        topk = [_teacher_row(t) for t in context]
        rows.append({"prompt_ids": prompt, "completion_ids": completion,
                     "topk_ids": [ids for ids, _ in topk],
                     "topk_logprobs": [lps for _, lps in topk]})
    for _ in range(empty_rows):
        rows.append({"prompt_ids": [1, 2, 3], "completion_ids": [], "topk_ids": [],
                     "topk_logprobs": []})
    return pd.DataFrame(rows)


def test_build_examples_aligns_labels_with_next_tokens():
    frame = _samples(n=4, empty_rows=1)
    examples = samples.build_examples(frame)
    assert len(examples) == 4  # the empty completion is dropped
    for example, row in zip(examples, frame.itertuples()):
        prompt, completion = list(row.prompt_ids), list(row.completion_ids)
        assert example.input_ids == prompt + completion
        assert len(example.labels) == len(example.input_ids) - 1
        assert example.labels[:len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
        for t, label in enumerate(example.labels):
            if label != IGNORE_INDEX:
                assert label == example.input_ids[t + 1]
        assert [x for x in example.labels if x != IGNORE_INDEX] == completion
        assert len(example.topk_ids) == len(completion)


def test_build_examples_rejects_only_empty_completions():
    with pytest.raises(ValueError, match="empty"):
        samples.build_examples(_samples(n=0, empty_rows=2))


def _text_only(frame):
    """The same samples as a teacher without log-probs gives them (text only)."""
    return frame.assign(topk_ids=[[] for _ in frame.index],
                        topk_logprobs=[[] for _ in frame.index])


def test_text_only_samples_train_sequence_level_and_mix_in_a_batch():
    mixed = pd.concat([_samples(n=2), _text_only(_samples(n=2, seed=1))], ignore_index=True)
    examples = samples.build_examples(mixed)
    assert len(examples) == 4
    batch = samples.collate(examples, pad_id=0)
    assert batch["topk_ids"].shape[-1] == K
    assert (batch["topk_logprobs"][2:] == 0).all()  # nothing invented for text-only rows
    assert (batch["topk_logprobs"][:2] != 0).any()
    assert samples.collate(examples[2:], pad_id=0)["topk_ids"].shape[-1] == 0


def test_token_level_kd_needs_top_k(capsys):
    with pytest.raises(ValueError, match="no top-k log-probs.*kd_weight=0"):
        samples.build_examples(_text_only(_samples(n=3)), need_topk=True)
    mixed = pd.concat([_samples(n=2), _text_only(_samples(n=3, seed=1))], ignore_index=True)
    assert len(samples.build_examples(mixed, need_topk=True)) == 2
    assert "3 samples without top-k log-probs skipped" in capsys.readouterr().out


def test_collate_pads_and_places_topk_at_completion_targets():
    examples = samples.build_examples(_samples(n=3))
    pad = 0
    batch = samples.collate(examples, pad)
    length = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, length)
    assert batch["labels"].shape == (3, length - 1)
    assert batch["topk_ids"].shape == batch["topk_logprobs"].shape == (3, length - 1, K)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        assert batch["input_ids"][row, :n].tolist() == example.input_ids
        assert (batch["input_ids"][row, n:] == pad).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (length - n)
        labels = batch["labels"][row]
        assert (labels[n - 1:] == IGNORE_INDEX).all()  # padding is masked
        kept = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(kept) == len(example.topk_ids)
        for j, t in enumerate(kept):
            assert labels[t] == batch["input_ids"][row, t + 1]
            assert batch["topk_ids"][row, t].tolist() == example.topk_ids[j]
            assert torch.allclose(batch["topk_logprobs"][row, t],
                                  torch.tensor(example.topk_logprobs[j]))
            # the teacher's most likely next token is the label (greedy teacher)
            assert batch["topk_ids"][row, t, 0] == labels[t]
        masked = labels == IGNORE_INDEX
        assert (batch["topk_ids"][row][masked] == 0).all()
        assert (batch["topk_logprobs"][row][masked] == 0).all()


def test_examples_from_parquet_hold_python_numbers(tmp_path):
    """Parquet hands back numpy arrays; tokenizers (on-policy generation) need ints."""
    path = tmp_path / "samples.parquet"
    _samples(n=3).to_parquet(path)
    example = samples.build_examples(pd.read_parquet(path))[0]
    assert all(type(t) is int for t in example.input_ids + example.labels)
    assert type(example.topk_ids[0][0]) is int and type(example.topk_logprobs[0][0]) is float
