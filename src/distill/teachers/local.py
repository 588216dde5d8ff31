"""The `local` teacher backend of stage 01: a model in this process answers the prompts.

For every generated token we keep the teacher's k most likely next tokens and
their log-probabilities under the *raw* logits (log_softmax before temperature
or top-p), so the student can later be distilled token by token without the
teacher in memory. The shard loop, the schema and resume live in
`distill.lm.samples`; the teacher behind an API is `distill.teachers.openai_backend`.
`LocalTeacher`, at the end, is the backend (distill.teachers.backend.TeacherBackend); the
functions before it are what it calls, and what the study notebooks call on models they
hold themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.params_fields import TeacherCapabilities, register_teacher_backend
from ..lm.data import encode_chat, encode_start, text_windows
from ..lm.generation import generate_all, score_documents
from ..lm.models import count_parameters, load_model
from ..lm.samples import make_row, sample_shards
from ..lm.token_bytes import TokenBytes
from .backend import TeacherBackend, generation_settings


def _row(prompt: dict, split: str, prompt_ids: list[int], out: dict,
         vocab: TokenBytes | None, tokenizer) -> dict:
    """A sample from one generated (or scored) completion, with its tokens' bytes and the
    bytes of every top-k alternative (schema 2)."""
    ids = out["completion_ids"]
    recorded = vocab is not None and out.get("topk_ids")  # bytes serve the top-k only
    return make_row(prompt, split, prompt_ids, ids,
                    tokenizer.decode(ids, skip_special_tokens=True),
                    out.get("topk_ids", []), out.get("topk_logprobs", []),
                    out.get("finish_reason", "length"),
                    vocab.text_bytes(ids) if recorded else [],
                    out["token_logprobs"] if recorded else [],
                    [vocab.text_bytes(row) for row in out["topk_ids"]] if recorded else [])


def _token_bytes(tokenizer) -> TokenBytes | None:
    """The tokenizer's tokens as bytes; None for one that cannot list its vocabulary (a
    test double): its samples then carry no bytes."""
    return TokenBytes(tokenizer) if hasattr(tokenizer, "convert_ids_to_tokens") else None


def _marked(watermark) -> dict:
    """The shard-settings entry of a watermark: none when off, so that shards sampled
    before watermarks existed still resume."""
    return {} if watermark is None else {"watermark": watermark.describe()}


def sample_teacher(model, tokenizer, train: list[dict], heldout: list[dict], run_dir: Path,
                   seed: int, shard_size: int, batch_size: int, watermark=None,
                   **settings) -> dict:
    """Sample completions from a local model for held-out then training prompts into
    Parquet shards (see `distill.lm.samples.sample_shards`). `settings`: max_new_tokens,
    do_sample, temperature, top_p, top_k_logprobs; `watermark`: a
    `distill.lm.watermark.Watermark` the teacher samples under, or None.
    Returns the stats of `sample_shards`."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if settings.get("top_k_logprobs", 0) > vocab_size:
        raise ValueError(f"teacher_sampling.top_k_logprobs={settings['top_k_logprobs']} "
                         f"exceeds the teacher's vocabulary ({vocab_size})")

    vocab = _token_bytes(tokenizer)
    if any(p.get("code") for p in train + heldout):  # code tasks: answers end with their code
        settings = {**settings, "stop_after_fences": True}

    def sample_shard(index: int, shard: list[tuple[dict, str]], progress) -> list[dict]:
        torch.manual_seed(seed + index)  # per shard, so a resumed run samples the same
        prompt_ids = [encode_chat(tokenizer, p["messages"]) for p, _ in shard]
        outputs = generate_all(model, tokenizer, prompt_ids, batch_size, progress,
                               token_logprobs=True, watermark=watermark, **settings)
        return [_row(p, split, ids, out, vocab, tokenizer)
                for (p, split), ids, out in zip(shard, prompt_ids, outputs)]

    stamp = {"seed": seed, "shard_size": shard_size, **settings,
             **_marked(watermark)}
    return sample_shards(run_dir, train, heldout, shard_size, stamp, sample_shard)


