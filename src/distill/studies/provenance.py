"""Was a suspect model S distilled from a candidate teacher T? Three tests, each a
statistic with a p-value under a stated null, so that a model that was *not* distilled
from T is flagged at rate alpha or less.

1. Output agreement (`output_agreement`; text only, so endpoints will do).
2. Reference-normalised likelihood (`likelihood_lift`; needs S's log-probs).
3. Watermark radioactivity (`watermark_radioactivity`; needs a teacher that sampled
   under `teacher_sampling.watermark` and S with its tokenizer).

Notebook 05 and `distill provenance` run them; the functions here are the statistics.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.runs import SAMPLES, read_json, write_json
from ..lm.data import encode_chat
from ..lm.generation import batches_by_length, right_padded_logits
from ..lm.samples import read_samples
from ..lm.watermark import Watermark, binomial_upper_tail, detect

TABLE, RESULTS = "provenance.csv", "provenance.json"  # what notebook 05 writes
EXACT_SIGN_FLIPS = 16  # up to this many prompts, every sign pattern is enumerated


class TooFewPrompts(ValueError):
    """A test would have no power: even the most extreme data could not reach alpha."""


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order: with p_(1) <= ... <= p_(m),
    adj_(i) = max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where adj <= alpha
    keeps the chance of any false rejection among the m at alpha or less."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def mcnemar_greater(only_a: int, only_b: int) -> float:
    """One-sided exact McNemar test that S agrees with A more often than with B, on the
    same prompts: of the prompts where S agrees with exactly one of them (`only_a` +
    `only_b`), each is A's or B's with chance 1/2 under the null, so
    p = P(X >= only_a), X ~ Binomial(only_a + only_b, 1/2). Paired, unlike a
    two-proportion test: S agreeing with A on a prompt makes it less likely to agree with
    B there, and a test that assumed the counts independent would give p-values too small."""
    return binomial_upper_tail(only_a, only_a + only_b, 0.5) if only_a + only_b else 1.0


def prefers(agrees_a: list[bool], agrees_b: list[bool]) -> float:
    """`mcnemar_greater` on two models' per-prompt agreement with S: the one-sided p that
    S agrees with A more often than with B, from the prompts where it agrees with one."""
    pairs = list(zip(agrees_a, agrees_b))
    return mcnemar_greater(sum(a and not b for a, b in pairs), sum(b and not a for a, b in pairs))


def token_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the whitespace-separated words of a and b."""
    x, y = a.split(), b.split()
    row = list(range(len(y) + 1))
    for i, word in enumerate(x, start=1):
        previous, row[0] = row[0], i
        for j, other in enumerate(y, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1,
                                           previous + (word != other))
    return row[-1]


def answers_agree(a: str, b: str, max_edit: float = 0.0) -> bool:
    """The same answer: at most `max_edit` (a share of the longer answer's words) word
    edits apart; 0 asks for the same words."""
    longest = max(len(a.split()), len(b.split()))
    return token_edit_distance(a, b) <= max_edit * longest


def min_prompts_agreement(alpha: float, comparisons: int) -> int:
    """The fewest prompts with which the best possible outcome (S agreeing with the best
    model on every prompt and with no other) reaches alpha after Holm's correction:
    2^-n <= alpha / comparisons."""
    return math.ceil(math.log2(max(comparisons, 1) / alpha))


def output_agreement(suspect: list[str], models: dict[str, list[str]], max_edit: float = 0.0,
                     alpha: float = 0.05) -> dict:
    """How often S answers as each model does, and whether one model stands out.

    Statistic: m_j, the prompts (of n) where S's greedy answer agrees with model j's.
    Null: the best model j* agrees with S no more often than another model k. For each
    k, a one-sided exact McNemar test on the prompts where S agrees with only one of j*
    and k (`mcnemar_greater`), Holm-corrected over the k; j* stands out when every
    corrected p is <= alpha, so the test's p-value is the largest of them (an
    intersection-union test, which Holm's correction makes conservative)."""
    if len(models) < 2:
        raise ValueError("output agreement compares S's answers with those of two or more "
                         "models (candidates and a control); it was given "
                         f"{len(models)}: add a --control or a second --candidate")
    n = len(suspect)
    need = min_prompts_agreement(alpha, len(models) - 1)
    if n < need:
        raise TooFewPrompts(f"output agreement needs at least {need} prompts to reach "
                            f"alpha={alpha} among {len(models)} models; it has {n}")
    agrees = {name: [answers_agree(s, a, max_edit) for s, a in zip(suspect, answers)]
              for name, answers in models.items()}
    matches = {name: sum(flags) for name, flags in agrees.items()}
    best = max(matches, key=matches.get)
    others = [name for name in models if name != best]
    raw = [prefers(agrees[best], agrees[k]) for k in others]
    adjusted = holm(raw)
    return {"prompts": n, "matches": matches, "best": best,
            "comparisons": {k: {"p": p, "p_holm": q} for k, p, q in zip(others, raw, adjusted)},
            "p_value": max(adjusted)}


def sign_flip_test(d, permutations: int = 10_000, seed: int = 0) -> dict:
    """One-sided sign-flip permutation test on mean(d): under the null that each d_i is
    symmetric about 0, flipping signs at random leaves the distribution of the mean
    unchanged, so p = P(mean(s * d) >= mean(d)) over random signs s (exact enumeration
    up to EXACT_SIGN_FLIPS values; else (1 + hits) / (1 + permutations), which is a
    valid p-value with a finite number of draws). NaN values are dropped."""
    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n == 0:
        return {"prompts": 0, "mean_d": float("nan"), "p_value": float("nan")}
    observed = float(d.mean())
    if n <= EXACT_SIGN_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n))).reshape(-1, n)
        means = (signs * d).mean(1)
        p = float((means >= observed - 1e-12).mean())
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(permutations, n))
        p = (1 + int(((signs * d).mean(1) >= observed - 1e-12).sum())) / (1 + permutations)
    return {"prompts": n, "mean_d": observed, "p_value": p}


