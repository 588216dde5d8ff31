"""A changed teacher: a copy of a model fine-tuned by cross-entropy for a few steps,
with the suite's own training loop. This is what a vendor's quiet update of the model
behind an API looks like from outside; the drift study (notebook 07), the fingerprint
tests and benchmark, and the provenance study use it.

Fine-tune on text the model would not write itself (the shipped corpus, another
teacher's answers): on its own answers the gradient is near zero and it barely moves.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from ..core.params import StudentTrainingParams
from ..core.runs import CHECKPOINTS
from ..lm.models import load_model, save_model
from ..lm.samples import Example
from .loop import train


def changed_teacher(model, tokenizer, examples: list[Example], steps: int, folder: str | Path,
                    *, lr: float = 1e-4, batch_size: int = 4, seed: int = 0,
                    mixed_precision: str | None = None):
    """A copy of `model` trained for `steps` optimizer steps of cross-entropy on
    `examples`, saved in `folder` (a later call with the same folder loads it). `steps`
    0 gives an unchanged copy. `model` itself is left as it was."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return load_model(str(folder), dtype=str(model.dtype).removeprefix("torch."))[0].eval()
    changed = copy.deepcopy(model).float()
    if steps:
        config = StudentTrainingParams(
            ce_weight=1.0, kd_weight=0.0, max_steps=steps, epochs=10**6, batch_size=batch_size,
            lr=lr, warmup_steps=0, validation_size=0, checkpoint_every=10**6,
            mixed_precision=mixed_precision)
        train(changed, examples, folder, config, seed=seed, tokenizer=tokenizer)
        shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
    changed = changed.to(model.dtype).eval()
    save_model(changed, tokenizer, folder)
    return changed
