"""The model thread of `distill serve`: requests queued, batched, and dropped when
nobody waits for them.

One thread owns the model. It collects the requests that arrive within
`batch_wait_ms` (up to `max_batch_size`) and generates compatible ones as one
left-padded batch, so concurrent clients get the batching speed-up of the local
backend. A job whose client has gone (`Job.gone`: disconnected, or past its
deadline) is dropped from the queue, and rows of a running batch whose clients
have gone stop generating.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from ..lm.generation import generate


class Abandoned(Exception):
    """A job's result, when nobody waited for it any more."""


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
                job.future.set_exception(Abandoned())
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
