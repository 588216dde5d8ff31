"""distill.training: checkpoints, exact resume, learning."""

import copy
import math

import pandas as pd
import pytest
import torch

from distill import training
from distill.core.params import StudentTrainingParams
from distill.lm import chunked_head, samples
from distill.lm.losses import IGNORE_INDEX
from distill.training import batch_loss, loop
from test_samples import _samples, _text_only


def _config(**changes) -> StudentTrainingParams:
    """Small, fast training settings for the tiny models; `changes` override them."""
    settings = {"epochs": 1, "max_steps": 4, "batch_size": 4, "grad_accum": 1, "lr": 1e-2,
                "warmup_steps": 1, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "mixed_precision": "fp32", "checkpoint_every": 2, "ce_weight": 0.0,
                "kd_weight": 1.0, "temperature": 1.0}
    return StudentTrainingParams(**{**settings, **changes})


@pytest.fixture
def examples():
    return samples.build_examples(_samples(n=8))


def _record_checkpoints(monkeypatch, interrupt_at=None):
    steps, real = [], loop.checkpoint

    def checkpoint(accelerator, run_dir, step, log, log_path):
        real(accelerator, run_dir, step, log, log_path)
        steps.append(step)
        if step == interrupt_at:
            raise KeyboardInterrupt  # the run is killed right after this checkpoint
    monkeypatch.setattr(loop, "checkpoint", checkpoint)
    return steps


def _count_steps(monkeypatch):
    calls, real = [], loop.micro_batch_loss

    def loss(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "micro_batch_loss", loss)
    return calls


def test_train_writes_checkpoints_and_log(tmp_path, tiny_model_factory, examples, monkeypatch):
    saved = _record_checkpoints(monkeypatch)
    log = training.train(tiny_model_factory(seed=1), examples, tmp_path,
                         _config(max_steps=5))
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
    whole_log = training.train(whole, examples, tmp_path / "whole", _config(max_steps=5))

    saved = _record_checkpoints(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_model_factory(seed=1), examples, tmp_path / "split",
                       _config(max_steps=5))
    assert saved == [2]
    steps = _count_steps(monkeypatch)
    resumed = tiny_model_factory(seed=1)  # freshly built: the weights come from step 2
    resumed_log = training.train(resumed, examples, tmp_path / "split", _config(max_steps=5))
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
    training.train(whole, examples, tmp_path / "whole", _config(max_steps=4))

    training.train(tiny_model_factory(seed=1), examples, tmp_path / "split",
                   _config(max_steps=2))
    assert training.latest_checkpoint(tmp_path / "split")[0] == 2
    steps = _count_steps(monkeypatch)
    resumed = tiny_model_factory(seed=1)
    log = training.train(resumed, examples, tmp_path / "split", _config(max_steps=4))
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
                         _config(max_steps=20, checkpoint_every=100, warmup_steps=2,
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
    log = training.train(student, examples, tmp_path,
                         _config(max_steps=1, checkpoint_every=10, kd_source="online"),
                         teacher=teacher)
    assert log["kd"].iloc[0] == pytest.approx(0.0, abs=1e-6)


def test_sequence_level_training_on_text_only_samples(tmp_path, tiny_model_factory):
    examples = samples.build_examples(_text_only(_samples(n=8)))
    log = training.train(tiny_model_factory(seed=1), examples, tmp_path,
                         _config(max_steps=12, ce_weight=1.0, kd_weight=0.0, lr=1e-2))
    assert log["loss"].notna().all()
    assert log["loss"].iloc[-3:].mean() < log["loss"].iloc[:3].mean()


# --- the LM head projected with the loss, in chunks ------------------------------

def _head_case(seed=0, batch=2, length=7, width=8, vocab=64, k=4):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, width, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[0, :3] = IGNORE_INDEX
    labels[1, -1] = IGNORE_INDEX
    teacher_logits = torch.randn(batch, length, vocab, generator=generator)
    top = torch.log_softmax(teacher_logits, -1).topk(k)
    return hidden, weight, labels, teacher_logits, top


@pytest.mark.parametrize("signal", ["dense", "topk"])
@pytest.mark.parametrize("chunk", [3, 1000])
def test_chunked_head_equals_the_full_logits(signal, chunk):
    """Loss parts and gradients (hidden states, head weight) equal distillation_loss on
    hidden @ W^T, whether the kept positions fit one chunk or span several."""
    from distill.lm.losses import distillation_loss

    hidden, weight, labels, teacher_logits, top = _head_case()
    teacher = {"logits": teacher_logits} if signal == "dense" else \
        {"logits": None, "topk_ids": top.indices, "topk_logprobs": top.values}
    objective = {"ce_weight": 0.3, "kd_weight": 0.7, "temperature": 2.0,
                 "kd_loss": "generalized_jsd", "options": {"kd_beta": 0.3, "kd_alpha": 0.1}}
    full = distillation_loss(hidden @ weight.T, labels, teacher, **objective)
    expected = torch.autograd.grad(full["loss"], (hidden, weight))
    chunked = chunked_head.distillation_loss_from_hidden(hidden, weight, labels, teacher,
                                                     chunk_positions=chunk, **objective)
    assert set(chunked) == set(full) == {"loss", "ce", "kd"}
    for name in full:
        assert float(chunked[name].detach()) == pytest.approx(float(full[name].detach()), rel=1e-5)
    got = torch.autograd.grad(chunked["loss"] * 2.0, (hidden, weight))  # scaled upstream
    for g, e in zip(got, expected):
        assert torch.allclose(g, 2.0 * e, rtol=1e-4, atol=1e-6)


def test_chunked_head_under_bf16_autocast_matches_the_full_logits_within_bf16():
    from distill.lm.losses import distillation_loss

    hidden, weight, labels, _, top = _head_case(vocab=256, width=32)
    teacher = {"topk_ids": top.indices, "topk_logprobs": top.values}
    objective = {"ce_weight": 0.5, "kd_weight": 1.0, "temperature": 1.0}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = distillation_loss(hidden @ weight.T, labels, teacher, **objective)
        chunked = chunked_head.distillation_loss_from_hidden(hidden, weight, labels, teacher,
                                                             chunk_positions=4, **objective)
    expected = torch.autograd.grad(full["loss"], (hidden, weight))
    got = torch.autograd.grad(chunked["loss"], (hidden, weight))
    assert float(chunked["loss"].detach()) == pytest.approx(float(full["loss"].detach()),
                                                            rel=2e-2)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype == torch.float32
        assert torch.allclose(g, e, rtol=5e-2, atol=5e-3)


def test_chunked_head_with_nothing_kept_is_zero_with_a_graph():
    hidden, weight, labels, _, top = _head_case()
    labels[:] = IGNORE_INDEX
    parts = chunked_head.distillation_loss_from_hidden(
        hidden, weight, labels, {"topk_ids": top.indices, "topk_logprobs": top.values},
        ce_weight=1.0, kd_weight=1.0, temperature=1.0)
    assert float(parts["loss"].detach()) == 0.0 and parts["loss"].requires_grad


def test_the_plain_head_is_recognised_and_its_input_is_the_final_hidden_state(tiny_model):
    assert batch_loss.plain_head_weight(tiny_model) is tiny_model.lm_head.weight
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    output = tiny_model(input_ids=ids, output_hidden_states=True)
    assert torch.allclose(output.hidden_states[-1] @ tiny_model.lm_head.weight.T,
                          output.logits, atol=1e-5)
    soft_capped = copy.deepcopy(tiny_model)
    soft_capped.config.final_logit_softcapping = 30.0
    assert batch_loss.plain_head_weight(soft_capped) is None
