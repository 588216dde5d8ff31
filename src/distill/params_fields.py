"""How a parameter is declared (`_p`) and the checks many parameters share; used by
distill.params and distill.params_speech."""

from __future__ import annotations

from dataclasses import field


def _p(default, help: str, check=None):
    """A parameter: default, help text, and an optional (predicate, message) check."""
    if isinstance(default, (list, dict)):  # mutable defaults need a factory
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, "check": check})
    return field(default=default, metadata={"help": help, "check": check})


positive = (lambda v: v > 0, "must be > 0")
non_negative = (lambda v: v >= 0, "must be >= 0")
optional_positive = (lambda v: v is None or v > 0, "must be > 0 or null")
probability = (lambda v: 0 < v <= 1, "must be in (0, 1]")
