"""distill.training: example building, collation, checkpoints, exact resume, learning."""

import copy
import math

import pandas as pd
import pytest
import torch

from distill import training
from distill.losses import IGNORE_INDEX

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
    samples = _samples(n=4, empty_rows=1)
    examples = training.build_examples(samples)
    assert len(examples) == 4  # the empty completion is dropped
    for example, row in zip(examples, samples.itertuples()):
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
        training.build_examples(_samples(n=0, empty_rows=2))


def _text_only(samples):
    """The same samples as a teacher without log-probs gives them (text only)."""
    return samples.assign(topk_ids=[[] for _ in samples.index],
                          topk_logprobs=[[] for _ in samples.index])


def test_text_only_samples_train_sequence_level_and_mix_in_a_batch():
    mixed = pd.concat([_samples(n=2), _text_only(_samples(n=2, seed=1))], ignore_index=True)
    examples = training.build_examples(mixed)
    assert len(examples) == 4
    batch = training.collate(examples, pad_id=0)
    assert batch["topk_ids"].shape[-1] == K
    assert (batch["topk_logprobs"][2:] == 0).all()  # nothing invented for text-only rows
    assert (batch["topk_logprobs"][:2] != 0).any()
    assert training.collate(examples[2:], pad_id=0)["topk_ids"].shape[-1] == 0


def test_token_level_kd_needs_top_k(capsys):
    with pytest.raises(ValueError, match="no top-k log-probs.*kd_weight=0"):
        training.build_examples(_text_only(_samples(n=3)), need_topk=True)
    mixed = pd.concat([_samples(n=2), _text_only(_samples(n=3, seed=1))], ignore_index=True)
    assert len(training.build_examples(mixed, need_topk=True)) == 2
    assert "3 samples without top-k log-probs skipped" in capsys.readouterr().out


def test_collate_pads_and_places_topk_at_completion_targets():
    examples = training.build_examples(_samples(n=3))
    pad = 0
    batch = training.collate(examples, pad)
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


def _settings(**changes):
    settings = {"pad_id": 0, "seed": 0, "epochs": 1, "max_steps": 4, "batch_size": 4,
                "grad_accum": 1, "lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0,
                "max_grad_norm": 1.0, "mixed_precision": "no", "checkpoint_every": 2,
                "ce_weight": 0.0, "kd_weight": 1.0, "temperature": 1.0}
    return {**settings, **changes}


@pytest.fixture
def examples():
    return training.build_examples(_samples(n=8))


def _record_checkpoints(monkeypatch, interrupt_at=None):
    steps, real = [], training._checkpoint

    def checkpoint(accelerator, run_dir, step, log, log_path):
        real(accelerator, run_dir, step, log, log_path)
        steps.append(step)
        if step == interrupt_at:
            raise KeyboardInterrupt  # the run is killed right after this checkpoint
    monkeypatch.setattr(training, "_checkpoint", checkpoint)
    return steps


def _count_steps(monkeypatch):
    calls, real = [], training._loss

    def loss(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "_loss", loss)
    return calls


