"""Students pruned from the teacher, by measured importance.

A recipe removes part of the teacher and keeps the rest's weights, so the student
starts near the teacher (DistilBERT, Minitron). Importance is measured on
calibration sequences, the run's own teacher samples:

- `alternate`: keep every other decoder layer (0, 2, 4, ...); nothing measured.
- `depth`: drop the layers of lowest block influence, BI = 1 - cos(h_in, h_out)
  averaged over tokens (ShortGPT, Men et al. 2024).
- `block`: drop the contiguous run of layers whose input and output are closest in
  angular distance, arccos(cos(h_l, h_l+n)) / pi (Gromov et al. 2024).
- `width`: keep every layer, and in each MLP the channels of largest mean
  |act(gate) * up| (the input of down_proj), as Minitron ranks neurons.
- `auto`: build each of the above at the budget, score each by its KL to the
  teacher on a validation slice, and keep the best (`choose`).

The budget is a share of the teacher's parameters (0.6) or a count (60_000_000).
Works for decoder-only Hugging Face models with `model.model.layers` and Llama-style
MLPs (gate_proj, up_proj, down_proj); a model without them gets an error that names
the recipe and the missing module.
"""

from __future__ import annotations

import copy
import math

import torch

RECIPES = ("alternate", "depth", "block", "width")


class PruningError(ValueError):
    """A model this recipe cannot prune, or a budget it cannot meet."""


def _layers(model, recipe: str):
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise PruningError(f"prune_recipe {recipe}: {type(model).__name__} has no model.layers "
                           "(a decoder-only model with a list of decoder layers is needed)")
    return inner.layers


def _mlp(layer, index: int, recipe: str):
    mlp = getattr(layer, "mlp", None)
    missing = [name for name in ("gate_proj", "up_proj", "down_proj")
               if not isinstance(getattr(mlp, name, None), torch.nn.Linear)]
    if missing:
        raise PruningError(f"prune_recipe {recipe}: layer {index} has no mlp.{missing[0]} "
                           "(width pruning needs Llama-style gate_proj/up_proj/down_proj MLPs)")
    return mlp


def budget_parameters(teacher, student_size: float | int | None) -> int | None:
    """The student's parameter budget: a share of the teacher's (<= 1) or a count."""
    from .models import count_parameters

    if student_size is None:
        return None
    total = count_parameters(teacher)
    count = int(student_size * total) if student_size <= 1 else int(student_size)
    return count


def _layer_parameters(teacher) -> tuple[int, int]:
    """(parameters outside the decoder layers, parameters of one decoder layer)."""
    from .models import count_parameters

    layers = _layers(teacher, "depth")
    per_layer = sum(p.numel() for p in layers[0].parameters())
    return count_parameters(teacher) - per_layer * len(layers), per_layer


def layers_within(teacher, budget: int | None) -> int:
    """How many decoder layers fit the budget (None: half of them, as `alternate`)."""
    outside, per_layer = _layer_parameters(teacher)
    n_layers = len(_layers(teacher, "depth"))
    if budget is None:
        return math.ceil(n_layers / 2)
    keep = (budget - outside) // per_layer
    if keep < 1:
        raise PruningError(f"student_size: a budget of {budget:,} parameters leaves no decoder "
                           f"layer ({outside:,} lie outside the layers)")
    return min(int(keep), n_layers)


@torch.inference_mode()
def layer_similarities(teacher, calibration: list[list[int]]) -> torch.Tensor:
    """(layers + 1, layers + 1) mean cosine between the residual stream entering layer
    i and that entering layer j (index `layers`: the last layer's output, before the
    final norm), over the tokens of the calibration sequences."""
    from .models import layer_outputs

    n_layers = len(_layers(teacher, "depth"))
    totals, count = torch.zeros(n_layers + 1, n_layers + 1), 0
    for ids in calibration:
        with layer_outputs(teacher, list(range(n_layers))) as outputs:
            embedded = teacher(input_ids=torch.tensor([ids], device=teacher.device),
                               output_hidden_states=True).hidden_states[0]
        stack = torch.stack([embedded[0]] + [outputs[i][0] for i in range(n_layers)]).float().cpu()
        unit = torch.nn.functional.normalize(stack, dim=-1)  # (layers + 1, tokens, width)
        totals += torch.einsum("itd,jtd->ij", unit, unit)
        count += len(ids)
    return totals / count


def depth_keep(similarity: torch.Tensor, n_keep: int) -> list[int]:
    """Layers kept by block influence: drop those whose output is most like their input."""
    n_layers = similarity.shape[0] - 1
    influence = torch.tensor([1 - similarity[i, i + 1] for i in range(n_layers)])
    return sorted(influence.topk(n_keep).indices.tolist())


def block_keep(similarity: torch.Tensor, n_keep: int) -> list[int]:
    """Layers kept by dropping the contiguous block of smallest angular distance."""
    n_layers = similarity.shape[0] - 1
    n_drop = n_layers - n_keep
    if n_drop == 0:
        return list(range(n_layers))
    distance = [math.acos(max(-1.0, min(1.0, float(similarity[s, s + n_drop])))) / math.pi
                for s in range(n_layers - n_drop + 1)]
    start = min(range(len(distance)), key=distance.__getitem__)
    return [i for i in range(n_layers) if not start <= i < start + n_drop]


