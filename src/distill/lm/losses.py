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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.params_fields import objective_named, register_objectives

IGNORE_INDEX = -100
CHUNK_POSITIONS = 1024  # positions per chunk: memory is chunk x vocab, not batch x seq x vocab


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last axis, with 0 log 0 = 0."""
    p = log_p.exp()
    support = p > 0
    # Outside p's support both logs may be -inf; zero them *before* subtracting, or
    # backward multiplies 0 by NaN even where torch.where discards the value.
    log_p, log_q = (torch.where(support, x, torch.zeros_like(x)) for x in (log_p, log_q))
    return (p * (log_p - log_q)).sum(-1)


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


def topk_buckets(student_logits, topk_ids, topk_logprobs, temperature: float = 1.0):
    """(teacher, student) log-probs over k + 1 buckets: the teacher's top-k ids, then
    the tail (everything else). Shapes (..., k + 1)."""
    teacher_top = topk_logprobs.float()
    # Tail mass 1 - sum p_top. Summing k float32 probabilities is off by up to
    # ~k * eps, so a tail that small is not known to be empty, only below rounding:
    # floor it there. Only when the top-k covers the whole vocabulary is it exactly 0.
    # (A zero tail against a student tail > 0 makes reverse KL infinite.)
    k, vocab = teacher_top.shape[-1], student_logits.shape[-1]
    tail_mass = 1 - teacher_top.exp().sum(-1, keepdim=True)
    teacher_tail = torch.log(tail_mass.clamp_min(k * torch.finfo(torch.float32).eps)) \
        if k < vocab else torch.full_like(tail_mass, -torch.inf)
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


# --- the divergences: per position, over the last axis --------------------------
# Each takes the teacher's and the student's log-probs (log p_T, log p_S), already
# softened, and returns one value per position. Options are keyword arguments.

def _log_mix(log_p, log_q, weight: float):
    """log(weight * p + (1 - weight) * q), stable in log space."""
    if weight in (0, 1):  # log(0) is not a float: the mixture is just one side
        return log_p if weight == 1 else log_q
    # logaddexp(-inf, -inf) has a NaN gradient; a finite floor keeps it defined
    floor = torch.finfo(log_p.dtype).min
    return torch.logaddexp(log_p.clamp_min(floor) + math.log(weight),
                           log_q.clamp_min(floor) + math.log1p(-weight))


def forward_kl(log_t, log_s):
    """Forward KL, KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)).
    Mass-covering: the student pays wherever the teacher has mass (Hinton et al.)."""
    return kl_divergence(log_t, log_s)


def reverse_kl(log_t, log_s):
    """Reverse KL, KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v)).
    Mode-seeking: the student pays for mass where the teacher has little (MiniLLM)."""
    return kl_divergence(log_s, log_t)


def generalized_jsd(log_t, log_s, beta: float = 0.5):
    """Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024):
    beta * KL(p_T || M) + (1 - beta) * KL(p_S || M), with M = beta p_T + (1 - beta) p_S.
    beta = 0.5 is the symmetric JSD. Near the ends the mixture formula vanishes like
    beta * KL(p_T || p_S) (beta -> 0) and (1 - beta) * KL(p_S || p_T) (beta -> 1), so
    beta = 0 returns forward KL(p_T || p_S) and beta = 1 reverse KL(p_S || p_T), the
    limits of the family divided by its vanishing weight (as TRL does)."""
    if beta == 0:
        return kl_divergence(log_t, log_s)
    if beta == 1:
        return kl_divergence(log_s, log_t)
    log_m = _log_mix(log_t, log_s, beta)
    return beta * kl_divergence(log_t, log_m) + (1 - beta) * kl_divergence(log_s, log_m)


def skew_kl(log_t, log_s, alpha: float = 0.1):
    """Skew forward KL (DistiLLM, Ko et al. 2024): KL(p_T || alpha p_T + (1 - alpha) p_S).
    alpha = 0 is forward KL; mixing in the teacher bounds the loss where p_S is tiny."""
    return kl_divergence(log_t, _log_mix(log_t, log_s, alpha))


def skew_reverse_kl(log_t, log_s, alpha: float = 0.1):
    """Skew reverse KL (DistiLLM): KL(p_S || alpha p_S + (1 - alpha) p_T); alpha = 0 is
    reverse KL."""
    return kl_divergence(log_s, _log_mix(log_s, log_t, alpha))


def total_variation(log_t, log_s):
    """Total variation distance, 0.5 * sum_v |p_T(v) - p_S(v)|: symmetric, in [0, 1]."""
    return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)


# --- a divergence applied to a batch: the teacher dense or as top-k ------------

def dense_divergence(divergence, student_logits, teacher_logits, labels=None,
                     temperature: float = 1.0, **options):
    """Mean of `divergence` over kept positions, the teacher given as full logits
    (batch, seq, vocab), both sides softened by `temperature`."""
    def per_position(student, teacher):
        return divergence(F.log_softmax(teacher.float() / temperature, -1),
                          F.log_softmax(student.float() / temperature, -1), **options)
    keep = _kept_positions(labels, student_logits.shape)
    return _mean_over_chunks(per_position, [student_logits, teacher_logits], keep)


def topk_divergence(divergence, student_logits, topk_ids, topk_logprobs, labels=None,
                    temperature: float = 1.0, **options):
    """Mean of `divergence` over kept positions, the teacher given as its top-k ids and
    log-probs (batch, seq, k) plus the tail bucket (see `topk_buckets`)."""
    def per_position(student, ids, logprobs):
        return divergence(*topk_buckets(student, ids, logprobs, temperature), **options)
    keep = _kept_positions(labels, student_logits.shape)
    return _mean_over_chunks(per_position, [student_logits, topk_ids, topk_logprobs], keep)


# --- the objectives that `kd_loss` names -------------------------------------
# An objective is called as objective(student_logits, labels, teacher, temperature,
# options) and returns the KD term: `teacher` is the teacher signal of the batch, a
# dict from which each objective reads what it needs ('logits' for a teacher in
# memory; 'topk_ids' and 'topk_logprobs' as cached by stage 01), and `options` are
# the params' kd_* values. The objectives for a student with another tokenizer have the
# same call; they live with the alignment they need (distill.lm.alignment.CROSS_OBJECTIVES)
# and `objective_named` finds either kind.

@dataclass(frozen=True)
class DivergenceObjective:
    """A divergence between the teacher's and the student's next-token distributions
    over one vocabulary: dense where the teacher signal has 'logits', else over the
    cached top-k plus the tail bucket."""

    divergence: Callable
    option: str | None = None  # the divergence's one keyword; params key 'kd_' + option

    @property
    def name(self) -> str:
        return self.divergence.__name__

    def dense(self, student_logits, teacher_logits, labels=None, temperature=1.0, **options):
        return dense_divergence(self.divergence, student_logits, teacher_logits, labels,
                                temperature, **options)

    def topk(self, student_logits, topk_ids, topk_logprobs, labels=None, temperature=1.0,
             **options):
        return topk_divergence(self.divergence, student_logits, topk_ids, topk_logprobs,
                               labels, temperature, **options)

    def __call__(self, student_logits, labels, teacher: dict, temperature: float = 1.0,
                 options: dict | None = None):
        keywords = {self.option: (options or {})[f"kd_{self.option}"]} if self.option else {}
        if teacher.get("logits") is not None:
            return self.dense(student_logits, teacher["logits"], labels, temperature,
                              **keywords)
        return self.topk(student_logits, teacher["topk_ids"], teacher["topk_logprobs"],
                         labels, temperature, **keywords)

    def label(self, options: dict) -> str:
        """The name with its option value, e.g. 'generalized_jsd(0.5)'."""
        return f"{self.name}({options[f'kd_{self.option}']:g})" if self.option else self.name


OBJECTIVES = {objective.name: objective for objective in (
    DivergenceObjective(forward_kl),
    DivergenceObjective(reverse_kl),
    DivergenceObjective(generalized_jsd, "beta"),
    DivergenceObjective(skew_kl, "alpha"),
    DivergenceObjective(skew_reverse_kl, "alpha"),
    DivergenceObjective(total_variation),
)}


register_objectives(OBJECTIVES, cross=False)


def cross_entropy(student_logits, labels):
    """Sequence-level distillation: -log p_S(teacher's token), mean over kept positions."""
    keep = labels != IGNORE_INDEX
    if not keep.any():  # a mean over no positions is 0, not NaN
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float()[keep], labels[keep])


