"""Distillation objectives.

Conventions (as in Hugging Face): logits are (batch, seq, vocab) and already
aligned with their targets (no shifting inside); `labels` is (batch, seq) with
-100 at positions to ignore (prompt, padding), or None to use every position.
Each loss is the sum over kept positions divided by their number.

p_T is the teacher's next-token distribution, p_S the student's, both softened
by `temperature` T (logits / T). The T^2 factor of Hinton et al. (2015), which
keeps gradient scale independent of T, is applied by the training objective
(`distillation_loss`), not here.

Two teacher signals share one divergence:
- dense: the teacher's full logits (teacher in memory);
- top-k: the teacher's k most likely token ids and their log-probs, cached at
  sampling time. The rest of the vocabulary is one explicit *tail bucket* of
  mass 1 - sum(top-k probs); the student's tail is its mass outside those k ids,
  so both are proper distributions over k + 1 outcomes. With k = vocab the tail
  is empty and the top-k loss equals the dense one. At T != 1 the teacher's tail
  is softened as if it were a single token (its split over the vocabulary is not
  known): an approximation that vanishes as the tail mass goes to zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
CHUNK_POSITIONS = 1024  # positions per chunk: memory is chunk x vocab, not batch x seq x vocab


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last axis, with 0 log 0 = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _kept_positions(labels: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    if labels is None:
        return torch.ones(shape[:-1], dtype=torch.bool)
    return labels != IGNORE_INDEX


def _mean_over_chunks(per_position, tensors: list[torch.Tensor], keep: torch.Tensor):
    """Apply `per_position` to the kept positions of `tensors`, CHUNK_POSITIONS at
    a time, and average. Returns 0 (with a graph) when nothing is kept."""
    keep = keep.to(tensors[0].device)
    flat = [t[keep] for t in tensors]
    count = flat[0].shape[0]
    if count == 0:
        return tensors[0].sum() * 0.0
    total = sum(per_position(*(t[i:i + CHUNK_POSITIONS] for t in flat)).sum()
                for i in range(0, count, CHUNK_POSITIONS))
    return total / count


def forward_kl(student_logits, teacher_logits, labels=None, temperature: float = 1.0):
    """Forward KL, KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)), mean over
    kept positions. Mass-covering: the student pays wherever the teacher has mass."""
    def per_position(student, teacher):
        return kl_divergence(F.log_softmax(teacher.float() / temperature, -1),
                             F.log_softmax(student.float() / temperature, -1))
    keep = _kept_positions(labels, student_logits.shape)
    return _mean_over_chunks(per_position, [student_logits, teacher_logits], keep)


def topk_buckets(student_logits, topk_ids, topk_logprobs, temperature: float = 1.0):
    """(teacher, student) log-probs over k + 1 buckets: the teacher's top-k ids, then
    the tail (everything else). Shapes (..., k + 1)."""
    teacher_top = topk_logprobs.float()
    # tail mass 1 - sum p_top, clamped at 0: float error can push the sum past 1
    teacher_tail = torch.log((1 - teacher_top.exp().sum(-1, keepdim=True)).clamp_min(0))
    teacher = torch.cat([teacher_top, teacher_tail], dim=-1)
    if temperature != 1.0:
        teacher = F.log_softmax(teacher / temperature, dim=-1)
    student_all = F.log_softmax(student_logits.float() / temperature, dim=-1)
    ids = topk_ids.long()
    student_top = student_all.gather(-1, ids)
    # a finite floor (not -inf) keeps logsumexp's gradient defined when k = vocab
    outside = student_all.scatter(-1, ids, torch.finfo(student_all.dtype).min)
    student_tail = outside.logsumexp(-1, keepdim=True)
    return teacher, torch.cat([student_top, student_tail], dim=-1)


def forward_kl_topk(student_logits, topk_ids, topk_logprobs, labels=None,
                    temperature: float = 1.0):
    """Forward KL(p_T || p_S) with the teacher given as top-k ids and log-probs
    (batch, seq, k) plus the tail bucket (see module docstring)."""
    def per_position(student, ids, logprobs):
        teacher, student = topk_buckets(student, ids, logprobs, temperature)
        return kl_divergence(teacher, student)
    keep = _kept_positions(labels, student_logits.shape)
    return _mean_over_chunks(per_position, [student_logits, topk_ids, topk_logprobs], keep)


def cross_entropy(student_logits, labels):
    """Sequence-level distillation: -log p_S(teacher's token), mean over kept positions."""
    return F.cross_entropy(student_logits.float().flatten(0, -2), labels.flatten(),
                           ignore_index=IGNORE_INDEX)


def distillation_loss(student_logits, labels, *, ce_weight: float, kd_weight: float,
                      temperature: float, teacher_logits=None, topk_ids=None,
                      topk_logprobs=None) -> dict[str, torch.Tensor]:
    """Total = ce_weight * CE + kd_weight * T^2 * KL(p_T || p_S). The teacher comes as
    full logits (online) or as top-k ids and log-probs (offline). Returns the parts
    and the total, so the log shows what the optimizer saw."""
    parts = {}
    if ce_weight:
        parts["ce"] = cross_entropy(student_logits, labels)
    if kd_weight:
        if teacher_logits is not None:
            parts["kd"] = forward_kl(student_logits, teacher_logits, labels, temperature)
        else:
            parts["kd"] = forward_kl_topk(student_logits, topk_ids, topk_logprobs, labels,
                                          temperature)
    total = ce_weight * parts.get("ce", 0.0) + kd_weight * temperature**2 * parts.get("kd", 0.0)
    return {"loss": total, **parts}
