"""distill.core.precision: the probe, the auto rule, and one verdict per run."""

import pytest
import torch

from distill.core import precision, runs


def test_probe_times_both_formats_quickly():
    figures = precision.probe(shapes=((16, 64, 64),), budget_s=0.02)
    assert figures["fp32_gflops"] > 0 and figures["bf16_gflops"] > 0
    assert figures["bf16_speedup"] == pytest.approx(
        figures["bf16_gflops"] / figures["fp32_gflops"], rel=0.01)



def test_probe_stops_timing_an_emulated_bf16_before_it_costs_seconds(monkeypatch):
    """Emulated bf16 runs up to 90x slower: the LM head's product alone would take
    seconds. At 50x slower, the probe stops after the shapes that fit its budget."""
    timed = []

    def seconds(dtype, shape, budget_s):
        timed.append((dtype, shape))
        per_flop = 1e-11 * (50 if dtype == torch.bfloat16 else 1)
        return 2.0 * shape[0] * shape[1] * shape[2] * per_flop

    monkeypatch.setattr(precision, "_seconds_per_product", seconds)
    figures = precision.probe()
    bf16_shapes = [shape for dtype, shape in timed if dtype == torch.bfloat16]
    assert bf16_shapes and (32, 576, 49152) not in bf16_shapes  # the LM head: not in bf16
    assert figures["shapes_timed"] == len(bf16_shapes) < len(precision.SHAPES)
    assert figures["bf16_speedup"] == pytest.approx(1 / 50)

@pytest.mark.parametrize("speedup,expected", [(4.0, "bf16"), (1.6, "bf16"), (1.4, "fp32"),
                                              (0.05, "fp32")])
def test_auto_picks_bf16_only_where_it_is_clearly_faster(monkeypatch, speedup, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "probe", lambda: {"fp32_gflops": 10.0,
                                                     "bf16_gflops": 10.0 * speedup,
                                                     "bf16_speedup": speedup})
    choice, why = precision.resolve("auto")
    assert choice == expected and why["bf16_speedup"] == speedup
    assert f"{speedup:.2f}x" in precision.describe(choice, why)


def test_an_explicit_precision_wins_without_probing(monkeypatch):
    monkeypatch.setattr(precision, "probe", lambda: pytest.fail("probed"))
    assert precision.resolve("fp32") == ("fp32", {"requested": "fp32"})
    assert precision.resolve("bf16")[0] == "bf16"
    with pytest.raises(ValueError, match="run.precision"):
        precision.resolve("float64")


def test_a_run_probes_once_and_records_the_verdict(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "probe", lambda: calls.append(1) or {
        "fp32_gflops": 10.0, "bf16_gflops": 30.0, "bf16_speedup": 3.0})
    first = precision.for_run(tmp_path, "auto")
    again = precision.for_run(tmp_path, "auto")  # a later stage, or a resumed run
    assert first == again and first[0] == "bf16" and len(calls) == 1
    recorded = runs.read_json(tmp_path / runs.MANIFEST)["precision"]
    assert recorded["choice"] == "bf16" and recorded["bf16_speedup"] == 3.0
    # asking for something else replaces the verdict, with no stale probe figures
    assert precision.for_run(tmp_path, "fp32")[0] == "fp32"
    assert runs.read_json(tmp_path / runs.MANIFEST)["precision"] == {
        "choice": "fp32", "requested": "fp32"}


def test_stage_settings_override_the_run_choice():
    assert precision.weights_dtype("bf16") == "bfloat16"
    assert precision.weights_dtype("bf16", "fp32") == "float32"
    assert precision.autocast_mode("fp32") == "fp32"
    assert precision.autocast_mode("bf16") == "bf16"
    assert precision.autocast_mode("bf16", "fp32") == "fp32"
    # one spelling everywhere; accelerate's own name for no autocast stays inside
    assert precision.accelerate_mixed_precision("fp32") == "no"
    assert precision.accelerate_mixed_precision(None) == "no"
    assert precision.accelerate_mixed_precision("bf16") == "bf16"
