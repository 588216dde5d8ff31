"""Experiment parameters: one YAML file, one section per notebook, validated before any work.

A params file looks like::

    run:               {name: default, seed: 0, teacher: smollm2-135m-instruct}
    teacher_sampling:  {max_new_tokens: 64, ...}
    student_training:  {lr: 1.0e-4, ...}
    evaluation:        {...}

Every key is declared once, below, with its type, default and help. The
notebooks' `parameters` cells carry the same defaults as literals (a test keeps
them equal), and each notebook receives its own section plus the `run` keys.
Unknown keys, wrong types and impossible values raise `ParamsError` naming the
file and the key, before a model is loaded. The studies' sections (a study file,
`distill provenance`) are registered by distill.studies.params and read by `load_section`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .params_checks import check_across_sections
from .params_fields import (
    MAX_TOP_LOGPROBS,  # noqa: F401 (part of this module's interface)
    SOURCES,  # noqa: F401
    STUDY_SECTIONS,
    ParamsError,
    _p,
    build_section,
    non_negative,
    objective_names,
    optional_natural,
    optional_positive,
    positive,
    probability,
    register_section,  # noqa: F401
    section_name,
    teacher_backend_names,
)

STAGES = ("teacher_sampling", "student_training", "evaluation")
# run.precision: auto measures (distill.core.precision); the others are taken as they are.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# distill.lm.pruning.RECIPES and auto
PRUNE_RECIPES = ("alternate", "depth", "block", "width", "depth_width", "auto")


# a stage's own number format, spelled as run.precision (fp32, bf16, fp16), or null
_format_override = (lambda v: v in (None, *PRECISIONS[1:]),
                    "must be null (follow run.precision), fp32, bf16 or fp16")


def _objective_check():
    return (lambda v: v in objective_names(),
            lambda: "must be one of " + ", ".join(objective_names()))


def _backend_check():  # the backends registered when the check runs (distill.teachers)
    return (lambda v: v in teacher_backend_names(),
            lambda: "must be one of " + ", ".join(teacher_backend_names()))


_env_name = (lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None,
             "must be the name of an environment variable, not the key")


@dataclass
class RunParams:
    name: str = _p("default", "run name; the folder is outputs/<name>-<timestamp>")
    seed: int = _p(0, "seed for the split, sampling, initialisation and data order")
    heldout_seed: int | None = _p(None, "seed of the held-out split alone (text runs); null "
                                  "follows seed. Fixed while seed varies, seed-to-seed spread "
                                  "is told apart from split-to-split spread", optional_natural)
    teacher: str = _p("smollm2-135m-instruct",
                      "embedded teacher name (see `distill models`), Hugging Face id or folder")
    output_dir: str = _p("outputs", "folder that holds the run folders")
    precision: str = _p("auto", "number format of sampling, training and evaluation: auto "
                        "(bf16 where its products measure 1.5x the fp32 rate here, else fp32), "
                        "fp32, bf16 or fp16",
                        (lambda v: v in PRECISIONS, "must be one of " + ", ".join(PRECISIONS)))
    task: str = _p("text", "text (language models) or asr (speech recognition: a Whisper "
                   "teacher, the speech notebooks and the speech_* sections)",
                   (lambda v: v in STAGE_SECTIONS,
                    lambda: "must be one of " + ", ".join(STAGE_SECTIONS)))


@dataclass
class TeacherSamplingParams:
    prompts: str = _p("builtin", "prompt set: builtin, code (the built-in code tasks), a "
                                 ".jsonl/.csv/.parquet file, or hf:<dataset>")
    prompt_field: str = _p("prompt", "column holding the user message in a prompt file")
    heldout_size: int = _p(64, "prompts kept out of training, for evaluation", non_negative)
    train_size: int | None = _p(None, "cap on training prompts; null uses all the rest",
                                optional_positive)
    system_prompt: str | None = _p(None, "system message; null keeps the chat template's default")
    max_new_tokens: int = _p(64, "longest completion, in tokens", positive)
    do_sample: bool = _p(False, "sample (true) or greedy decoding (false)")
    temperature: float = _p(1.0, "sampling temperature (only with do_sample)", positive)
    top_p: float = _p(1.0, "nucleus sampling mass (only with do_sample)", probability)
    top_k_logprobs: int = _p(20, "teacher log-probs kept per generated token; 0 keeps text "
                             "only (sequence-level KD)", non_negative)
    batch_size: int = _p(16, "prompts generated together (local backend)", positive)
    shard_size: int = _p(128, "prompts per Parquet shard: the unit of resume", positive)
    dtype: str | None = _p(None, "teacher weights (local backend): null follows run.precision; "
                           "fp32, bf16 or fp16 to override it", _format_override)
    backend: str = _p("local", "where the teacher runs: local (run.teacher in this process), "
                      "openai (an OpenAI-compatible API at base_url), or another backend "
                      "registered in distill.teachers", _backend_check())
    base_url: str | None = _p(None, "API endpoint, e.g. http://127.0.0.1:8000/v1 "
                              "(openai backend)")
    model: str | None = _p(None, "model name at the endpoint; null uses run.teacher "
                           "(openai backend)")
    api_key_env: str = _p("OPENAI_API_KEY", "name of the environment variable holding the "
                          "API key; the key itself never goes in params",
                          _env_name)
    request_timeout: float = _p(60.0, "seconds before a request counts as timed out", positive)
    concurrency: int = _p(8, "API requests in flight at once", positive)
    max_retries: int = _p(5, "retries of a request after 429, 5xx, timeouts and dropped "
                          "connections", non_negative)
    retry_backoff: float = _p(1.0, "first retry delay in seconds, doubled each retry, "
                              "with jitter", non_negative)
    price_input_per_million: float = _p(0.0, "USD per million prompt tokens, for the cost "
                                        "estimate", non_negative)
    price_output_per_million: float = _p(0.0, "USD per million completion tokens",
                                         non_negative)
    request_cache: bool = _p(True, "cache API answers on disk ($DISTILL_CACHE/api-requests): "
                             "a re-run costs nothing")
    fingerprint: bool = _p(True, "API teacher: record its fingerprint (distill fingerprint) in "
                           "the run folder; a re-run refuses an endpoint that now serves "
                           "another model")
    generic_samples: int = _p(0, "free continuations of the shipped generic-text seeds, "
                              "sampled at temperature 1 with their top-k: general language "
                              "for the transfer set (local backend)", non_negative)
    generic_max_new_tokens: int = _p(128, "longest generic continuation, in tokens", positive)
    documents: str | None = _p(None, "plain-text files (a glob such as docs/*.txt) the "
                               "teacher reads, its top-k recorded at every token (local "
                               "backend; no generation, so cheap per token)")
    document_block_size: int = _p(256, "tokens per document window", positive)
    validation_prose: str | None = _p("builtin", "text whose teacher top-k 02 validates on "
                                      "(never trained on, never reported by 03): builtin, a "
                                      ".txt file, or null for none; a backend that reads no "
                                      "given text (openai) leaves builtin out")
    watermark: bool = _p(False, "sample the teacher under a green-list watermark (local "
                         "backend; distill.lm.watermark), so students of it can be traced")
    watermark_key_env: str = _p("DISTILL_WATERMARK_KEY", "environment variable holding the "
                                "watermark key; runs record only its id", _env_name)
    watermark_gamma: float = _p(0.25, "share of the vocabulary that is green after each token",
                                (lambda v: 0 < v < 1, "must lie strictly between 0 and 1"))
    watermark_delta: float = _p(2.0, "logit bonus of green tokens", non_negative)


@dataclass
class StudentTrainingParams:
    student: str = _p("pruned", "pruned (teacher minus layers), config (small, from scratch), "
                      "or a Hugging Face id / folder")
    prune_recipe: str = _p("alternate", "how a pruned student is cut from the teacher: "
                           "alternate (every other layer), depth (layers of least block "
                           "influence), block (the most redundant contiguous layers), width "
                           "(MLP channels of least activation), depth_width (a quarter more "
                           "layers than depth, narrower MLPs), auto (the best of these by "
                           "validation KL, after prune_probe_steps of training)",
                           (lambda v: v in PRUNE_RECIPES,
                            "must be one of " + ", ".join(PRUNE_RECIPES)))
    student_size: float | None = _p(None, "parameter budget of a pruned student: a share of "
                                    "the teacher's (0.6) or a count (8.0e7); null: half the "
                                    "layers", (lambda v: v is None or v > 0, "must be > 0"))
    student_speedup: float | None = _p(None, "speed budget of a pruned student instead of "
                                       "student_size: it decodes at least this many times "
                                       "the teacher's tokens/s at batch 1 and 32, timed on "
                                       "this machine (2.0)",
                                       (lambda v: v is None or v > 1, "must be > 1"))
    prune_probe_steps: int = _p(0, "auto: train each candidate this many steps on the "
                                "training samples before scoring it (0: score at "
                                "initialisation)", non_negative)
    student_layers: list | None = _p(None, "teacher layers the pruned student keeps "
                                     "(alternate only); null lets the recipe choose")
    student_config: dict = _p({}, "config overrides when student is config, e.g. "
                              "num_hidden_layers and hidden_size")
    kd_source: str = _p("topk", "teacher signal: topk (cached log-probs) or online (full logits, "
                        "teacher in memory)",
                        (lambda v: v in ("topk", "online"), "must be topk or online"))
    ce_weight: float = _p(0.0, "weight of cross-entropy on the teacher's tokens "
                          "(sequence-level KD)", non_negative)
    kd_weight: float = _p(1.0, "weight of the token-level objective kd_loss, scaled by T^2",
                          non_negative)
    kd_loss: str = _p("forward_kl", "token-level objective: a divergence over one vocabulary "
                      "(distill.lm.losses), or for a student with another tokenizer than the "
                      "teacher's span_kl, mapped_kl, uld or hybrid (distill.lm.alignment)",
                      _objective_check())
    kd_mapped_weight: float = _p(1.0, "hybrid: weight of the KL over the teacher's top-k "
                                 "mapped onto the student's tokens (one-to-one spans)",
                                 non_negative)
    kd_uld_weight: float = _p(1.0, "hybrid: weight of ULD where spans have several tokens",
                              non_negative)
    kd_beta: float = _p(0.5, "generalized_jsd mixture weight: 0 forward KL, 1 reverse KL",
                        (lambda v: 0 <= v <= 1, "must be in [0, 1]"))
    kd_alpha: float = _p(0.1, "skew_kl / skew_reverse_kl skew: 0 is the plain KL",
                         (lambda v: 0 <= v < 1, "must be in [0, 1)"))
    temperature: float = _p(1.0, "softens both distributions in the KD term", positive)
    hidden_weight: float = _p(0.0, "weight of hidden-state distillation (needs the teacher "
                              "in memory)", non_negative)
    hidden_loss: str = _p("cosine", "hidden-state distance: cosine or mse",
                          (lambda v: v in ("cosine", "mse"), "must be cosine or mse"))
    hidden_layer_map: list | None = _p(None, "[student layer, teacher layer] pairs; null maps "
                                       "each pruned layer to its teacher layer")
    lmbda: float = _p(0.0, "on-policy fraction: chance a batch is the student's own "
                      "completions, scored by the teacher (GKD)",
                      (lambda v: 0 <= v <= 1, "must be in [0, 1]"))
    on_policy_max_new_tokens: int = _p(64, "longest on-policy completion", positive)
    on_policy_temperature: float = _p(1.0, "sampling temperature of on-policy completions",
                                      positive)
    epochs: int = _p(1, "passes over the training samples", positive)
    max_steps: int | None = _p(None, "stop after this many optimizer steps (null: epochs decide)",
                               optional_positive)
    batch_size: int = _p(8, "sequences per micro-batch", positive)
    grad_accum: int = _p(1, "micro-batches per optimizer step", positive)
    lr: float = _p(1e-4, "peak learning rate (AdamW)", positive)
    warmup_steps: int = _p(10, "linear warmup, then cosine decay to zero", non_negative)
    weight_decay: float = _p(0.0, "AdamW weight decay", non_negative)
    max_grad_norm: float = _p(1.0, "gradient clipping norm", positive)
    mixed_precision: str | None = _p(None, "autocast of training: null follows run.precision; "
                                     "fp32, bf16 or fp16 to override it", _format_override)
    checkpoint_every: int = _p(50, "optimizer steps between checkpoints", positive)
    source_weights: dict = _p({"chat": 1.0, "generic": 1.0, "documents": 1.0},
                              "times each source's samples are seen per epoch (0 leaves a "
                              "source out, 0.5 half of it, 2 twice)")
    validation_size: int = _p(32, "training samples held out to validate on (0: none)",
                              non_negative)
    validation_every: int = _p(25, "optimizer steps between validations", positive)
    keep: str = _p("last", "the student saved: last (the final step) or best (the lowest "
                   "validation KL)", (lambda v: v in ("best", "last"), "must be best or last"))
    keep_checkpoints: bool = _p(True, "keep the newest checkpoint once training ends (a run "
                                "with more epochs continues from it) or delete the "
                                "checkpoints, about 4x the student's size on disk")
    processes: int = _p(1, "training processes; above 1, notebook 02 runs training under "
                        "`accelerate launch` (on CPU they split the cores)", positive)
    accelerate_config: str | None = _p(None, "accelerate config file for that launch (DDP, "
                                       "FSDP, DeepSpeed; see configs/accelerate/); null: none")

    # Derived facts: what the chosen objective needs, said once for notebook and trainer.
    @property
    def launches(self) -> bool:
        """Training runs in child processes under `accelerate launch`, not in the notebook."""
        return self.processes > 1 or self.accelerate_config is not None

    @property
    def needs_teacher(self) -> bool:
        """The teacher must be in memory: online logits, hidden states, or on-policy
        batches (which the teacher scores)."""
        return self.teaches_online or self.hidden_weight > 0 or self.lmbda > 0

    @property
    def teaches_online(self) -> bool:
        """The KD term reads the teacher's full logits from a forward pass."""
        return self.kd_source == "online" and self.kd_weight > 0

    @property
    def needs_topk(self) -> bool:
        """Offline token-level KD reads the top-k cached by stage 01 (text-only samples
        lack it)."""
        return self.kd_source == "topk" and self.kd_weight > 0 and self.lmbda < 1

    @property
    def cross_objective(self) -> bool:
        """The KD term aligns the teacher's tokens with the student's by bytes."""
        return self.kd_weight > 0 and self.kd_loss in objective_names(cross=True)

    @property
    def objective_options(self) -> dict:
        """The kd_* values an objective may take its option from (kd_beta, kd_alpha)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith("kd_")}


@dataclass
class EvaluationParams:
    max_new_tokens: int = _p(64, "longest generated answer per model", positive)
    batch_size: int = _p(16, "prompts generated or scored together", positive)
    max_prompts: int | None = _p(None, "cap on held-out prompts evaluated", optional_positive)
    graded_prompts: str | None = _p("builtin", "more prompts with a reference, graded besides "
                                    "the held-out split's own: builtin (120 written for distill,"
                                    " in no prompt set), a prompt file, or null (the split's)")
    max_graded_prompts: int | None = _p(None, "cap on those prompts", optional_positive)
    corpus: str = _p("builtin", "perplexity text: builtin (shipped), a .txt file, or hf:<dataset>")
    corpus_max_tokens: int = _p(4096, "tokens of the corpus scored", positive)
    corpus_block_size: int = _p(256, "tokens per perplexity window", positive)
    execute_code: bool = _p(False, "run the answers to held-out code tasks against their tests, "
                                   "in the sandbox (opt-in: it runs model-written code)")
    code_samples: int = _p(0, "answers sampled per code task for pass@k, besides the greedy "
                              "one (0: pass@1 greedy only)", non_negative)
    code_temperature: float = _p(0.8, "sampling temperature of those answers", positive)
    code_timeout_s: float = _p(5.0, "wall-clock limit per answer's run, seconds", positive)
    code_memory_mb: int = _p(512, "address-space limit per answer's run, MB", positive)
    speed_batch_sizes: list = _p([1, 32], "batch sizes of the fixed-length decode speed "
                                 "figures (decode_speedup_batch<n>); [] skips them",
                                 (lambda v: all(isinstance(b, int) and b > 0 for b in v),
                                  "must be a list of positive integers"))
    speed_new_tokens: int = _p(64, "new tokens each prompt decodes when timing (no early "
                               "stop)", positive)
    speed_repeats: int = _p(3, "timings per figure after a warm-up; the best is kept",
                            positive)
    assisted_prompts: int = _p(8, "held-out prompts the teacher answers with the student as "
                               "its draft model, timed against the teacher alone (0: skip)",
                               non_negative)


SECTIONS = {
    "run": RunParams,
    "teacher_sampling": TeacherSamplingParams,
    "student_training": StudentTrainingParams,
    "evaluation": EvaluationParams,
}
# the section each stage's notebook reads, by run.task
STAGE_SECTIONS = {"text": {stage: stage for stage in STAGES}}


def register_task(task: str, sections: dict[str, type]) -> None:
    """Make `task` a value of run.task whose stages read `sections` (stage -> dataclass,
    in STAGES order): how a feature folder (distill.speech: asr) adds its sections."""
    if list(sections) != [*STAGES]:
        raise ValueError(f"task {task}: give one section per stage, {', '.join(STAGES)}")
    for cls in sections.values():
        name = section_name(cls)
        if SECTIONS.get(name, cls) is not cls:
            raise ValueError(f"params section {name} is registered twice")
        SECTIONS[name] = cls
    STAGE_SECTIONS[task] = {stage: section_name(cls) for stage, cls in sections.items()}


def load_section(name: str, values: dict, source) -> Any:
    """A section registered by `register_section`, from `values`: every key checked (an
    unknown key, a wrong type or an impossible value raises ParamsError naming `source`
    and the key), then the section's own check, before any work."""
    cls, check = STUDY_SECTIONS[name]
    section = build_section(cls, values, f"{source}: {name}")
    if check:
        check(section, f"{source}: {name}")
    return section


