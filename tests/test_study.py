"""The provenance study's pieces: arms, their data (distill.studies.provenance_study),
and the figures' statistics (distill.studies.detection)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distill.lm.samples import Example
from distill.studies import detection
from distill.studies import provenance_study as study


def _pool(tag: int, n: int) -> list[Example]:
    return [Example([tag, i], [-100, i], [[]], [[]]) for i in range(n)]


def test_dilution_names_the_share_of_teacher_data():
    assert study.dilution("teacher") == 1.0 and study.dilution("reference") == 0.0
    assert study.dilution("other") is None
    assert study.dilution("dilute_5") == pytest.approx(0.05)
    assert study.dilution("dilute_2.5") == pytest.approx(0.025)
    with pytest.raises(ValueError, match="unknown arm 'diluted'"):
        study.dilution("diluted")


def test_arm_examples_mix_the_pools_as_named():
    pools = {"teacher": _pool(1, 50), "other": _pool(2, 50), "reference": _pool(3, 50)}
    rng = np.random.default_rng(0)
    source = lambda examples: [e.input_ids[0] for e in examples]  # noqa: E731
    assert set(source(study.arm_examples("teacher", pools, 40, rng))) == {1}
    assert set(source(study.arm_examples("other", pools, 40, rng))) == {2}
    mixed = source(study.arm_examples("dilute_25", pools, 40, rng))
    assert mixed.count(1) == 10 and mixed.count(3) == 30
    few = study.arm_examples("reference", {**pools, "reference": _pool(3, 5)}, 12, rng)
    assert len(few) == 12  # a small pool is drawn with replacement


def test_roc_auc_and_tpr_at_fpr():
    positives, negatives = [0.001, 0.01, 0.2], [0.05, 0.3, 0.6, 0.9]
    fpr, tpr, auc = detection.roc(positives, negatives)
    assert auc == pytest.approx((4 + 4 + 3) / 12)  # pairs where the positive's p is lower
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # 5% of 4 negatives allows none: the threshold sits below the lowest negative (0.05)
    assert detection.tpr_at_fpr(positives, negatives) == pytest.approx(2 / 3)
    assert detection.roc([0.5], [0.5])[2] == 0.5  # a tie counts half


def test_wilson_interval_covers_the_proportion():
    low, high = detection.wilson(1, 20)
    assert low < 0.05 < high and 0 <= low and high < 0.3
    assert detection.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_p_values_on_a_prefix_of_the_prompts():
    teachers = {"teacher": [f"t{i}" for i in range(20)], "other": [f"o{i}" for i in range(20)]}
    evidence = {"answers": teachers["teacher"][:8] + ["own words"] * 12,
                "d": [0.5] * 8 + [-0.1] * 12}
    first = detection.p_values(evidence, 8, teachers, None, None, permutations=99)
    assert first["agreement"] == pytest.approx(1 / 256)  # 8 prompts only T's: 2^-8
    assert first["agree_teacher"] == 1.0 and first["agree_other"] == 0.0
    assert first["likelihood"] == pytest.approx(1 / 256)  # every d > 0, exact over 2^8
    assert np.isnan(first["watermark"]) and np.isnan(first["likelihood_healed"])  # not run
    shifted = detection.p_values(evidence, 8, teachers, None, None, permutations=99,
                             shift=np.full(20, -1.0))
    assert shifted["likelihood_healed"] == 1.0  # every d - 1 < 0
    everything = detection.p_values(evidence, 20, teachers, None, None, permutations=99)
    # prompts where S agrees with neither teacher tell them apart no better
    assert everything["agreement"] == first["agreement"] and everything["agree_teacher"] == 0.4
    near = {**evidence, "answers": ["t0 x"] + evidence["answers"][1:]}  # one word added
    assert detection.p_values(near, 8, teachers, None, None, max_edit=0.5)["agree_teacher"] == 1.0
    assert detection.p_values(near, 8, teachers, None, None)["agree_teacher"] == 7 / 8


def test_summary_reports_each_test_that_ran():
    table = pd.DataFrame({
        "arm": ["teacher"] * 3 + ["other"] * 2 + ["reference"] * 2,
        "agreement": [0.001, 0.002, 0.5, 0.6, 0.04, 0.7, 0.8],
        "likelihood": [0.01, 0.02, 0.03, 0.5, 0.5, 0.5, 0.5],
        "watermark": [np.nan] * 7})
    summary = detection.summary(table).set_index("test")
    summary.index = summary.index.str.replace("likelihood (R: init)", "likelihood", regex=False)
    assert list(summary.index) == ["output agreement", "likelihood"]
    assert summary.loc["output agreement", "fpr_at_alpha"] == pytest.approx(0.25)
    assert summary.loc["likelihood", "auc"] == 1.0
    assert summary.loc["likelihood", "power_at_alpha"] == 1.0


def test_check_arms_needs_positives_and_nulls():
    study.check_arms({"teacher": 2, "reference": 3, "dilute_5": 1})
    with pytest.raises(ValueError, match="needs teacher students"):
        study.check_arms({"reference": 3})
    with pytest.raises(ValueError, match="needs teacher students"):
        study.check_arms({"teacher": 3, "dilute_25": 2})
    with pytest.raises(ValueError, match="count of students"):
        study.check_arms({"teacher": -1, "other": 2})


def test_a_study_goes_on_only_with_what_its_students_depend_on(tmp_path):
    parameters = {name: 1 for name in study.STUDENT_PARAMETERS}
    study.check_resume(tmp_path, parameters)
    study.check_resume(tmp_path, parameters)  # the same: fine
    with pytest.raises(ValueError, match="other values of lr, seed"):
        study.check_resume(tmp_path, {**parameters, "seed": 2, "lr": 0.5})


def test_healed_shift_moves_d_to_the_healed_reference():
    """d against R' equals (S_T - S_C) - (R'_T - R'_C), computed from d against init."""
    rng = np.random.default_rng(0)
    s_t, s_c, i_t, i_c, h_t, h_c = rng.normal(size=(6, 10))
    d_init = (s_t - i_t) - (s_c - i_c)
    shift = detection.healed_shift({"init_teacher": i_t, "init_other": i_c},
                               {"healed_teacher": h_t, "healed_other": h_c})
    assert np.allclose(d_init + shift, (s_t - s_c) - (h_t - h_c))
