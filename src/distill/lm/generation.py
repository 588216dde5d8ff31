"""Batched generation that records log-probs, and prompt scoring.

The one place that runs a causal LM forward for *inference*: the local teacher
backend (01), on-policy batches (02), answers for evaluation (03) and
`distill serve` all call these functions. Log-probs are those of the raw logits
(log_softmax before temperature or top-p), as vLLM reports them by default.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .data import encode_chat


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and, given a model's
    `generation_config`, the EOS ids it configures (chat models often add one)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def fence_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens that contain a code fence (```), found once per tokenizer."""
    if not hasattr(tokenizer, "_distill_fence_ids"):
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        tokenizer._distill_fence_ids = [i for i, t in enumerate(tokens) if t and "```" in t]
    return tokenizer._distill_fence_ids


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` from transformers 5.2x on,
    `past_key_values` before (still accepted there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


SHARED_PREFIX_MIN = 8  # tokens; below this a second forward costs more than it saves


def _prefill(model, tokenizer, prompt_ids: list[list[int]], cache):
    """Run the prompts through the model into `cache`, a fresh KV cache.

    Returns the attention mask, the position of each row's last token, and the
    float32 logits there. Chat prompts of one batch usually open alike (the
    template's system prompt): that shared prefix is computed once and copied to
    every row, and only the rest is padded and computed per row, as
    [prefix][padding][rest], which the attention mask and explicit positions make
    equivalent to the usual [padding][prefix][rest].
    """
    device = model.device
    with_cache = {_cache_argument(model): cache, "use_cache": True}
    shared = min(len(os.path.commonprefix(prompt_ids)), min(map(len, prompt_ids)) - 1)
    if len(prompt_ids) < 2 or shared < SHARED_PREFIX_MIN:
        shared = 0
    if shared:
        model(input_ids=torch.tensor([prompt_ids[0][:shared]], device=device),
              logits_to_keep=1, **with_cache)
        cache.batch_repeat_interleave(len(prompt_ids))
    rest = tokenizer.pad({"input_ids": [p[shared:] for p in prompt_ids]}, padding=True,
                         return_tensors="pt")
    rest_mask = rest["attention_mask"].to(device)
    mask = torch.cat([rest_mask.new_ones(len(prompt_ids), shared), rest_mask], dim=-1)
    positions = shared + (rest_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=rest["input_ids"].to(device), attention_mask=mask,
                   position_ids=positions, logits_to_keep=1, **with_cache).logits[:, -1]
    return mask, positions[:, -1], logits.float()


def _next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float,
                 top_p: float) -> torch.Tensor:
    """Greedy choice, or a draw from the tempered, nucleus-truncated distribution (the
    smallest set of most likely tokens whose probability reaches `top_p`)."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the more likely ones before it already reach top_p;
        # the most likely token is always kept
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1).squeeze(-1)


@torch.inference_mode()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             top_k_logprobs: int = 0, token_logprobs: bool = False,
             abandoned: Callable[[], list[bool]] | None = None,
             watermark=None, stop_after_fences: bool = False,
             fixed_length: bool = False) -> list[dict]:
    """Generate for one batch of tokenized prompts (left-padded together).

    Returns one dict per prompt: `completion_ids` (up to and including the stop
    token), `finish_reason` ('stop' or 'length') and, when top_k_logprobs > 0,
    `topk_ids` / `topk_logprobs` per completion token from the raw logits; with
    `token_logprobs`, also `token_logprobs`: the raw log-prob of each chosen token.
    `abandoned()`, if given, is asked after every step which rows nobody waits for
    any more; those stop (their results are cut short and meaningless).
    `watermark` (a `distill.lm.watermark.Watermark`), if given, biases every step's
    logits by the token before it; the log-probs recorded are then the watermarked
    model's, the distribution the tokens were drawn from. With `stop_after_fences`, a
    row stops at the token that closes its first ``` block (code answers: the prose a
    model adds after its code is not needed). With `fixed_length`, no row stops early:
    every row decodes `max_new_tokens` (speed measurement: the same work for every model).

    A decode loop of its own rather than `model.generate`, for speed on CPU: a row
    that has finished leaves the batch (and the KV cache) at once instead of being
    computed on as padding until the longest row ends, and the top-k is taken at
    each step rather than keeping every step's full-vocabulary logits. Greedy
    results equal `model.generate`'s (a test); only the sampling settings given here
    apply, not those of the model's `generation_config` (e.g. repetition penalties).
    """
    from transformers import DynamicCache

    stops = torch.tensor([] if fixed_length else stop_token_ids(tokenizer, model.generation_config),
                         dtype=torch.long)
    cache = DynamicCache(config=model.config)
    with_cache = {_cache_argument(model): cache, "use_cache": True}
    mask, position, logits = _prefill(model, tokenizer, prompt_ids, cache)
    rows = torch.arange(len(prompt_ids))  # the prompt each batch row belongs to
    previous = torch.tensor([ids[-1] for ids in prompt_ids])  # each row's last token
    results = [{"completion_ids": [], "finish_reason": "length"} for _ in prompt_ids]
    fences = torch.tensor(fence_token_ids(tokenizer)) if stop_after_fences else None
    fences_seen = torch.zeros(len(prompt_ids), dtype=torch.long)
    for result in results:
        result.update({"topk_ids": [], "topk_logprobs": []} if top_k_logprobs else {})
        result.update({"token_logprobs": []} if token_logprobs else {})
    for step in range(max_new_tokens):
        if watermark is not None:
            logits = watermark.bias(logits, previous)
        chosen = _next_tokens(logits, do_sample, temperature, top_p).cpu()
        if top_k_logprobs or token_logprobs:
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
            if token_logprobs:
                chosen_logprobs = logprobs.gather(-1, chosen[:, None]).squeeze(-1).tolist()
            if top_k_logprobs:
                top = logprobs.topk(top_k_logprobs, dim=-1)
                top_ids, top_values = top.indices.tolist(), top.values.tolist()
        for i, (row, token) in enumerate(zip(rows.tolist(), chosen.tolist())):
            result = results[row]
            result["completion_ids"].append(token)
            if top_k_logprobs:
                result["topk_ids"].append(top_ids[i])
                result["topk_logprobs"].append(top_values[i])
            if token_logprobs:
                result["token_logprobs"].append(chosen_logprobs[i])
        finished = torch.isin(chosen, stops)
        if fences is not None:  # the second fence closes the block the first opened
            fences_seen[rows] += torch.isin(chosen, fences).long()
            finished |= fences_seen[rows] >= 2
        for row in rows[finished].tolist():
            results[row]["finish_reason"] = "stop"
        if abandoned is not None:
            finished |= torch.tensor(abandoned(), dtype=torch.bool)[rows]
        if finished.all() or step == max_new_tokens - 1:
            break
        if finished.any():  # finished rows leave the batch and the cache
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep.to(model.device))
            rows, chosen, mask, position = rows[keep], chosen[keep], mask[keep], position[keep]
        previous = chosen
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        position = position + 1
        logits = model(input_ids=chosen[:, None].to(model.device), attention_mask=mask,
                       position_ids=position[:, None], **with_cache).logits[:, -1].float()
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


@torch.inference_mode()
def score_documents(model, windows: list[list[int]], top_k: int, batch_size: int = 8,
                    watermark=None) -> list[dict]:
    """Teacher forcing over plain text: for each window of token ids, the model's top-k
    next-token log-probs at every position after the first (no generation, so far
    cheaper per token than sampling). Returns per window `topk_ids` / `topk_logprobs`,
    one row per token from the second on, and `token_logprobs` (the log-prob of each
    token from the second on), as `generate` records for a completion; with a
    `watermark`, the log-probs of the watermarked model, as `generate` records them."""
    results = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        logits = right_padded_logits(model, chunk)[:, :-1]
        for row, window in enumerate(chunk):
            row_logits = logits[row, :len(window) - 1].float()
            if watermark is not None:
                row_logits = watermark.bias(row_logits, torch.tensor(window[:-1]))
            logprobs = torch.log_softmax(row_logits, -1)
            top = logprobs.topk(top_k)
            chosen = logprobs.gather(-1, torch.tensor(window[1:], device=logprobs.device)[:, None])
            results.append({"topk_ids": top.indices.tolist(), "topk_logprobs": top.values.tolist(),
                            "token_logprobs": chosen.squeeze(-1).tolist()})
    return results


def chat_answers(model, tokenizer, messages: list[list[dict]], max_new_tokens: int,
                 batch_size: int, desc: str, **sampling) -> tuple[list[str], float]:
    """Answers to each chat (token ids decoded without special tokens), greedy unless
    `sampling` says otherwise (do_sample, temperature, top_p), and the generation's
    tokens/s."""
    prompt_ids = [encode_chat(tokenizer, m) for m in messages]
    with tqdm(total=len(prompt_ids), desc=desc, unit="prompt") as progress:
        start = time.perf_counter()
        outputs = generate_all(model, tokenizer, prompt_ids, batch_size, progress,
                               max_new_tokens=max_new_tokens, **sampling)
        seconds = time.perf_counter() - start
    tokens = sum(len(o["completion_ids"]) for o in outputs)
    answers = [tokenizer.decode(o["completion_ids"], skip_special_tokens=True) for o in outputs]
    return answers, tokens / seconds


def right_padded_logits(model, sequences: list[list[int]]) -> torch.Tensor:
    """Logits of one forward pass over right-padded `sequences` (positions from 0, so
    each row reads as it would alone)."""
    ids = torch.zeros(len(sequences), max(map(len, sequences)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
    return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
