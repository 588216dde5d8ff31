"""The teacher samples: the contract between stage 01 and the stages after it.

A sample is one row per prompt in Parquet (`SAMPLE_SCHEMA`): the chat, the token
ids of prompt and completion under the teacher's tokenizer, the decoded
completion and, per completion token, the teacher's k most likely next tokens
and their log-probs (empty for a text-only teacher; an API teacher of another
tokenizer gives the log-probs without ids). Since schema 2 every
completion token also comes with its bytes and the teacher's log-prob of it, and
every top-k alternative with its bytes: what a student with another tokenizer
needs to align the teacher's tokens with its own (`distill.lm.alignment`), with the
teacher out of memory or behind an API. Shards of schema 1 are still read (those
columns empty). Rows live in shards of
`shard_size` prompts under `samples/` in the run folder, each written
atomically and stamped with the settings that made it (`distill.settings`), so a
re-run resumes shard by shard and never mixes samples made under other settings.

Readers: `read_samples` (a DataFrame), and the training view of a sample,
`Example` (prompt + completion with loss labels and the teacher's top-k), which
training and evaluation batch with `collate`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ..core.runs import SAMPLES, atomic_file
from .data import encode_start, id_windows
from .losses import IGNORE_INDEX

SCHEMA_VERSION = "2"
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
    # schema 2: the teacher's tokens as bytes (b"" for a special token such as the end
    # of the answer) and its log-prob of each chosen token
    ("completion_bytes", pa.list_(pa.binary())),
    ("completion_logprobs", pa.list_(pa.float32())),
    ("topk_bytes", pa.list_(pa.list_(pa.binary()))),
])
SCHEMA_2_COLUMNS = ("completion_bytes", "completion_logprobs", "topk_bytes")


class SamplesError(RuntimeError):
    """Samples are missing, or were written under other settings than asked for."""


# The sources of samples, by the name their shards start with: the chat answers, the
# teacher's generic text, the user's documents, and the prose 02 validates on.
SHARD_PREFIXES = {"chat": "part", "generic": "generic", "documents": "documents",
                  "validation": "validation"}


def shard_path(run_dir: Path, index: int, source: str = "chat") -> Path:
    return Path(run_dir) / SAMPLES / f"{SHARD_PREFIXES[source]}-{index:05d}.parquet"


def sample_shards(run_dir: Path, train: list[dict], heldout: list[dict], shard_size: int,
                  settings: dict, sample_shard, plan=None, source: str = "chat") -> dict:
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
    stamp = json.dumps(settings, sort_keys=True)
    shards = [prompts[i:i + shard_size] for i in range(0, len(prompts), shard_size)]
    stats = {"tokens": 0, "seconds": 0.0, "shards_written": 0, "shards_skipped": 0,
             "failed_prompts": []}
    progress = tqdm(total=len(prompts), desc=f"teacher sampling ({source})", unit="prompt")
    todo = {index: pending for index, shard in enumerate(shards)
            if (pending := _pending(shard_path(run_dir, index, source), shard, stamp))}
    if plan is not None:
        plan(list(todo.items()), progress)
    for index, shard in enumerate(shards):
        path = shard_path(run_dir, index, source)
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
                                if p["prompt_id"] in done], stamp, missing)
            stats["shards_written"] += 1
    progress.close()
    stats["tokens_per_second"] = stats["tokens"] / stats["seconds"] if stats["seconds"] else None
    return stats


def _pending(path: Path, shard: list[tuple[dict, str]], settings: str) -> list:
    """The prompts of a shard still to sample: all of a new shard, the missing ones of
    a shard written before (under the same settings), none of a complete one."""
    if not path.exists():
        return shard
    _check_settings(path, settings)
    missing = set(missing_prompts(path))
    return [(prompt, split) for prompt, split in shard if prompt["prompt_id"] in missing]


def make_row(prompt: dict, split: str, prompt_ids: list[int], completion_ids: list[int],
             completion: str, topk_ids: list, topk_logprobs: list, finish_reason: str,
             completion_bytes: list = (), completion_logprobs: list = (),
             topk_bytes: list = ()) -> dict:
    """One sample in SAMPLE_SCHEMA. `topk_*` hold one row per completion token, or are
    empty when the teacher gave no log-probs (text only: sequence-level KD); so are the
    schema-2 fields when the teacher gave no bytes or log-probs."""
    return {
        "prompt_id": prompt["prompt_id"], "kind": prompt["kind"], "split": split,
        "messages": json.dumps(prompt["messages"]), "prompt_ids": prompt_ids,
        "completion_ids": completion_ids, "completion": completion,
        "topk_ids": topk_ids, "topk_logprobs": topk_logprobs,
        "finish_reason": finish_reason, "reference": prompt["reference"],
        "completion_bytes": list(completion_bytes),
        "completion_logprobs": list(completion_logprobs), "topk_bytes": list(topk_bytes),
    }


def _write_shard(path: Path, rows: list[dict], settings: str, missing: list[str]) -> None:
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA).replace_schema_metadata(
        {"distill.schema_version": SCHEMA_VERSION, "distill.settings": settings,
         "distill.missing": json.dumps(missing)})
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)


def missing_prompts(path: Path) -> list[str]:
    """Prompt ids a shard lacks because their requests failed for good."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(b"distill.missing", b"[]"))


