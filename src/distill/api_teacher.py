"""The `openai` teacher backend: sampling a teacher behind an OpenAI-compatible API.

Any endpoint that speaks the chat-completions protocol works: a vendor's API, a
vLLM or TGI server, or `distill serve`. For each prompt one chat completion is
requested with `logprobs` and `top_logprobs` (at most 20, the API's limit); the
answer becomes a sample in the same schema as the local backend's:

* token ids, where the endpoint's tokens map onto the student's tokenizer (their
  bytes, see `distill.vocab`); then the top-k log-probs too, for token-level KD;
* otherwise the text alone, re-tokenized for the student (sequence-level KD).

Requests run `concurrency` at a time. 429, 5xx, timeouts and dropped connections
are retried with exponential backoff and jitter, honouring `Retry-After`; a
request that still fails is recorded and the run goes on (a re-run retries only
the missing prompts). 401, 403 and 404 say the configuration is wrong and stop the
run. Successful answers are cached on disk, keyed by everything that determines
them (never the key), so a re-run costs nothing and returns the same samples.
Every attempt is logged for the health report (`distill.health`).

The API key is read from the environment variable named by `api_key_env` and is
never written anywhere: not to params, samples, logs, the cache or error messages.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import email.utils
import hashlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from .data import encode_chat
from .runs import atomic_file
from .sampling import make_row, sample_shards
from .vocab import MAX_TOP_LOGPROBS, TokenBytes

MAX_BACKOFF_S = 60.0  # our own exponential backoff stops growing here
MAX_RETRY_AFTER_S = 600.0  # a server's Retry-After is honoured up to this


class ApiTeacherError(RuntimeError):
    """The endpoint cannot be used as configured (unreachable, key, model): stop."""


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key_env: str
    request_timeout: float = 60.0
    concurrency: int = 8
    max_retries: int = 5
    retry_backoff: float = 1.0
    price_input_per_million: float = 0.0
    price_output_per_million: float = 0.0

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ApiTeacherError(
                f"teacher_sampling.api_key_env: the environment variable {self.api_key_env} is "
                f"not set or empty. Export the endpoint's key first (export "
                f"{self.api_key_env}=...); a local server without keys accepts any value.")
        return key

    def client(self) -> openai.OpenAI:
        # Retries are ours (counted, logged, Retry-After honoured), not the client's.
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key(),
                             timeout=self.request_timeout, max_retries=0)


def endpoint_from_params(sampling, teacher: str) -> Endpoint:
    """The Endpoint of a TeacherSamplingParams (its model defaults to run.teacher)."""
    names = [f.name for f in dataclasses.fields(Endpoint) if f.name != "model"]
    return Endpoint(model=sampling.model or teacher, **{n: getattr(sampling, n) for n in names})


def check_endpoint(endpoint: Endpoint) -> list[str]:
    """Fail early and clearly: the key is set, the endpoint answers, accepts the key,
    and serves the model. Returns the models it serves ([] if it does not list them)."""
    key = endpoint.api_key()
    client = endpoint.client()
    try:
        served = [m.id for m in client.models.list()]
    except openai.NotFoundError:
        _probe_chat(endpoint, client)  # no /models here: is it an API at all?
        return []
    except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
        raise ApiTeacherError(_refused(endpoint, error.status_code)) from None
    except openai.APITimeoutError:
        raise ApiTeacherError(
            f"teacher_sampling.base_url: {endpoint.base_url} did not answer within "
            f"request_timeout ({endpoint.request_timeout} s)") from None
    except openai.APIConnectionError as error:
        raise ApiTeacherError(
            f"teacher_sampling.base_url: cannot reach {endpoint.base_url} "
            f"({_redact(_cause(error), key)}). Check the address and that the server is "
            "running; `distill serve <model>` starts a local one.") from None
    except openai.APIStatusError as error:
        if retryable(error):  # busy or briefly down: sampling's retries will deal with it
            print(f"warning: {endpoint.base_url}/models answered {error.status_code}; "
                  "going on, requests are retried")
            return []
        raise ApiTeacherError(f"{endpoint.base_url}/models answered {error.status_code}: "
                              f"{_redact(str(error.message), key)}") from None
    if endpoint.model not in served:
        raise ApiTeacherError(f"teacher_sampling.model: {endpoint.model!r} is not served at "
                              f"{endpoint.base_url}; it serves: {', '.join(served) or 'nothing'}")
    return served


def _probe_chat(endpoint: Endpoint, client: openai.OpenAI) -> None:
    """One 1-token chat request, for endpoints without /models."""
    try:
        client.chat.completions.create(model=endpoint.model, max_completion_tokens=1,
                                       messages=[{"role": "user", "content": "ping"}])
    except openai.NotFoundError:
        raise ApiTeacherError(
            f"teacher_sampling.base_url: {endpoint.base_url} answered 404 to both /models and "
            f"/chat/completions for model {endpoint.model!r}. Is it an OpenAI-compatible "
            "API (the address usually ends in /v1), and is the model name right?") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
        raise ApiTeacherError(_refused(endpoint, error.status_code)) from None
    except openai.APIError:
        pass  # anything else is the sampling's to retry and report


def _refused(endpoint: Endpoint, status: int) -> str:
    return (f"{endpoint.base_url} refused the API key in ${endpoint.api_key_env} ({status}); "
            "check that the variable holds a valid key for this endpoint.")


def _cause(error: Exception) -> str:
    cause = error.__cause__ or error.__context__
    return f"{type(cause).__name__}: {cause}" if cause else str(error)


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


class RequestCache:
    """Successful responses on disk, one JSON file per request, keyed by a hash of
    (base_url, model, request body). The key is not part of it, by construction."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None

    @staticmethod
    def key(base_url: str, request: dict) -> str:
        text = json.dumps({"base_url": base_url.rstrip("/"), "request": request},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.folder is None or not self._path(key).exists():
            return None
        return json.loads(self._path(key).read_text())

    def put(self, key: str, response: dict) -> None:
        if self.folder is not None:
            with atomic_file(self._path(key)) as handle:
                json.dump(response, handle)


class RequestLog:
    """One record per attempt (and per cache hit), for accounting and health."""

    def __init__(self):
        self.started = time.monotonic()
        self.records: list[dict] = []
        self.lock = threading.Lock()

    def add(self, **record) -> None:
        with self.lock:
            self.records.append(record)

    def now(self) -> float:
        return time.monotonic() - self.started


def classify(error: Exception) -> str:
    """The kind of a failed attempt, as the health report counts it."""
    if isinstance(error, openai.APITimeoutError) or getattr(error, "status_code", None) == 408:
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, openai.RateLimitError):
        return "rate_limited"
    if isinstance(error, openai.APIStatusError):
        return "server_error" if error.status_code >= 500 else "client_error"
    return "other"


