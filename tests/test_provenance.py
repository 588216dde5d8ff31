"""The provenance statistics on cases with a known answer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from distill.lm import data, generation
from distill.lm.watermark import Watermark, detect
from distill.studies import provenance


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04)
    assert provenance.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert provenance.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_mcnemar_counts_only_the_prompts_that_tell_the_models_apart():
    assert provenance.mcnemar_greater(5, 0) == pytest.approx(1 / 32)
    assert provenance.mcnemar_greater(3, 1) == pytest.approx(5 / 16)  # P(X >= 3), X ~ B(4, .5)
    assert provenance.mcnemar_greater(0, 0) == 1.0  # no discordant prompt: no evidence


def test_mcnemar_p_values_are_honest_on_paired_answers():
    """S copies neither model: it agrees with A or with B (never both) on a prompt with
    the same chance. Over 400 such suspects p < 0.05 at most about 5% of the time."""
    rng = np.random.default_rng(0)
    p = []
    for _ in range(400):
        picks = rng.choice(3, size=60, p=[0.3, 0.3, 0.4])  # agrees with A, with B, neither
        p.append(provenance.mcnemar_greater(int((picks == 0).sum()), int((picks == 1).sum())))
    assert np.mean(np.array(p) <= 0.05) <= 0.07


def test_token_edit_distance_counts_word_edits():
    assert provenance.token_edit_distance("the cat sat", "the cat sat") == 0
    assert provenance.token_edit_distance("the cat sat", "the dog sat") == 1
    assert provenance.token_edit_distance("the cat sat", "cat sat down") == 2
    assert provenance.token_edit_distance("", "a b") == 2
    assert provenance.answers_agree("a b c d", "a b x d", max_edit=0.25)
    assert not provenance.answers_agree("a b c d", "a b x d")


def test_output_agreement_finds_the_model_s_copies():
    """S answers as A on most prompts: A stands out against B and C, with a p-value
    far below 0.05; against itself, a model with no better agreement does not."""
    rng = random.Random(0)
    n = 60
    a = [f"answer a{i}" for i in range(n)]
    b = [f"answer b{i}" for i in range(n)]
    c = [f"answer c{i}" for i in range(n)]
    suspect = [a[i] if rng.random() < 0.6 else f"own {i}" for i in range(n)]
    found = provenance.output_agreement(suspect, {"A": a, "B": b, "C": c})
    assert found["best"] == "A" and found["p_value"] < 1e-6
    assert set(found["comparisons"]) == {"B", "C"}
    tie = provenance.output_agreement(a[:30] + b[30:], {"A": a, "B": b})
    assert tie["p_value"] > 0.5


def test_output_agreement_says_what_it_needs():
    with pytest.raises(ValueError, match="two or more models"):
        provenance.output_agreement(["x"] * 10, {"A": ["x"] * 10})
    need = provenance.min_prompts_agreement(0.05, 2)
    assert 2.0 ** -need <= 0.025 < 2.0 ** -(need - 1)
    with pytest.raises(provenance.TooFewPrompts, match=f"at least {need} prompts"):
        few = need - 1
        provenance.output_agreement(["x"] * few, {"A": ["x"] * few, "B": ["y"] * few,
                                                  "C": ["z"] * few})


def test_sign_flip_exact_and_sampled():
    assert provenance.sign_flip_test(np.ones(10))["p_value"] == pytest.approx(1 / 1024)
    assert provenance.sign_flip_test(-np.ones(10))["p_value"] == pytest.approx(1.0)
    sampled = provenance.sign_flip_test(np.ones(40), permutations=999)
    assert sampled["p_value"] == pytest.approx(1 / 1000)  # (1 + 0) / (1 + 999)
    assert provenance.sign_flip_test([1.0, np.nan, 2.0])["prompts"] == 2
    assert np.isnan(provenance.sign_flip_test([np.nan])["p_value"])  # no data, no p-value


def test_sign_flip_p_values_are_uniform_under_the_null():
    """d symmetric about 0 (independent models): over 300 seeds p < 0.05 about 5% of the
    time, p < 0.5 about half the time (checked loosely)."""
    p = [provenance.sign_flip_test(np.random.default_rng(s).normal(size=30), 999, seed=s)
         ["p_value"] for s in range(300)]
    assert np.mean(np.array(p) < 0.05) <= 0.09
    assert 0.4 < np.mean(np.array(p) < 0.5) < 0.6


def test_likelihood_lift_removes_the_reference_and_needs_prompts():
    """A reference that explains all of S's preference leaves no lift."""
    rng = np.random.default_rng(0)
    r_t, r_c = rng.normal(-2, 0.3, 20), rng.normal(-3, 0.3, 20)
    inherited = provenance.likelihood_lift(r_t + 0.01 * rng.normal(size=20), r_c, r_t, r_c)
    assert inherited["p_value"] > 0.05
    learnt = provenance.likelihood_lift(r_t + 0.5, r_c, r_t, r_c)
    assert learnt["p_value"] < 1e-3 and learnt["mean_d"] == pytest.approx(0.5)
    with pytest.raises(provenance.TooFewPrompts, match="at least 5 prompts"):
        provenance.likelihood_lift([1.0] * 4, [0.0] * 4)
    with pytest.raises(ValueError, match="at least 19"):
        provenance.likelihood_lift([1.0] * 40, [0.0] * 40, permutations=10)


