"""distill.evaluation.speed: fixed-length decoding, the speed table's ratios, the draft
model's figures, and assisted decoding that leaves the teacher's output unchanged."""

import math

import pytest
import torch

from distill.evaluation.metrics import teacher_forced_fidelity
from distill.lm import generation, speed
from distill.lm.models import prune_layers
from distill.lm.samples import Example

PROMPTS = [[1, 5, 9, 3], [7, 2], [4, 4, 8, 6, 10, 12]]


def test_fixed_length_decodes_past_every_stop_token(tiny_model, mini_tokenizer):
    """Even when the first greedy token is the stop token, every row decodes all tokens."""
    first = generation.generate(tiny_model, mini_tokenizer(eos_token_id=63), PROMPTS[:1], 1)
    stopper = mini_tokenizer(eos_token_id=first[0]["completion_ids"][0])
    stopped = generation.generate(tiny_model, stopper, PROMPTS, 6)
    assert stopped[0]["finish_reason"] == "stop" and len(stopped[0]["completion_ids"]) == 1
    fixed = generation.generate(tiny_model, stopper, PROMPTS, 6, fixed_length=True)
    assert all(len(r["completion_ids"]) == 6 for r in fixed)
    assert fixed[0]["completion_ids"][0] == stopped[0]["completion_ids"][0]


def test_speed_table_gives_the_reference_a_speedup_of_one(tiny_model, mini_tokenizer):
    half = prune_layers(tiny_model, [0, 2])
    models = {"teacher": tiny_model, "student": half}
    table = speed.speed_table(models, {m: mini_tokenizer(eos_token_id=63) for m in models},
                              {m: PROMPTS for m in models}, {m: PROMPTS for m in models},
                              batch_sizes=(1, 2), new_tokens=3, repeats=1)
    assert set(table["student"]) == {
        "decode_tokens_per_second_batch1", "decode_tokens_per_second_batch2",
        "scoring_tokens_per_second", "decode_speedup_batch1", "decode_speedup_batch2",
        "scoring_speedup"}
    assert all(table["teacher"][k] == 1.0 for k in table["teacher"] if "speedup" in k)
    student = table["student"]
    assert student["decode_speedup_batch2"] == pytest.approx(
        student["decode_tokens_per_second_batch2"]
        / table["teacher"]["decode_tokens_per_second_batch2"])
    assert all(v > 0 and math.isfinite(v) for v in student.values())


def test_expected_accepted_tokens_bounds():
    assert speed.expected_accepted_tokens(0.0, 4) == 1.0  # the teacher's own token
    assert speed.expected_accepted_tokens(1.0, 4) == 5.0
    assert speed.expected_accepted_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_acceptance_is_one_for_the_teacher_and_below_for_another_model(tiny_model_factory):
    teacher, other = tiny_model_factory(seed=0), tiny_model_factory(seed=3)
    examples = [Example(p + [2, 3, 4], [-100] * (len(p) - 1) + [2, 3, 4], [[]] * 3, [[]] * 3)
                for p in PROMPTS]
    figures = teacher_forced_fidelity(teacher, {"teacher": teacher, "other": other},
                                      examples, pad_id=0, batch_size=2)
    assert figures["teacher"]["acceptance"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < figures["other"]["acceptance"] < 0.99


def test_assisted_decoding_keeps_the_teachers_greedy_output(tiny_model, mini_tokenizer):
    """Speculative decoding with a pruned draft must return the teacher's own answer."""
    teacher = tiny_model
    draft = prune_layers(teacher, [0, 1, 3])
    result = speed.assisted_decoding(teacher, draft, PROMPTS, new_tokens=8)
    assert result["assisted_identical"] == 1.0
    assert result["assisted_speedup"] > 0
    alone = [teacher.generate(input_ids=torch.tensor([p]), do_sample=False, max_new_tokens=8,
                              pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]
    never_stops = mini_tokenizer(eos_token_id=63)
    reference = [generation.generate(teacher, never_stops, [p], 8, fixed_length=True)[0]
                 ["completion_ids"] for p in PROMPTS]
    assert alone == reference


def test_speedup_meter_times_a_model_against_the_teacher(tiny_model, mini_tokenizer):
    """The meter a speed budget is cut by: a ratio of measured rates, the smaller of the
    batch sizes'; a copy of the teacher itself measures near 1 (timing noise aside)."""
    import copy

    meter = speed.speedup_meter(tiny_model, mini_tokenizer(eos_token_id=63), PROMPTS,
                                batch_sizes=(1, 2), new_tokens=4, repeats=1)
    ratio = meter(copy.deepcopy(tiny_model))
    assert 0.2 < ratio < 5