@torch.inference_mode()
def channel_importance(teacher, calibration: list[list[int]]) -> list[torch.Tensor]:
    """Per layer, the mean |input of down_proj| per MLP channel over calibration tokens."""
    layers = _layers(teacher, "width")
    mlps = [_mlp(layer, i, "width") for i, layer in enumerate(layers)]
    sums = [torch.zeros(m.down_proj.in_features) for m in mlps]
    tokens = [0]

    def hook(index):
        def record(module, inputs):
            x = inputs[0].detach().float().abs()
            sums[index] += x.reshape(-1, x.shape[-1]).sum(0).cpu()
        return record

    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlps)]
    try:
        for ids in calibration:
            teacher(input_ids=torch.tensor([ids], device=teacher.device))
            tokens[0] += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [s / tokens[0] for s in sums]


def channels_within(teacher, budget: int | None) -> int:
    """MLP channels per layer that fit the budget (None: half the parameters of the
    layers, as `alternate` leaves)."""
    from .models import count_parameters

    layers = _layers(teacher, "width")
    mlp = _mlp(layers[0], 0, "width")
    per_channel = (mlp.gate_proj.in_features * 3) * len(layers)  # gate and up rows, down column
    channels = mlp.down_proj.in_features
    if budget is None:
        budget = count_parameters(teacher) - len(layers) // 2 * _layer_parameters(teacher)[1]
    over = count_parameters(teacher) - budget
    keep = channels - math.ceil(max(over, 0) / per_channel)
    if keep < 1:
        raise PruningError(f"student_size: a budget of {budget:,} parameters leaves no MLP "
                           "channel; width pruning alone cannot reach it (try depth)")
    return keep


def prune_width(teacher, importance: list[torch.Tensor], n_channels: int):
    """A copy of `teacher` whose MLPs keep their `n_channels` most important channels."""
    student = copy.deepcopy(teacher)
    for index, (layer, scores) in enumerate(zip(_layers(student, "width"), importance)):
        mlp = _mlp(layer, index, "width")
        keep = scores.topk(n_channels).indices.sort().values
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, n_channels, bias=old.bias is not None,
                                  dtype=old.weight.dtype, device=old.weight.device)
            new.weight.data = old.weight.data[keep].clone()
            if old.bias is not None:
                new.bias.data = old.bias.data[keep].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(n_channels, old.out_features, bias=old.bias is not None,
                              dtype=old.weight.dtype, device=old.weight.device)
        new.weight.data = old.weight.data[:, keep].clone()
        if old.bias is not None:
            new.bias.data = old.bias.data.clone()
        mlp.down_proj = new
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = n_channels
    student.config.intermediate_size = n_channels
    student.config.distill_pruned_from_layers = list(range(len(_layers(student, "width"))))
    return student


def prune(teacher, recipe: str, calibration: list[list[int]], budget: int | None,
          similarity: torch.Tensor | None = None):
    """The student of one recipe at the budget (None: `alternate`'s half of the layers).
    `similarity`: `layer_similarities` on the calibration, if already measured."""
    from .models import prune_layers

    if recipe == "alternate":
        if budget is None:
            return prune_layers(teacher)
        n_layers = len(_layers(teacher, recipe))
        n_keep = layers_within(teacher, budget)
        return prune_layers(teacher, sorted({round(i * n_layers / n_keep)
                                             for i in range(n_keep)}))
    if recipe in ("depth", "block"):
        if similarity is None:
            similarity = layer_similarities(teacher, calibration)
        choose_layers = depth_keep if recipe == "depth" else block_keep
        return prune_layers(teacher, choose_layers(similarity, layers_within(teacher, budget)))
    if recipe == "width":
        return prune_width(teacher, channel_importance(teacher, calibration),
                           channels_within(teacher, budget))
    raise PruningError(f"prune_recipe {recipe!r}: known recipes are {', '.join(RECIPES)}, auto")


def choose(teacher, calibration: list[list[int]], budget: int | None, score) -> tuple:
    """`auto`: every recipe's student at the budget, scored by `score(student)` (lower is
    better: the KL to the teacher on a validation slice). Returns (best student, its
    recipe, {recipe: {'parameters', 'score'}})."""
    from .models import count_parameters

    table, best = {}, None
    similarity = layer_similarities(teacher, calibration)  # measured once for depth and block
    for recipe in RECIPES:
        student = prune(teacher, recipe, calibration, budget, similarity)
        table[recipe] = {"parameters": count_parameters(student), "score": score(student)}
        if best is None or table[recipe]["score"] < table[best[1]]["score"]:
            best = (student, recipe)
    return best[0], best[1], table


def build(teacher, recipe: str, student_size: float | None, layers: list[int] | None,
          calibration: list[list[int]], score) -> tuple:
    """The pruned student the params ask for: `student_layers` when given, else the
    recipe at the budget (`auto`: the best of all by `score`). Returns (student, the
    candidates' table or None); the student's config records the recipe."""
    from .models import prune_layers

    budget = budget_parameters(teacher, student_size)
    table = None
    if layers is not None:
        student = prune_layers(teacher, layers)
    elif recipe == "auto":
        student, recipe, table = choose(teacher, calibration, budget, score)
    else:
        student = prune(teacher, recipe, calibration, budget)
    student.config.distill_prune_recipe = recipe
    return student, table
