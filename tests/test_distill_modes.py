"""On-policy (GKD) batches, hidden-state distillation, and sweeps/comparisons."""

from pathlib import Path

import pytest
import torch

from distill import training
from distill.core import runs
from distill.core.params import ParamsError
from distill.evaluation import compare
from distill.lm import models, samples
from distill.lm.losses import IGNORE_INDEX, HiddenStateLoss
from test_samples import _samples
from test_training import _config

ROOT = Path(__file__).resolve().parents[1]


def test_on_policy_mask_covers_exactly_the_generated_tokens(tiny_model, mini_tokenizer):
    examples = samples.build_examples(_samples(n=4))
    tokenizer = mini_tokenizer(eos_token_id=63)
    fresh = training.on_policy_examples(tiny_model, tokenizer, examples, max_new_tokens=5,
                                        temperature=1.0)
    batch = samples.collate(fresh, pad_id=0)
    for row, (old, new) in enumerate(zip(examples, fresh)):
        prompt = old.input_ids[:old.prompt_length]
        generated = new.input_ids[len(prompt):]
        assert new.input_ids[:len(prompt)] == prompt
        assert 1 <= len(generated) <= 5
        labels = batch["labels"][row]
        kept = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        # position t predicts token t + 1: exactly the generated tokens are targets
        assert kept == list(range(len(prompt) - 1, len(prompt) - 1 + len(generated)))
        assert labels[kept].tolist() == generated
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        len(n.input_ids) - o.prompt_length for o, n in zip(examples, fresh))


@pytest.mark.parametrize("lmbda,expected", [(0.0, 0), (1.0, 1)])
def test_lmbda_decides_how_many_batches_are_on_policy(tmp_path, tiny_model_factory,
                                                      mini_tokenizer, lmbda, expected):
    teacher, student = tiny_model_factory(seed=3), tiny_model_factory(seed=4)
    log = training.train(student, samples.build_examples(_samples(n=8)), tmp_path,
                         _config(max_steps=2, lmbda=lmbda, on_policy_max_new_tokens=4),
                         teacher=teacher, tokenizer=mini_tokenizer(eos_token_id=63))
    assert log["on_policy_batches"].tolist() == [expected, expected]
    assert (log["kd"] > 0).all()


def test_teacher_required_for_online_hidden_and_on_policy(tmp_path, tiny_model):
    examples = samples.build_examples(_samples(n=4))
    for option in ({"kd_source": "online"}, {"hidden_weight": 1.0}, {"lmbda": 0.5}):
        with pytest.raises(ValueError, match="need the teacher"):
            training.train(tiny_model, examples, tmp_path, _config(**option))


@pytest.mark.parametrize("kd_source,teacher_calls", [("online", 4), ("topk", 0)])
def test_kd_source_decides_whether_the_teacher_runs(tmp_path, tiny_model_factory, kd_source,
                                                    teacher_calls):
    """With a teacher in memory, only kd_source=online runs it (4 steps, one forward
    each); topk reads the cached log-probs. (A benchmark once passed a teacher without
    kd_source=online and so timed top-k twice.)"""
    teacher, calls = tiny_model_factory(seed=3), []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    training.train(tiny_model_factory(seed=4), samples.build_examples(_samples(n=8)), tmp_path,
                   _config(max_steps=4, kd_source=kd_source), teacher=teacher)
    assert len(calls) == teacher_calls


def test_hidden_state_projection_trains_and_the_loss_falls():
    torch.manual_seed(0)
    loss = HiddenStateLoss([(0, 1), (1, 3)], student_width=8, teacher_width=12, kind="mse")
    assert all(isinstance(p, torch.nn.Linear) for p in loss.projections)
    mapping = torch.randn(8, 12)
    student = {i: torch.randn(2, 5, 8) for i in (0, 1)}
    teacher = {1: student[0] @ mapping, 3: student[1] @ mapping}
    keep = torch.ones(2, 5, dtype=torch.bool)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    first = float(loss(student, teacher, keep).detach())
    for _ in range(100):
        optimizer.zero_grad()
        value = loss(student, teacher, keep)
        value.backward()
        optimizer.step()
    assert float(value.detach()) < 0.1 * first


def test_cosine_hidden_loss_is_zero_for_equal_states_and_identity_projection():
    loss = HiddenStateLoss([(0, 0)], 6, 6, kind="cosine")
    assert isinstance(loss.projections[0], torch.nn.Identity)
    states = {0: torch.randn(1, 4, 6)}
    keep = torch.tensor([[True, True, False, True]])
    assert float(loss(states, states, keep)) == pytest.approx(0.0, abs=1e-6)


def test_layer_outputs_capture_the_decoder_layers(tiny_model):
    ids = torch.tensor([[1, 2, 3, 4]])
    with models.layer_outputs(tiny_model, [0, 2]) as captured:
        output = tiny_model(input_ids=ids, output_hidden_states=True)
    # hidden_states[i + 1] is layer i's output for every layer but the last (normed)
    assert torch.allclose(captured[0], output.hidden_states[1])
    assert torch.allclose(captured[2], output.hidden_states[3])
    remaining = [h.__qualname__ for layer in tiny_model.model.layers
                 for h in layer._forward_hooks.values()]
    assert not [name for name in remaining if "layer_outputs" in name]  # ours removed