class Params:
    """Every registered section of a params file, validated: `params.run`,
    `params.student_training`, ... (the feature folders' sections too)."""

    run: RunParams
    teacher_sampling: TeacherSamplingParams
    student_training: StudentTrainingParams
    evaluation: EvaluationParams

    def __init__(self, **sections):
        self.__dict__.update(sections)

    def __eq__(self, other) -> bool:
        return isinstance(other, Params) and self.__dict__ == other.__dict__

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def notebook_parameters(self, stage: str, run_dir: Path) -> dict:
        """What papermill injects into one stage's notebook."""
        section = STAGE_SECTIONS[self.run.task][stage]
        return {"run_dir": str(run_dir), **dataclasses.asdict(self.run),
                **dataclasses.asdict(getattr(self, section))}


def section_params(section: str, values: dict):
    """One section's params, validated, from a mapping that holds its keys: in a
    notebook, `globals()` after papermill (or the parameters cell) set them."""
    cls = SECTIONS[section] if section in SECTIONS else STUDY_SECTIONS[section][0]
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values]
    if missing:
        raise ParamsError(f"{section}: missing parameters {', '.join(missing)}")
    given = {f.name: values[f.name] for f in dataclasses.fields(cls)}
    if section in STUDY_SECTIONS:
        return load_section(section, given, "notebook parameters")
    return build_section(cls, given, f"notebook parameters: {section}")


