"""The local teacher backend of stage 01: a model in this process answers the prompts.

For every generated token we keep the teacher's k most likely next tokens and
their log-probabilities under the *raw* logits (log_softmax before temperature
or top-p), so the student can later be distilled token by token without the
teacher in memory. The shard loop, the schema and resume live in
`distill.samples`; the teacher behind an API is `distill.api.teacher`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import encode_chat
from .generation import generate_all
from .samples import make_row, sample_shards


def sample_teacher(model, tokenizer, train: list[dict], heldout: list[dict], run_dir: Path,
                   seed: int, shard_size: int, batch_size: int, **settings) -> dict:
    """Sample completions from a local model for held-out then training prompts into
    Parquet shards (see `distill.samples.sample_shards`). `settings`: max_new_tokens,
    do_sample, temperature, top_p, top_k_logprobs. Returns the stats of `sample_shards`."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if settings.get("top_k_logprobs", 0) > vocab_size:
        raise ValueError(f"teacher_sampling.top_k_logprobs={settings['top_k_logprobs']} "
                         f"exceeds the teacher's vocabulary ({vocab_size})")

    def sample_shard(index: int, shard: list[tuple[dict, str]], progress) -> list[dict]:
        torch.manual_seed(seed + index)  # per shard, so a resumed run samples the same
        prompt_ids = [encode_chat(tokenizer, p["messages"]) for p, _ in shard]
        outputs = generate_all(model, tokenizer, prompt_ids, batch_size, progress, **settings)
        return [make_row(p, split, ids, out["completion_ids"],
                         tokenizer.decode(out["completion_ids"], skip_special_tokens=True),
                         out.get("topk_ids", []), out.get("topk_logprobs", []),
                         out["finish_reason"])
                for (p, split), ids, out in zip(shard, prompt_ids, outputs)]

    fingerprint = {"seed": seed, "shard_size": shard_size, **settings}
    return sample_shards(run_dir, train, heldout, shard_size, fingerprint, sample_shard)
