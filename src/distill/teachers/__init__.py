"""Stage 01's teachers, behind one interface (`backend`: TeacherBackend, open_teacher).

The backends, each registered by its module when imported: `local` (a model in this
process) and `openai` (`openai_backend`: any OpenAI-compatible endpoint, with `openai_api`,
the answers into samples, `api_client`, `retries`, `health` and `fingerprint`). A new
backend is a module here that subclasses TeacherBackend and registers it, and one more
name in the import below; `import distill` imports this folder.
"""

from . import local, openai_backend  # noqa: F401 (importing registers them)
from .backend import TeacherBackend, generation_settings, open_teacher  # noqa: F401