def retryable(error: Exception) -> bool:
    """Worth another try: what the official client retries (timeouts, dropped
    connections, 408, 409, 429, 5xx), except a 429 that means the quota is spent."""
    if isinstance(error, openai.APIConnectionError):  # timeouts included
        return True
    status = getattr(error, "status_code", None)
    if status == 429:
        return getattr(error, "code", None) != "insufficient_quota"
    return status in (408, 409) or (status is not None and status >= 500)


def retry_after(error: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or an HTTP date), or
    None when it did not ask, or asked in a form we cannot read."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if value is None:
        return None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates: RFC 5322 says UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - time.time()))


def backoff(attempt: int, base: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [1/2, 1] of base * 2^attempt."""
    return min(MAX_BACKOFF_S, base * 2 ** attempt) * rng.uniform(0.5, 1.0)


class ApiTeacher:
    """Requests for one run: client, cache, retries and the request log.

    A fatal error (key, model, quota) or too many prompts failing in a row (the
    endpoint is down) sets `stopped`: requests still queued give up at once and
    waiting ones wake, so the run stops in seconds rather than after every backoff."""

    def __init__(self, endpoint: Endpoint, cache: RequestCache, log: RequestLog, seed: int):
        self.endpoint, self.cache, self.log = endpoint, cache, log
        self.key = endpoint.api_key()
        self.client = endpoint.client()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.reason = "sampling was stopped"  # the first fatal error, for every waiter
        self.failed_in_a_row = 0
        self.give_up_after = max(10, 2 * endpoint.concurrency)

    def complete(self, prompt_id: str, request: dict) -> dict | None:
        """The response (a dict) for one request, or None once retries are spent.
        Raises ApiTeacherError for errors no retry can mend, and once stopped."""
        cache_key = RequestCache.key(self.endpoint.base_url, request)
        if (cached := self.cache.get(cache_key)) is not None:
            self.log.add(prompt_id=prompt_id, attempt=0, start_s=self.log.now(), latency_s=0.0,
                         outcome="cached", status=200, **_usage(cached))
            return cached
        for attempt in range(self.endpoint.max_retries + 1):
            if self.stopped.is_set():
                raise ApiTeacherError(self.reason)
            start = self.log.now()
            try:
                response = self.client.chat.completions.create(**request).model_dump()
            except openai.APIError as error:
                self.log.add(prompt_id=prompt_id, attempt=attempt, start_s=start,
                             latency_s=self.log.now() - start, outcome=classify(error),
                             status=getattr(error, "status_code", None),
                             error=_redact(str(error), self.key)[:300])
                if (fatal := self._fatal(error)) is not None:
                    raise self._stop(fatal) from None
                if not retryable(error) or attempt == self.endpoint.max_retries:
                    self._failed(error)
                    return None
                with self.lock:
                    delay = backoff(attempt, self.endpoint.retry_backoff, self.rng)
                self.stopped.wait(retry_after(error) or delay)
                continue
            self.log.add(prompt_id=prompt_id, attempt=attempt, start_s=start,
                         latency_s=self.log.now() - start, outcome="ok", status=200,
                         **_usage(response))
            self.cache.put(cache_key, response)
            with self.lock:
                self.failed_in_a_row = 0
            return response
        return None

    def _fatal(self, error: openai.APIError) -> str | None:
        """The message for an error that no retry and no other prompt can mend."""
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return _refused(self.endpoint, error.status_code)
        if isinstance(error, openai.NotFoundError):
            return (f"{self.endpoint.base_url} answered 404 for model {self.endpoint.model!r}: "
                    f"{_redact(str(error.message), self.key)}")
        if getattr(error, "code", None) == "insufficient_quota":
            return (f"{self.endpoint.base_url}: the quota of the key in "
                    f"${self.endpoint.api_key_env} is spent (429 insufficient_quota)")
        return None

    def _failed(self, error: openai.APIError) -> None:
        """Count a prompt that failed for good; many in a row means the endpoint is down."""
        with self.lock:
            self.failed_in_a_row += 1
            down = self.failed_in_a_row >= self.give_up_after
        if down:
            raise self._stop(
                f"{self.endpoint.base_url}: {self.failed_in_a_row} prompts in a row failed "
                f"after {self.endpoint.max_retries} retries each (last: "
                f"{_redact(str(error), self.key)[:200]}). Stopping; the shards written so far "
                "are kept, and re-running resumes from them.") from None

    def _stop(self, reason: str) -> ApiTeacherError:
        """Stop every request of the run; the first reason is the one all of them give."""
        with self.lock:
            if not self.stopped.is_set():
                self.reason = reason
                self.stopped.set()
        return ApiTeacherError(self.reason)


def _usage(response: dict) -> dict:
    usage = response.get("usage") or {}
    return {"prompt_tokens": usage.get("prompt_tokens") or 0,
            "completion_tokens": usage.get("completion_tokens") or 0}


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
    """completion_ids, completion text, finish_reason and (where every token maps to the
    student's tokenizer and k alternatives came back) the top-k log-probs."""
    choice = response["choices"][0]
    text = choice["message"].get("content") or ""
    finish_reason = choice.get("finish_reason") or "stop"
    content = (choice.get("logprobs") or {}).get("content") or []
    ids = [vocab.lookup(c["token"], c.get("bytes")) for c in content]
    if content and None not in ids:
        topk_ids, topk_logprobs = [], []
        for entry in content:
            alternatives = sorted(((vocab.lookup(a["token"], a.get("bytes")), a["logprob"])
                                   for a in entry.get("top_logprobs") or []),
                                  key=lambda pair: -pair[1])[:k]
            if k == 0 or len(alternatives) < k or any(i is None for i, _ in alternatives):
                topk_ids = topk_logprobs = []
                break
            topk_ids.append([i for i, _ in alternatives])
            topk_logprobs.append([lp for _, lp in alternatives])
        return {"completion_ids": ids, "completion": text, "finish_reason": finish_reason,
                "topk_ids": topk_ids, "topk_logprobs": topk_logprobs}
    # Text only: the student's tokens for it, ending as the local backend's answers end.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if finish_reason == "stop" and stop_ids and (not ids or ids[-1] not in stop_ids):
        ids.append(min(stop_ids) if tokenizer.eos_token_id is None else tokenizer.eos_token_id)
    return {"completion_ids": ids, "completion": text, "finish_reason": finish_reason,
            "topk_ids": [], "topk_logprobs": []}


def sample_api(endpoint: Endpoint, tokenizer, train: list[dict], heldout: list[dict],
               run_dir: Path, seed: int, shard_size: int, cache_dir: Path | None,
               log: RequestLog | None = None, **settings) -> tuple[dict, RequestLog]:
    """Sample every prompt from the endpoint into the run's shards (as
    `distill.sampling.sample_teacher` does locally). `settings`: max_new_tokens,
    do_sample, temperature, top_p, top_k_logprobs. Returns (stats, request log);
    stats add 'with_logprobs' (samples distillable token by token)."""
    if settings["top_k_logprobs"] > MAX_TOP_LOGPROBS:
        raise ApiTeacherError(f"teacher_sampling.top_k_logprobs: an OpenAI-compatible API "
                              f"returns at most {MAX_TOP_LOGPROBS}, got "
                              f"{settings['top_k_logprobs']}")
    log = log or RequestLog()
    teacher = ApiTeacher(endpoint, RequestCache(cache_dir), log, seed)
    vocab = TokenBytes(tokenizer)
    stop_ids = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
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
    fingerprint = {"backend": "openai", "model": endpoint.model, "seed": seed,
                   "shard_size": shard_size, **settings}
    try:
        stats = sample_shards(run_dir, train, heldout, shard_size, fingerprint, sample_shard,
                              plan)
    finally:  # on a stop (an error, an interrupt) queued and waiting requests give up
        teacher.stopped.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return {**stats, **counts}, log
