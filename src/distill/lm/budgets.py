"""How big a pruned student may be: the budgets of `distill.lm.pruning`, and models of
a given shape.

A budget is a parameter count (`ParameterBudget`: a share of the teacher's, or a count)
or a decode speed-up over the teacher measured on this machine (`SpeedBudget`). Each
answers the two questions a recipe asks: how many decoder layers (at the teacher's
width), and how many MLP channels for a given set of layers. A speed budget answers by
timing models of the candidate shape (`shaped_like`; which layers and channels are kept
changes a student's quality, not its speed), bisecting over the count.
"""

from __future__ import annotations

import copy
import math

import torch


class PruningError(ValueError):
    """A model this recipe cannot prune, or a budget it cannot meet."""


def decoder_layers(model, recipe: str):
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise PruningError(f"prune_recipe {recipe}: {type(model).__name__} has no model.layers "
                           "(a decoder-only model with a list of decoder layers is needed)")
    return inner.layers


def llama_mlp(layer, index: int, recipe: str):
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


def layer_parameters(teacher) -> tuple[int, int]:
    """(parameters outside the decoder layers, parameters of one decoder layer)."""
    from .models import count_parameters

    layers = decoder_layers(teacher, "depth")
    per_layer = sum(p.numel() for p in layers[0].parameters())
    return count_parameters(teacher) - per_layer * len(layers), per_layer


def layers_within(teacher, budget: int | None) -> int:
    """How many decoder layers fit the budget (None: half of them, as `alternate`)."""
    outside, per_layer = layer_parameters(teacher)
    n_layers = len(decoder_layers(teacher, "depth"))
    if budget is None:
        return math.ceil(n_layers / 2)
    keep = (budget - outside) // per_layer
    if keep < 1:
        raise PruningError(f"student_size: a budget of {budget:,} parameters leaves no decoder "
                           f"layer ({outside:,} lie outside the layers)")
    return min(int(keep), n_layers)


def channels_within(teacher, budget: int | None) -> int:
    """MLP channels per layer that fit the budget (None: half the parameters of the
    layers, as `alternate` leaves)."""
    from .models import count_parameters

    layers = decoder_layers(teacher, "width")
    mlp = llama_mlp(layers[0], 0, "width")
    per_channel = (mlp.gate_proj.in_features * 3) * len(layers)  # gate and up rows, down column
    channels = mlp.down_proj.in_features
    if budget is None:
        budget = count_parameters(teacher) - len(layers) // 2 * layer_parameters(teacher)[1]
    over = count_parameters(teacher) - budget
    keep = channels - math.ceil(max(over, 0) / per_channel)
    if keep < 1:
        raise PruningError(f"student_size: a budget of {budget:,} parameters leaves no MLP "
                           "channel; width pruning alone cannot reach it (try depth)")
    return keep


def prune_width(teacher, importance: list[torch.Tensor], n_channels: int):
    """A copy of `teacher` whose MLPs keep their `n_channels` most important channels."""
    student = copy.deepcopy(teacher)
    for index, (layer, scores) in enumerate(zip(decoder_layers(student, "width"), importance)):
        mlp = llama_mlp(layer, index, "width")
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
    student.config.distill_pruned_from_layers = list(range(len(decoder_layers(student, "width"))))
    return student


def evenly_spaced(n_layers: int, n_keep: int) -> list[int]:
    """`n_keep` of `n_layers` layer indices spread evenly, the first always kept."""
    return sorted({round(i * n_layers / n_keep) for i in range(n_keep)})


def shaped_like(teacher, n_layers: int, channels: int | None = None):
    """A copy of `teacher` with `n_layers` decoder layers and, given `channels`, that many
    MLP channels per layer: a student's shape, to time it. Which layers and channels
    are kept changes its quality, not its speed, so none are measured."""
    from .models import prune_layers

    student = prune_layers(teacher, evenly_spaced(len(decoder_layers(teacher, "depth")),
                                                  n_layers))
    if channels is not None:
        unranked = [torch.zeros(llama_mlp(layer, i, "width").down_proj.in_features)
                    for i, layer in enumerate(decoder_layers(student, "width"))]
        student = prune_width(student, unranked, channels)
    return student


def layers_for_speedup(teacher, target: float, speedup_of) -> tuple[int, dict[int, float]]:
    """The most decoder layers a student of the teacher's width may keep and still decode
    `target` times as fast as the teacher: bisection over the layer count, each shape
    timed by `speedup_of(model)` (`speed.speedup_meter`). Returns (layers, {layers: the
    speed-up measured})."""
    n_layers = len(decoder_layers(teacher, "depth"))
    measured = {}

    def meets(count: int) -> bool:
        measured[count] = speedup_of(shaped_like(teacher, count))
        return measured[count] >= target

    if not meets(1):
        raise PruningError(f"student_speedup {target}: a student of one layer decodes only "
                           f"{measured[1]:.2f}x as fast as the teacher here; ask for less")
    low, high = 1, n_layers  # `low` meets the target; the teacher itself (1x) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if meets(middle) else (low, middle)
    return low, measured


def channels_for_speedup(teacher, n_layers: int, target: float, speedup_of) -> int | None:
    """The most MLP channels that `n_layers` layers may keep and still meet `target`, in
    steps of 64 (of a sixteenth of the width, for a narrow model): bisection, each shape
    timed. None when even one step falls short."""
    width = llama_mlp(decoder_layers(teacher, "width")[0], 0, "width").down_proj.in_features
    step = max(1, min(64, width // 16))
    low, high = 0, width // step + 1  # in steps; `low` meets (0: none yet), `high` does not
    while high - low > 1:
        middle = (low + high) // 2
        if speedup_of(shaped_like(teacher, n_layers, min(middle * step, width))) >= target:
            low = middle
        else:
            high = middle
    return min(low * step, width) or None


class ParameterBudget:
    """A student of at most `count` parameters (None: what `alternate` leaves, half the
    layers)."""

    def __init__(self, teacher, count: int | None):
        outside, per_layer = layer_parameters(teacher)
        n_layers = len(decoder_layers(teacher, "depth"))
        self.count = count if count is not None else outside + math.ceil(n_layers / 2) * per_layer

    def layers(self, teacher) -> int:
        return layers_within(teacher, self.count)

    def channels(self, model) -> int:
        return channels_within(model, self.count)

    def __str__(self):
        return f"{self.count:,} parameters"


class SpeedBudget:
    """A student that decodes at least `target` times as fast as the teacher, timed by
    `speedup_of(model)` (`speed.speedup_meter`) on this machine."""

    def __init__(self, target: float, speedup_of):
        self.target, self.speedup_of, self.measured = target, speedup_of, {}
        self._layers = None

    def layers(self, teacher) -> int:
        if self._layers is None:  # measured once per budget: every layer recipe asks
            self._layers, self.measured = layers_for_speedup(teacher, self.target,
                                                             self.speedup_of)
        return self._layers

    def channels(self, model) -> int:
        channels = channels_for_speedup(model, len(decoder_layers(model, "width")), self.target,
                                        self.speedup_of)
        if channels is None:
            layers = len(decoder_layers(model, "width"))
            raise PruningError(f"student_speedup {self.target}: {layers} layers miss it at any "
                               "MLP width; fewer layers are needed (try depth)")
        return channels

    def __str__(self):
        return f"{self.target:g}x the teacher's decode speed"
