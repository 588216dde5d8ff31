"""What a model costs to serve, measured the same way for every model, and what a
student is worth as its teacher's draft model.

- **Decode tokens/s** at a batch size: greedy decoding of a fixed number of new
  tokens with no early stop (every model does the same work), after a warm-up, the
  best of `repeats` timings. One process, one precision for all models.
- **Scoring tokens/s**: teacher-forced forward passes over whole sequences, what
  serving log-probs (or a teacher's top-k for distillation) costs.
- **Speed-up**: a model's rate over the teacher's, per figure.
- **Draft model** (speculative decoding, Leviathan et al. 2023): the student proposes
  tokens, the teacher verifies them. Per position, a proposal from p_S is accepted
  with probability sum_v min(p_T, p_S) = 1 - TV(p_T, p_S) (`acceptance`, computed with
  the teacher-forced figures); with that rate alpha, a draft of gamma tokens yields
  (1 - alpha^(gamma + 1)) / (1 - alpha) tokens per teacher forward. `assisted_decoding`
  times the teacher's own greedy output with the student as transformers'
  `assistant_model` against the teacher alone.

Decode speed follows the number of layers far more than their width for a model this
small on a CPU: per token, each layer costs a handful of small matrix products whose
fixed overhead dominates.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .generation import generate, right_padded_logits

DRAFT_GAMMA = 4  # draft length the expected-accepted-length figure is given for


def _best_seconds(work, repeats: int, warm_up) -> float:
    """Fastest of `repeats` timings of `work()`, after one untimed, shorter `warm_up()`
    (the first call's one-time costs)."""
    warm_up()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def _cycled(items: list, count: int) -> list:
    return [items[i % len(items)] for i in range(count)]


@torch.inference_mode()
def decode_tokens_per_second(model, tokenizer, prompt_ids: list[list[int]], batch_size: int,
                             new_tokens: int = 64, repeats: int = 3) -> float:
    """Greedy decode rate of `batch_size` prompts (the first ones, cycled if fewer) for
    exactly `new_tokens` each: prefill included, as a user waits for it."""
    batch = _cycled(prompt_ids, batch_size)
    seconds = _best_seconds(  # a short warm-up: the first call's one-time costs are paid early
        lambda: generate(model, tokenizer, batch, new_tokens, fixed_length=True), repeats,
        warm_up=lambda: generate(model, tokenizer, batch, min(new_tokens, 4), fixed_length=True))
    return batch_size * new_tokens / seconds


@torch.inference_mode()
def scoring_tokens_per_second(model, sequences: list[list[int]], batch_size: int = 4,
                              repeats: int = 3) -> float:
    """Teacher-forced forward passes over `sequences` (token ids, right-padded per
    batch): real tokens scored per second."""
    batches = [sequences[i:i + batch_size] for i in range(0, len(sequences), batch_size)]
    seconds = _best_seconds(lambda: [right_padded_logits(model, b) for b in batches], repeats,
                            warm_up=lambda: right_padded_logits(model, batches[0]))
    return sum(map(len, sequences)) / seconds


def speed_table(models: dict, tokenizers: dict, prompt_ids: dict, sequences: dict,
                batch_sizes=(1, 32), new_tokens: int = 64, repeats: int = 3,
                reference: str = "teacher") -> dict:
    """{model: figures}: decode tokens/s at each batch size, scoring tokens/s, and each
    over the `reference` model's (`decode_speedup_batch<n>`, `scoring_speedup`).
    `tokenizers`, `prompt_ids` and `sequences` are per model: each reads its own
    tokenization."""
    figures = {}
    for name, model in tqdm(models.items(), desc="speed", unit="model"):
        figures[name] = {f"decode_tokens_per_second_batch{b}": decode_tokens_per_second(
            model, tokenizers[name], prompt_ids[name], b, new_tokens, repeats)
            for b in batch_sizes}
        figures[name]["scoring_tokens_per_second"] = scoring_tokens_per_second(
            model, sequences[name], repeats=repeats)
    if reference in figures:
        base = figures[reference]
        for row in figures.values():
            row.update({rate.replace("tokens_per_second", "speedup"): row[rate] / base[rate]
                        for rate in list(row)})
    return figures


def expected_accepted_tokens(acceptance: float, gamma: int = DRAFT_GAMMA) -> float:
    """Tokens gained per teacher forward with a draft of `gamma` tokens whose positions
    are each accepted with probability `acceptance` (the teacher's own token included)."""
    if acceptance >= 1:
        return gamma + 1.0
    return (1 - acceptance ** (gamma + 1)) / (1 - acceptance)


@torch.inference_mode()
def assisted_decoding(teacher, draft, prompt_ids: list[list[int]], new_tokens: int) -> dict:
    """The teacher's greedy answers to each prompt (batch 1), alone and with `draft` as
    transformers' `assistant_model`: seconds of each (after a warm-up), their ratio, and
    the share of prompts whose two outputs are identical (speculative decoding must not
    change the teacher's output)."""
    def run(prompt, **assist):
        ids = torch.tensor([prompt], device=teacher.device)
        return teacher.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                do_sample=False, max_new_tokens=new_tokens,
                                pad_token_id=teacher.generation_config.eos_token_id,
                                **assist)[0, len(prompt):].tolist()

    run(prompt_ids[0], assistant_model=draft)  # warm-up, both paths
    run(prompt_ids[0])
    seconds = {"alone": 0.0, "assisted": 0.0}
    identical = 0
    for prompt in tqdm(prompt_ids, desc="assisted decoding", unit="prompt"):
        start = time.perf_counter()
        alone = run(prompt)
        seconds["alone"] += time.perf_counter() - start
        start = time.perf_counter()
        assisted = run(prompt, assistant_model=draft)
        seconds["assisted"] += time.perf_counter() - start
        identical += alone == assisted
    return {"assisted_speedup": seconds["alone"] / seconds["assisted"],
            "assisted_identical": identical / len(prompt_ids),
            "assisted_seconds": seconds["assisted"], "teacher_alone_seconds": seconds["alone"]}


BUDGET_BATCH_SIZES = (1, 32)  # a speed budget holds for one user and for a served batch


def speedup_meter(teacher, tokenizer, prompt_ids: list[list[int]],
                  batch_sizes=BUDGET_BATCH_SIZES, new_tokens: int = 32, repeats: int = 3):
    """A function model -> its decode speed-up over `teacher` here: the smallest over
    `batch_sizes` of its tokens/s over the teacher's (a budget must hold at each).
    The teacher is timed again beside every model, turn about (teacher, model, teacher,
    ...), each the best of its `repeats`: on a shared machine the speed of both drifts by
    15% within minutes, and a teacher timed once, earlier, biases every ratio after it.
    Models are timed as they are (same device and dtype as the teacher)."""
    def ratio(model, batch: int) -> float:
        batch_ids = _cycled(prompt_ids, batch)
        runs = {"teacher": float("inf"), "model": float("inf")}
        for who in (teacher, model):  # warm-up, short
            generate(who, tokenizer, batch_ids, min(new_tokens, 4), fixed_length=True)
        for _ in range(repeats):
            for name, who in (("teacher", teacher), ("model", model)):
                start = time.perf_counter()
                generate(who, tokenizer, batch_ids, new_tokens, fixed_length=True)
                runs[name] = min(runs[name], time.perf_counter() - start)
        return runs["teacher"] / runs["model"]

    return torch.inference_mode()(lambda model: min(ratio(model, b) for b in batch_sizes))
