"""The figures of the drift study (distill.studies.drift) and the collapse study
(distill.studies.collapse), on cases small enough to check by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_model
from distill.lm.samples import IGNORE_INDEX, Example
from distill.studies import collapse, drift


def test_negative_flips_count_right_answers_turned_wrong():
    found = drift.negative_flips([True, True, False, True], [True, False, True, False])
    assert found == {"right_before": 3, "flipped": 2, "negative_flip_rate": pytest.approx(2 / 3)}
    assert math.isnan(drift.negative_flips([False], [True])["negative_flip_rate"])


def test_cost_to_target_counts_seconds_and_the_new_teachers_tokens():
    log = pd.DataFrame({"step": [1, 2, 3, 4], "seconds": [1.0, 1.0, 2.0, 2.0],
                        "tokens": [100, 100, 100, 100], "new_top1": [np.nan, 0.3, np.nan, 0.5],
                        "new_kl": [np.nan, 2.0, np.nan, 1.5],
                        "old_top1": [np.nan, 0.6, np.nan, 0.55]})
    curve = drift.cost_curve(log, new_share=0.5)
    assert curve["step"].tolist() == [2, 4]
    assert curve["train_seconds"].tolist() == [2.0, 6.0]
    assert curve["teacher_tokens"].tolist() == [100, 200]  # half the data was replayed
    reached = drift.to_target(curve, 0.45)
    assert (reached["steps_to_target"], reached["seconds_to_target"]) == (4, 6.0)
    assert reached["final_old_top1"] == 0.55
    assert math.isnan(drift.to_target(curve, 0.9)["seconds_to_target"])


def _examples(count: int, tag: int) -> list[Example]:
    return [Example([tag, i, 1], [i, 1], [[]] * 2, [[]] * 2) for i in range(count)]


def test_training_data_of_each_condition():
    real, g0, g1 = _examples(40, 0), _examples(20, 1), _examples(20, 2)
    rng = np.random.default_rng(0)
    assert collapse.training_data("replace", real, [g0, g1], 0.1, rng) == g1
    mixed = collapse.training_data("replace_real", real, [g0, g1], 0.2, rng)
    assert len(mixed) == 25 and sum(e.input_ids[0] == 0 for e in mixed) == 5  # 20% real
    assert len(collapse.training_data("accumulate", real, [g0, g1], 0.1, rng)) == 80
    with pytest.raises(ValueError, match="must be one of"):
        collapse.training_data("refresh", real, [g0], 0.1, rng)


def test_rare_tokens_are_the_less_frequent_half():
    mask = collapse.rare_tokens([[1, 1, 1, 2, 2, 3], [4, 1]], vocab_size=8)
    assert mask.nonzero().squeeze(-1).tolist() == [3, 4]  # counts 4, 2, 1, 1: ties by id


def test_distinct_n():
    assert collapse.distinct(["a b a b"], 1) == 0.5
    assert collapse.distinct(["a b a b"], 2) == pytest.approx(2 / 3)
    assert collapse.distinct(["a"], 2) == 0.0


def test_text_metrics_of_a_uniform_model_are_known():
    """A model with all-zero output weights predicts uniformly: perplexity V, entropy
    log V, and the rare share of the vocabulary as the rare mass."""
    model = make_tiny_model(seed=0)
    torch.nn.init.zeros_(model.lm_head.weight)
    vocab = model.config.vocab_size
    rare = torch.zeros(vocab, dtype=torch.bool)
    rare[:16] = True
    examples = [Example([1, 2, 3, 4], [IGNORE_INDEX, 3, 4], [[]] * 2, [[]] * 2)]
    found = collapse.text_metrics(model, examples, rare, pad_id=0)
    assert found["perplexity"] == pytest.approx(vocab, rel=1e-4)
    assert found["entropy"] == pytest.approx(math.log(vocab), rel=1e-5)
    assert found["rare_mass"] == pytest.approx(16 / vocab, rel=1e-4)
    assert collapse.sample_perplexities(model, examples, 0) == pytest.approx([vocab], rel=1e-4)


def test_the_reading_names_every_condition_and_the_best():
    table = pd.DataFrame([{"condition": c, "generation": g, "seed": 0, "perplexity": 10 + g * i,
                           "entropy": 2.0, "rare_mass": 0.01, "distinct_3": 0.9}
                          for i, c in enumerate(collapse.CONDITIONS) for g in (0, 1)])
    text = collapse.reading(table)
    assert all(c in text for c in collapse.CONDITIONS)
    assert "lowest held-out perplexity is under replace," in text