def _parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ParamsError(f"--set {text}: expected section.key=value, "
                          f"e.g. --set student_training.lr=3e-4")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    return section, key, yaml.safe_load(raw) if raw else None


def read_mapping(path: str | Path, kind: str, of: str) -> dict:
    """A YAML file holding a mapping (a params or study file). ParamsError names the file
    when it is missing, not YAML, or not a mapping (`of` says of what)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such {kind}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: expected a mapping of {of}")
    return loaded


def load_params(path: str | Path | None = None, overrides: list[str] = ()) -> Params:
    """Read a params YAML (or defaults when path is None), apply `section.key=value`
    overrides, and validate every key. Raises ParamsError naming file and key."""
    source = str(path) if path else "<defaults>"
    raw = read_mapping(path, "params file", f"sections {list(SECTIONS)}") if path else {}
    for text in overrides:
        section, key, value = _parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ParamsError(f"{source}: section {section} must be a mapping")
        raw[section][key] = value
    for section in raw:
        if section not in SECTIONS:
            raise ParamsError(f"{source}: unknown section {section!r}; "
                              f"sections are {', '.join(SECTIONS)}")
    built = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ParamsError(f"{source}: {name}: expected a mapping, got {values!r}")
        built[name] = build_section(cls, values, f"{source}: {name}")
    params = Params(**built)
    check_across_sections(params, source)
    return params


def describe() -> str:
    """A reference of every key, for `distill params` and the README."""
    lines = []
    studies = {name: cls for name, (cls, _) in STUDY_SECTIONS.items()}
    for name, cls in {**SECTIONS, **studies}.items():
        if name == next(iter(studies), None):
            lines.append("\n# The studies' own sections: the keys of a study file "
                         "(params/studies/, its `study:` names the notebook) or of "
                         "`distill provenance`")
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...")
            lines.append(f"  {f.name + ':':<26}{value.strip():<24} # {f.metadata['help']}")
    lines.append(f"\nkd_loss objectives: {', '.join(objective_names(cross=False))}; across "
                 f"tokenizers: {', '.join(objective_names(cross=True))}")
    return "\n".join(lines)
