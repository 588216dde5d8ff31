"""distill: reproducible, notebook-first knowledge distillation of language models.

The package's layers and folders are described in docs/architecture.md. Importing it
registers what the higher folders add to the registries of the lower ones, so that
every entry point (the CLI, a notebook, a test) sees the same params and prompt sets:
the kd_loss objectives (distill.lm.losses, distill.lm.alignment), the teacher backends
(distill.teachers), the speech sections (distill.speech.params), the studies' sections
(distill.studies.params) and the built-in code tasks (distill.coding.tasks).
"""

__version__ = "0.1.0"

from . import teachers as _teacher_backends  # noqa: E402, F401
from .coding import tasks as _code_tasks  # noqa: E402, F401
from .lm import alignment as _cross_objectives  # noqa: E402, F401
from .lm import losses as _objectives  # noqa: E402, F401
from .speech import params as _speech_params  # noqa: E402, F401
from .studies import params as _study_params  # noqa: E402, F401