def min_prompts_sign_flip(alpha: float) -> int:
    """The fewest prompts whose most extreme outcome (every d_i > 0) reaches alpha:
    2^-n <= alpha."""
    return math.ceil(math.log2(1 / alpha))


@torch.inference_mode()
def answer_logliks(model, tokenizer, messages: list[list[dict]], answers: list[str],
                   batch_size: int = 8, desc: str = "scoring answers") -> np.ndarray:
    """Per answer, ell = (1 / |y|) sum_t log p(y_t | prompt, y_<t): the mean log-prob per
    token of the answer's text y after the chat prompt, teacher-forced. NaN for an
    answer of no tokens."""
    prompts = [encode_chat(tokenizer, m) for m in messages]
    replies = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    values = np.full(len(answers), np.nan)
    batches = batches_by_length([len(p) + len(r) for p, r in zip(prompts, replies)], batch_size)
    for batch in tqdm(batches, desc=desc):
        batch = [i for i in batch if replies[i]]
        if not batch:
            continue
        logits = right_padded_logits(model, [prompts[i] + replies[i] for i in batch]).float()
        for row, i in enumerate(batch):
            start, reply = len(prompts[i]), torch.tensor(replies[i], device=logits.device)
            logprobs = torch.log_softmax(logits[row, start - 1:start - 1 + len(reply)], -1)
            values[i] = logprobs.gather(-1, reply[:, None]).mean().item()
    return values


def likelihood_lift(suspect_on_teacher, suspect_on_control, reference_on_teacher=None,
                    reference_on_control=None, permutations: int = 10_000, seed: int = 0,
                    alpha: float = 0.05) -> dict:
    """Does S find the candidate's answers likelier than a control's, beyond what a
    reference model R does? Per prompt

        d_i = [ell_S(y_T) - ell_R(y_T)] - [ell_S(y_C) - ell_R(y_C)],

    with ell the per-token log-likelihood (`answer_logliks`), y_T the candidate's answer
    and y_C the control's. R (for a pruned student: its initialisation) removes what S
    owes to its weights rather than to training; without R its terms are 0. Null: d_i
    symmetric about 0; `sign_flip_test`, one-sided (S distilled from T makes d > 0)."""
    s_t, s_c = np.asarray(suspect_on_teacher), np.asarray(suspect_on_control)
    r_t = np.zeros_like(s_t) if reference_on_teacher is None else np.asarray(reference_on_teacher)
    r_c = np.zeros_like(s_c) if reference_on_control is None else np.asarray(reference_on_control)
    d = (s_t - r_t) - (s_c - r_c)
    need = min_prompts_sign_flip(alpha)
    if permutations < 1 / alpha - 1:
        raise ValueError(f"permutations={permutations} can never give p <= alpha={alpha} "
                         f"(the smallest p is 1 / (1 + permutations)); use at least "
                         f"{math.ceil(1 / alpha - 1)}")
    if int((~np.isnan(d)).sum()) < need:
        raise TooFewPrompts(f"the likelihood test needs at least {need} prompts with "
                            f"non-empty answers to reach alpha={alpha}; it has "
                            f"{int((~np.isnan(d)).sum())}")
    return {**sign_flip_test(d, permutations, seed), "d": d.tolist()}


def watermark_radioactivity(tokenizer, messages: list[list[dict]], answers: list[str],
                            watermark: Watermark) -> dict:
    """Does S write the teacher's watermark? S's answers, in S's tokens after the last
    token of each prompt: of their n distinct (previous token, token) pairs, G are
    green. Null: S never learnt from watermarked text, so its text is independent of
    the key and G ~ Binomial(n, gamma) (`distill.lm.watermark.detect`). S must have the
    watermarked teacher's tokenizer: the green list hashes token ids."""
    texts = [encode_chat(tokenizer, m)[-1:] + tokenizer(a, add_special_tokens=False)["input_ids"]
             for m, a in zip(messages, answers)]
    return detect(texts, watermark)


def saved_answers(path: Path, prompt_ids: list[str], max_new_tokens: int, produce) -> list[str]:
    """A model's answers to the prompts, from `path` where they were saved for the same
    prompts and length, else `produce()` (then saved): a re-run asks no model twice."""
    key = {"prompt_ids": list(prompt_ids), "max_new_tokens": max_new_tokens}
    saved = read_json(path, {})
    if {name: saved.get(name) for name in key} == key:
        return saved["answers"]
    answers = produce()
    write_json(path, {**key, "answers": answers})
    return answers


def fresh_prompts(prompts: list[dict], runs: list, count: int | None, seed: int) -> list[dict]:
    """Up to `count` prompts (a seeded shuffle) that none of the given run folders trained
    on: a model is tested on prompts it has not seen answered."""
    seen: set[str] = set()
    for run in map(Path, runs):
        # a run folder, or its student/ (or student_init/) folder inside it
        for folder in (run, run.parent):
            if (folder / SAMPLES).is_dir():
                seen |= set(read_samples(folder, split="train")["prompt_id"])
                break
    unseen = [p for p in prompts if p["prompt_id"] not in seen]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unseen)).tolist()
    return [unseen[i] for i in order[:count]]
