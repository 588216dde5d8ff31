"""How a parameter is declared (`_p`), the checks many parameters share, and the
registries that higher layers fill: the kd_loss objectives (`register_objectives`),
the teacher backends (`register_teacher_backend`) and the sections read on their own,
the studies' (`register_section`). Used by distill.core.params, distill.core.params_checks
and the higher folders' own sections (distill.speech.params, distill.studies.params)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# where training samples come from (student_training.source_weights)
SOURCES = ("chat", "generic", "documents")
# The OpenAI API returns at most this many alternatives per token (`top_logprobs`);
# the API teacher is held to it here, and `distill serve` refuses more.
MAX_TOP_LOGPROBS = 20


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the file and key."""


def _p(default, help: str, check=None):
    """A parameter: default, help text, and an optional (predicate, message) check."""
    if isinstance(default, (list, dict)):  # mutable defaults need a factory
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, "check": check})
    return field(default=default, metadata={"help": help, "check": check})


positive = (lambda v: v > 0, "must be > 0")
non_negative = (lambda v: v >= 0, "must be >= 0")
optional_positive = (lambda v: v is None or v > 0, "must be > 0 or null")
optional_natural = (lambda v: v is None or v >= 0, "must be >= 0 or null")
probability = (lambda v: 0 < v <= 1, "must be in (0, 1]")

# kd_loss objectives by name -> (objective, whether it crosses tokenizers). Filled by the
# modules that define them when they are imported (distill.lm.losses: one vocabulary;
# distill.lm.alignment: across tokenizers); `import distill` imports both.
OBJECTIVES: dict[str, tuple[Any, bool]] = {}


def register_objectives(objectives: dict[str, Any], cross: bool) -> None:
    """Make `objectives` (name -> objective) valid values of kd_loss."""
    for name, objective in objectives.items():
        if name in OBJECTIVES and OBJECTIVES[name][0] is not objective:
            raise ValueError(f"kd_loss objective {name!r} is registered twice")
        OBJECTIVES[name] = (objective, cross)


def objective_names(cross: bool | None = None) -> list[str]:
    """kd_loss names: all, or (cross) only those for a student with another tokenizer,
    or (not cross) only those over one vocabulary."""
    return [name for name, (_, crosses) in OBJECTIVES.items() if cross is None or crosses == cross]


def objective_named(name: str):
    """The objective `kd_loss` names, whichever module registered it."""
    if name not in OBJECTIVES:
        raise KeyError(f"kd_loss {name!r}: not an objective; known: "
                       + ", ".join(objective_names()))
    return OBJECTIVES[name][0]


@dataclass(frozen=True)
class TeacherCapabilities:
    """What a teacher backend can do. The params it accepts follow from this, in one table
    (distill.core.params_checks), so a new backend brings its own refusals with it."""

    scores_text: bool  # reads given text, returns its top-k: documents, generic, validation prose
    logprobs: bool  # returns the top-k log-probs of the tokens it writes
    tokenizer: bool  # runs here with the run's tokenizer: a watermark, 02's online KD
    max_top_logprobs: int | None = None  # most log-probs per token it returns; None: no limit


# teacher_sampling.backend values by name -> backend (a distill.teachers.TeacherBackend
# class: core reads its `capabilities` and calls its `check_params`). Filled by the
# modules that define them when they are imported (distill.teachers imports them all,
# and `import distill` imports distill.teachers).
TEACHER_BACKENDS: dict[str, Any] = {}


def register_teacher_backend(name: str, backend) -> None:
    """Make `name` a valid teacher_sampling.backend, sampled by `backend`."""
    if not isinstance(getattr(backend, "capabilities", None), TeacherCapabilities):
        raise TypeError(f"teacher backend {name!r}: give it `capabilities`, a "
                        "TeacherCapabilities")
    if TEACHER_BACKENDS.get(name, backend) is not backend:
        raise ValueError(f"teacher backend {name!r} is registered twice")
    TEACHER_BACKENDS[name] = backend


def teacher_backend_names(capability: str | None = None) -> list[str]:
    """teacher_sampling.backend values: all, or those with `capability` (a field of
    TeacherCapabilities)."""
    return [name for name, backend in TEACHER_BACKENDS.items()
            if capability is None or getattr(backend.capabilities, capability)]


def teacher_backend_named(name: str):
    """The backend that teacher_sampling.backend names, whichever module registered it."""
    if name not in TEACHER_BACKENDS:
        raise KeyError(f"teacher_sampling.backend {name!r}: not a backend; known: "
                       + ", ".join(teacher_backend_names()))
    return TEACHER_BACKENDS[name]


def section_name(cls: type) -> str:
    """SpeechLabellingParams -> speech_labelling."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Params")).lower()


# Sections read on their own, not from a params file: a study file's keys (its `study:`
# names the section) and `distill provenance`'s arguments. Name -> (dataclass, check
# across its keys or None). Filled by distill.studies.params when it is imported;
# distill.core.params.load_section reads them.
STUDY_SECTIONS: dict[str, tuple[type, Any]] = {}


def register_section(cls: type, check=None) -> None:
    """Make `cls` a section read on its own (`load_section`), listed by `distill params`.
    `check(section, where)` raises ParamsError for what no single key can say."""
    name = section_name(cls)
    if STUDY_SECTIONS.get(name, (cls,))[0] is not cls:
        raise ValueError(f"params section {name} is registered twice")
    STUDY_SECTIONS[name] = (cls, check)


def _type_ok(value, annotation) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:  # YAML writes 1 for 1.0; accept ints, never bools
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _type_name(annotation) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def build_section(cls, values: dict, where: str):
    """`cls` (a section's dataclass) from `values`, each key checked: known, of its
    declared type, and passing its own check. ParamsError names `where` and the key."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = dict(values)
    for key, value in values.items():
        if key not in known:
            raise ParamsError(f"{where}.{key}: unknown key; known keys: {', '.join(known)}")
        if isinstance(value, str) and float in typing.get_args(hints[key]) + (hints[key],):
            # YAML 1.1 reads 3e-4 (no dot) as a string; accept what float() accepts
            try:
                values[key] = value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, hints[key]):
            raise ParamsError(f"{where}.{key}: expected {_type_name(hints[key])}, "
                              f"got {value!r} ({type(value).__name__})")
        check = known[key].metadata["check"]
        if check and not check[0](value):
            message = check[1]() if callable(check[1]) else check[1]
            raise ParamsError(f"{where}.{key}: {message}, got {value!r}")
    return cls(**values)
