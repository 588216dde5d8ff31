"""How close a model is to the teacher on samples that carry the teacher's top-k.

One measure for every choice made before notebook 03 reports: which pruning recipe
(`auto`), which checkpoint (`keep: best`), and the validation curve of training.
It reads only what stage 01 stored (no teacher in memory, so it works for a teacher
behind an API too): forward KL over the teacher's top-k plus the tail bucket (the
quantity offline KD trains on) and top-1 agreement with the teacher's most likely
token. For a student with another tokenizer, the same over the one-to-one spans
with the teacher's top-k mapped onto its tokens (distill.lm.cross_tokenizer). The
validation slice is split off the training samples, never the held-out
prompts or prose that 03 reports on.
"""

from __future__ import annotations

import random
from math import inf
from pathlib import Path

import torch

from ..core.runs import CHECKPOINTS, atomic_dir
from .alignment import ONE_TO_ONE, batch_mapped
from .losses import IGNORE_INDEX, forward_kl, topk_divergence
from .samples import Example, collate


@torch.inference_mode()
def topk_fidelity(model, examples: list[Example], pad_id: int, batch_size: int = 8) -> dict:
    """{'kl', 'top1_agreement', 'tokens'} of `model` against the examples' cached top-k,
    averaged over their completion tokens."""
    was_training = model.training
    model.eval()
    kl_sum, agree, tokens = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)
                       ).logits[:, :-1].float().cpu()
        keep = batch["labels"] != IGNORE_INDEX
        if "cross_kind" in batch:  # another tokenizer: one-to-one spans, mapped top-k
            keep &= (batch["cross_kind"] == ONE_TO_ONE) & (batch["topk_logprobs"][..., 0] > -inf)
            kl_sum += float(batch_mapped(logits, batch["labels"], batch).sum())
        else:
            kl_sum += float(topk_divergence(forward_kl, logits, batch["topk_ids"],
                                            batch["topk_logprobs"], batch["labels"])
                            ) * int(keep.sum())
        agree += int(((logits.argmax(-1) == batch["topk_ids"][..., 0]) & keep).sum())
        tokens += int(keep.sum())
    model.train(was_training)
    return {"kl": kl_sum / max(tokens, 1), "top1_agreement": agree / max(tokens, 1),
            "tokens": tokens}


def split_validation(examples: list[Example], size: int, seed: int
                     ) -> tuple[list[Example], list[Example]]:
    """(training, validation): `size` examples with a top-k, chosen by a seeded draw,
    held out of training."""
    with_topk = [i for i, e in enumerate(examples) if e.topk_ids and e.topk_ids[0]]
    if size > len(with_topk) // 2:
        raise ValueError(f"student_training.validation_size={size} would take more than half "
                         f"of the {len(with_topk)} training samples with top-k; lower it")
    chosen = set(random.Random(seed).sample(with_topk, size))
    return ([e for i, e in enumerate(examples) if i not in chosen],
            [examples[i] for i in sorted(chosen)])


def save_best(model, run_dir: Path) -> None:
    """Keep `model`'s weights as the run's best so far (checkpoints/best)."""
    with atomic_dir(Path(run_dir) / CHECKPOINTS / "best") as tmp:
        model.save_pretrained(tmp)


def load_best(model, run_dir: Path) -> None:
    """Load the run's best weights (see `save_best`) into `model`."""
    from safetensors.torch import load_file

    folder = Path(run_dir) / CHECKPOINTS / "best"
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(path))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name in missing if name.endswith("lm_head.weight")}  # saved once, tied
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{folder}: the best checkpoint does not fit the student "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
