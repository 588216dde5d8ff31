"""The answers of a teacher behind an OpenAI-compatible API, as samples (the `openai`
backend of stage 01 is `distill.teachers.openai_backend`, which calls `sample_api`).

Any endpoint that speaks the chat-completions protocol works: a vendor's API, a
vLLM or TGI server, or `distill serve`. For each prompt one chat completion is
requested with `logprobs` and `top_logprobs` (at most `MAX_TOP_LOGPROBS`, the
API's limit); the answer becomes a sample in the schema of `distill.lm.samples`:

* token ids, where the endpoint's tokens map onto the student's tokenizer (their
  bytes, see `distill.lm.token_bytes`); then the top-k log-probs too, for token-level KD;
* otherwise the text alone, re-tokenized for the student (sequence-level KD);
* and either way, wherever the top-k came back, the teacher's own tokens as bytes with
  their log-probs, and the bytes of every top-k alternative (schema 2, `token_fields`):
  a student with another tokenizer aligns them with its own tokens by bytes
  (`distill.lm.alignment`), so a vendor's endpoint still serves token-level KD.

Requests run `concurrency` at a time through `distill.teachers.api_client` (retries,
cache, request log); a prompt that still fails is left out of its shard and a
re-run asks again for just those.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import hashlib
from pathlib import Path

from ..core.runs import TEACHER_FINGERPRINT, write_json
from ..lm.data import encode_chat
from ..lm.generation import stop_token_ids
from ..lm.samples import make_row, sample_shards
from ..lm.token_bytes import TOKEN_ID_PREFIX, TokenBytes
from . import fingerprint
from .api_client import (
    ApiTeacher,
    ApiTeacherError,
    Endpoint,
    RequestCache,
    RequestLog,
)


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A seed per prompt (from the run's seed), so sampled answers do not share one
    random stream and stay the same whatever order the requests go out in."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # below 2^31: every API accepts it


def chat_request(endpoint: Endpoint, messages: list[dict], max_new_tokens: int, do_sample: bool,
                 temperature: float, top_p: float, top_k_logprobs: int, seed: int) -> dict:
    """The chat-completions body for one prompt (temperature 0 means greedy)."""
    request = {"model": endpoint.model, "messages": messages,
               "max_completion_tokens": max_new_tokens, "seed": seed,
               "temperature": temperature if do_sample else 0.0,
               "top_p": top_p if do_sample else 1.0}
    if top_k_logprobs:
        request.update(logprobs=True, top_logprobs=top_k_logprobs)
    return request


def response_to_sample(response: dict, k: int, vocab: TokenBytes, tokenizer,
                       stop_ids: set[int]) -> dict:
    """completion_ids, completion text, finish_reason, (where every token maps to the
    student's tokenizer and k alternatives came back) the top-k ids, and (where k
    alternatives came back, whatever the endpoint's tokenizer) its tokens' bytes with
    the top-k log-probs."""
    choice = response["choices"][0]
    text = choice["message"].get("content") or ""
    finish_reason = choice.get("finish_reason") or "stop"
    content = (choice.get("logprobs") or {}).get("content") or []
    sample = {"completion": text, "finish_reason": finish_reason,
              **token_fields(content, k, vocab, text)}
    # A server that cannot show a token's bytes (a piece of a character, decoded alone) may
    # name it U+FFFD (vLLM before PR 28874 without --return-tokens-as-token-ids, ollama):
    # unless the answer holds a U+FFFD, that is a stand-in, not the tokenizer's U+FFFD token.
    stand_ins = "\ufffd" not in text
    ids = [None if stand_ins and _names_replacement_char(c) else
           vocab.lookup(c["token"], c.get("bytes")) for c in content]
    if content and None not in ids:
        topk_ids, topk_logprobs = [], []
        for entry in content:
            alternatives = [(vocab.lookup(a["token"], a.get("bytes")), a["logprob"])
                            for a in _best(entry, k)]
            if k == 0 or len(alternatives) < k or any(i is None for i, _ in alternatives):
                topk_ids = topk_logprobs = []
                break
            topk_ids.append([i for i, _ in alternatives])
            topk_logprobs.append([lp for _, lp in alternatives])
        if topk_ids:
            return {**sample, "completion_ids": ids, "topk_ids": topk_ids,
                    "topk_logprobs": topk_logprobs}
        return {**sample, "completion_ids": ids, "topk_ids": []}
    # Text only: the student's tokens for it, ending as the local backend's answers end.
    # The top-k log-probs stay where their bytes came (a student of another tokenizer
    # aligns them; see distill.lm.cross_tokenizer), without ids.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if finish_reason == "stop" and stop_ids and (not ids or ids[-1] not in stop_ids):
        ids.append(min(stop_ids) if tokenizer.eos_token_id is None else tokenizer.eos_token_id)
    return {**sample, "completion_ids": ids, "topk_ids": []}


def _best(entry: dict, k: int) -> list[dict]:
    """A log-prob entry's alternatives, most likely first, at most k (vLLM lists the
    chosen token first wherever it ranks)."""
    return sorted(entry.get("top_logprobs") or [], key=lambda a: -a["logprob"])[:k]


def token_fields(content: list[dict], k: int, vocab: TokenBytes, text: str) -> dict:
    """The schema-2 fields of an answer from its log-prob entries: `completion_bytes` (the
    bytes each token adds to the text), `completion_logprobs` and `topk_bytes` (the bytes
    of the k best alternatives, most likely first). Recorded whether or not the tokens map
    onto `vocab`; all empty unless k > 0 and k alternatives came back for every token, and
    empty too where some bytes are unknown (a U+FFFD stand-in, an id beyond `vocab`)."""
    tops = [_best(entry, k) for entry in content]
    listed = [*content, *(a for top in tops for a in top)]
    chosen = [_entry_bytes(entry, vocab) for entry in content]
    alternatives = [[_entry_bytes(a, vocab) for a in top] for top in tops]
    if (not content or k == 0 or any(len(top) < k for top in tops)
            or ("\ufffd" not in text and any(map(_names_replacement_char, listed)))
            or None in chosen or any(None in row for row in alternatives)):
        return {"completion_bytes": [], "completion_logprobs": [], "topk_bytes": [],
                "topk_logprobs": []}
    return {"completion_bytes": _written(chosen, text),
            "completion_logprobs": [entry["logprob"] for entry in content],
            "topk_bytes": alternatives,
            "topk_logprobs": [[a["logprob"] for a in top] for top in tops]}


def _entry_bytes(entry: dict, vocab: TokenBytes) -> bytes | None:
    """The bytes of the token a log-prob entry names: by id (`token_id:<N>`: that id's in
    `vocab`), else its `bytes`, else its text UTF-8 encoded; b"" for a special token of
    `vocab` (it writes no text, as `TokenBytes.text_bytes` has it); None for no id of `vocab`."""
    if entry["token"].startswith(TOKEN_ID_PREFIX):
        token_id = vocab.lookup(entry["token"], None)
        return None if token_id is None else vocab.text_bytes([token_id])[0]
    data = entry.get("bytes")
    data = bytes(data) if data is not None else entry["token"].encode()
    return b"" if vocab.bytes_to_id.get(data) in vocab.special_ids else data


def _written(tokens: list[bytes], text: str) -> list[bytes]:
    """The bytes each token adds to the answer's text: none for a token whose text the
    answer does not go on with where it stands, a special token of another tokenizer than
    the student's (the end of the answer, which `distill serve` lists and the text leaves
    out). Pieces of a character go on with it (or with its U+FFFD, where they make none).
    Tokens that do not spell out the text even so keep their own bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    written, shown = [], ""
    for data in tokens:
        state = decoder.getstate()
        more = decoder.decode(data)  # "" for a piece of a character, until it completes
        if text.startswith(more, len(shown)):
            written.append(data)
            shown += more
        else:
            decoder.setstate(state)
            written.append(b"")
    return written if shown + decoder.decode(b"", final=True) == text else tokens