def test_train_writes_checkpoints_and_log(tmp_path, tiny_model_factory, examples, monkeypatch):
    saved = _record_checkpoints(monkeypatch)
    log = training.train(tiny_model_factory(seed=1), examples, tmp_path,
                         **_settings(max_steps=5))
    assert saved == [2, 4, 5]  # every 2 steps, and the last one
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000005"]
    assert training.latest_checkpoint(tmp_path)[0] == 5
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    written = pd.read_csv(tmp_path / "train_log.csv")
    assert written["step"].tolist() == log["step"].tolist() == [1, 2, 3, 4, 5]
    assert {"loss", "kd", "lr", "grad_norm", "tokens", "epoch"} <= set(written.columns)
    assert written["loss"].tolist() == pytest.approx(log["loss"].tolist())
    assert (written["tokens"] > 0).all()
    assert written["epoch"].tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5])


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_interruption_matches_uninterrupted(tmp_path, tiny_model_factory,
                                                         examples, monkeypatch):
    whole = tiny_model_factory(seed=1)
    whole_log = training.train(whole, examples, tmp_path / "whole", **_settings(max_steps=5))

    saved = _record_checkpoints(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_model_factory(seed=1), examples, tmp_path / "split",
                       **_settings(max_steps=5))
    assert saved == [2]
    steps = _count_steps(monkeypatch)
    resumed = tiny_model_factory(seed=1)  # freshly built: the weights come from step 2
    resumed_log = training.train(resumed, examples, tmp_path / "split", **_settings(max_steps=5))
    assert len(steps) == 3  # steps 3, 4, 5 only
    assert resumed_log["step"].tolist() == [1, 2, 3, 4, 5]
    assert resumed_log["loss"].tolist() == pytest.approx(whole_log["loss"].tolist(), rel=1e-4)
    expected = _weights(whole)
    for name, value in _weights(resumed).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def test_resume_with_larger_max_steps_continues(tmp_path, tiny_model_factory, examples,
                                                monkeypatch):
    """Train 2 steps, then call again with max_steps=4: it continues from step 2 and ends
    with the weights of an uninterrupted 4-step run. With warmup_steps=1 the 2-step and the
    4-step schedules give steps 1 and 2 the same learning rates (0, then the peak), so the
    two runs differ only if the resumed steps do not follow the 4-step schedule."""
    whole = tiny_model_factory(seed=1)
    training.train(whole, examples, tmp_path / "whole", **_settings(max_steps=4))

    training.train(tiny_model_factory(seed=1), examples, tmp_path / "split",
                   **_settings(max_steps=2))
    assert training.latest_checkpoint(tmp_path / "split")[0] == 2
    steps = _count_steps(monkeypatch)
    resumed = tiny_model_factory(seed=1)
    log = training.train(resumed, examples, tmp_path / "split", **_settings(max_steps=4))
    assert len(steps) == 2  # continued from step 2, not from scratch
    assert log["step"].tolist() == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == \
        ["step-000004"]
    assert pd.read_csv(tmp_path / "split" / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]
    expected = _weights(whole)
    for name, value in _weights(resumed).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def test_loss_falls_on_a_fixed_dataset(tmp_path, tiny_model_factory, examples):
    log = training.train(tiny_model_factory(seed=2), examples, tmp_path,
                         **_settings(max_steps=20, checkpoint_every=100, warmup_steps=2,
                                     ce_weight=0.5))
    assert len(log) == 20
    losses = log["loss"].tolist()
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert log["kd"].iloc[-1] < log["kd"].iloc[0] and log["ce"].iloc[-1] < log["ce"].iloc[0]


def test_online_teacher_identical_to_student_gives_zero_kd(tmp_path, tiny_model_factory,
                                                           examples):
    teacher = tiny_model_factory(seed=3)
    student = copy.deepcopy(teacher)
    log = training.train(student, examples, tmp_path, teacher=teacher, kd_source="online",
                         **_settings(max_steps=1, checkpoint_every=10))
    assert log["kd"].iloc[0] == pytest.approx(0.0, abs=1e-6)


def test_examples_from_parquet_hold_python_numbers(tmp_path):
    """Parquet hands back numpy arrays; tokenizers (on-policy generation) need ints."""
    path = tmp_path / "samples.parquet"
    _samples(n=3).to_parquet(path)
    example = training.build_examples(pd.read_parquet(path))[0]
    assert all(type(t) is int for t in example.input_ids + example.labels)
    assert type(example.topk_ids[0][0]) is int and type(example.topk_logprobs[0][0]) is float


def test_sequence_level_training_on_text_only_samples(tmp_path, tiny_model_factory):
    examples = training.build_examples(_text_only(_samples(n=8)))
    log = training.train(tiny_model_factory(seed=1), examples, tmp_path,
                         **_settings(max_steps=12, ce_weight=1.0, kd_weight=0.0, lr=1e-2))
    assert log["loss"].notna().all()
    assert log["loss"].iloc[-3:].mean() < log["loss"].iloc[:3].mean()