def _check_settings(path: Path, settings: str) -> None:
    metadata = pq.read_schema(path).metadata or {}
    found = metadata.get(b"distill.settings", b"").decode()
    if found != settings:
        raise SamplesError(f"{path} was sampled with other settings ({found}); this run asks "
                            f"for {settings}. Delete {path.parent} or use a new run folder.")


def read_samples(run_dir: Path, split: str | None = None,
                 sources: tuple[str, ...] = ("chat",)) -> pd.DataFrame:
    """The samples of a run from the given sources (see SHARD_PREFIXES), optionally one
    split, in source then shard order, with a `source` column."""
    frames = []
    for source in sources:
        for path in sorted((Path(run_dir) / SAMPLES).glob(f"{SHARD_PREFIXES[source]}-*.parquet")):
            frame = pd.read_parquet(path).assign(source=source)
            for column in SCHEMA_2_COLUMNS:  # a schema-1 shard: no bytes were recorded
                if column not in frame:
                    frame[column] = [np.array([])] * len(frame)
            frames.append(frame)
    if not frames:
        if "chat" in sources:
            raise SamplesError(f"{Path(run_dir) / SAMPLES}: no sample shards; "
                                "run 01_teacher_sampling first")
        return pd.DataFrame(columns=[*SAMPLE_SCHEMA.names, "source"])
    frame = pd.concat(frames, ignore_index=True)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame


# --- the training view of a sample --------------------------------------------

@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # aligned with logits[:-1]: target of position t, or -100
    topk_ids: list[list[int]]  # one row per completion token
    topk_logprobs: list[list[float]]
    source: str = "chat"  # which SHARD_PREFIXES source the sample came from
    # a student with another tokenizer: the teacher's signal per completion position, as
    # lists 'kind', 'raw_logprobs', 'span_index', 'span_teacher' (distill.lm.cross_tokenizer);
    # topk_ids / topk_logprobs then hold the top-k mapped onto the student's ids
    cross: dict | None = None
    item: str | None = None  # what evaluation calls it (a prompt id, a prose window)

    @property
    def prompt_length(self) -> int:
        """Tokens before the completion: one more than the leading ignored labels."""
        return next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX) + 1


