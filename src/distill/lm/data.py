"""Prompt sets, the train/held-out split, chat formatting, and the text corpus.

A prompt is a dict: `prompt_id` (stable), `kind`, `messages` (chat list),
`reference` (a short verifiable answer, or None).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pandas as pd


class PromptError(ValueError):
    """A prompt source is missing, empty or has a bad row; the message says where."""


PROMPT_SUFFIXES = (".jsonl", ".csv", ".parquet")  # the prompt file types load_prompts reads
# Prompt sets shipped with distill, by the name `load_prompts` takes: name -> (asset file,
# what to call it in messages). Feature folders register theirs (distill.coding: code).
PROMPT_SETS = {"builtin": ("prompts.jsonl", "the built-in prompt set")}
# Readers of rows of a special kind, tried in order: (row, where, prompt_field) -> None when
# the row is not of its kind, else (the row with its prompt text set, extra prompt keys).
# distill.coding registers code tasks (rows with entry_point and tests).
ROW_KINDS: list[Callable[[dict, str, str], tuple[dict, dict] | None]] = []


def register_prompt_set(name: str, asset: str, description: str) -> None:
    PROMPT_SETS[name] = (asset, description)


def register_row_kind(reader: Callable[[dict, str, str], tuple[dict, dict] | None]) -> None:
    if reader not in ROW_KINDS:
        ROW_KINDS.append(reader)


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("distill") / "assets" / name))


def load_prompts(source: str = "builtin", prompt_field: str = "prompt",
                 system_prompt: str | None = None) -> list[dict]:
    """Prompts from the built-in set, the built-in code tasks (`code`), a
    .jsonl/.csv/.parquet file, or `hf:<dataset>`. A row with `entry_point` and `tests` is a
    code task (`distill.coding.tasks`): its prompt carries them under 'code'."""
    if source in PROMPT_SETS:
        asset, where = PROMPT_SETS[source]
        rows = _read_file(builtin_path(asset))
    elif source.startswith("hf:"):
        rows, where = _read_hub_dataset(source[3:]), source
    else:
        rows, where = _read_file(Path(source)), source
    prompts = [_to_prompt(row, number, where, prompt_field, system_prompt)
               for number, row in enumerate(rows, start=1)]
    if not prompts:
        raise PromptError(f"{where}: no prompts found; the file is empty")
    ids = [p["prompt_id"] for p in prompts]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise PromptError(f"{where}: prompt id {duplicate!r} appears more than once")
    return prompts


GRADED_SET = "graded.jsonl"  # prompts with a reference that no prompt set contains


def load_graded(source: str, limit: int | None, trained: set[str]) -> list[dict]:
    """The graded prompts of stage 03 (`evaluation.graded_prompts`): the shipped set
    (builtin) or a prompt file, only rows with a reference, at most `limit`. A prompt whose
    text is among `trained` (the run's training prompts) would grade memory, not skill:
    PromptError says which."""
    prompts = load_prompts(str(builtin_path(GRADED_SET)) if source == "builtin" else source)
    graded = [p for p in prompts if p.get("reference") is not None][:limit]
    if not graded:
        raise PromptError(f"{source}: no prompt with a reference; give prompts with a "
                          "`reference` column, or set evaluation.graded_prompts to null")
    seen = [p["prompt_id"] for p in graded if p["messages"][-1]["content"] in trained]
    if seen:
        raise PromptError(f"{source}: {len(seen)} graded prompts are training prompts of this "
                          f"run (first: {seen[0]}); graded prompts must be held out")
    return graded


def check_prompt_source(source: str) -> None:
    """Raise PromptError for a prompt file that does not exist or has a type
    `load_prompts` cannot read; reads nothing (builtin, code and hf: pass unchecked)."""
    if source not in PROMPT_SETS and not source.startswith("hf:"):
        _check_prompt_file(Path(source))


def _check_prompt_file(path: Path) -> None:
    if not path.exists():
        raise PromptError(f"{path}: no such prompt file")
    if path.is_dir():
        raise PromptError(f"{path}: a folder, not a prompt file")
    if path.suffix.lower() not in PROMPT_SUFFIXES:
        raise PromptError(f"{path}: unsupported prompt file type {path.suffix.lower()!r}; "
                          f"use {', '.join(PROMPT_SUFFIXES[:-1])} or {PROMPT_SUFFIXES[-1]}")


def _read_file(path: Path) -> list[dict]:
    _check_prompt_file(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise PromptError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        return rows
    if suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:  # .parquet
        frame = pd.read_parquet(path)
    return frame.to_dict("records")


def _read_hub_dataset(name: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise PromptError("hf: prompt sets need the package datasets; "
                          "install it with: pip install datasets") from None
    try:
        return list(datasets.load_dataset(name, split="train"))
    except Exception as error:  # offline, unknown name, ...: say which and why
        raise PromptError(f"hf:{name}: could not load the dataset ({error}). "
                          "Offline, use the built-in set or a local file.") from None


def _to_prompt(row: dict, number: int, where: str, prompt_field: str,
               system_prompt: str | None) -> dict:
    extra = {}
    for reader in ROW_KINDS:
        if (read := reader(row, f"{where}: row {number}", prompt_field)) is not None:
            row, extra = read
            break
    text = row.get(prompt_field)
    messages = row.get("messages")
    if isinstance(messages, str):
        messages = json.loads(messages)
    if messages is None:
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{where}: row {number}: needs a non-empty {prompt_field!r} "
                              f"text or a 'messages' list; got {text!r}")
        messages = [{"role": "user", "content": text}]
    elif not (isinstance(messages, list) and messages
              and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)):
        raise PromptError(f"{where}: row {number}: 'messages' must be a non-empty list of "
                          "{role, content} objects")
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    prompt_id = _value(row, "id") or _value(row, "prompt_id") or f"row-{number:06d}"
    prompt = {"prompt_id": str(prompt_id), "kind": str(_value(row, "kind") or "unknown"),
              "messages": messages, "reference": _value(row, "reference")}
    return {**prompt, **extra}


def _value(row: dict, key: str) -> str | None:
    """row[key] as text, or None when missing, empty or NaN (pandas' empty cell)."""
    value = row.get(key)
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    return str(value)


def split_prompts(prompts: list[dict], heldout_size: int, seed: int,
                  train_size: int | None = None) -> tuple[list[dict], list[dict]]:
    """A deterministic (train, heldout) split: a seeded shuffle, heldout first."""
    if heldout_size >= len(prompts):
        raise PromptError(f"heldout_size={heldout_size} leaves no training prompts out of "
                          f"{len(prompts)}; lower teacher_sampling.heldout_size")
    order = list(prompts)
    random.Random(seed).shuffle(order)
    heldout, train = order[:heldout_size], order[heldout_size:]
    return (train[:train_size] if train_size else train), heldout


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, ready for the
    assistant's answer (plain concatenation for tokenizers without a template), opening
    with the BOS token where the tokenizer's own encoding starts with one."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    return encode_start(tokenizer, text)


def encode_start(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as the start of a sequence: with the BOS token first where the
    tokenizer's default encoding adds one (Gemma, Llama 2: without it they degrade; not
    SmolLM2), once, even when the text (a chat template's output) already spells it.
    Continuations (a completion after its prompt) are encoded without it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)  # test tokenizers may have none
    if bos is not None and ids[:1] != [bos] and tokenizer("")["input_ids"][:1] == [bos]:
        ids = [bos, *ids]
    return ids


def load_corpus(source: str = "builtin") -> str:
    """Text for perplexity, never used in training: the shipped corpus, a .txt file,
    or `hf:<dataset>` (its 'text' column)."""
    if source == "builtin":
        return _strip_comments(builtin_path("corpus.txt").read_text())
    if source.startswith("hf:"):
        return "\n\n".join(row["text"] for row in _read_hub_dataset(source[3:]))
    try:
        check_corpus_source(source)
    except PromptError as error:
        raise PromptError(f"evaluation.corpus: {error}") from None
    return Path(source).read_text()


def check_corpus_source(source: str) -> None:
    """Raise PromptError for a corpus file that does not exist; reads nothing
    (builtin and hf: pass unchecked)."""
    if source == "builtin" or source.startswith("hf:"):
        return
    path = Path(source)
    if not path.exists():
        raise PromptError(f"{path}: no such corpus file")
    if path.is_dir():
        raise PromptError(f"{path}: a folder, not a corpus file")


def _strip_comments(text: str) -> str:
    """A shipped text without its header comment lines ('# ...')."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("# ")).strip()


def load_generic_seeds() -> list[str]:
    """The shipped openings of generic text that the teacher continues (01)."""
    text = builtin_path("generic_seeds.txt").read_text()
    return [line for line in _strip_comments(text).splitlines() if line.strip()]


def load_validation_prose(source: str = "builtin") -> str:
    """Prose 02 validates on: the shipped text (neither trained on nor reported by 03)
    or a .txt file."""
    if source == "builtin":
        return _strip_comments(builtin_path("validation_prose.txt").read_text())
    path = Path(source)
    if not path.is_file():
        raise PromptError(f"teacher_sampling.validation_prose: {path}: no such text file")
    return path.read_text()


def document_files(pattern: str) -> list[Path]:
    """The text files a `teacher_sampling.documents` glob names, sorted; an error that
    says so when it names none."""
    import glob

    files = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True)
                   if Path(p).is_file())
    if not files:
        raise PromptError(f"teacher_sampling.documents: {pattern!r} matches no file; give a "
                          "glob of plain-text files, e.g. docs/*.txt")
    return files


def text_windows(tokenizer, text: str, block_size: int) -> list[list[int]]:
    """Consecutive windows of `block_size` + 1 tokens (the first token is context only:
    each window teaches `block_size` next tokens); a short last window is kept when it
    teaches at least a few."""
    return id_windows(encode_start(tokenizer, text), block_size, 8)


def id_windows(ids: list[int], block_size: int, min_length: int = 2) -> list[list[int]]:
    """`ids` cut into windows of `block_size` + 1 tokens that overlap by one, so every
    token after the first is predicted once; windows shorter than `min_length` dropped."""
    windows = [ids[i:i + block_size + 1] for i in range(0, len(ids) - 1, block_size)]
    return [w for w in windows if len(w) >= min_length]
