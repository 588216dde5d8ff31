"""Batched generation that records log-probs, and prompt scoring.

The one place that runs a causal LM forward for *inference*: the local teacher
backend (01), on-policy batches (02), answers for evaluation (03) and
`distill serve` all call these functions. Log-probs are those of the raw logits
(log_softmax before temperature or top-p), as vLLM reports them by default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and, given a model's
    `generation_config`, the EOS ids it configures (chat models often add one)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


class _StopAbandoned:
    """A stopping criterion: rows whose caller has gone (`abandoned()[row]`) count as
    finished, so a batch ends as soon as no caller waits for any of its rows."""

    def __init__(self, abandoned: Callable[[], list[bool]]):
        self.abandoned = abandoned

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.tensor(self.abandoned(), dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             top_k_logprobs: int = 0, token_logprobs: bool = False,
             abandoned: Callable[[], list[bool]] | None = None) -> list[dict]:
    """Generate for one batch of tokenized prompts (left-padded together).

    Returns one dict per prompt: `completion_ids` (up to and including the stop
    token), `finish_reason` ('stop' or 'length') and, when top_k_logprobs > 0,
    `topk_ids` / `topk_logprobs` per completion token from the raw logits; with
    `token_logprobs`, also `token_logprobs`: the raw log-prob of each chosen token.
    `abandoned()`, if given, is asked after every step which rows nobody waits for
    any more; those stop (their results are cut short and meaningless).
    """
    from transformers import StoppingCriteriaList

    stops = stop_token_ids(tokenizer, model.generation_config)
    batch = tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} \
        if do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    criteria = StoppingCriteriaList([_StopAbandoned(abandoned)]) if abandoned else None
    output = model.generate(
        input_ids=batch["input_ids"].to(model.device),
        attention_mask=batch["attention_mask"].to(model.device),
        max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        output_logits=bool(top_k_logprobs or token_logprobs), return_dict_in_generate=True,
        stopping_criteria=criteria, **sampling)
    new_tokens = output.sequences[:, batch["input_ids"].shape[1]:].cpu()
    if top_k_logprobs or token_logprobs:
        # (steps, batch, vocab) raw logits -> per step log_softmax, reduced at once
        # so the (steps, batch, vocab) log-probs never exist together
        top, chosen = [], []
        for step, logits in enumerate(output.logits):
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            chosen.append(logprobs.gather(-1, new_tokens[:, step:step + 1]).squeeze(-1))
            if top_k_logprobs:
                top.append(logprobs.topk(top_k_logprobs, dim=-1))
        chosen_logprobs = torch.stack(chosen, dim=1)
        if top_k_logprobs:
            topk_logprobs = torch.stack([t.values for t in top], dim=1)
            topk_ids = torch.stack([t.indices for t in top], dim=1)
    results = []
    for row, tokens in enumerate(new_tokens.tolist()):
        stop_at = next((i for i, t in enumerate(tokens) if t in stops), None)
        length = len(tokens) if stop_at is None else stop_at + 1
        result = {"completion_ids": tokens[:length],
                  "finish_reason": "length" if stop_at is None else "stop"}
        if top_k_logprobs:
            result["topk_ids"] = topk_ids[row, :length].tolist()
            result["topk_logprobs"] = topk_logprobs[row, :length].tolist()
        if token_logprobs:
            result["token_logprobs"] = chosen_logprobs[row, :length].tolist()
        results.append(result)
    return results


def batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding to compute)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def generate_all(model, tokenizer, prompt_ids: list[list[int]], batch_size: int,
                 progress: tqdm | None = None, **settings) -> list[dict]:
    """`generate` over many prompts in length-sorted batches; results in input order."""
    results: list[dict | None] = [None] * len(prompt_ids)
    for batch in batches_by_length([len(p) for p in prompt_ids], batch_size):
        outputs = generate(model, tokenizer, [prompt_ids[i] for i in batch], **settings)
        for index, output in zip(batch, outputs):
            results[index] = output
        if progress is not None:
            progress.update(len(batch))
    return results


@torch.inference_mode()
def score_prompt(model, ids: list[int], top_k: int) -> tuple[list[float | None], list]:
    """Log-prob of every token given the ones before it (None for the first), and the
    top-k alternatives at each position, from one forward pass."""
    logits = model(torch.tensor([ids], device=model.device)).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).cpu()
    chosen = logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).tolist()
    top = logprobs.topk(top_k, dim=-1) if top_k else None
    alternatives = [list(zip(top.indices[i].tolist(), top.values[i].tolist())) if top else []
                    for i in range(len(ids) - 1)]
    return [None, *chosen], [None, *alternatives]
