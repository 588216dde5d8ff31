"""What the studies 06-08 share: the folder's number format, the seeded split of the
prompts, the one initialisation every student of a study starts from, and the training
params of a study's students. (Each student is a `distill.training.finetune.trained_copy`
of a saved model.)"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..core.params import StudentTrainingParams
from ..core.precision import autocast_mode, describe, for_run, weights_dtype
from ..lm import data, models, pruning


def number_format(run_dir: Path, precision: str) -> tuple[str, str]:
    """(the folder's precision, its weights' dtype) for `precision` (auto is measured
    once per folder and recorded in its manifest); the choice and its reason are
    printed."""
    run_precision, why = for_run(run_dir, precision)
    print(describe(run_precision, why))
    return run_precision, weights_dtype(run_precision)


def split_prompts(source: str, train_size: int, test_size: int,
                  seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle of the prompt set `source`: its first `train_size` prompts, and
    the `test_size` after them (never trained on). The study's params checked that the
    set holds both."""
    prompts = data.load_prompts(source)
    order = np.random.default_rng(seed).permutation(len(prompts))
    return ([prompts[i] for i in order[:train_size]],
            [prompts[i] for i in order[train_size:train_size + test_size]])


def shared_initialisation(teacher, tokenizer, folder: Path, recipe: str, size: float,
                          calibration: list[list[int]]) -> Path:
    """The folder of the initialisation every student of a study starts from: a float32
    copy of `teacher` (left as it is) pruned once by `recipe` to `size`, calibrated on
    `calibration` (token ids of text no teacher wrote, so that the null students start
    from it too). Made once; a re-run finds it."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        init, _ = pruning.build(copy.deepcopy(teacher).float(), recipe, size, None, calibration,
                                None)
        models.save_model(init, tokenizer, folder)
    return folder


def training_config(run_precision: str, **options) -> StudentTrainingParams:
    """The student_training params of a study's training: 2 warmup steps, no validation
    split (a study validates on its own slices), one checkpoint at the end (deleted once
    trained), the folder's autocast; `options` say the objective and the budget."""
    return StudentTrainingParams(**{"warmup_steps": 2, "validation_size": 0,
                                    "checkpoint_every": 10**6,
                                    "mixed_precision": autocast_mode(run_precision), **options})
