"""The params of the studies: one section per study notebook, declared like a params
file's sections (distill.core.params), and registered with distill.core.params when this
module is imported (`import distill` does). A study file (params/studies/, its `study:`
names the notebook) or `distill provenance`'s arguments give the keys; every key is
checked, then the section's own check (`_check_*`), before a folder exists. The
notebooks' `parameters` cells carry the same defaults as literals (a test keeps them
equal), and each notebook reads its section back with `section_params`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..core.params import PRECISIONS, PRUNE_RECIPES
from ..core.params_fields import (
    ParamsError,
    _p,
    non_negative,
    positive,
    probability,
    register_section,
)
from .collapse import CONDITIONS

_env_name = (lambda v: v is None or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None,
             "must be the name of an environment variable (not the key), or null")
_share = (lambda v: 0 < v < 1, "must lie strictly between 0 and 1")
_below_one = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_precision = (lambda v: v in PRECISIONS, "must be one of " + ", ".join(PRECISIONS))
_recipe = (lambda v: v in PRUNE_RECIPES, "must be one of " + ", ".join(PRUNE_RECIPES))
_counts = (lambda v: len(v) > 0 and all(isinstance(n, int) and n > 0 for n in v),
           "must be a non-empty list of counts > 0")
_names = (lambda v: len(v) > 0 and all(isinstance(n, str) and n for n in v),
          "must name at least one model")


@dataclass
class ProvenanceParams:  # notebook 05, `distill provenance`
    output_dir: str = _p("outputs", "where the check's folder goes")
    suspect: str | None = _p(None, "the model under suspicion: embedded name, folder, run folder "
                             "(its student) or BASE_URL#MODEL; null: the newest finished run "
                             "under output_dir")
    candidates: list = _p(["smollm2-135m-instruct"], "candidate teachers, in the same forms",
                          _names)
    control: str | None = _p("gemma3-270m", "a model known not to be S's teacher: compared in "
                             "test 1, its answers are test 2's y_C; null skips test 2")
    reference: str | None = _p(None, "R of test 2: a local model S grew from; null: the suspect "
                               "run's student_init, if any, else no R")
    prompts: str = _p("builtin", "prompt set: builtin, a .jsonl/.csv/.parquet file, or "
                      "hf:<dataset>")
    prompt_field: str = _p("prompt", "column holding the user message in a prompt file")
    n_prompts: int = _p(200, "prompts used, drawn from those no run folder above trained on",
                        positive)
    max_new_tokens: int = _p(48, "longest answer, in tokens", positive)
    max_edit: float = _p(0.0, "test 1: answers agree when at most this share of their words "
                         "differ (0: the same words)", _below_one)
    alpha: float = _p(0.05, "the false-positive rate a decision allows", _share)
    permutations: int = _p(10000, "test 2: random sign flips (exact enumeration up to 16 "
                           "prompts)", positive)
    watermark_key_env: str | None = _p(None, "test 3: environment variable holding the "
                                       "teacher's watermark key; null skips test 3", _env_name)
    watermark_gamma: float = _p(0.25, "test 3: the watermark's green share", _share)
    api_key_env: str = _p("OPENAI_API_KEY", "environment variable holding the key of "
                          "BASE_URL#MODEL endpoints", _env_name)
    dtype: str = _p("fp32", "weights of local models: fp32, bf16 or fp16",
                    (lambda v: v in ("fp32", "bf16", "fp16"), "must be fp32, bf16 or fp16"))
    batch_size: int = _p(16, "prompts generated or scored together", positive)
    seed: int = _p(0, "draws the prompts and the permutations")


@dataclass
class ProvenanceStudyParams:  # notebook 06, `study: provenance`
    output_dir: str = _p("outputs", "where the study's folder goes")
    teacher: str = _p("smollm2-135m-instruct", "T: the candidate teacher, and the source of "
                      "the shared initialisation")
    other_teacher: str = _p("gemma3-270m", "T': the other teacher (the control); changed:N is "
                            "T fine-tuned N steps on the shipped corpus",
                            (lambda v: not v.startswith("changed:")
                             or re.fullmatch(r"changed:\d+", v) is not None,
                             "must be a model, or changed:N with N a number of steps"))
    prompts: str = _p("builtin", "prompt set: builtin, a .jsonl/.csv/.parquet file, or "
                      "hf:<dataset>")
    train_prompts: int = _p(160, "prompts whose answers the teachers write for the students",
                            positive)
    test_prompts: int = _p(200, "other prompts, never trained on, that the tests use", positive)
    max_new_tokens: int = _p(48, "longest answer, in tokens (teachers and students)", positive)
    temperature: float = _p(0.7, "the teachers sample their training answers at this "
                            "temperature", positive)
    reference_text: str | None = _p(None, "glob of .txt files added to the shipped corpus for "
                                    "the reference arm")
    block_size: int = _p(64, "tokens per reference-text example", positive)
    arms: dict = _p({"teacher": 5, "other": 10, "reference": 10, "dilute_5": 5, "dilute_25": 5},
                    "students per arm: teacher, other, reference or dilute_<percent>")
    examples_per_student: int = _p(96, "training examples each student draws from its arm's "
                                   "data", positive)
    prune_recipe: str = _p("width", "the one recipe that makes the shared initialisation from T",
                           _recipe)
    student_size: float = _p(0.6, "its share of T's parameters", positive)
    epochs: int = _p(2, "passes over each student's examples", positive)
    batch_size: int = _p(8, "sequences per optimizer step", positive)
    lr: float = _p(0.0003, "peak learning rate", positive)
    watermark_key_env: str | None = _p("DISTILL_WATERMARK_KEY", "environment variable with the "
                                       "key T samples under; null: no watermark, no test 3",
                                       _env_name)
    watermark_gamma: float = _p(0.25, "the watermark's green share", _share)
    watermark_delta: float = _p(2.0, "the watermark's logit bonus", non_negative)
    max_edit: float = _p(0.0, "test 1: answers agree when at most this share of their words "
                         "differ", _below_one)
    power_prompts: list = _p([50, 100, 200], "prompt counts for the power curve (capped at "
                             "test_prompts)", _counts)
    alpha: float = _p(0.05, "the false-positive rate a decision allows", _share)
    permutations: int = _p(2000, "test 2: random sign flips per p-value", positive)
    precision: str = _p("auto", "auto (bf16 where it measures faster here), fp32 or bf16",
                        _precision)
    seed: int = _p(0, "draws the prompts and each student's data")


@dataclass
class DriftParams:  # notebook 07, `study: drift`
    output_dir: str = _p("outputs", "where the study's folder goes")
    teacher: str = _p("smollm2-135m-instruct", "T_v1: the teacher S is distilled from, and the "
                      "source of S's initialisation")
    prompts: str = _p("builtin", "prompt set: builtin, a .jsonl/.csv/.parquet file, or "
                      "hf:<dataset>")
    train_prompts: int = _p(128, "prompts whose answers (with top-k log-probs) S is distilled "
                            "on", positive)
    test_prompts: int = _p(48, "held-out prompts for agreement, KL and negative flips", positive)
    max_new_tokens: int = _p(32, "longest answer, in tokens", positive)
    top_k_logprobs: int = _p(20, "teacher log-probs kept per answer token", positive)
    drift_steps: list = _p([0, 10, 25, 50], "N: fine-tuning steps that make T_v2 from T_v1 (the "
                           "last is re-distilled to)",
                           (lambda v: all(isinstance(n, int) and n >= 0 for n in v)
                            and max(v, default=0) > 0,
                            "must be steps >= 0, the largest (the teacher re-distilled to) "
                            "above 0"))
    drift_lr: float = _p(0.0001, "peak learning rate of the teacher's fine-tuning", positive)
    drift_batch_size: int = _p(4, "corpus blocks per fine-tuning step", positive)
    drift_block_size: int = _p(64, "tokens per corpus block (fine-tuning) and per prose block "
                               "(perplexity)", positive)
    prune_recipe: str = _p("width", "how S's initialisation is cut from T_v1", _recipe)
    student_size: float = _p(0.6, "its share of T_v1's parameters", positive)
    distill_steps: int = _p(48, "optimizer steps of S's distillation from T_v1 (forward KL on "
                            "the top-k)", positive)
    redistill_steps: int = _p(48, "optimizer steps of each re-distillation arm", positive)
    replay_share: float = _p(0.5, "warm + replay: the share of T_v1 samples in the arm's data",
                             _below_one)
    target: float = _p(0.95, "re-distillation target: this share of S's top-1 agreement with "
                       "T_v1", positive)
    eval_every: int = _p(8, "steps between validations of the re-distillation arms", positive)
    batch_size: int = _p(8, "sequences per optimizer step", positive)
    lr: float = _p(0.0003, "peak learning rate of distillation", positive)
    precision: str = _p("auto", "auto (bf16 where it measures faster here), fp32 or bf16",
                        _precision)
    seed: int = _p(0, "draws the prompts and every training order")


@dataclass
class CollapseParams:  # notebook 08, `study: collapse`
    output_dir: str = _p("outputs", "where the study's folder goes")
    teacher: str = _p("smollm2-135m-instruct", "writes the real data (G0's) and is pruned into "
                      "the shared initialisation")
    prompts: str = _p("builtin", "prompt set: builtin, a .jsonl/.csv/.parquet file, or "
                      "hf:<dataset>")
    train_prompts: int = _p(96, "prompts every generation answers (its answers train the next)",
                            positive)
    max_new_tokens: int = _p(48, "longest sample, in tokens", positive)
    generations: int = _p(3, "G1..G<generations> after G0", positive)
    conditions: list = _p(["replace", "replace_real", "accumulate"], "any of " + ", ".join(
        CONDITIONS), (lambda v: len(v) > 0 and all(c in CONDITIONS for c in v),
                      "must be a non-empty list of " + ", ".join(CONDITIONS)))
    real_share: float = _p(0.1, "replace_real: the real data's share of a generation's set",
                           _share)
    seeds: list = _p([0, 1], "one chain per condition and seed",
                     (lambda v: len(v) > 0 and all(isinstance(s, int) for s in v),
                      "must be a non-empty list of integers"))
    temperature: float = _p(1.0, "sampling temperature of every generation (and the teacher)",
                            positive)
    top_p: float = _p(1.0, "nucleus sampling of every generation (0.9 is the issue's optional "
                      "arm)", probability)
    prune_recipe: str = _p("width", "how the shared initialisation is cut from the teacher",
                           _recipe)
    student_size: float = _p(0.6, "its share of the teacher's parameters", positive)
    steps: int = _p(24, "optimizer steps per generation", positive)
    batch_size: int = _p(8, "sequences per optimizer step", positive)
    lr: float = _p(0.0003, "peak learning rate", positive)
    block_size: int = _p(64, "tokens per block of held-out real text", positive)
    precision: str = _p("auto", "auto (bf16 where it measures faster here), fp32 or bf16",
                        _precision)


def _check_prompts(section, where: str, needed: int, what: str) -> None:
    """The prompt set holds `needed` prompts (it is read: a file, or a cached dataset)."""
    from ..lm.data import PromptError, load_prompts

    try:
        count = len(load_prompts(section.prompts))
    except (PromptError, OSError) as error:
        raise ParamsError(f"{where}.prompts: {error}") from None
    if count < needed:
        raise ParamsError(f"{where}.prompts: {section.prompts} holds {count} prompts, fewer "
                          f"than {what} ({needed}); lower them")


def _check_watermark(section, where: str) -> None:
    """The watermark key is in its variable: a missing key stops here, not after an hour."""
    if section.watermark_key_env is not None:
        from ..lm.watermark import from_env

        try:
            from_env(section.watermark_key_env)
        except ValueError as error:
            raise ParamsError(f"{where}.watermark_key_env: {error}") from None


def _check_permutations(section, where: str) -> None:
    # the smallest sign-flip p-value is 1 / (1 + permutations): fewer can never reach alpha
    if section.permutations < 1 / section.alpha - 1:
        raise ParamsError(f"{where}.permutations: {section.permutations} can never give "
                          f"p <= alpha={section.alpha}; use at least "
                          f"{math.ceil(1 / section.alpha - 1)}")


def _check_provenance(section: ProvenanceParams, where: str) -> None:
    compared = [*section.candidates, *([section.control] if section.control else [])]
    if section.suspect is not None and section.suspect in compared:
        raise ParamsError(f"{where}.suspect: {section.suspect!r} is also a candidate or the "
                          "control; compare it with other models")
    _check_permutations(section, where)
    _check_watermark(section, where)


def _check_provenance_study(section: ProvenanceStudyParams, where: str) -> None:
    from .provenance_study import check_arms

    try:
        check_arms(section.arms)
    except ValueError as error:  # its message starts with "arms: "
        raise ParamsError(f"{where}.{error}") from None
    _check_permutations(section, where)
    _check_prompts(section, where, section.train_prompts + section.test_prompts,
                   "train_prompts + test_prompts")
    _check_watermark(section, where)


def _check_drift(section: DriftParams, where: str) -> None:
    _check_prompts(section, where, section.train_prompts + section.test_prompts,
                   "train_prompts + test_prompts")


def _check_collapse(section: CollapseParams, where: str) -> None:
    _check_prompts(section, where, section.train_prompts, "train_prompts")


register_section(ProvenanceParams, _check_provenance)
register_section(ProvenanceStudyParams, _check_provenance_study)
register_section(DriftParams, _check_drift)
register_section(CollapseParams, _check_collapse)