def distillation_loss(student_logits, labels, teacher: dict, *, ce_weight: float,
                      kd_weight: float, temperature: float, kd_loss: str = "forward_kl",
                      options: dict | None = None) -> dict[str, torch.Tensor]:
    """Total = ce_weight * CE + kd_weight * T^2 * KD, KD being the objective named
    `kd_loss` in OBJECTIVES, given the batch's teacher signal `teacher` (full logits
    online, or top-k ids and log-probs offline) and the params' kd_* `options`.
    Returns the parts and the total, so the log shows what the optimizer saw."""
    parts = {}
    if ce_weight:
        parts["ce"] = cross_entropy(student_logits, labels)
    if kd_weight:
        parts["kd"] = objective_named(kd_loss)(student_logits, labels, teacher, temperature,
                                               options)
    total = ce_weight * parts.get("ce", 0.0) + kd_weight * temperature**2 * parts.get("kd", 0.0)
    return {"loss": total, **parts}


# --- hidden-state distillation (DistilBERT, Minitron) -------------------------

class HiddenStateLoss(torch.nn.Module):
    """Distance between student and teacher hidden states at mapped layers.

    For each (student layer, teacher layer) pair, the student's output h_S goes
    through a learned linear projection to the teacher's width when the widths
    differ (identity otherwise), then
      mse:    mean over kept positions of mean_d (W h_S - h_T)_d^2
      cosine: mean over kept positions of 1 - cos(W h_S, h_T)
    and the result is averaged over the pairs. The projections are trained with
    the student (their parameters belong to this module).
    """

    def __init__(self, pairs: list[tuple[int, int]], student_width: int, teacher_width: int,
                 kind: str = "cosine"):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"hidden_loss must be mse or cosine, got {kind!r}")
        self.pairs, self.kind = [tuple(p) for p in pairs], kind
        self.projections = torch.nn.ModuleList(
            torch.nn.Identity() if student_width == teacher_width
            else torch.nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs)

    def forward(self, student_hidden: dict, teacher_hidden: dict, keep: torch.Tensor):
        """`*_hidden` map layer index -> (batch, seq, width); `keep` is (batch, seq) bool."""
        total = 0.0
        for (s, t), projection in zip(self.pairs, self.projections):
            h_s = projection(student_hidden[s][keep].float())
            h_t = teacher_hidden[t][keep].float()
            if self.kind == "mse":
                total = total + ((h_s - h_t) ** 2).mean()
            else:
                total = total + (1 - F.cosine_similarity(h_s, h_t, dim=-1)).mean()
        return total / len(self.pairs)
