"""A teacher behind an OpenAI-compatible API, and `distill serve`, which is one.

- `client`: endpoint, early checks, retries with backoff, request cache and log;
- `teacher`: requests per prompt, answers converted into samples (stage 01's
  `openai` backend), and `sample_endpoint`, the whole stage for a notebook;
- `health`: accounting and the health report of a sampling run;
- `server`: the FastAPI app of `distill serve`.

The key of an endpoint lives in an environment variable, read here only.
"""

from __future__ import annotations

import os


def api_key_from_env(variable: str, missing: str, error: type[Exception] = ValueError) -> str:
    """The API key held by the environment variable `variable`. Raises `error` with
    the message `missing` (which says what to do) when it is unset or empty."""
    key = os.environ.get(variable)
    if not key:
        raise error(missing)
    return key
