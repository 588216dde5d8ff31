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
- `depth_width`: a quarter more layers than `depth` would keep (by block influence),
  every MLP narrowed (by `width`'s ranking) to pay for them.
- `auto`: build each of the above at the budget, score each (the KL to the teacher on
  a validation slice, at initialisation or after a short training probe), and keep
  the best (`choose`).

The budget is a share of the teacher's parameters (0.6) or a count (60_000_000), or a
decode speed-up over the teacher measured on this machine (2.0, `SpeedBudget`): decode
time on a CPU follows the number of layers far more than their width, so a parameter
budget says little about speed.
Works for decoder-only Hugging Face models with `model.model.layers` and Llama-style
MLPs (gate_proj, up_proj, down_proj); a model without them gets an error that names
the recipe and the missing module.
"""

from __future__ import annotations

import math

import torch

from .budgets import (  # re-exported: the budgets are part of what pruning offers
    ParameterBudget,
    PruningError,
    SpeedBudget,
    budget_parameters,
    channels_within,
    decoder_layers,
    evenly_spaced,
    layers_for_speedup,
    layers_within,
    llama_mlp,
    prune_width,
    shaped_like,
)

__all__ = ["RECIPES", "ParameterBudget", "PruningError", "SpeedBudget", "block_keep",
           "budget_parameters", "build", "channel_importance", "channels_within", "choose",
           "depth_keep", "evenly_spaced", "layer_similarities", "layers_for_speedup",
           "layers_within", "prune", "prune_width", "shaped_like"]

RECIPES = ("alternate", "depth", "block", "width", "depth_width")

@torch.inference_mode()
def layer_similarities(teacher, calibration: list[list[int]]) -> torch.Tensor:
    """(layers + 1, layers + 1) mean cosine between the residual stream entering layer
    i and that entering layer j (index `layers`: the last layer's output, before the
    final norm), over the tokens of the calibration sequences."""
    from .models import layer_outputs

    n_layers = len(decoder_layers(teacher, "depth"))
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
    layers = decoder_layers(teacher, "width")
    mlps = [llama_mlp(layer, i, "width") for i, layer in enumerate(layers)]
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


# depth_width keeps this many times the layers depth alone would, and narrows every MLP
# to pay for them (Minitron prunes depth and width together)
DEPTH_WIDTH_LAYERS = 1.25


def prune(teacher, recipe: str, calibration: list[list[int]], budget,
          similarity: torch.Tensor | None = None):
    """The student of one recipe at the budget (a ParameterBudget or SpeedBudget; a
    parameter count or None is read as a ParameterBudget). `similarity`:
    `layer_similarities` on the calibration, if already measured."""
    from .models import prune_layers

    if not isinstance(budget, (ParameterBudget, SpeedBudget)):
        budget = ParameterBudget(teacher, budget)
    n_layers = len(decoder_layers(teacher, recipe))
    if recipe == "alternate":
        return prune_layers(teacher, evenly_spaced(n_layers, budget.layers(teacher)))
    if recipe == "width":
        return prune_width(teacher, channel_importance(teacher, calibration),
                           budget.channels(teacher))
    if recipe not in ("depth", "block", "depth_width"):
        raise PruningError(f"prune_recipe {recipe!r}: known recipes are "
                           f"{', '.join(RECIPES)}, auto")
    if similarity is None:
        similarity = layer_similarities(teacher, calibration)
    if recipe == "block":
        return prune_layers(teacher, block_keep(similarity, budget.layers(teacher)))
    if recipe == "depth":
        return prune_layers(teacher, depth_keep(similarity, budget.layers(teacher)))
    wider = min(n_layers, math.ceil(DEPTH_WIDTH_LAYERS * budget.layers(teacher)))
    deeper = prune_layers(teacher, depth_keep(similarity, wider))
    student = prune_width(deeper, channel_importance(deeper, calibration), budget.channels(deeper))
    student.config.distill_pruned_from_layers = deeper.config.distill_pruned_from_layers
    return student


def choose(teacher, calibration: list[list[int]], budget, score) -> tuple:
    """`auto`: every recipe's student at the budget, scored by `score(student)` (lower is
    better: the KL to the teacher on a validation slice, at initialisation or after a
    short training probe). A recipe that cannot meet the budget is left out. Returns
    (best student, its recipe, {recipe: {'parameters', 'layers', 'score'}})."""
    from .models import count_parameters

    table, best = {}, None
    similarity = layer_similarities(teacher, calibration)  # measured once for depth and block
    for recipe in RECIPES:
        try:
            student = prune(teacher, recipe, calibration, budget, similarity)
        except PruningError as error:
            table[recipe] = {"parameters": None, "layers": None, "score": None,
                             "left out": str(error)}
            continue
        table[recipe] = {"parameters": count_parameters(student),
                         "layers": student.config.num_hidden_layers, "score": score(student)}
        if best is None or table[recipe]["score"] < table[best[1]]["score"]:
            best = (student, recipe)
    if best is None:
        raise PruningError(f"no recipe meets {budget}: " +
                           "; ".join(row["left out"] for row in table.values()))
    return best[0], best[1], table


def build(teacher, recipe: str, student_size: float | None, layers: list[int] | None,
          calibration: list[list[int]], score, speedup: float | None = None,
          speedup_of=None) -> tuple:
    """The pruned student the params ask for: `student_layers` when given, else the
    recipe at the budget: `speedup` times the teacher's decode speed (timed by
    `speedup_of`, `speed.speedup_meter`) when given, else `student_size` parameters
    (`auto`: the best recipe by `score`). Returns (student, the candidates' table or
    None); the student's config records the recipe."""
    from .models import prune_layers

    budget = SpeedBudget(speedup, speedup_of) if speedup is not None \
        else ParameterBudget(teacher, budget_parameters(teacher, student_size))
    table = None
    if layers is not None:
        student = prune_layers(teacher, layers)
    elif recipe == "auto":
        student, recipe, table = choose(teacher, calibration, budget, score)
    else:
        student = prune(teacher, recipe, calibration, budget)
    student.config.distill_prune_recipe = recipe
    if isinstance(budget, SpeedBudget):
        student.config.distill_speedup_measured = {str(k): round(v, 3)
                                                   for k, v in budget.measured.items()}
    return student, table
