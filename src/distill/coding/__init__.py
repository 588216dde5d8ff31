"""Code tasks judged by running the answers' code in a sandbox (`tasks`: the task form,
code extraction, pass@k; `sandbox`: the contained run; `judge`: the tables of notebook 03)."""

from . import judge, sandbox, tasks

__all__ = ["judge", "sandbox", "tasks"]
