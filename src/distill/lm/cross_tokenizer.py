"""The transfer set of a student whose tokenizer is not the teacher's.

The teacher's samples name its own tokens; such a student cannot read their ids.
Since schema 2 every sample also holds the bytes of the teacher's tokens, its
log-prob of each, and the bytes of its top-k alternatives (`distill.lm.samples`), so
each sample is re-read here in the student's terms, with no teacher in memory and
the same way for a local teacher and one behind an API:

* the prompt under the student's own chat template (or plain text), the completion
  (the teacher's bytes, as text) under the student's tokenizer, ending with the
  student's end-of-answer token where the teacher's answer ended;
* the two tokenizations aligned by bytes (`alignment.align_spans`); then, per
  student target position: its kind (one-to-one span, first token of a longer span,
  other), the teacher's top-k mapped onto student ids (one-to-one spans), the
  teacher's own top-k log-probs (ULD), its span, and the teacher's log P of that span
  (span KL). The objectives of `alignment.CROSS_OBJECTIVES` read these.

Only chat samples are re-read: a generic or document sample's prompt is teacher
token ids, which the student cannot read.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .alignment import ONE_TO_ONE, SPAN_START, align_spans, coverage, map_topk
from .data import encode_chat
from .losses import IGNORE_INDEX
from .samples import Example
from .token_bytes import TokenBytes, same_vocabulary


def student_tokenizer(teacher: str, student: str, config) -> tuple:
    """(the student's tokenizer, whether the samples must be re-read in its tokens) for
    params `run.teacher` and `student_training.student` (`config`: the
    student_training params): re-read when the student's vocabulary is not the
    teacher's, or when the objective is a cross-tokenizer one. A same-tokenizer
    objective with a student of another vocabulary is an error that says what to use."""
    from ..core.params_checks import objective_mismatch
    from .models import load_tokenizer, resolve_model_path

    teacher_tokenizer = load_tokenizer(resolve_model_path(teacher))
    if student in ("pruned", "config"):  # cut from the teacher: its tokenizer
        return teacher_tokenizer, config.cross_objective
    tokenizer = load_tokenizer(resolve_model_path(student))
    other = not same_vocabulary(tokenizer, teacher_tokenizer)
    if other and config.kd_weight > 0 and not config.cross_objective:
        raise ValueError(f"student_training.{objective_mismatch(config)}")
    return tokenizer, other or config.cross_objective


class StudentVocabulary:
    """Where the teacher's strings go among a student tokenizer's ids (see `get`)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.vocab = tokenizer, TokenBytes(tokenizer)
        self.end_id = tokenizer.eos_token_id
        # the end of an answer (b"": a teacher's special token) is the student's own end
        self.ids = {**self.vocab.bytes_to_id, b"": self.end_id}
        self.first_tokens: dict[bytes, int | None] = {}

    def get(self, data: bytes) -> int | None:
        """The student id for a teacher string: the same string where the student has
        it, else the first token of the student's own spelling of it (the student's
        probability of that token covers every text that starts with it, this one among
        them: closer to the truth than counting the string's mass in the tail, though
        in the cross-tokenizer sweep the two measured alike: bits per byte 1.3901 vs
        1.3914 for mapped_kl, 1.3910 vs 1.3886 for hybrid); None for bytes that are not
        whole characters."""
        if data in self.ids:
            return self.ids[data]
        if data not in self.first_tokens:
            try:
                ids = self.tokenizer(data.decode("utf-8"), add_special_tokens=False)["input_ids"]
            except UnicodeDecodeError:
                ids = []
            self.first_tokens[data] = ids[0] if ids else None
        return self.first_tokens[data]


def cross_examples(samples: pd.DataFrame, tokenizer, need_alignment: bool,
                   stats: dict | None = None) -> list[Example]:
    """Training sequences for the student of `tokenizer` from the teacher's chat samples,
    each with the per-position teacher signal described above where the sample recorded
    its bytes, log-probs and top-k (schema 2), else its text alone (sequence-level KD
    needs no more). With `need_alignment` (a cross-tokenizer objective) text-only
    samples are left out. `stats`, if given, receives the counts and the alignment
    coverage."""
    student = StudentVocabulary(tokenizer)
    examples, skipped, shares = [], {"not chat": 0, "no bytes": 0}, []
    for row in samples.itertuples():
        messages = _messages(row.messages)
        if not messages:
            skipped["not chat"] += 1
            continue
        recorded = [bytes(b) for b in row.completion_bytes]
        aligned = bool(recorded and len(row.topk_bytes) and len(row.completion_logprobs)
                       and len(row.topk_logprobs))
        if need_alignment and not aligned:
            skipped["no bytes"] += 1
            continue
        text = b"".join(recorded).decode("utf-8", "replace") if recorded else row.completion
        completion = tokenizer(text, add_special_tokens=False)["input_ids"]
        if row.finish_reason == "stop" and student.end_id is not None:
            completion.append(student.end_id)
        if not completion:
            continue
        prompt = encode_chat(tokenizer, messages)
        labels = [IGNORE_INDEX] * (len(prompt) - 1) + completion
        if aligned:
            signal, share = _aligned_signal(row, recorded, completion, student)
            shares.append(share)
            examples.append(Example(prompt + completion, labels, signal.pop("topk_ids"),
                                    signal.pop("topk_logprobs"), "chat", cross=signal))
        else:
            empty = [[] for _ in completion]
            examples.append(Example(prompt + completion, labels, empty, empty, "chat"))
    if stats is not None:
        # shares of all the teacher's tokens (each sample weighs by its length)
        weights = [share["tokens"] for share in shares]
        stats.update(skipped=skipped, examples=len(examples),
                     coverage={key: float(np.average([s[key] for s in shares], weights=weights))
                               if sum(weights) else math.nan
                               for key in ("one_to_one", "multi_token", "unaligned")})
    if not examples:
        raise ValueError(f"no training examples for the student's tokenizer (skipped: {skipped}); "
                         "cross-tokenizer objectives need samples of schema 2 with top-k "
                         "(re-run 01_teacher_sampling with top_k_logprobs above 0)")
    return examples


def _messages(text: str) -> list[dict]:
    return json.loads(text) if text else []


def _aligned_signal(row, teacher_bytes: list[bytes], completion: list[int],
                    student: StudentVocabulary) -> tuple[dict, dict]:
    """The per-position teacher signal of one sample in the student's tokens, and the
    share of the teacher's tokens in one-to-one, longer and no spans."""
    spans, _, _ = align_spans(teacher_bytes, student.vocab.text_bytes(completion))
    teacher_logprobs = np.asarray(row.completion_logprobs, dtype=np.float64)
    raw = np.stack(row.topk_logprobs).astype(np.float32)
    k, n = raw.shape[1], len(completion)
    alternatives = [list(zip((bytes(b) for b in row.topk_bytes[span.teacher.start]),
                             raw[span.teacher.start].tolist()))
                    for span in spans if span.one_to_one]
    mapped_ids, mapped_logprobs, _ = map_topk(alternatives, student, k)
    signal = {"topk_ids": [[0] * k for _ in range(n)],
              "topk_logprobs": [[-math.inf] * k for _ in range(n)],
              "kind": [0] * n, "raw_logprobs": [[-math.inf] * k for _ in range(n)],
              "span_index": [-1] * n, "span_teacher": [0.0] * n}
    mapped = 0
    for number, span in enumerate(spans):
        first = span.student.start
        signal["kind"][first] = ONE_TO_ONE if span.one_to_one else SPAN_START
        signal["raw_logprobs"][first] = raw[span.teacher.start].tolist()
        signal["span_teacher"][first] = float(teacher_logprobs[span.teacher.start:
                                                               span.teacher.stop].sum())
        for position in span.student:
            signal["span_index"][position] = number
        if span.one_to_one:
            signal["topk_ids"][first] = mapped_ids[mapped].tolist()
            signal["topk_logprobs"][first] = mapped_logprobs[mapped].tolist()
            mapped += 1
    return signal, {**coverage(spans, len(teacher_bytes)), "tokens": len(teacher_bytes)}