def test_default_layer_map(tiny_model, tiny_model_factory):
    pruned = models.prune_layers(tiny_model, [0, 3])
    assert models.default_layer_map(pruned, tiny_model) == [(0, 0), (1, 3)]
    small = tiny_model_factory(num_hidden_layers=2)
    assert models.default_layer_map(small, tiny_model) == [(0, 1), (1, 3)]


def test_training_with_hidden_states_logs_and_lowers_the_hidden_loss(tmp_path,
                                                                     tiny_model_factory):
    teacher = tiny_model_factory(seed=3)
    student = models.prune_layers(teacher, [0, 2])
    for parameter in student.parameters():  # start away from the teacher
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    log = training.train(student, samples.build_examples(_samples(n=8)), tmp_path,
                         _config(max_steps=12, lr=3e-3, kd_weight=0.0, hidden_weight=1.0,
                                 hidden_loss="mse"), teacher=teacher)
    assert "hidden" in log
    assert log["hidden"].iloc[-3:].mean() < log["hidden"].iloc[:3].mean()


def test_objective_labels():
    assert compare.describe_objective({"ce_weight": 1.0, "kd_weight": 0.0}) == "ce"
    assert compare.describe_objective(
        {"ce_weight": 0.0, "kd_weight": 1.0, "kd_loss": "generalized_jsd", "kd_beta": 0.5,
         "kd_source": "online"}) == "generalized_jsd(0.5) (online)"
    assert compare.describe_objective(
        {"kd_weight": 1.0, "kd_loss": "forward_kl", "hidden_weight": 1.0, "hidden_loss": "cosine",
         "lmbda": 0.5}) == "forward_kl (topk) + 1 hidden (cosine), on-policy 0.5"


def test_the_objectives_sweep_loads_and_validates(tmp_path):
    base, variants = compare.load_sweep(ROOT / "params" / "sweeps" / "objectives.yaml")
    assert base.is_file()
    assert len(variants) >= 7
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {base}\nvariants:\n  a:\n    teacher_sampling: {{top_k_logprobs: 5}}\n")
    with pytest.raises(ParamsError, match="shared|share"):
        compare.load_sweep(bad)
    bad.write_text(f"base: {base}\nvariants:\n  a:\n    student_training: {{lr: -1}}\n")
    with pytest.raises(ParamsError, match="student_training.lr"):
        compare.load_sweep(bad)


def _fake_run(folder: Path, kd_loss: str, kl: float) -> Path:
    """A finished run folder with just what `compare` reads."""
    import json

    import pandas as pd
    import yaml

    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(
        {"student_training": {"ce_weight": 0.0, "kd_weight": 1.0, "kd_loss": kd_loss,
                              "kd_source": "topk"}}))
    runs.write_metrics(folder, pd.DataFrame(
        {"student": {"heldout_kl": kl, "top1_agreement": 0.5,
                     "generation_tokens_per_second": 10.0}}).T, heldout_prompts=4)
    pd.DataFrame({"tokens": [100, 300], "seconds": [1.0, 3.0],
                  "peak_memory_mb": [900.0, 1000.0]}).to_csv(folder / "train_log.csv")
    (folder / "manifest.json").write_text(json.dumps(
        {"stages": {"student_training": {"seconds": 4.0}, "evaluation": {"seconds": 2.0}}}))
    return folder


def test_compare_runs_lines_up_students(tmp_path):
    runs = [_fake_run(tmp_path / "a", "forward_kl", 2.0),
            _fake_run(tmp_path / "b", "reverse_kl", 3.0)]
    table = compare.compare_runs(runs)
    assert table.index.tolist() == ["a", "b"]
    assert table["objective"].tolist() == ["forward_kl (topk)", "reverse_kl (topk)"]
    assert table["heldout_kl"].tolist() == [2.0, 3.0]
    assert table["train_tokens_per_second"].tolist() == [100.0, 100.0]
    assert table["train_peak_memory_mb"].tolist() == [1000.0, 1000.0]
    assert table["wall_seconds"].tolist() == [6.0, 6.0]
    with pytest.raises(FileNotFoundError, match="03_evaluation"):
        compare.summarize_run(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text('{"schema_version": 99, "models": {}}')
    with pytest.raises(ValueError, match="schema version 99"):
        compare.summarize_run(tmp_path / "c")


def test_share_samples_links_the_shards(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "samples").mkdir(parents=True)
    (source / "samples" / "part-00000.parquet").write_bytes(b"shard")
    (source / "sampling_stats.json").write_text("{}")
    compare.share_samples(source, target)
    shared = target / "samples" / "part-00000.parquet"
    assert shared.read_bytes() == b"shard"
    assert shared.stat().st_ino == (source / "samples" / "part-00000.parquet").stat().st_ino
    assert (target / "sampling_stats.json").exists()
