"""Metrics that say how much of the teacher a student keeps, and at what cost.

- Teacher-forced fidelity on the held-out teacher completions: forward
  KL(p_T || p_S) per completion token (the training objective's direction) and
  top-1 agreement (student's argmax == teacher's argmax).
- The same on a text corpus that no stage trains on (prose), and perplexity there.
- Generated answers: ROUGE-L against the teacher's answer (the shipped local
  `evaluate` module), and, where the prompt has a reference, exact match and
  reference-in-answer accuracy.
- Cost: parameters, size on disk, generation tokens/s.
"""

from __future__ import annotations

import functools
import math
import re
import string
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import builtin_path, encode_chat, id_windows
from .generation import generate_all
from .losses import IGNORE_INDEX, dense_divergence, forward_kl
from .samples import Example, build_examples, collate


@torch.inference_mode()
def teacher_forced_fidelity(teacher, students: dict, samples, pad_id: int,
                            batch_size: int) -> dict[str, dict]:
    """{name: {'kl', 'top1_agreement', 'nll', 'tokens'}} over the completion tokens of
    `samples` (a samples DataFrame, or Examples such as `prose_examples`), with the
    teacher's logits computed once per batch for all students. `nll` is the mean
    next-token loss on the text itself: exp(nll) is the perplexity."""
    examples = samples if isinstance(samples, list) else build_examples(samples)
    sums = {name: {"kl": 0.0, "agree": 0, "nll": 0.0, "tokens": 0} for name in students}
    for start in tqdm(range(0, len(examples), batch_size), desc="teacher-forced scoring"):
        batch = collate(examples[start:start + batch_size], pad_id)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        teacher_logits = teacher(**inputs).logits[:, :-1].float()
        keep = batch["labels"] != IGNORE_INDEX
        count = int(keep.sum())
        for name, student in students.items():
            student_logits = student(**inputs).logits[:, :-1].float()
            sums[name]["kl"] += float(dense_divergence(
                forward_kl, student_logits, teacher_logits, batch["labels"])) * count
            same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
            sums[name]["agree"] += int(same[keep].sum())
            sums[name]["nll"] += float(torch.nn.functional.cross_entropy(
                student_logits[keep], batch["labels"][keep], reduction="sum"))
            sums[name]["tokens"] += count
    return {name: {"kl": s["kl"] / s["tokens"], "top1_agreement": s["agree"] / s["tokens"],
                   "nll": s["nll"] / s["tokens"], "tokens": s["tokens"]}
            for name, s in sums.items()}


def prose_examples(tokenizer, text: str, max_tokens: int, block_size: int) -> list[Example]:
    """The first `max_tokens` tokens of plain text as teacher-forcing examples: windows
    of `block_size` next tokens, each token after the first scored once."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise ValueError("the prose corpus is shorter than two tokens")
    windows = id_windows(ids, block_size)
    # no cached top-k: the teacher scores these live
    return [Example(w, w[1:], [[] for _ in w[1:]], [[] for _ in w[1:]]) for w in windows]


def generate_answers(model, tokenizer, messages: list[list[dict]], max_new_tokens: int,
                     batch_size: int, desc: str) -> tuple[list[str], float]:
    """Greedy answers for each chat, and generation tokens/s."""
    prompt_ids = [encode_chat(tokenizer, m) for m in messages]
    with tqdm(total=len(prompt_ids), desc=desc, unit="prompt") as progress:
        start = time.perf_counter()
        outputs = generate_all(model, tokenizer, prompt_ids, batch_size, progress,
                               max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - start
    tokens = sum(len(o["completion_ids"]) for o in outputs)
    answers = [tokenizer.decode(o["completion_ids"], skip_special_tokens=True) for o in outputs]
    return answers, tokens / seconds


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and extra spaces (SQuAD-style answer matching)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def exact_match(answer: str, reference: str) -> bool:
    """The normalized answer is the normalized reference."""
    return normalize(answer) == normalize(reference)


def reference_in_answer(answer: str, reference: str) -> bool:
    """The normalized reference appears in the normalized answer as whole words:
    lenient scoring for chat models that answer in a sentence."""
    return re.search(rf"\b{re.escape(normalize(reference))}\b", normalize(answer)) is not None


@functools.cache
def _rouge_metric():
    """The shipped local ROUGE-L module, loaded once per process (not once per model)."""
    import evaluate

    return evaluate.load(str(builtin_path("rouge_l")))


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure per pair, through `evaluate` with the shipped local module."""
    return _rouge_metric().compute(predictions=predictions,
                                   references=references)["rougeL_per_pair"]


def answer_scores(answers: list[str], teacher_answers: list[str],
                  references: list[str | None]) -> dict:
    """ROUGE-L vs the teacher's answers, and accuracy on the prompts with a reference."""
    scores = {"rouge_l_vs_teacher": sum(rouge_l(answers, teacher_answers)) / len(answers)}
    graded = [(a, r) for a, r in zip(answers, references) if r is not None]
    scores["graded_prompts"] = len(graded)
    scores["exact_match"] = (sum(exact_match(a, r) for a, r in graded) / len(graded)
                             if graded else None)
    scores["reference_in_answer"] = (sum(reference_in_answer(a, r) for a, r in graded)
                                     / len(graded) if graded else None)
    return scores


def summary_table(contenders: dict, folders: dict, fidelity: dict, prose: dict,
                  scores: dict, speed: dict):
    """One row per model, one column per figure: size and cost, fidelity under teacher
    forcing on the held-out answers and on held-out prose (with the perplexity there,
    exp of its mean next-token loss), answer scores, generation speed (what
    metrics.json holds)."""
    import pandas as pd

    from .models import count_parameters, folder_size

    return pd.DataFrame({
        name: {
            "parameters_m": count_parameters(model) / 1e6,
            "size_mb": folder_size(folders[name]) / 2**20 if Path(folders[name]).is_dir()
            else None,
            "heldout_kl": fidelity[name]["kl"],
            "top1_agreement": fidelity[name]["top1_agreement"],
            "prose_kl": prose[name]["kl"],
            "prose_top1_agreement": prose[name]["top1_agreement"],
            "perplexity": math.exp(prose[name]["nll"]),
            **scores[name],
            "generation_tokens_per_second": speed[name],
        } for name, model in contenders.items()}).T
