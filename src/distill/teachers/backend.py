"""The interface of stage 01's teachers: `TeacherBackend`, and `open_teacher`.

A backend is a class registered under a name, the value of `teacher_sampling.backend`,
with `distill.core.params_fields.register_teacher_backend`. Registering is how the names
and what each backend can do (`TeacherCapabilities`) reach the params checks, which
refuse what the chosen backend cannot do before any work; core never imports this folder.
Notebook 01 opens the teacher with `open_teacher` and calls the same methods whichever
backend runs it.
"""

from __future__ import annotations

from pathlib import Path

from ..core.params_checks import check_teacher_backend
from ..core.params_fields import TeacherCapabilities, teacher_backend_named


class TeacherBackend:
    """A teacher of stage 01. A subclass sets `capabilities`, loads what it needs in
    `__init__` (at least `tokenizer`, the run's: the samples' token ids are its ids), and
    implements `sample`; `sample_generic` and `sample_documents` where it `scores_text`.
    Every sampling method writes shards of `distill.lm.samples` into the run folder,
    resumable, and returns the stats of `distill.lm.samples.sample_shards`."""

    capabilities = TeacherCapabilities(scores_text=False, logprobs=False, tokenizer=False)

    @classmethod
    def check_params(cls, sampling, source: str) -> None:
        """Checks of the keys this backend reads itself (an endpoint's address), run with
        every params check: raise ParamsError naming `source` and the key. None here."""

    @classmethod
    def check(cls, sampling, teacher: str, source: str) -> None:
        """Checks of what the params point at, run by `distill run` before any folder is
        written (an endpoint answers, accepts the key, serves the model): raise ParamsError
        naming `source` (the params file) and the key, or the backend's own error. None
        here."""

    def __init__(self, sampling, teacher: str, dtype: str = "float32"):
        """`sampling`: the teacher_sampling params; `teacher`: run.teacher; `dtype`: the
        weights of a model loaded here."""
        self.sampling, self.teacher, self.tokenizer = sampling, teacher, None

    def describe(self) -> str:
        """One line about the teacher, for the notebook."""
        return f"{self.teacher} ({self.sampling.backend} backend)"

    def sample(self, train: list[dict], heldout: list[dict], run_dir: Path, seed: int,
               watermark=None) -> dict:
        """Answers to the held-out then training prompts (`generation_settings`), under
        `watermark` (a distill.lm.watermark.Watermark; only with `tokenizer`)."""
        raise NotImplementedError

    def sample_generic(self, seeds: list[str], run_dir: Path, seed: int,
                       watermark=None) -> dict:
        """`generic_samples` free continuations of the seed openings, with their top-k,
        as `source='generic'` shards."""
        raise NotImplementedError(self._cannot("scores_text"))

    def sample_documents(self, texts: dict[str, str], run_dir: Path,
                         source: str = "documents", watermark=None) -> dict:
        """The teacher's top-k at every token of `texts` (name -> text), in windows of
        `document_block_size`, as `source` shards ('documents' or 'validation')."""
        raise NotImplementedError(self._cannot("scores_text"))

    def report(self):
        """A table of what sampling met (an endpoint's health), or None."""
        return None

    def _cannot(self, capability: str) -> str:
        return f"the {self.sampling.backend} backend has no {capability} capability"


def open_teacher(sampling, teacher: str, dtype: str = "float32") -> TeacherBackend:
    """The backend `sampling.backend` names, ready to sample. Checks first what it can do
    against `sampling`, as load_params does: a notebook may be run without it."""
    check_teacher_backend(sampling, "notebook parameters")
    return teacher_backend_named(sampling.backend)(sampling, teacher, dtype)


def generation_settings(sampling) -> dict:
    """The teacher_sampling keys that decide a chat answer (they stamp its shards)."""
    return {key: getattr(sampling, key) for key in
            ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k_logprobs")}
