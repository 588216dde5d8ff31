"""Code tasks judged by running the answers' code in a sandbox (`tasks`: the task form,
code extraction, pass@k; `observe`: tests as observations and the verdict; `sandbox`: the
contained run; `probe`: what the sandbox holds here; `judge`: the tables of notebook 03)."""

from . import judge, observe, probe, sandbox, tasks

__all__ = ["judge", "observe", "probe", "sandbox", "tasks"]
