"""distill.lm.pruning: each recipe on a tiny random model: its parameter count, that it
runs and generates, width pruning with every channel kept is the teacher exactly, and
`auto` keeps the candidate of lowest score."""

import pytest
import torch

from distill.lm import budgets, generation, pruning
from distill.lm.models import count_parameters

CALIBRATION = [[1, 5, 9, 3, 7, 2, 11, 4], [4, 4, 8, 6, 10, 12, 30, 31, 2]]


@pytest.fixture
def teacher(tiny_model_factory):
    return tiny_model_factory(seed=3, num_hidden_layers=6)


def _budget(teacher, n_layers):
    outside, per_layer = budgets.layer_parameters(teacher)
    return outside + n_layers * per_layer


@pytest.mark.parametrize("recipe", pruning.RECIPES)
def test_each_recipe_fits_the_budget_runs_and_generates(teacher, mini_tokenizer, recipe):
    budget = _budget(teacher, 4)
    student = pruning.prune(teacher, recipe, CALIBRATION, budget)
    assert count_parameters(student) <= budget
    assert count_parameters(student) > _budget(teacher, 3)  # it uses the budget
    logits = student(input_ids=torch.tensor([CALIBRATION[0]])).logits
    assert logits.shape == (1, len(CALIBRATION[0]), teacher.config.vocab_size)
    (out,) = generation.generate(student, mini_tokenizer(eos_token_id=63), [CALIBRATION[0]],
                                 max_new_tokens=4)
    assert len(out["completion_ids"]) == 4
    assert count_parameters(teacher) > count_parameters(student)  # the teacher is untouched


def test_width_with_every_channel_kept_is_the_teacher(teacher):
    channels = teacher.config.intermediate_size
    importance = pruning.channel_importance(teacher, CALIBRATION)
    student = pruning.prune_width(teacher, importance, channels)
    ids = torch.tensor([CALIBRATION[1]])
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_width_keeps_the_most_active_channels(teacher):
    importance = pruning.channel_importance(teacher, CALIBRATION)
    student = pruning.prune_width(teacher, importance, 5)
    kept = importance[0].topk(5).indices.sort().values
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight,
                       teacher.model.layers[0].mlp.up_proj.weight[kept])
    assert torch.equal(student.model.layers[0].mlp.down_proj.weight,
                       teacher.model.layers[0].mlp.down_proj.weight[:, kept])
    assert student.config.intermediate_size == 5


def test_depth_drops_the_layers_of_least_influence():
    # layer 2 changes nothing (cosine 1 with its input), layer 0 the most
    n = 5
    similarity = torch.ones(n, n)
    for i, cos in enumerate([0.1, 0.5, 1.0, 0.7]):
        similarity[i, i + 1] = similarity[i + 1, i] = cos
    assert pruning.depth_keep(similarity, 3) == [0, 1, 3]


def test_block_drops_the_closest_contiguous_block():
    n = 7  # six layers; the block 3..4 maps its input to nearly the same output
    similarity = torch.full((n, n), 0.2)
    similarity[3, 5] = similarity[5, 3] = 0.99
    assert pruning.block_keep(similarity, 4) == [0, 1, 2, 5]


def test_auto_keeps_the_lowest_scoring_candidate(teacher, monkeypatch):
    scores = {"alternate": 3.0, "depth": 2.0, "block": 0.5, "width": 1.0, "depth_width": 2.5}

    def score(student):  # a constructed case: each recipe's student gets its score
        return scores[student.config.distill_prune_recipe_for_test]

    original = pruning.prune

    def tagged(teacher, recipe, calibration, budget, similarity=None):
        student = original(teacher, recipe, calibration, budget, similarity)
        student.config.distill_prune_recipe_for_test = recipe
        return student

    monkeypatch.setattr(pruning, "prune", tagged)
    student, recipe, table = pruning.choose(teacher, CALIBRATION, _budget(teacher, 4), score)
    assert recipe == "block"
    assert {name: row["score"] for name, row in table.items()} == scores
    assert student.config.distill_prune_recipe_for_test == "block"


def test_a_model_without_llama_mlps_gets_an_error_naming_recipe_and_module(teacher):
    del teacher.model.layers[0].mlp.gate_proj
    with pytest.raises(pruning.PruningError, match=r"width: layer 0 has no mlp.gate_proj"):
        pruning.prune(teacher, "width", CALIBRATION, _budget(teacher, 4))


def test_a_budget_below_one_layer_is_refused(teacher):
    with pytest.raises(pruning.PruningError, match="leaves no decoder layer"):
        pruning.layers_within(teacher, 10)


def test_budget_as_share_or_count(teacher):
    total = count_parameters(teacher)
    assert pruning.budget_parameters(teacher, 0.5) == int(0.5 * total)
    assert pruning.budget_parameters(teacher, 12345.0) == 12345
    assert pruning.budget_parameters(teacher, None) is None


def _modelled_speedup(teacher):
    """A stand-in for timing: decode time = a fixed part (embedding, LM head) plus, per
    layer, attention and an MLP whose cost follows its width, as measured on CPUs."""
    full = teacher.config.intermediate_size

    def seconds(model):
        width = model.model.layers[0].mlp.down_proj.in_features / full
        return 6.0 + len(model.model.layers) * (0.4 + 0.6 * width)

    return lambda model: seconds(teacher) / seconds(model)


def test_layers_for_a_speedup_is_the_most_that_meet_it(teacher):
    speedup_of = _modelled_speedup(teacher)  # 6 layers: 12 s; k layers: 6 + k s
    layers, measured = pruning.layers_for_speedup(teacher, 1.5, speedup_of)
    assert layers == 2  # 8 s is 1.5x; 3 layers (9 s) is 1.33x
    assert measured[2] == pytest.approx(1.5) and measured[3] < 1.5
    with pytest.raises(pruning.PruningError, match="one layer decodes only 1.71x"):
        pruning.layers_for_speedup(teacher, 2.5, speedup_of)


def test_depth_width_keeps_more_narrower_layers_at_the_same_speed(teacher):
    speedup_of = _modelled_speedup(teacher)
    budget = pruning.SpeedBudget(1.25, speedup_of)  # 9.6 s: 3 full layers
    depth = pruning.prune(teacher, "depth", CALIBRATION, budget)
    both = pruning.prune(teacher, "depth_width", CALIBRATION, budget)
    assert len(depth.model.layers) == 3 and depth.config.intermediate_size == 64
    assert len(both.model.layers) == 4  # ceil(1.25 * 3)
    # 6 + 4 * (0.4 + 0.6 w) <= 9.6 s: w <= 0.83, 52 of 64 channels in steps of 4
    assert both.config.intermediate_size == 52 and speedup_of(both) >= 1.25
    assert pruning.prune(teacher, "width", CALIBRATION, budget).config.intermediate_size == 20
    with pytest.raises(pruning.PruningError, match="6 layers miss it at any MLP width"):
        pruning.prune(teacher, "width", CALIBRATION, pruning.SpeedBudget(1.6, speedup_of))


def test_auto_at_a_speed_budget_leaves_out_what_cannot_meet_it(teacher):
    student, table = pruning.build(teacher, "auto", None, None, CALIBRATION,
                                   lambda m: float(len(m.model.layers)), 1.6,
                                   _modelled_speedup(teacher))
    assert table["width"]["score"] is None and "any MLP width" in table["width"]["left out"]
    assert student.config.num_hidden_layers == 1  # 7 s; 2 layers (8 s) are 1.5x
    assert student.config.distill_speedup_measured["1"] >= 1.6
