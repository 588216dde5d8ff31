"""Distillation across tokenizers: the same text cut two ways, aligned by bytes.

A teacher and a student with different vocabularies cut one completion into
different tokens, so the teacher's next-token distribution at position t names
tokens the student does not have. Both cuts cover the same bytes, though, and
wherever both break at the same byte their predictions are about the same text.
So:

* `align_spans` walks the byte offsets of both tokenizations and closes a span
  wherever both break at the same byte. A span is (teacher tokens, student tokens);
  one-to-one spans hold the same string on both sides.
* Within a span each model's probability of the span's text is the product of its
  conditionals over its own tokens: log P(span) = sum of the token log-probs
  (`span_sums`).
* The losses compare what can be compared: the span probabilities (`span_kl`), the
  teacher's top-k mapped onto student ids through shared strings on one-to-one spans
  (`mapped_buckets`, then any divergence of distill.lm.losses), and, where nothing maps,
  the sorted probability vectors (`uld_distance`, Boizard et al. 2024), which need no
  shared vocabulary at all. `hybrid` weighs the last two.

Everything here is a pure function of bytes, ids and tensors: local teachers and
teachers behind an API (whose tokens come with bytes) are aligned the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.params_fields import register_objectives
from .losses import kl_divergence


@dataclass(frozen=True)
class Span:
    """Teacher tokens `teacher` and student tokens `student` (index ranges into each
    tokenization) that cover the same bytes."""
    teacher: range
    student: range

    @property
    def one_to_one(self) -> bool:
        return len(self.teacher) == 1 and len(self.student) == 1


def align_spans(teacher: list[bytes], student: list[bytes]) -> tuple[list[Span], int, int]:
    """(spans, teacher tokens aligned, student tokens aligned) for two tokenizations
    (each token as its bytes) of one text.

    Walking both byte offsets, a span closes wherever both tokenizations end a token
    at the same byte. A token of no bytes (a special token) joins the span in
    progress. Where the two byte strings stop agreeing (a special token spelled
    differently, say an end-of-turn marker) alignment stops: the tokens from the last
    common break on are unaligned, and the counts say where that is. Empty tokens
    after a common break on both sides (each model's end of the answer) are paired
    one to one, so "the answer ends here" is a prediction of its own."""
    spans, t_start, s_start, t, s = [], 0, 0, 0, 0
    t_end = s_end = closed = 0  # byte offsets after tokens [:t], [:s], and the last span
    while True:
        if t_end <= s_end:  # advance the side that is behind
            if t == len(teacher):
                break
            t_end, t = t_end + len(teacher[t]), t + 1
        else:
            if s == len(student):
                break
            s_end, s = s_end + len(student[s]), s + 1
        if t_end == s_end > closed:
            if b"".join(teacher[t_start:t]) != b"".join(student[s_start:s]):
                break  # same length, other bytes: the texts differ from here on
            t_empty, s_empty = _empty_run(teacher, t), _empty_run(student, s)
            if min(t_empty, s_empty) == 0:  # empty tokens on one side join this span
                t, s = t + t_empty, s + s_empty
                spans.append(Span(range(t_start, t), range(s_start, s)))
            else:  # on both sides (each model's end of answer): paired, one to one
                spans.append(Span(range(t_start, t), range(s_start, s)))
                pairs = min(t_empty, s_empty)
                spans += [Span(range(t + i, t + i + 1), range(s + i, s + i + 1))
                          for i in range(pairs - 1)]
                spans.append(Span(range(t + pairs - 1, t + t_empty),  # the last takes the rest
                                  range(s + pairs - 1, s + s_empty)))
                t, s = t + t_empty, s + s_empty
            t_start, s_start, closed = t, s, t_end
    return spans, t_start, s_start


def _empty_run(tokens: list[bytes], start: int) -> int:
    """How many tokens of no bytes follow `start` (special tokens)."""
    end = start
    while end < len(tokens) and not tokens[end]:
        end += 1
    return end - start


def coverage(spans: list[Span], teacher_tokens: int) -> dict:
    """Shares of a text's teacher tokens in one-to-one spans, in spans of several tokens
    on either side, and unaligned."""
    one = sum(len(span.teacher) for span in spans if span.one_to_one)
    many = sum(len(span.teacher) for span in spans if not span.one_to_one)
    total = max(teacher_tokens, 1)
    return {"one_to_one": one / total, "multi_token": many / total,
            "unaligned": (teacher_tokens - one - many) / total}


def span_sums(token_logprobs: torch.Tensor, spans: list[Span], side: str) -> torch.Tensor:
    """log P(span) = sum over the span's tokens of log p(token | everything before), for
    each span, on `side` ('teacher' or 'student'); `token_logprobs` holds that side's
    log-prob of each of its tokens (shape (tokens,))."""
    index = torch.empty(len(token_logprobs), dtype=torch.long)
    keep = torch.zeros(len(token_logprobs), dtype=torch.bool)
    for number, span in enumerate(spans):
        positions = getattr(span, side)
        index[positions.start:positions.stop] = number
        keep[positions.start:positions.stop] = True
    sums = token_logprobs.new_zeros(len(spans))
    return sums.index_add(0, index[keep].to(sums.device), token_logprobs[keep])


def span_kl(teacher_span: torch.Tensor, student_span: torch.Tensor) -> torch.Tensor:
    """Mean over spans of KL(Bern(P_T) || Bern(P_S)) between the teacher's and the
    student's probability of each span's text, given as log P (shape (spans,)):

        P_T log(P_T / P_S) + (1 - P_T) log((1 - P_T) / (1 - P_S)).

    Zero exactly where the student gives every span the teacher's probability; the
    second term keeps a student from gaining by putting all its mass on the text."""
    if len(teacher_span) == 0:
        return student_span.sum() * 0.0
    # P at most 1 - 1e-4, so log(1 - P) and its gradient stay moderate; the student's
    # clamp passes the gradient straight through, so a student sure of a span the
    # teacher doubts is still pushed back
    ceiling = math.log1p(-1e-4)
    log_t = teacher_span.float().clamp(max=ceiling)
    raw = student_span.float()
    log_s = raw - (raw - raw.clamp(max=ceiling)).detach()
    buckets_t = torch.stack([log_t, torch.log(-torch.expm1(log_t))], dim=-1)
    buckets_s = torch.stack([log_s, torch.log(-torch.expm1(log_s))], dim=-1)
    return kl_divergence(buckets_t, buckets_s).mean()


def map_topk(alternatives: list[list[tuple[bytes, float]]], student_ids, k: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-k at each position (bytes, log-prob) as student ids:
    (ids, logprobs, valid), each (positions, k). `student_ids.get(bytes)` names the
    student id a teacher string goes to (a dict of the shared strings, or
    cross_tokenizer.StudentVocabulary, which also sends a string to the first token of
    the student's spelling of it), or None: then the entry is invalid and its mass joins
    the tail. Strings that go to one student id are merged, their probabilities summed."""
    ids = torch.zeros(len(alternatives), k, dtype=torch.long)
    logprobs = torch.full((len(alternatives), k), -torch.inf)
    for row, entries in enumerate(alternatives):
        merged: dict[int, float] = {}
        for data, logprob in entries:
            if (token := student_ids.get(data)) is not None:
                merged[token] = float(np.logaddexp(merged.get(token, -np.inf), logprob))
        for column, (token, logprob) in enumerate(list(merged.items())[:k]):
            ids[row, column], logprobs[row, column] = token, logprob
    return ids, logprobs, logprobs > -torch.inf


def mapped_buckets(student_logits: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor,
                   valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher, student) log-probs over the valid mapped ids plus one tail bucket, as
    `losses.topk_buckets` gives for one vocabulary: an invalid entry is a bucket of
    probability 0 on both sides, and the tail holds everything else (for the teacher,
    the unmapped strings' mass too). With every entry valid, and fewer entries than the
    student's vocabulary, this is topk_buckets."""
    ids, logprobs, valid = (x.to(student_logits.device) for x in (ids, logprobs, valid))
    teacher_top = torch.where(valid, logprobs.float(), -torch.inf)
    tail_mass = 1 - teacher_top.exp().sum(-1, keepdim=True)
    teacher_tail = torch.log(tail_mass.clamp_min(ids.shape[-1] * torch.finfo(torch.float32).eps))
    student_all = F.log_softmax(student_logits.float(), dim=-1)
    # an invalid entry points at a valid id of its row, so the scatter below (a set,
    # not a sum) removes each valid id from the student's tail exactly once
    filled = torch.where(valid, ids, ids.gather(-1, valid.float().argmax(-1, keepdim=True)))
    student_top = torch.where(valid, student_all.gather(-1, filled), -torch.inf)
    outside = student_all.scatter(-1, filled, torch.finfo(student_all.dtype).min)
    # a row with nothing mapped is all tail on both sides (divergence 0)
    student_tail = torch.where(valid.any(-1, keepdim=True), outside.logsumexp(-1, keepdim=True),
                               0.0)
    return (torch.cat([teacher_top, teacher_tail], dim=-1),
            torch.cat([student_top, student_tail], dim=-1))


def uld_distance(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Universal logit distillation per position: the L1 distance between the teacher's
    and the student's probabilities, each sorted in decreasing order,

        sum_i | p_T(i) - p_S(i) |,   p(1) >= p(2) >= ... ,

    over the teacher's k cached probabilities and the student's k largest, each plus its
    tail 1 - sum; no token is compared with a token, so any two vocabularies will do."""
    k = teacher_logprobs.shape[-1]
    teacher = teacher_logprobs.float().exp().sort(-1, descending=True).values
    student = F.softmax(student_logits.float(), dim=-1).topk(k, dim=-1).values
    with_tail = [torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp_min(0)], dim=-1)
                 for p in (teacher, student)]
    return (with_tail[0] - with_tail[1]).abs().sum(-1)


def hybrid(matched: torch.Tensor, unmatched: torch.Tensor, matched_weight: float = 1.0,
           uld_weight: float = 1.0) -> torch.Tensor:
    """matched_weight * mean(divergence on mapped top-k, one-to-one spans) + uld_weight *
    mean(ULD on the other aligned positions); an empty side adds nothing."""
    parts = [weight * values.mean() for weight, values in
             ((matched_weight, matched), (uld_weight, unmatched)) if values.numel()]
    return sum(parts) if parts else matched.sum() * 0.0


# --- the cross-tokenizer objectives that `kd_loss` names ---------------------------
# Called like distill.lm.losses' objectives. The batch's teacher signal holds, per student
# target position (see distill.lm.cross_tokenizer): 'cross_kind' (1: a one-to-one span,
# 2: the first token of a span of several tokens, 0: inside one, or unaligned),
# 'topk_ids' / 'topk_logprobs' (the teacher's top-k mapped onto student ids, -inf where
# a string did not map; kind 1), 'raw_logprobs' (the teacher's own top-k log-probs at
# the span's first teacher token; kinds 1 and 2), 'span_index' (the position's span
# within its row, -1 if none) and 'span_teacher' (the teacher's log P of the span, at
# the span's first position). Temperature does not apply (params refuses T != 1).

ONE_TO_ONE, SPAN_START = 1, 2


def _token_logprobs(student_logits, labels):
    """log p_S(label) at every position (0 where the label is ignored)."""
    keep = labels >= 0
    chosen = F.log_softmax(student_logits.float(), -1).gather(
        -1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, chosen, torch.zeros_like(chosen))


def batch_span_kl(student_logits, labels, teacher: dict) -> torch.Tensor:
    """span_kl over every aligned span of the batch: each side's log P(span) summed
    from its own tokens' log-probs (the chain rule), per row."""
    index = teacher["span_index"].to(student_logits.device)
    rows, spans = index.shape[0], int(index.max()) + 1 if index.numel() else 0
    if spans <= 0:
        return student_logits.sum() * 0.0
    slot = index.clamp_min(0)
    inside = (index >= 0).float()
    student = torch.zeros(rows, spans, device=index.device).scatter_add(
        1, slot, _token_logprobs(student_logits, labels) * inside)
    starts = (teacher["cross_kind"].to(index.device) > 0) & (index >= 0)
    teacher_sums = torch.zeros(rows, spans, device=index.device).scatter_add(
        1, slot, teacher["span_teacher"].to(index.device).float() * starts)
    present = _present(slot, starts, rows, spans)
    return span_kl(teacher_sums[present], student[present])


def _present(slot, starts, rows: int, spans: int) -> torch.Tensor:
    """Which (row, span) slots hold a span: those with a first position in the row."""
    counts = torch.zeros(rows, spans, device=slot.device).scatter_add(1, slot, starts.float())
    return counts > 0


def batch_mapped(student_logits, labels, teacher: dict) -> torch.Tensor:
    """Per one-to-one position: forward KL over the teacher's top-k mapped onto student
    ids, plus the tail bucket (`mapped_buckets`)."""
    keep = (teacher["cross_kind"].to(student_logits.device) == ONE_TO_ONE) & (labels >= 0)
    logprobs = teacher["topk_logprobs"].to(student_logits.device)[keep]
    teacher_buckets, student_buckets = mapped_buckets(
        student_logits[keep], teacher["topk_ids"].to(student_logits.device)[keep], logprobs,
        logprobs > -torch.inf)
    return kl_divergence(teacher_buckets, student_buckets)


def batch_uld(student_logits, labels, teacher: dict, kinds: tuple[int, ...]) -> torch.Tensor:
    """Per position of the given kinds: `uld_distance` to the teacher's own top-k."""
    kind = teacher["cross_kind"].to(student_logits.device)
    keep = (labels >= 0) & torch.isin(kind, torch.tensor(kinds, device=kind.device))
    return uld_distance(student_logits[keep],
                        teacher["raw_logprobs"].to(student_logits.device)[keep])


def _mean(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else like.sum() * 0.0


def _hybrid(student_logits, labels, teacher: dict, options: dict) -> torch.Tensor:
    return hybrid(batch_mapped(student_logits, labels, teacher),
                  batch_uld(student_logits, labels, teacher, (SPAN_START,)),
                  options.get("kd_mapped_weight", 1.0), options.get("kd_uld_weight", 1.0))


@dataclass(frozen=True)
class CrossObjective:
    """An objective for a student whose tokenizer is not the teacher's (see above):
    `loss(student_logits, labels, teacher, options)`, called as distill.lm.losses'
    objectives are (temperature is ignored: params refuses T != 1)."""

    name: str
    loss: object

    def __call__(self, student_logits, labels, teacher: dict, temperature: float = 1.0,
                 options: dict | None = None):
        return self.loss(student_logits, labels, teacher, options or {})

    def label(self, options: dict) -> str:
        if self.name == "hybrid":
            return (f"hybrid({options.get('kd_mapped_weight', 1.0):g}, "
                    f"{options.get('kd_uld_weight', 1.0):g})")
        return self.name


CROSS_OBJECTIVES = {objective.name: objective for objective in (
    CrossObjective("span_kl", lambda s, y, t, o: batch_span_kl(s, y, t)),
    CrossObjective("mapped_kl", lambda s, y, t, o: _mean(batch_mapped(s, y, t), s)),
    CrossObjective("uld", lambda s, y, t, o: _mean(batch_uld(s, y, t, (ONE_TO_ONE, SPAN_START)),
                                                   s)),
    CrossObjective("hybrid", _hybrid),
)}
register_objectives(CROSS_OBJECTIVES, cross=True)