def _names_replacement_char(entry: dict) -> bool:
    """Whether a log-prob entry names its token by U+FFFD rather than by its id or bytes."""
    if entry["token"].startswith(TOKEN_ID_PREFIX):
        return False
    data = entry.get("bytes")
    return "\ufffd".encode() in (bytes(data) if data is not None else entry["token"].encode())


def sample_api(endpoint: Endpoint, tokenizer, train: list[dict], heldout: list[dict],
               run_dir: Path, seed: int, shard_size: int, cache_dir: Path | None,
               log: RequestLog | None = None, **settings) -> tuple[dict, RequestLog]:
    """Sample every prompt from the endpoint into the run's shards (as
    `distill.teachers.local.sample_teacher` does locally). `settings`: max_new_tokens,
    do_sample, temperature, top_p, top_k_logprobs (at most MAX_TOP_LOGPROBS, which
    params checks). Returns (stats, request log); stats add 'with_logprobs' (samples
    distillable token by token) and 'lowest_concurrency'."""
    log = log or RequestLog()
    teacher = ApiTeacher(endpoint, RequestCache(cache_dir), log, seed)
    vocab = TokenBytes(tokenizer)
    stop_ids = set(stop_token_ids(tokenizer))
    counts = {"with_logprobs": 0}
    def one(prompt: dict, split: str, progress) -> dict | None:
        request = chat_request(endpoint, prompt["messages"],
                               seed=prompt_seed(seed, prompt["prompt_id"]), **settings)
        response = teacher.complete(prompt["prompt_id"], request)
        progress.update(1)
        if response is None:
            return None
        sample = response_to_sample(response, settings["top_k_logprobs"], vocab, tokenizer,
                                    stop_ids)
        return make_row(prompt, split, encode_chat(tokenizer, prompt["messages"]), **sample)

    # Every prompt of every shard to do is queued at once: the pool keeps `concurrency`
    # requests in flight across shard boundaries, so a slow retry holds up no one.
    pool = concurrent.futures.ThreadPoolExecutor(endpoint.concurrency)
    futures: dict[int, list[concurrent.futures.Future]] = {}

    def plan(todo: list[tuple[int, list]], progress) -> None:
        for index, shard in todo:
            futures[index] = [pool.submit(one, prompt, split, progress)
                              for prompt, split in shard]

    def sample_shard(index: int, shard: list[tuple[dict, str]], progress) -> list[dict | None]:
        rows = [future.result() for future in futures.pop(index)]
        counts["with_logprobs"] += sum(bool(row and row["topk_ids"]) for row in rows)
        return rows

    # The model and settings define the samples; the address may change between runs
    # (a restarted server, a proxy), so a resumed run may reach the teacher elsewhere.
    stamp = {"backend": "openai", "model": endpoint.model, "seed": seed,
             "shard_size": shard_size, **settings}
    try:
        stats = sample_shards(run_dir, train, heldout, shard_size, stamp, sample_shard,
                              plan)
    finally:  # on a stop (an error, an interrupt) queued and waiting requests give up
        teacher.stopped.set()
        pool.shutdown(wait=True, cancel_futures=True)
    # the fewest requests in flight the client fell back to: below concurrency, the
    # endpoint was overloaded at some point
    return {**stats, **counts, "lowest_concurrency": teacher.in_flight.lowest}, log