def test_answer_logliks_equal_a_direct_forward(tiny_model_teacher_vocab, teacher_tokenizer):
    model, tokenizer = tiny_model_teacher_vocab, teacher_tokenizer
    messages = [[{"role": "user", "content": "Name a colour."}],
                [{"role": "user", "content": "What is two plus two, in words?"}]]
    answers = ["Blue, like the sky.", ""]
    values = provenance.answer_logliks(model, tokenizer, messages, answers)
    prompt = data.encode_chat(tokenizer, messages[0])
    reply = tokenizer(answers[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0]
    logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
    direct = logprobs[torch.arange(len(reply)), torch.tensor(reply)].mean().item()
    assert values[0] == pytest.approx(direct, abs=1e-4)
    assert np.isnan(values[1])  # an empty answer has no per-token likelihood


def _sample(model, prompts, mark=None, seed=0):
    tokenizer = _Tokenizer()
    torch.manual_seed(seed)
    out = generation.generate(model, tokenizer, prompts, max_new_tokens=24, do_sample=True,
                              watermark=mark)
    return [p + o["completion_ids"] for p, o in zip(prompts, out)]


class _Tokenizer:  # left padding and an end token the tiny models never reach
    eos_token_id, pad_token_id = 64, 0

    def pad(self, features, padding=True, return_tensors="pt"):
        rows = features["input_ids"]
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([[0] * (width - len(r)) + r for r in rows]),
                "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r)
                                                for r in rows])}


def _train(student, texts, steps=150):
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    student.train()
    for step in range(steps):
        batch = torch.tensor([texts[(step * 8 + i) % len(texts)] for i in range(8)])
        loss = student(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


def test_a_student_of_a_watermarked_teacher_is_radioactive(tiny_model_factory):
    """Radioactivity end to end on tiny models: a student trained on the watermarked
    teacher's text writes green pairs far above gamma; the same student trained on the
    teacher's unmarked text does not."""
    mark = Watermark("teacher key", gamma=0.25, delta=3.0)
    teacher = tiny_model_factory(seed=0)
    prompts = [[i % 60, (7 * i) % 60] for i in range(96)]
    fresh = [[(5 * i + 1) % 60, (3 * i + 2) % 60] for i in range(48)]
    found = {}
    for name, used in (("marked", mark), ("plain", None)):
        student = _train(tiny_model_factory(seed=3), _sample(teacher, prompts, used))
        written = _sample(student, fresh, seed=1)
        found[name] = detect([text[1:] for text in written], mark)  # from the last prompt token
    assert found["marked"]["p_value"] < 1e-4 and found["marked"]["green_share"] > 0.35
    assert found["plain"]["p_value"] > 1e-3


def test_a_study_without_its_watermark_key_stops_before_any_work(tmp_path, monkeypatch):
    from distill.pipeline import run_study

    monkeypatch.delenv("DISTILL_WATERMARK_KEY", raising=False)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(f"output_dir: {tmp_path / 'out'}\n")
    with pytest.raises(ValueError, match="DISTILL_WATERMARK_KEY is not set"):
        run_study(study_file, {})
    with pytest.raises(ValueError, match="no_such_setting: unknown key"):
        run_study(study_file, {"no_such_setting": 1})
    assert not (tmp_path / "out").exists()


def test_saved_answers_ask_the_model_once(tmp_path):
    calls = []

    def produce():
        calls.append(1)
        return ["a", "b"]

    path = tmp_path / "answers" / "m.json"
    assert provenance.saved_answers(path, ["p1", "p2"], 8, produce) == ["a", "b"]
    assert provenance.saved_answers(path, ["p1", "p2"], 8, produce) == ["a", "b"]
    assert len(calls) == 1
    provenance.saved_answers(path, ["p1", "p3"], 8, produce)  # other prompts: asked again
    assert len(calls) == 2
