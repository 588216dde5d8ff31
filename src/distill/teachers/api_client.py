"""The HTTP side of the API teacher: endpoint, checks, retries, cache and request log.

Requests go through the official `openai` client with its own retries off: ours
are counted and logged, with the policy of `distill.teachers.retries` (what to retry,
how long to wait, how many requests at once). 401, 403, 404 and a spent quota say
the configuration is wrong and stop the run. Successful answers are cached on disk,
keyed by everything that determines them (never the key).

The API key is read from the environment variable named by `api_key_env` and is
never written anywhere: not to params, samples, logs, the cache or error messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from ..core.runs import atomic_file
from ..core.secrets import api_key_from_env
from .retries import (
    InFlightLimit,
    attempt_timeout,
    backoff,
    backoff_base,
    classify,
    retry_after,
    retryable,
)


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
        return api_key_from_env(
            self.api_key_env, f"teacher_sampling.api_key_env: the environment variable "
            f"{self.api_key_env} is not set or empty. Export the endpoint's key first (export "
            f"{self.api_key_env}=...); a local server without keys accepts any value.",
            ApiTeacherError)

    def client(self) -> openai.OpenAI:
        # Retries are ours (counted, logged, Retry-After honoured), not the client's.
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key(),
                             timeout=self.request_timeout, max_retries=0)


def endpoint_from_params(sampling, teacher: str) -> Endpoint:
    """The Endpoint of a TeacherSamplingParams (its model defaults to run.teacher)."""
    names = [f.name for f in dataclasses.fields(Endpoint) if f.name != "model"]
    return Endpoint(model=sampling.model or teacher, **{n: getattr(sampling, n) for n in names})


def is_endpoint(spec: str) -> bool:
    """Whether a model name is an endpoint spec (see `endpoint_from_spec`)."""
    return spec.startswith(("http://", "https://"))


def endpoint_from_spec(spec: str, api_key_env: str = "OPENAI_API_KEY") -> Endpoint:
    """The Endpoint of `BASE_URL#MODEL`, e.g. http://127.0.0.1:8000/v1#smollm2-135m-instruct:
    a model named where a local model could be (`distill provenance`)."""
    base_url, _, model = spec.partition("#")
    if not model:
        raise ValueError(f"{spec}: an endpoint is named BASE_URL#MODEL, e.g. "
                         "http://127.0.0.1:8000/v1#smollm2-135m-instruct")
    return Endpoint(base_url=base_url, model=model, api_key_env=api_key_env)


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


class ApiTeacher:
    """Requests for one run: client, cache, retries, the request log, and the number of
    requests in flight (`InFlightLimit`, at most endpoint.concurrency).

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
        self.in_flight = InFlightLimit(endpoint.concurrency)

    def complete(self, prompt_id: str, request: dict) -> dict | None:
        """The response (a dict) for one request, or None once retries are spent.
        Raises ApiTeacherError for errors no retry can mend, and once stopped."""
        cache_key = RequestCache.key(self.endpoint.base_url, request)
        if (cached := self.cache.get(cache_key)) is not None:
            self.log.add(prompt_id=prompt_id, attempt=0, start_s=self.log.now(), latency_s=0.0,
                         outcome="cached", status=200, **_usage(cached))
            return cached
        timeouts = 0  # of this request so far: each one doubles the next attempt's timeout
        for attempt in range(self.endpoint.max_retries + 1):
            if self.stopped.is_set():
                raise ApiTeacherError(self.reason)
            response = error = None
            client = self.client.with_options(
                timeout=attempt_timeout(self.endpoint.request_timeout, timeouts))
            with self.in_flight.slot(self.stopped) as sent:
                start = self.log.now()
                try:
                    response = client.chat.completions.create(**request).model_dump()
                except openai.APIError as caught:
                    error = caught
                self.in_flight.record("ok" if error is None else classify(error), sent)
            timeouts += error is not None and classify(error) == "timeout"
            if error is not None:  # the backoff waits outside the slot
                self.log.add(prompt_id=prompt_id, attempt=attempt, start_s=start,
                             latency_s=self.log.now() - start, outcome=classify(error),
                             status=getattr(error, "status_code", None),
                             error=_redact(str(error), self.key)[:300])
                if (fatal := self._fatal(error)) is not None:
                    raise self._stop(fatal) from None
                if not retryable(error) or attempt == self.endpoint.max_retries:
                    self._failed(error)
                    return None
                base = backoff_base(error, self.endpoint.retry_backoff,
                                    self.endpoint.request_timeout)
                with self.lock:
                    delay = backoff(attempt, base, self.rng)
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
