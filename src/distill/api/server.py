"""`distill serve`: an OpenAI-compatible HTTP server for any model the suite loads.

    distill serve smollm2-135m-instruct --port 8000     # the embedded teacher
    distill serve outputs/default-20261129-082630       # a run's distilled student

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (with `logprobs` and
`top_logprobs`) and `POST /v1/completions` (with `logprobs`, and `echo` to score
the prompt: the log-prob of every prompt token given the ones before it).

Log-probs are those of the raw logits (log_softmax before temperature and top-p),
as vLLM reports them by default and as the local sampling backend records them.
Requests that arrive together are generated together: a worker thread collects
them for `batch_wait_ms` and runs compatible ones as one left-padded batch, so
concurrent clients get the batching speed-up of the local backend. The model is
only ever touched by that thread.

Work nobody waits for is dropped: a request whose client disconnects (its
timeout fired) or whose deadline passes (`--request-timeout`, or sooner the
client's own timeout, which the openai client sends as `x-stainless-read-timeout`)
leaves the queue, and a batch stops generating rows whose clients are gone. So
under overload a client's retries do not pile onto work that is already lost.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ..data import encode_chat
from ..generation import generate, score_prompt, stop_token_ids
from ..params import MAX_TOP_LOGPROBS
from ..token_bytes import TokenBytes

# How often a waiting request checks that its client is still connected.
DISCONNECT_POLL_S = 0.2


class ApiError(Exception):
    """An error answered in the OpenAI format: {"error": {message, type, code}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are accepted, ignored
    model: str
    messages: list[dict]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[int]
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    logprobs: int | None = None
    echo: bool = False
    seed: int | None = None
    n: int = 1
    stream: bool = False


@dataclass
class Job:
    """One generation request waiting for the worker."""
    prompt_ids: list[int]
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    deadline: float = float("inf")  # time.monotonic() after which nobody waits for it
    abandoned: bool = False  # set when its client disconnected
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def batch_key(self):
        # seeded sampling runs alone (its own random stream); greedy ignores the seed
        alone = id(self) if self.do_sample and self.seed is not None else None
        return (self.do_sample, self.temperature, self.top_p, alone)

    def gone(self) -> bool:
        """Nobody waits for the result any more: drop it, or stop generating it."""
        return self.abandoned or time.monotonic() > self.deadline


class Worker:
    """The one thread that runs the model: generation jobs batched, other work queued."""

    def __init__(self, model, tokenizer, max_batch_size: int, batch_wait_ms: float):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.wait = max_batch_size, batch_wait_ms / 1000
        self.queue: queue.Queue = queue.Queue()
        self.batch_sizes: collections.Counter = collections.Counter()  # size -> batches run
        self.dropped = 0  # jobs dropped from the queue because their client had gone
        self.running: list[Job] = []  # the batch being generated (read by tests, /health)
        self.thread = threading.Thread(target=self._loop, name="distill-serve-model",
                                       daemon=True)
        self.thread.start()

    def submit(self, job) -> concurrent.futures.Future:
        self.queue.put(job)
        return job.future

    def call(self, function, *args) -> concurrent.futures.Future:
        """Run `function(*args)` on the model thread (e.g. scoring a prompt)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((function, args, future))
        return future

    def _loop(self):
        while True:
            try:
                self._serve_once()
            except Exception as error:  # never let the one model thread die
                print(f"distill serve: worker error: {error!r}")

    def _serve_once(self):
        pending = [self.queue.get()]
        deadline = time.monotonic() + self.wait
        while len(pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            try:
                pending.append(self.queue.get(timeout=left))
            except queue.Empty:
                break
        groups: dict = {}
        for item in pending:
            if isinstance(item, Job):
                if item.gone():
                    self.dropped += 1
                    item.future.cancel()
                elif item.future.set_running_or_notify_cancel():  # False: its caller left
                    groups.setdefault(item.batch_key(), []).append(item)
            else:
                function, args, future = item
                if future.set_running_or_notify_cancel():
                    _settle(future, function, *args)
        for jobs in groups.values():
            self._generate(jobs)

    def _generate(self, jobs: list[Job]):
        self.batch_sizes[len(jobs)] += 1
        self.running = jobs
        try:
            if jobs[0].seed is not None:
                torch.manual_seed(jobs[0].seed)
            outputs = generate(
                self.model, self.tokenizer, [j.prompt_ids for j in jobs],
                max_new_tokens=max(j.max_new_tokens for j in jobs), do_sample=jobs[0].do_sample,
                temperature=jobs[0].temperature, top_p=jobs[0].top_p,
                top_k_logprobs=max(j.top_k for j in jobs), token_logprobs=True,
                abandoned=lambda: [job.gone() for job in jobs])
        except Exception as error:  # every waiting client hears of it
            for job in jobs:
                job.future.set_exception(error)
            return
        finally:
            self.running = []
        for job, output in zip(jobs, outputs):
            if job.gone():  # cut short when its client left: nobody to answer
                job.future.set_exception(TimeoutError("abandoned: its client had gone"))
            else:
                job.future.set_result(_truncate(output, job.max_new_tokens, job.top_k))


def _settle(future, function, *args):
    try:
        future.set_result(function(*args))
    except Exception as error:
        future.set_exception(error)


def _truncate(output: dict, max_new_tokens: int, top_k: int) -> dict:
    """One job's share of a batch generated to the batch's longest max_new_tokens."""
    if len(output["completion_ids"]) > max_new_tokens:
        output = {key: value[:max_new_tokens] if isinstance(value, list) else value
                  for key, value in output.items()}
        output["finish_reason"] = "length"
    if "topk_ids" in output:
        output["topk_ids"] = [row[:top_k] for row in output["topk_ids"]]
        output["topk_logprobs"] = [row[:top_k] for row in output["topk_logprobs"]]
    return output


def create_app(model, tokenizer, served_name: str, api_key: str | None = None,
               max_batch_size: int = 8, batch_wait_ms: float = 50.0,
               request_timeout: float = 600.0) -> FastAPI:
    """The FastAPI app serving `model` as `served_name`. With `api_key`, every request
    must carry `Authorization: Bearer <api_key>`. A request is dropped after
    `request_timeout` seconds, or its client's own timeout if that is shorter.
    `app.state.worker` is the model thread (its counters are in /health)."""
    worker = Worker(model, tokenizer, max_batch_size, batch_wait_ms)
    vocab = TokenBytes(tokenizer)
    stops = set(stop_token_ids(tokenizer, model.generation_config))
    context = getattr(model.config, "max_position_embeddings", None)
    created = int(time.time())
    app = FastAPI(title="distill serve", description=f"OpenAI-compatible API for {served_name}")
    app.state.worker = worker

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(status_code=error.status, content={"error": {
            "message": error.message, "type": error.kind, "param": None, "code": error.code}})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                            for e in error.errors())
        return await api_error(request, ApiError(400, f"invalid request: {details}"))

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key is not None and request.url.path != "/health":  # probes carry no key
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                return await api_error(request, ApiError(
                    401, "Incorrect API key provided.", code="invalid_api_key"))
        return await call_next(request)

    def check(body, max_tokens: int, n_prompt: int, top: int):
        if body.model != served_name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this server has "
                           f"'{served_name}'.", code="model_not_found")
        if body.stream:
            raise ApiError(400, "stream=true is not supported by distill serve")
        if body.n != 1:
            raise ApiError(400, "n must be 1")
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs / logprobs must be in 0..{MAX_TOP_LOGPROBS}")
        if max_tokens < 0 or (max_tokens == 0 and not getattr(body, "echo", False)):
            raise ApiError(400, "max_tokens must be >= 1 (or 0 with echo)")
        if context and n_prompt + max_tokens > context:
            raise ApiError(400, f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) "
                           f"exceeds the model's context of {context} tokens")

    def deadline(request: Request) -> float:
        """When nobody waits any more: our timeout, or the client's if it said so."""
        seconds = request_timeout
        try:
            seconds = min(seconds, float(request.headers["x-stainless-read-timeout"]))
        except (KeyError, ValueError):
            pass
        return time.monotonic() + seconds

    async def run_job(request: Request, body, prompt_ids: list[int], max_tokens: int,
                      top: int) -> dict:
        temperature = 1.0 if body.temperature is None else body.temperature
        job = Job(prompt_ids, max_tokens, do_sample=temperature > 0,
                  temperature=temperature if temperature > 0 else 1.0,
                  top_p=1.0 if body.top_p is None else body.top_p, top_k=top, seed=body.seed,
                  deadline=deadline(request))
        result = asyncio.wrap_future(worker.submit(job))
        while not result.done():
            await asyncio.wait({result}, timeout=DISCONNECT_POLL_S)
            if not result.done() and (job.gone() or await request.is_disconnected()):
                job.abandoned = True  # the worker drops it, or stops generating it
                result.cancel()
                raise ApiError(408, "the request timed out or its client disconnected "
                               "before the answer was ready", kind="timeout")
        return result.result()

    def text_of(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    def usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model",
                                            "created": created, "owned_by": "distill"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served_name,
                "batch_sizes": dict(sorted(worker.batch_sizes.items())),
                "queued": worker.queue.qsize(), "running": len(worker.running),
                "dropped": worker.dropped}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        max_tokens = next((n for n in (body.max_completion_tokens, body.max_tokens)
                           if n is not None), 256)
        top = (body.top_logprobs or 0) if body.logprobs else 0
        try:
            prompt_ids = encode_chat(tokenizer, body.messages)
        except Exception as error:
            raise ApiError(400, f"messages could not be formatted: {error}") from None
        check(body, max_tokens, len(prompt_ids), top)
        output = await run_job(request, body, prompt_ids, max_tokens, top)
        ids = output["completion_ids"]
        logprobs = None
        if body.logprobs:
            top_ids = output.get("topk_ids") or [[] for _ in ids]
            top_logprobs = output.get("topk_logprobs") or [[] for _ in ids]
            logprobs = {"content": [
                {**_token(vocab, token_id), "logprob": chosen,
                 "top_logprobs": [{**_token(vocab, alt), "logprob": lp}
                                  for alt, lp in zip(alt_ids, alt_logprobs)]}
                for token_id, chosen, alt_ids, alt_logprobs
                in zip(ids, output["token_logprobs"], top_ids, top_logprobs)]}
        # JSONResponse directly: FastAPI's generic encoder is slow on thousands of
        # log-prob entries, and it runs on the event loop every client waits on
        return JSONResponse({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": served_name,
                "choices": [{"index": 0, "finish_reason": output["finish_reason"],
                             "message": {"role": "assistant", "content": text_of(
                                 [i for i in ids if i not in stops])},
                             "logprobs": logprobs}],
                "usage": usage(len(prompt_ids), len(ids))})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt_ids = body.prompt if isinstance(body.prompt, list) else \
            tokenizer(body.prompt)["input_ids"]
        if not prompt_ids:
            raise ApiError(400, "prompt is empty")
        if not all(0 <= i < len(vocab.id_to_bytes) for i in prompt_ids):
            raise ApiError(400, f"prompt token ids must be in 0..{len(vocab.id_to_bytes) - 1}")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        top = body.logprobs or 0
        check(body, max_tokens, len(prompt_ids), top)
        output = {"completion_ids": [], "finish_reason": "length", "token_logprobs": [],
                  "topk_ids": [], "topk_logprobs": []}
        if max_tokens:
            output = await run_job(request, body, prompt_ids, max_tokens, top)
        ids = output["completion_ids"]
        shown_ids, chosen = list(ids), list(output["token_logprobs"])
        alternatives = [list(zip(*pair)) for pair in
                        zip(output.get("topk_ids", [[]] * len(ids)),
                            output.get("topk_logprobs", [[]] * len(ids)))]
        if body.echo and body.logprobs is not None:  # scoring only when asked for
            prompt_chosen, prompt_alternatives = await asyncio.wrap_future(
                worker.call(score_prompt, model, prompt_ids, top))
            shown_ids = prompt_ids + shown_ids
            chosen, alternatives = prompt_chosen + chosen, prompt_alternatives + alternatives
        text = (text_of(prompt_ids) if body.echo else "") + text_of(
            [i for i in ids if i not in stops])
        logprobs = None
        if body.logprobs is not None:
            tokens = [_token(vocab, i)["token"] for i in shown_ids]
            offsets, position = [], 0
            for token in tokens:
                offsets.append(position)
                position += len(token)
            logprobs = {"tokens": tokens, "token_logprobs": chosen, "text_offset": offsets,
                        "top_logprobs": [None if alts is None else
                                         {_token(vocab, t)["token"]: lp for t, lp in alts}
                                         for alts in alternatives]}
        return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": served_name,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                             "finish_reason": output["finish_reason"]}],
                "usage": usage(len(prompt_ids), len(ids))})

    return app


def _token(vocab: TokenBytes, token_id: int) -> dict:
    text, data = vocab.token(token_id)
    return {"token": text, "bytes": data}


def load_for_serving(source: str, dtype: str = "float32"):
    """(model, tokenizer, served name) for a model name, a folder, or a run folder
    (which serves the run's distilled student)."""
    from ..models import load_model
    from ..runs import STUDENT

    path = Path(source).expanduser()
    if (path / STUDENT / "config.json").exists():
        model, tokenizer = load_model(str(path / STUDENT), dtype=dtype)
        return model, tokenizer, f"{path.resolve().name}/student"
    model, tokenizer = load_model(source, dtype=dtype)
    return model, tokenizer, source
