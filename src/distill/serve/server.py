"""`distill serve`: an OpenAI-compatible HTTP server for any model the suite loads.

    distill serve smollm2-135m-instruct --port 8000     # the embedded teacher
    distill serve outputs/default-20261129-082630       # a run's distilled student

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (with `logprobs` and
`top_logprobs`) and `POST /v1/completions` (with `logprobs`, and `echo` to score
the prompt: the log-prob of every prompt token given the ones before it).

Log-probs are those of the raw logits (log_softmax before temperature and top-p),
as vLLM reports them by default and as the local sampling backend records them.
Requests that arrive together are generated together: the model thread
(`distill.serve.worker`) collects them for `batch_wait_ms` and runs compatible ones
as one left-padded batch, so concurrent clients get the batching speed-up of the
local backend. The model is only ever touched by that thread.

Work nobody waits for is dropped: a request whose client disconnects (its
timeout fired) or whose deadline passes (`--request-timeout`, or sooner the
client's own timeout, which the openai client sends as `x-stainless-read-timeout`)
leaves the queue, and a batch stops generating rows whose clients are gone. So
under overload a client's retries do not pile onto work that is already lost.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ..core.params import MAX_TOP_LOGPROBS
from ..lm.data import encode_chat
from ..lm.generation import score_prompt, stop_token_ids
from ..lm.token_bytes import TokenBytes
from .worker import Abandoned, Job, Worker

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

    # A dependency of every route, not an HTTP middleware: Starlette's middleware wraps
    # the request's receive channel, and a handler behind it never hears its client
    # disconnect (which is how abandoned work is found).
    async def authenticate(request: Request):
        if api_key is not None and request.url.path != "/health":  # probes carry no key
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    app = FastAPI(title="distill serve", description=f"OpenAI-compatible API for {served_name}",
                  dependencies=[Depends(authenticate)])
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
        if result.cancelled() or isinstance(result.exception(), Abandoned):
            raise ApiError(408, "the request timed out or its client disconnected before "
                           "the answer was ready", kind="timeout")
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
    from ..core.runs import STUDENT
    from ..lm.models import load_model

    model, tokenizer = load_model(source, dtype=dtype)  # a run folder loads its student
    path = Path(source).expanduser()
    is_run = not (path / "config.json").exists() and (path / STUDENT / "config.json").exists()
    return model, tokenizer, f"{path.resolve().name}/student" if is_run else source
