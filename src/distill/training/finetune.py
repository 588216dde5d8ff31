"""Copies of a model, trained: `trained_copy` (a copy trained and cast for use, as the
studies train their students), `probe_score` (what a short training says of a pruning
candidate), and `changed_teacher`, a copy fine-tuned by
cross-entropy for a few steps. A changed teacher is what a vendor's quiet update of the
model behind an API looks like from outside; the drift study (notebook 07), the
fingerprint tests and benchmark, and the provenance study use it.

Fine-tune on text the model would not write itself (the shipped corpus, another
teacher's answers): on its own answers the gradient is near zero and it barely moves.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch

from ..core.params import StudentTrainingParams
from ..core.runs import CHECKPOINTS
from ..lm.models import load_model, save_model
from ..lm.samples import Example
from ..lm.validation import topk_fidelity
from .loop import train


def trained_copy(start, examples: list[Example], folder: str | Path, config, *, dtype: str,
                 seed: int = 0, tokenizer=None, validation=None, save_to=None):
    """A copy of `start` (a model, left as it is, or the folder of a saved one) trained
    in float32 on `examples` as `config` (student_training params) says, its log and
    checkpoints in `folder`; the checkpoints (about 4x the model's size) are then
    deleted, and the copy is cast to `dtype` (float32, bfloat16, float16) for use.
    `validation` and `save_to` go to `train`. Returns (the copy, the training log)."""
    if isinstance(start, (str, Path)):
        model = load_model(str(start), dtype="float32")[0]
    else:
        model = copy.deepcopy(start).float()
    log = train(model, examples, folder, config, seed=seed, tokenizer=tokenizer,
                validation=validation, save_to=save_to)
    shutil.rmtree(Path(folder) / CHECKPOINTS, ignore_errors=True)
    return model.to(getattr(torch, dtype)).eval(), log


def probe_score(student, examples: list[Example], validation: list[Example],
                config: StudentTrainingParams, steps: int, *, seed: int = 0,
                tokenizer=None) -> float:
    """The validation KL of a copy of `student` trained `steps` optimizer steps as
    `config` says, offline (the cached top-k, no teacher in memory), its schedule fitted
    to those steps: a predictor of how a pruning candidate ends after full training,
    where its KL at initialisation is not one (a depth-pruned student starts far
    further from the teacher than a width-pruned one, and overtakes it). `student` is
    left as it is."""
    probe = dataclasses.replace(config, max_steps=steps, epochs=10**6, kd_source="topk",
                                hidden_weight=0.0, lmbda=0.0, validation_size=0,
                                warmup_steps=min(config.warmup_steps, steps // 5),
                                checkpoint_every=10**9, keep="last", processes=1,
                                accelerate_config=None)
    with tempfile.TemporaryDirectory(prefix="distill-probe-") as folder:
        trained, _ = trained_copy(student, examples, folder, probe, dtype="float32",
                                  seed=seed, tokenizer=tokenizer)
    pad_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
    return topk_fidelity(trained, validation, pad_id)["kl"]


def changed_teacher(model, tokenizer, examples: list[Example], steps: int, folder: str | Path,
                    *, lr: float = 1e-4, batch_size: int = 4, seed: int = 0,
                    mixed_precision: str | None = None):
    """A copy of `model` trained for `steps` optimizer steps of cross-entropy on
    `examples`, saved in `folder` (a later call with the same folder loads it). `steps`
    0 gives an unchanged copy. `model` itself is left as it was."""
    folder = Path(folder)
    dtype = str(model.dtype).removeprefix("torch.")
    if (folder / "config.json").exists():
        return load_model(str(folder), dtype=dtype)[0].eval()
    if steps:
        config = StudentTrainingParams(
            ce_weight=1.0, kd_weight=0.0, max_steps=steps, epochs=10**6, batch_size=batch_size,
            lr=lr, warmup_steps=0, validation_size=0, checkpoint_every=10**6,
            mixed_precision=mixed_precision)
        changed, _ = trained_copy(model, examples, folder, config, dtype=dtype, seed=seed,
                                  tokenizer=tokenizer)
    else:
        changed = copy.deepcopy(model).eval()
    save_model(changed, tokenizer, folder)
    return changed