def build_examples(samples: pd.DataFrame, need_topk: bool = False) -> list[Example]:
    """Training sequences from teacher samples: prompt + completion, loss on the
    completion only. Rows with an empty completion carry no signal and are dropped.

    Samples without top-k log-probs (a text-only API teacher, top_k_logprobs 0)
    serve sequence-level KD and online KD. With `need_topk` (offline token-level KD)
    they are dropped, and having none with top-k is an error that says what to do."""
    examples, without_topk = [], 0
    for row in samples.itertuples():
        # Parquet gives numpy arrays; .tolist() makes the Python ints tokenizers expect
        prompt, completion = np.asarray(row.prompt_ids).tolist(), \
            np.asarray(row.completion_ids).tolist()
        if not completion:
            continue
        if len(row.topk_ids) == 0:
            without_topk += 1
            if need_topk:
                continue
            topk_ids, topk_logprobs = [[] for _ in completion], [[] for _ in completion]
        else:
            topk_ids, topk_logprobs = np.stack(row.topk_ids).tolist(), \
                np.stack(row.topk_logprobs).tolist()
        labels = [IGNORE_INDEX] * (len(prompt) - 1) + completion
        examples.append(Example(prompt + completion, labels, topk_ids, topk_logprobs,
                                getattr(row, "source", "chat"),
                                item=str(getattr(row, "prompt_id", row.Index))))
    if need_topk and without_topk:
        if not examples:
            raise ValueError(
                "the teacher samples carry no top-k log-probs (text only: an API without "
                "logprobs, another tokenizer, or top_k_logprobs 0), which offline token-level "
                "KD needs. Train sequence-level instead (student_training.kd_weight=0, "
                "ce_weight=1), or use kd_source=online with a local teacher.")
        print(f"{without_topk} samples without top-k log-probs skipped (token-level KD)")
    if not examples:
        raise ValueError("no training examples: every teacher completion is empty")
    return examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch. `topk_*` hold the teacher's top-k at every target position
    (zeros where labels are -100 or the sample has no top-k; the losses never read
    those)."""
    length = max(len(e.input_ids) for e in examples)
    k = max(len(e.topk_ids[0]) for e in examples)
    batch = {"input_ids": torch.full((len(examples), length), pad_id),
             "attention_mask": torch.zeros(len(examples), length, dtype=torch.long),
             "labels": torch.full((len(examples), length - 1), IGNORE_INDEX),
             "topk_ids": torch.zeros(len(examples), length - 1, k, dtype=torch.long),
             "topk_logprobs": torch.zeros(len(examples), length - 1, k)}
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(example.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n - 1] = torch.tensor(example.labels)
        if len(example.topk_ids[0]) == k > 0:
            start = n - 1 - len(example.topk_ids)  # first completion target position
            batch["topk_ids"][row, start:n - 1] = torch.tensor(example.topk_ids)
            batch["topk_logprobs"][row, start:n - 1] = torch.tensor(example.topk_logprobs)
    if any(e.cross for e in examples):
        batch.update(_collate_cross(examples, length - 1, k))
    return batch


# the cross-tokenizer fields: batch key, Example.cross key, fill value, dtype
CROSS_FIELDS = (("cross_kind", "kind", 0, torch.long),
                ("raw_logprobs", "raw_logprobs", 0.0, torch.float32),
                ("span_index", "span_index", -1, torch.long),
                ("span_teacher", "span_teacher", 0.0, torch.float32))


def _collate_cross(examples: list[Example], positions: int, k: int) -> dict:
    """The cross-tokenizer fields of a batch, right-padded as `collate` pads the rest."""
    fields = {}
    for key, name, fill, dtype in CROSS_FIELDS:
        shape = (len(examples), positions, k) if name == "raw_logprobs" else \
            (len(examples), positions)
        tensor = torch.full(shape, fill, dtype=dtype)
        for row, example in enumerate(examples):
            if example.cross:
                end = len(example.input_ids) - 1
                tensor[row, end - len(example.topk_ids):end] = \
                    torch.tensor(example.cross[name], dtype=dtype)
        fields[key] = tensor
    return fields


def epoch_order(sources: list[str], weights: dict, seed: int, epoch: int) -> list[int]:
    """The example indices of one epoch, shuffled: each source's examples `weight` times
    (2: twice; 0.5: a seeded half; a source missing from `weights` counts 1)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    chosen = []
    for source in dict.fromkeys(sources):
        members = torch.tensor([i for i, s in enumerate(sources) if s == source])
        weight = weights.get(source, 1.0)
        chosen += [members] * int(weight)
        extra = round((weight - int(weight)) * len(members))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:extra]])
    order = torch.cat(chosen) if chosen else torch.tensor([], dtype=torch.long)
    return order[torch.randperm(len(order), generator=generator)].tolist()


def length_grouped(lengths: list[int], order: list[int], batch_size: int, seed: int,
                   span: int = 16) -> list[list[int]]:
    """`order` cut into batches of similar length, in a seeded random order of batches:
    within each run of `span` batches the examples are sorted by length (as Hugging
    Face's group_by_length), so a batch pads little. On the main job's samples this
    cut the padded tokens from 26% above the real ones to 2%."""
    batches = []
    for start in range(0, len(order), span * batch_size):
        chunk = sorted(order[start:start + span * batch_size], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))
    return [batches[i] for i in shuffle.tolist()]


def prose_examples(tokenizer, text: str, max_tokens: int, block_size: int) -> list[Example]:
    """The first `max_tokens` tokens of plain text as teacher-forcing examples: windows
    of `block_size` next tokens, each token after the first scored once."""
    ids = encode_start(tokenizer, text)[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the prose corpus is shorter than two tokens")
    windows = id_windows(ids, block_size)
    # no cached top-k: a live teacher scores these, or cross-entropy alone trains on them
    return [Example(w, w[1:], [[] for _ in w[1:]], [[] for _ in w[1:]], item=f"prose-{i}")
            for i, w in enumerate(windows)]
