"""Teacher sampling: batched generation that records the teacher's top-k log-probs.

For every generated token we keep the teacher's k most likely next tokens and
their log-probabilities under the *raw* logits (log_softmax before temperature
or top-p), so the student can later be distilled token by token without the
teacher in memory. Samples go to Parquet shards in the run folder, one shard per
`shard_size` prompts, written atomically: a re-run skips finished shards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .data import encode_chat
from .runs import SAMPLES, atomic_file

SCHEMA_VERSION = "1"
SAMPLE_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("kind", pa.string()),
    ("split", pa.string()),
    ("messages", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())),
    ("completion_ids", pa.list_(pa.int32())),
    ("completion", pa.string()),
    ("topk_ids", pa.list_(pa.list_(pa.int32()))),
    ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("finish_reason", pa.string()),
    ("reference", pa.string()),
])


class SamplingError(RuntimeError):
    pass


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             top_k_logprobs: int = 0, token_logprobs: bool = False) -> list[dict]:
    """Generate for one batch of tokenized prompts (left-padded together).

    Returns one dict per prompt: `completion_ids` (up to and including the stop
    token), `finish_reason` ('stop' or 'length') and, when top_k_logprobs > 0,
    `topk_ids` / `topk_logprobs` per completion token from the raw logits; with
    `token_logprobs`, also `token_logprobs`: the raw log-prob of each chosen token.
    """
    stops = stop_token_ids(model, tokenizer)
    batch = tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} \
        if do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    output = model.generate(
        input_ids=batch["input_ids"].to(model.device),
        attention_mask=batch["attention_mask"].to(model.device),
        max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        output_logits=bool(top_k_logprobs or token_logprobs), return_dict_in_generate=True,
        **sampling)
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


def shard_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / SAMPLES / f"part-{index:05d}.parquet"


def sample_teacher(model, tokenizer, train: list[dict], heldout: list[dict], run_dir: Path,
                   seed: int, shard_size: int, batch_size: int, **settings) -> dict:
    """Sample completions from a local model for held-out then training prompts into
    Parquet shards (see `sample_shards`). Returns the stats of `sample_shards`."""
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


def sample_shards(run_dir: Path, train: list[dict], heldout: list[dict], shard_size: int,
                  fingerprint: dict, sample_shard, plan=None) -> dict:
    """The shard loop of every backend: held-out then training prompts, `shard_size`
    per Parquet shard, each written atomically.

    `sample_shard(index, [(prompt, split), ...], progress)` returns one row per
    prompt (see `make_row`), or None for a prompt that failed for good: the shard is
    written without it and records it as missing (a shard of failures only is not
    written at all). A re-run keeps complete shards
    with the same settings, asks again for just the missing prompts of the others,
    and refuses shards written under other settings rather than mixing them.
    `plan(todo, progress)`, if given, first hears every (index, prompts to sample), so
    a backend can start on later shards while an earlier one waits for its slowest
    prompt. Returns {'tokens', 'seconds', 'tokens_per_second', 'shards_written',
    'shards_skipped', 'failed_prompts'}.
    """
    prompts = [(p, "heldout") for p in heldout] + [(p, "train") for p in train]
    settings = json.dumps(fingerprint, sort_keys=True)
    shards = [prompts[i:i + shard_size] for i in range(0, len(prompts), shard_size)]
    stats = {"tokens": 0, "seconds": 0.0, "shards_written": 0, "shards_skipped": 0,
             "failed_prompts": []}
    progress = tqdm(total=len(prompts), desc="teacher sampling", unit="prompt")
    todo = {index: pending for index, shard in enumerate(shards)
            if (pending := _pending(shard_path(run_dir, index), shard, settings))}
    if plan is not None:
        plan(list(todo.items()), progress)
    for index, shard in enumerate(shards):
        path = shard_path(run_dir, index)
        if index not in todo:
            stats["shards_skipped"] += 1
            progress.update(len(shard))
            continue
        pending = todo[index]
        kept = {row["prompt_id"]: row for row in pq.read_table(path).to_pylist()} \
            if path.exists() else {}
        progress.update(len(shard) - len(pending))
        start = time.perf_counter()
        rows = sample_shard(index, pending, progress)
        stats["seconds"] += time.perf_counter() - start
        new = {p["prompt_id"]: row for (p, _), row in zip(pending, rows) if row is not None}
        missing = [p["prompt_id"] for (p, _), row in zip(pending, rows) if row is None]
        stats["tokens"] += sum(len(row["completion_ids"]) for row in new.values())
        stats["failed_prompts"] += missing
        done = {**kept, **new}
        if done:  # a shard of failures only is not written: a re-run starts it afresh
            _write_shard(path, [done[p["prompt_id"]] for p, _ in shard
                                if p["prompt_id"] in done], settings, missing)
            stats["shards_written"] += 1
    progress.close()
    stats["tokens_per_second"] = stats["tokens"] / stats["seconds"] if stats["seconds"] else None
    return stats


def _pending(path: Path, shard: list[tuple[dict, str]], settings: str) -> list:
    """The prompts of a shard still to sample: all of a new shard, the missing ones of
    a shard written before (under the same settings), none of a complete one."""
    if not path.exists():
        return shard
    _check_fingerprint(path, settings)
    missing = set(missing_prompts(path))
    return [(prompt, split) for prompt, split in shard if prompt["prompt_id"] in missing]


def make_row(prompt: dict, split: str, prompt_ids: list[int], completion_ids: list[int],
             completion: str, topk_ids: list, topk_logprobs: list, finish_reason: str) -> dict:
    """One sample in SAMPLE_SCHEMA. `topk_*` hold one row per completion token, or are
    empty when the teacher gave no log-probs (text only: sequence-level KD)."""
    return {
        "prompt_id": prompt["prompt_id"], "kind": prompt["kind"], "split": split,
        "messages": json.dumps(prompt["messages"]), "prompt_ids": prompt_ids,
        "completion_ids": completion_ids, "completion": completion,
        "topk_ids": topk_ids, "topk_logprobs": topk_logprobs,
        "finish_reason": finish_reason, "reference": prompt["reference"],
    }


def _write_shard(path: Path, rows: list[dict], fingerprint: str, missing: list[str]) -> None:
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA).replace_schema_metadata(
        {"distill.schema_version": SCHEMA_VERSION, "distill.settings": fingerprint,
         "distill.missing": json.dumps(missing)})
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)


def missing_prompts(path: Path) -> list[str]:
    """Prompt ids a shard lacks because their requests failed for good."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(b"distill.missing", b"[]"))


def _check_fingerprint(path: Path, fingerprint: str) -> None:
    metadata = pq.read_schema(path).metadata or {}
    found = metadata.get(b"distill.settings", b"").decode()
    if found != fingerprint:
        raise SamplingError(f"{path} was sampled with other settings ({found}); this run asks "
                            f"for {fingerprint}. Delete {path.parent} or use a new run folder.")


def read_samples(run_dir: Path, split: str | None = None) -> pd.DataFrame:
    """All samples of a run (optionally one split), in shard order."""
    paths = sorted((Path(run_dir) / SAMPLES).glob("part-*.parquet"))
    if not paths:
        raise SamplingError(f"{Path(run_dir) / SAMPLES}: no sample shards; "
                            "run 01_teacher_sampling first")
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame
