"""Secrets (API keys) come from environment variables only, and are read here: never
from params, never written to a run folder, a manifest or a log."""

from __future__ import annotations

import os


def api_key_from_env(variable: str, missing: str, error: type[Exception] = ValueError) -> str:
    """The API key held by the environment variable `variable`. Raises `error` with
    the message `missing` (which says what to do) when it is unset or empty."""
    key = os.environ.get(variable)
    if not key:
        raise error(missing)
    return key