def sample_generic(model, tokenizer, seeds: list[str], count: int, run_dir: Path, seed: int,
                   shard_size: int, batch_size: int, max_new_tokens: int,
                   top_k_logprobs: int, watermark=None) -> dict:
    """The teacher's own generic text: `count` free continuations of the seed openings
    (cycled), sampled at temperature 1 so repeated seeds go different ways, with the
    top-k of every token, as `source='generic'` shards of the sample schema."""
    prompts = [{"prompt_id": f"generic-{i:05d}", "kind": "generic", "reference": None,
                "messages": [], "text": seeds[i % len(seeds)]} for i in range(count)]
    settings = {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": 1.0,
                "top_p": 1.0, "top_k_logprobs": top_k_logprobs}

    vocab = _token_bytes(tokenizer)

    def sample_shard(index: int, shard: list[tuple[dict, str]], progress) -> list[dict]:
        torch.manual_seed(seed + 7919 * (index + 1))  # apart from the chat shards' seeds
        prompt_ids = [encode_start(tokenizer, p["text"]) for p, _ in shard]
        outputs = generate_all(model, tokenizer, prompt_ids, batch_size, progress,
                               token_logprobs=True, watermark=watermark, **settings)
        return [_row(p, split, ids, out, vocab, tokenizer)
                for (p, split), ids, out in zip(shard, prompt_ids, outputs)]

    stamp = {"seed": seed, "shard_size": shard_size, "count": count, **settings,
             **_marked(watermark)}
    return sample_shards(run_dir, prompts, [], shard_size, stamp, sample_shard,
                         source="generic")


def sample_documents(model, tokenizer, texts: dict[str, str], run_dir: Path, block_size: int,
                     top_k_logprobs: int, shard_size: int, batch_size: int,
                     source: str = "documents", watermark=None) -> dict:
    """Teacher forcing over plain text: each text cut into windows of `block_size`
    tokens, the teacher's top-k recorded at every token after a window's first (the
    window's first token is its 'prompt'). `texts` maps a name (a file) to its text.
    `source`: 'documents' (training) or 'validation' (02's validation prose)."""
    split = "validation" if source == "validation" else "train"
    windows = {f"{source}-{name}-{i:05d}": window for name, text in texts.items()
               for i, window in enumerate(text_windows(tokenizer, text, block_size))}
    prompts = [{"prompt_id": key, "kind": source, "reference": None, "messages": []}
               for key in windows]

    vocab = _token_bytes(tokenizer)

    def sample_shard(index: int, shard: list[tuple[dict, str]], progress) -> list[dict]:
        chosen = [windows[p["prompt_id"]] for p, _ in shard]
        scored = score_documents(model, chosen, top_k_logprobs, batch_size, watermark)
        progress.update(len(shard))
        return [_row(p, split, window[:1], {"completion_ids": window[1:], **out}, vocab,
                     tokenizer) for (p, _), window, out in zip(shard, chosen, scored)]

    stamp = {"block_size": block_size, "top_k_logprobs": top_k_logprobs,
             "shard_size": shard_size, "texts": sorted(texts), **_marked(watermark)}
    return sample_shards(run_dir, prompts, [], shard_size, stamp, sample_shard,
                         source=source)


class LocalTeacher(TeacherBackend):
    """run.teacher loaded in this process. Holding the model, it can read any text and
    sample with the run's tokenizer under a watermark; and stage 02 can load the same model
    for online KD, hidden states and on-policy batches."""

    capabilities = TeacherCapabilities(scores_text=True, logprobs=True, tokenizer=True)

    def __init__(self, sampling, teacher: str, dtype: str = "float32"):
        super().__init__(sampling, teacher, dtype)
        self.model, self.tokenizer = load_model(teacher, dtype=dtype)

    def describe(self) -> str:
        return (f"{self.teacher}: {count_parameters(self.model) / 1e6:.1f} M parameters, "
                f"vocabulary {self.model.config.vocab_size}, weights in {self.model.dtype}")

    def sample(self, train, heldout, run_dir, seed, watermark=None) -> dict:
        s = self.sampling
        return sample_teacher(self.model, self.tokenizer, train, heldout, run_dir, seed=seed,
                              shard_size=s.shard_size, batch_size=s.batch_size,
                              watermark=watermark, **generation_settings(s))

    def sample_generic(self, seeds, run_dir, seed, watermark=None) -> dict:
        s = self.sampling
        return sample_generic(self.model, self.tokenizer, seeds, s.generic_samples, run_dir,
                              seed, s.shard_size, s.batch_size, s.generic_max_new_tokens,
                              s.top_k_logprobs, watermark)

    def sample_documents(self, texts, run_dir, source="documents", watermark=None) -> dict:
        s = self.sampling
        return sample_documents(self.model, self.tokenizer, texts, run_dir,
                                s.document_block_size, s.top_k_logprobs, s.shard_size,
                                s.batch_size, source=source, watermark=watermark)


register_teacher_backend("local", LocalTeacher)