def fingerprint_endpoint(endpoint: Endpoint, run_dir: Path) -> str:
    """Record the endpoint's fingerprint in the run folder or, where the folder has one
    (a re-run, a resume), check it: ApiTeacherError when the endpoint now serves another
    model than the one this run's samples came from. Says what it did."""
    path = Path(run_dir) / TEACHER_FINGERPRINT
    probes = fingerprint.EndpointProbes(endpoint)
    if not path.exists():
        write_json(path, fingerprint.record(probes, endpoint.model))
        return f"the teacher's fingerprint is recorded in {path.name}"
    found = fingerprint.check(fingerprint.load(path), probes)
    if found.decision == fingerprint.CHANGED:
        raise ApiTeacherError(
            f"{endpoint.base_url} no longer serves the model this run sampled as "
            f"{endpoint.model!r} ({found.summary()}): its samples would mix two teachers. "
            f"Use a new run folder, or delete {path} to accept the new model.")
    return f"the teacher is the one fingerprinted when this run began: {found.summary()}"


def endpoint_answers(endpoint: Endpoint, messages: list[list[dict]], max_new_tokens: int,
                     seed: int = 0, cache_dir: Path | None = None) -> list[str]:
    """Greedy answers of an endpoint to each chat (text only), `concurrency` requests at
    a time with the client's retries; a prompt that fails every retry stops with
    ApiTeacherError, since a test on the rest would silently change its prompts."""
    teacher = ApiTeacher(endpoint, RequestCache(cache_dir), RequestLog(), seed)

    def one(index: int) -> str:
        request = chat_request(endpoint, messages[index], max_new_tokens, do_sample=False,
                               temperature=1.0, top_p=1.0, top_k_logprobs=0, seed=seed)
        response = teacher.complete(str(index), request)
        if response is None:
            raise ApiTeacherError(f"{endpoint.base_url}: prompt {index} failed after "
                                  f"{endpoint.max_retries} retries")
        return response["choices"][0]["message"]["content"] or ""

    with concurrent.futures.ThreadPoolExecutor(endpoint.concurrency) as pool:
        try:
            return list(pool.map(one, range(len(messages))))
        finally:
            teacher.stopped.set()
