"""Uncertainty of the figures (distill.evaluation.intervals, .seeds; `distill run --seeds`):
per-item tables, bootstrap intervals, paired tests, the aggregate across seeds."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from distill import experiments, pipeline
from distill.core import runs
from distill.core.params_fields import ParamsError
from distill.evaluation import compare, intervals, seeds
from distill.lm import data


def _items(model: str, figure: str, values, weights=None, names=None) -> pd.DataFrame:
    values = np.asarray(values, dtype=float)
    names = names if names is not None else [f"p{i}" for i in range(len(values))]
    return pd.DataFrame({"model": model, "figure": figure, "item": names,
                         "value": values, "weight": 1.0 if weights is None else weights})


def test_interval_is_seeded_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    few, many = rng.normal(1, 1, 30), rng.normal(1, 1, 300)
    low, high = intervals.interval(few)
    assert low < few.mean() < high
    assert intervals.interval(few) == (low, high)  # seeded: the same interval again
    wide = high - low
    low, high = intervals.interval(many)
    assert (high - low) < 0.6 * wide  # ~1/sqrt(10) of the width for 10x the items


def test_interval_is_of_the_weighted_mean_the_figure_reports():
    # KL is per token: an item of 90 tokens counts 9 times one of 10
    values, weights = np.array([0.0, 1.0]), np.array([90.0, 10.0])
    items = _items("student", "heldout_kl", values, weights)
    table = pd.DataFrame({"heldout_kl": {"student": 0.1}})
    intervals.check_items_match(items, table)
    with pytest.raises(AssertionError, match="heldout_kl"):
        intervals.check_items_match(items, pd.DataFrame({"heldout_kl": {"student": 0.5}}))
    assert intervals.interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # nothing varies


def test_derived_figures_get_the_function_of_their_base_interval():
    items = _items("student", "prose_nll", np.linspace(2, 4, 20), np.full(20, 50.0))
    bounds = intervals.figure_intervals(items)["student"]
    assert bounds["perplexity"] == pytest.approx([math.exp(b) for b in bounds["prose_nll"]])


def test_paired_comparison_finds_a_small_consistent_difference():
    rng = np.random.default_rng(1)
    hard = rng.normal(1, 0.5, 64)  # items differ far more than the models do
    items = pd.concat([_items("student", "heldout_kl", hard),
                       _items("student_init", "heldout_kl", hard + 0.05 + rng.normal(0, 0.01, 64))])
    row = intervals.compare(items, "student", "student_init").loc["heldout_kl"]
    assert row["paired"] and row["items"] == 64 and "sign-flip" in row["test"]
    assert row["high"] < 0 and row["p_value"] < 0.01 and row["real"]
    # unpaired, the same difference drowns in the items' spread
    assert intervals.interval(hard)[1] - intervals.interval(hard)[0] > 0.2


def test_a_handful_of_items_cannot_make_a_difference_real():
    # two prose windows, both lower: a bootstrap would call it certain; 2 items cannot be
    items = pd.concat([_items("a", "prose_kl", [1.0, 2.0]), _items("b", "prose_kl", [1.5, 2.6])])
    row = intervals.compare(items, "a", "b").loc["prose_kl"]
    assert row["p_value"] == 0.5 and not row["real"]  # 2 of the 4 sign flips are as far
    assert intervals.sign_flip_p(np.array([1.0, 1.0, 1.0])) == pytest.approx(2 / 8)


def test_identical_models_differ_by_nothing():
    items = pd.concat([_items("a", "top1_agreement", [0.5, 0.7, 0.9]),
                       _items("b", "top1_agreement", [0.5, 0.7, 0.9])])
    row = intervals.compare(items, "a", "b").loc["top1_agreement"]
    assert row["difference"] == 0 and row["p_value"] == 1.0 and not row["real"]


def test_pass_fail_figures_use_mcnemar_on_the_discordant_items():
    a = [1] * 10 + [0] * 5 + [1] * 20  # a alone right on 10, both right on 20
    b = [0] * 10 + [0] * 5 + [1] * 20
    items = pd.concat([_items("a", "reference_in_answer", a),
                       _items("b", "reference_in_answer", b)])
    row = intervals.compare(items, "a", "b").loc["reference_in_answer"]
    assert row["test"].startswith("McNemar") and "10 vs 0" in row["test"]
    assert row["p_value"] == pytest.approx(stats.binomtest(10, 10, 0.5).pvalue)  # 2 / 2**10
    assert row["difference"] == pytest.approx(10 / 35)


def test_runs_without_shared_items_are_compared_unpaired_and_say_so():
    a = _items("student", "heldout_kl", [1.0, 1.2, 1.1, 0.9], names=["a1", "a2", "a3", "a4"])
    b = _items("student", "heldout_kl", [1.5, 1.6, 1.4, 1.7], names=["b1", "b2", "b3", "b4"])
    table = intervals.compare(a, "student", "student", other=b)
    assert not table.loc["heldout_kl", "paired"]
    assert "not paired" in intervals.in_words(table, "A", "B")
    some = intervals.compare(a, "student", "student", other=pd.concat([b, a.iloc[:2]]))
    assert some.loc["heldout_kl", "items"] == 2  # paired on the two shared, and says so
    assert "paired on the 2 items both have, of 4 and 6" in intervals.in_words(some, "A", "B")


def test_t_interval_across_seeds():
    found = intervals.t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)  # sd 1
    assert found["mean"] == 2 and found["sd"] == pytest.approx(1)
    assert (found["low"], found["high"]) == pytest.approx((2 - half, 2 + half))
    assert math.isnan(intervals.t_interval([1.0])["low"])  # one seed: no interval


def test_items_table_round_trips_with_its_schema(tmp_path):
    items = _items("student", "heldout_kl", [1.0, 2.0])
    intervals.write_items(tmp_path, items)
    pd.testing.assert_frame_equal(intervals.read_items(tmp_path), items)
    with pytest.raises(FileNotFoundError, match="03_evaluation"):
        intervals.read_items(tmp_path / "elsewhere")


def test_teacher_forced_items_are_per_window_and_average_to_the_figures(tiny_model,
                                                                        tiny_model_factory):
    from distill.evaluation import metrics
    from distill.lm import samples
    from test_transfer_set import CharTokenizer

    text = "a small model reads a plain text, one character at a time. " * 2
    examples = samples.prose_examples(CharTokenizer(), text, max_tokens=100, block_size=32)
    other = tiny_model_factory(seed=5)
    items = metrics.teacher_forced_items(tiny_model, {"teacher": tiny_model, "other": other},
                                         examples, 0, 2)
    assert sorted(items.loc[items["model"] == "other", "item"]) == \
        sorted(f"prose-{i}" for i in range(len(examples)))
    assert (items.loc[items["model"] == "teacher", "kl"].abs() < 1e-5).all()
    summary = metrics.summarize_items(items, "tokens")
    assert summary == metrics.teacher_forced_fidelity(tiny_model, {"teacher": tiny_model,
                                                                   "other": other}, examples, 0, 2)
    table = pd.DataFrame({m: {"prose_kl": s["kl"], "prose_top1_agreement": s["top1_agreement"]}
                          for m, s in summary.items()}).T
    intervals.check_items_match(intervals.fidelity_items(items, "prose_"), table)


def test_graded_set_is_large_held_out_and_checked_against_training():
    graded = data.load_graded("builtin", None, trained=set())
    assert len(graded) >= 100 and all(p["reference"] for p in graded)
    trained = {p["messages"][-1]["content"] for p in data.load_prompts("builtin")}
    assert not any(p["messages"][-1]["content"] in trained for p in graded)
    assert len(data.load_graded("builtin", 5, set())) == 5
    with pytest.raises(data.PromptError, match="training prompts"):
        data.load_graded("builtin", None, {graded[3]["messages"][-1]["content"]})


# --- seeds ---------------------------------------------------------------------------

def test_parse_seeds():
    assert experiments.parse_seeds("0,1,2") == [0, 1, 2] == experiments.parse_seeds("0-2")
    for bad in ("a", "1,1", "-1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            experiments.parse_seeds(bad)


def _fake_stages(calls: list, fail: dict):
    """Stand-in for papermill's notebooks: each stage records itself in the manifest and
    stage 03 writes metrics from the seed (KL 1 + seed / 10); `fail` names (seed, stage)
    pairs that fail once, as a killed run would."""
    def execute(stage, notebook, run_dir, parameters, log_output):
        seed = parameters["seed"]
        calls.append((seed, stage))
        if fail.pop((seed, stage), None):
            runs.update_manifest(run_dir, stages={stage: {"status": "failed"}})
            raise pipeline.StageFailed(stage, run_dir / notebook, RuntimeError("killed"))
        if stage == "student_training":
            pd.DataFrame({"step": [1, 2], "loss": [2.0, 1.0 + seed / 10],
                          "val_kl": [None, 1.0 + seed / 10]}).to_csv(run_dir / runs.TRAIN_LOG)
        if stage == "evaluation":
            kl = 1 + seed / 10
            table = pd.DataFrame({"heldout_kl": {"teacher": 0.0, "student": kl}})
            runs.write_metrics(run_dir, table, 4, intervals.uncertainty({
                "teacher": {"heldout_kl": [0.0, 0.0]},
                "student": {"heldout_kl": [kl - .1, kl + .1]}}, {}))
        runs.update_manifest(run_dir, stages={stage: {"status": "done"}})
    return execute


def test_seeds_run_resume_alone_and_aggregate(tmp_path, monkeypatch):
    calls, fail = [], {(1, "student_training"): True}
    monkeypatch.setattr(pipeline, "_execute", _fake_stages(calls, fail))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"run": {"name": "s", "output_dir": str(tmp_path / "out"),
                                              "precision": "fp32"}}))
    with pytest.raises(pipeline.StageFailed):  # seed 1 killed in training
        experiments.run_seeds(params, [0, 1, 2], ["run.heldout_seed=0"])
    group = next((tmp_path / "out").glob("s-seeds-*"))
    assert json.loads((group / experiments.SEEDS_FILE).read_text())["seeds"] == [0, 1, 2]
    calls.clear()
    experiments.run_seeds(group)  # goes on: seed 0 kept, seed 1 from training, seed 2 anew
    assert calls == [(1, "student_training"), (1, "evaluation"), (2, "teacher_sampling"),
                     (2, "student_training"), (2, "evaluation")]
    saved = yaml.safe_load((group / "seed-2" / runs.PARAMS).read_text())["run"]
    assert saved["seed"] == 2 and saved["heldout_seed"] == 0
    table = pd.read_csv(group / seeds.AGGREGATE, index_col=["model", "figure"])
    row = table.loc[("student", "heldout_kl")]
    assert row["seeds"] == 3 and row["mean"] == pytest.approx(1.1)
    assert row["sd"] == pytest.approx(0.1) and row["low"] < 1.1 < row["high"]
    assert row["item_interval_width"] == pytest.approx(0.2)
    assert row["seed 2"] == pytest.approx(1.2)
    assert (group / runs.FIGURES / "seed_curves.png").exists()
    with pytest.raises(ParamsError, match="started with seeds"):
        experiments.run_seeds(group, [0, 1])


def test_compare_pairs_runs_on_the_items_they_share(tmp_path):
    rng = np.random.default_rng(2)
    hard = rng.normal(1, 0.4, 40)
    for name, shift in (("a", 0.0), ("b", 0.1)):
        folder = tmp_path / name
        folder.mkdir()
        intervals.write_items(folder, _items("student", "heldout_kl", hard + shift))
    differences = compare.paired_differences([tmp_path / "a", tmp_path / "b"])
    row = differences.loc[("b", "heldout_kl")]
    assert row["paired"] and row["difference"] == pytest.approx(0.1) and row["real"]
    assert "b against a" in compare.differences_in_words(differences)


def test_metrics_json_and_model_card_carry_the_intervals(tmp_path):
    from distill.evaluation.model_card import metrics_table

    table = pd.DataFrame({"student": {"heldout_kl": 1.1, "generation_tokens_per_second": 80.0}}).T
    written = runs.write_metrics(tmp_path, table, 8, intervals.uncertainty({"student": {
        "heldout_kl": [1.0, 1.2], "generation_tokens_per_second": [70.0, 90.0]}}, {}))
    assert written["intervals"] == {"student": {"heldout_kl": [1.0, 1.2]}}  # quality only
    assert written["interval_method"]["resamples"] == intervals.RESAMPLES
    assert "1.1 [1, 1.2]" in metrics_table(runs.read_metrics(tmp_path))


def test_two_seeds_folders_compare_seed_by_seed(tmp_path, monkeypatch):
    """The bf16 question's shape: one setting changed, the seeds paired, the split fixed."""
    monkeypatch.setattr(pipeline, "_execute", _fake_stages([], {}))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"run": {"name": "s", "output_dir": str(tmp_path / "out"),
                                              "precision": "fp32"}}))
    a = experiments.run_seeds(params, [0, 1, 2], ["run.heldout_seed=0"])
    b = experiments.run_seeds(params, [0, 1, 2], ["run.heldout_seed=0", "run.name=t"])
    for seed, shift in zip(range(3), (0.011, 0.009, 0.010)):  # b's KL 1% above a's, per seed
        metrics = runs.read_metrics(b / f"seed-{seed}")
        metrics["models"]["student"]["heldout_kl"] *= 1 + shift
        runs.write_json(b / f"seed-{seed}" / runs.METRICS, metrics)
    row = seeds.compare_groups(a, b).loc["heldout_kl"]
    assert row["seeds"] == 3 and row["same_split"]
    assert row["relative"] == pytest.approx(0.01)
    assert 0 < row["relative_low"] < row["relative_high"] < 0.02  # within 2%, and above 0
