"""The openai teacher backend against `distill serve` on loopback (a tiny model with
the embedded teacher's tokenizer): the same samples as the local backend, faults
survived and counted, answers cached, failures retried on re-run, and bad
configurations stopped with a clear message before anything is written."""

import email.utils
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pandas as pd
import pytest

from conftest import make_tiny_model
from distill.lm import samples
from distill.lm.data import load_prompts, split_prompts
from distill.lm.token_bytes import TokenBytes
from distill.serve.server import create_app
from distill.teachers import health
from distill.teachers import local as sampling
from distill.teachers.api_client import ApiTeacherError, Endpoint, RequestCache, check_endpoint
from distill.teachers.openai_api import fingerprint_endpoint, response_to_sample, sample_api
from distill.teachers.retries import (
    InFlightLimit,
    attempt_timeout,
    backoff,
    backoff_base,
    retry_after,
)
from distill.testing import BackgroundServer, FaultProxy, free_port

KEY_ENV, KEY = "DISTILL_TEST_API_KEY", "sk-test-9d41c7a0e2"
NAME = "tiny-teacher"
SETTINGS = {"max_new_tokens": 6, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
            "top_k_logprobs": 4}


@pytest.fixture(scope="module")
def server(tiny_model_teacher_vocab, teacher_tokenizer):
    app = create_app(tiny_model_teacher_vocab, teacher_tokenizer, NAME, api_key=KEY)
    with BackgroundServer(app) as url:
        yield url


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(scope="module")
def prompts():
    train, heldout = split_prompts(load_prompts("builtin", "prompt", None), 4, 0, 20)
    return train, heldout


def endpoint(url: str, **changes) -> Endpoint:
    settings = {"base_url": f"{url}/v1", "model": NAME, "api_key_env": KEY_ENV,
                "concurrency": 4, "request_timeout": 5.0, "max_retries": 8,
                "retry_backoff": 0.02, **changes}
    return Endpoint(**settings)


def sample(url, teacher_tokenizer, prompts, run_dir, cache_dir=None, **changes):
    train, heldout = prompts
    return sample_api(endpoint(url, **changes), teacher_tokenizer, train, heldout, run_dir,
                      seed=0, shard_size=8, cache_dir=cache_dir, **SETTINGS)


def test_api_samples_equal_the_local_backend(server, tiny_model_teacher_vocab,
                                             teacher_tokenizer, prompts, tmp_path):
    stats, _ = sample(server, teacher_tokenizer, prompts, tmp_path / "api")
    train, heldout = prompts
    sampling.sample_teacher(tiny_model_teacher_vocab, teacher_tokenizer, train, heldout,
                            tmp_path / "local", seed=0, shard_size=8, batch_size=4, **SETTINGS)
    api, local = (samples.read_samples(tmp_path / name) for name in ("api", "local"))
    assert stats["with_logprobs"] == len(api) == len(local) == 24
    columns = ["prompt_id", "split", "prompt_ids", "completion_ids", "completion", "topk_ids",
               "completion_bytes", "topk_bytes"]  # the end of an answer: b"" on both sides
    for column in columns:
        assert [_plain(v) for v in api[column]] == [_plain(v) for v in local[column]], column
    for ours, theirs in zip(api["topk_logprobs"], local["topk_logprobs"]):
        np.testing.assert_allclose(np.stack(ours), np.stack(theirs), atol=1e-4)
    for ours, theirs in zip(api["completion_logprobs"], local["completion_logprobs"]):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def _plain(value):
    """Parquet's nested arrays as nested lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    return value


def test_faults_are_survived_and_counted(server, teacher_tokenizer, prompts, tmp_path):
    proxy = FaultProxy(server, rate=0.3, seed=3, slow_s=3.0, retry_after_s=0.05)
    with proxy as url:
        stats, log = sample(url, teacher_tokenizer, prompts, tmp_path, request_timeout=2.5)
    frame = samples.read_samples(tmp_path)
    train, heldout = prompts
    assert sorted(frame["prompt_id"]) == sorted(p["prompt_id"] for p in train + heldout)
    assert stats["failed_prompts"] == []
    assert proxy.forwarded == {200: 24}  # each prompt generated exactly once upstream
    report = health.summarize(health.requests_frame(log.records), 24, 0)
    assert sum(proxy.injected.values()) >= 5  # the seed injects every kind
    assert set(proxy.injected) == {"rate_limited", "server_error", "slow", "drop"}
    assert report["errors"]["rate_limited"] == proxy.injected["rate_limited"]
    assert report["errors"]["server_error"] == proxy.injected["server_error"]
    # a slow fault is a timeout, or (once a retry's longer timeout outlasts the proxy's
    # hold) a connection closed without an answer, as a drop is
    assert report["errors"]["timeout"] >= 1
    assert report["errors"]["timeout"] + report["errors"]["connection"] == \
        proxy.injected["slow"] + proxy.injected["drop"]
    assert report["retries"] == sum(proxy.injected.values())
    assert report["requests"] == 24 + sum(proxy.injected.values())
    assert report["samples_lost"] == 0


def test_rerun_is_served_from_the_cache(server, teacher_tokenizer, prompts, tmp_path):
    with FaultProxy(server, rate=0.0) as url:
        first, _ = sample(url, teacher_tokenizer, prompts, tmp_path / "a", tmp_path / "cache")
    # the proxy is gone, so the endpoint is unreachable: only the cache can answer
    stats, log = sample(url, teacher_tokenizer, prompts, tmp_path / "b", tmp_path / "cache")
    assert {r["outcome"] for r in log.records} == {"cached"}
    a, b = (samples.read_samples(tmp_path / name) for name in "ab")
    pd.testing.assert_frame_equal(a, b)
    assert stats["tokens"] == first["tokens"]


def test_failed_prompts_are_recorded_and_only_they_are_asked_again(server, teacher_tokenizer,
                                                                   prompts, tmp_path):
    with FaultProxy(server, rate=0.5, kinds=("server_error",), seed=0) as url:
        stats, log = sample(url, teacher_tokenizer, prompts, tmp_path, max_retries=0)
    failed = stats["failed_prompts"]
    assert 0 < len(failed) < 24
    assert {r["prompt_id"] for r in log.records if r["status"] == 500} == set(failed)
    first = samples.read_samples(tmp_path)
    assert len(first) == 24 - len(failed)
    # no cache: only the missing prompts are requested again, the others are kept
    stats, log = sample(server, teacher_tokenizer, prompts, tmp_path)
    assert sorted(r["prompt_id"] for r in log.records) == sorted(failed)
    assert stats["failed_prompts"] == []
    again = samples.read_samples(tmp_path)
    train, heldout = prompts
    assert list(again["prompt_id"]) == [p["prompt_id"] for p in heldout + train]
    pd.testing.assert_frame_equal(again[~again["prompt_id"].isin(failed)].reset_index(drop=True),
                                  first.reset_index(drop=True))
    stats, log = sample(server, teacher_tokenizer, prompts, tmp_path)  # complete: nothing to do
    assert stats["shards_skipped"] == 3 and log.records == []


def _scripted_endpoint(status: int, error: dict):
    """An endpoint that lists NAME and answers every chat request with `status`."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": NAME, "object": "model", "created": 0,
                                            "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    def chat():
        return JSONResponse({"error": error}, status_code=status)

    return BackgroundServer(app)


def test_a_spent_quota_stops_the_run(teacher_tokenizer, prompts, tmp_path):
    quota = {"message": "You exceeded your current quota", "type": "insufficient_quota",
             "code": "insufficient_quota"}
    with _scripted_endpoint(429, quota) as url:
        with pytest.raises(ApiTeacherError, match="quota .* is spent"):
            sample(url, teacher_tokenizer, prompts, tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


def test_an_endpoint_that_is_down_stops_the_run(teacher_tokenizer, prompts, tmp_path):
    """Every prompt failing for good: the run stops after 10 in a row instead of
    working through every backoff of every prompt."""
    with _scripted_endpoint(503, {"message": "down", "type": "server_error"}) as url:
        started = time.monotonic()
        with pytest.raises(ApiTeacherError, match="10 prompts in a row failed"):
            sample(url, teacher_tokenizer, prompts, tmp_path, max_retries=1)
    assert time.monotonic() - started < 20
    assert not list(tmp_path.rglob("*.parquet"))


@pytest.mark.parametrize("change, message", [
    ({"base_url": f"http://127.0.0.1:{free_port()}/v1"}, "cannot reach"),
    ({"api_key_env": "DISTILL_TEST_WRONG_KEY"}, "refused the API key in \\$DISTILL_TEST_WRONG"),
    ({"model": "no-such-model"}, "'no-such-model' is not served"),
    ({"api_key_env": "DISTILL_TEST_UNSET_KEY"}, "DISTILL_TEST_UNSET_KEY is not set"),
    ({"base_url": "{server}"}, "404 to both /models and /chat/completions.*ends in /v1"),
])
def test_bad_configuration_stops_with_a_clear_message(server, monkeypatch, change, message):
    monkeypatch.setenv("DISTILL_TEST_WRONG_KEY", "wrong")
    monkeypatch.delenv("DISTILL_TEST_UNSET_KEY", raising=False)
    settings = {"base_url": f"{server}/v1",
                **{k: v.format(server=server) for k, v in change.items()}}
    with pytest.raises(ApiTeacherError, match=message) as error:
        check_endpoint(endpoint(server, **settings))
    assert KEY not in str(error.value)


def test_a_configuration_error_while_sampling_writes_nothing(server, teacher_tokenizer, prompts,
                                                             tmp_path):
    with pytest.raises(ApiTeacherError, match="404"):
        sample(server, teacher_tokenizer, prompts, tmp_path, model="no-such-model")
    assert not list(tmp_path.rglob("*.parquet"))


def test_cache_key_covers_what_determines_the_answer():
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 0,
               "temperature": 0.0, "max_completion_tokens": 8}
    key = RequestCache.key("http://h/v1", request)
    assert key == RequestCache.key("http://h/v1/", dict(reversed(request.items())))
    changed = [RequestCache.key("http://other/v1", request)] + [
        RequestCache.key("http://h/v1", {**request, field: value})
        for field, value in [("model", "n"), ("messages", []), ("seed", 1),
                             ("temperature", 0.5), ("max_completion_tokens", 9)]]
    assert key not in changed and len(set(changed)) == len(changed)


def test_retry_after_and_backoff():
    def error_with(value):
        return SimpleNamespace(response=SimpleNamespace(headers={"retry-after": value}))

    assert retry_after(error_with("2.5")) == 2.5
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after(error_with(later)) <= 30
    assert retry_after(SimpleNamespace(response=None)) is None
    assert retry_after(error_with("soon")) is None  # unreadable: our own backoff applies
    utc = email.utils.formatdate(time.time() + 30).replace("+0000", "-0000")
    assert 25 < retry_after(error_with(utc)) <= 30
    assert retry_after(error_with("86400")) == 600  # honoured, within reason
    rng = random.Random(0)
    delays = [backoff(attempt, 1.0, rng) for attempt in range(4)]
    assert all(2 ** a * 0.5 <= d <= 2 ** a for a, d in enumerate(delays))
    assert backoff(30, 1.0, rng) <= 60


def test_requests_in_flight_halve_on_timeouts_and_grow_back_one_by_one():
    limit = InFlightLimit(8)
    stopped = threading.Event()
    with limit.slot(stopped) as sent_early:
        pass
    limit.record("timeout", sent_early)
    assert limit.limit == 4 and limit.lowest == 4
    limit.record("timeout", sent_early)  # sent before the cut: the same episode
    assert limit.limit == 4
    limit.record("server_error", time.monotonic())  # not a sign of load: no change
    assert limit.limit == 4
    limit.record("rate_limited", time.monotonic())
    assert limit.limit == 2 and limit.lowest == 2
    for _ in range(2):  # a window's worth of successes adds about one
        limit.record("ok", time.monotonic())
    assert limit.limit == pytest.approx(2 + 1 / 2 + 1 / 2.5)
    for _ in range(200):
        limit.record("ok", time.monotonic())
    assert limit.limit == 8 and limit.lowest == 2  # back to the maximum, never above
    for _ in range(10):
        limit.record("timeout", time.monotonic() + 1)
    assert limit.limit == 1  # never below one request


def test_a_full_limit_holds_requests_back_until_one_returns():
    limit, stopped, order = InFlightLimit(1), threading.Event(), []

    def request(name, hold):
        with limit.slot(stopped):
            order.append(f"{name} in")
            time.sleep(hold)
            order.append(f"{name} out")

    first = threading.Thread(target=request, args=("a", 0.3))
    first.start()
    time.sleep(0.05)
    request("b", 0.0)
    first.join()
    assert order == ["a in", "a out", "b in", "b out"]


def test_a_request_that_timed_out_is_retried_with_a_longer_timeout():
    assert [attempt_timeout(10.0, n) for n in range(6)] == [10, 20, 40, 80, 80, 80]


def test_timeouts_back_off_longer_than_other_errors():
    """A timeout says the server is behind: retrying at once only lengthens its queue,
    so the backoff then starts at a quarter of the timeout (never below retry_backoff)."""
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    timeout = openai.APITimeoutError(request=request)
    server_error = openai.InternalServerError(
        "busy", response=httpx.Response(500, request=request), body=None)
    assert backoff_base(timeout, retry_backoff=0.2, request_timeout=40) == 10
    assert backoff_base(timeout, retry_backoff=20, request_timeout=40) == 20
    assert backoff_base(server_error, retry_backoff=0.2, request_timeout=40) == 0.2


def test_text_only_answers_are_retokenized(teacher_tokenizer):
    """An endpoint whose tokens do not map (another tokenizer) gives text-only samples
    ending in the student's EOS, as the local backend's do."""
    response = {"choices": [{"message": {"content": "Blue."}, "finish_reason": "stop",
                             "logprobs": {"content": [{"token": "Bl", "bytes": [0xFF, 0xFE],
                                                       "logprob": -0.1, "top_logprobs": []}]}}]}
    vocab = TokenBytes(teacher_tokenizer)
    result = response_to_sample(response, 4, vocab, teacher_tokenizer,
                                {teacher_tokenizer.eos_token_id})
    expected = teacher_tokenizer("Blue.", add_special_tokens=False)["input_ids"]
    assert result["completion_ids"] == expected + [teacher_tokenizer.eos_token_id]
    assert result["topk_ids"] == [] and result["completion"] == "Blue."


def _entry(token: str, logprob: float, data: bytes | None = None, top=()) -> dict:
    """A chat-completions log-prob entry; `data` None leaves out its `bytes` field."""
    entry = {"token": token, "logprob": logprob, "top_logprobs": list(top)}
    return entry if data is None else {**entry, "bytes": list(data)}


def _answer(text: str, entries: list[dict], finish_reason: str = "stop") -> dict:
    return {"choices": [{"message": {"content": text}, "finish_reason": finish_reason,
                         "logprobs": {"content": entries}}]}


def _sample(response: dict, tokenizer, k: int = 2) -> dict:
    return response_to_sample(response, k, TokenBytes(tokenizer), tokenizer,
                              {tokenizer.eos_token_id})


def test_tokens_of_another_tokenizer_are_recorded_as_bytes(teacher_tokenizer):
    """An endpoint with another tokenizer (" 日本語" is one of its tokens, none of the
    student's): the ids fall back to the text, but the teacher's own tokens, log-probs
    and alternatives are kept as bytes, alternatives most likely first; a token without
    `bytes` is its text; its end-of-turn token, which the text leaves out, adds b"" (an
    ordinary token of another tokenizer is kept as it is, even a special-looking one)."""
    assert TokenBytes(teacher_tokenizer).bytes_to_id.get(" 日本語".encode()) is None
    entries = [
        _entry("Blue", -0.5, b"Blue", [_entry("Red", -1.5, b"Red"), _entry("Blue", -0.5)]),
        _entry(" 日本語", -0.25, top=[_entry(" 日本語", -0.25), _entry(" sky", -2.0)]),
        _entry(".", -0.1, b".", [_entry("!", -3.0, b"!"), _entry(".", -0.1, b".")]),
        _entry("<end_of_turn>", -0.05, b"<end_of_turn>",
               [_entry("<end_of_turn>", -0.05), _entry("<|im_end|>", -4.0)]),
    ]
    result = _sample(_answer("Blue 日本語.", entries), teacher_tokenizer)
    expected = teacher_tokenizer("Blue 日本語.", add_special_tokens=False)["input_ids"]
    assert result["completion_ids"] == expected + [teacher_tokenizer.eos_token_id]
    # no ids for the top-k, but its log-probs, with their bytes, for an aligning student
    assert result["topk_ids"] == [] and len(result["topk_logprobs"]) == 4
    assert result["topk_logprobs"][0] == [-0.5, -1.5]
    assert result["completion_bytes"] == [b"Blue", " 日本語".encode(), b".", b""]
    assert result["completion_logprobs"] == [-0.5, -0.25, -0.1, -0.05]
    # "<|im_end|>" is a special token of the student's: it writes no text
    assert result["topk_bytes"] == [[b"Blue", b"Red"], [" 日本語".encode(), b" sky"],
                                    [b".", b"!"], [b"<end_of_turn>", b""]]


def test_pieces_of_characters_keep_their_bytes(teacher_tokenizer):
    """Tokens holding pieces of a character (named by their bytes, as `distill serve` names
    them) add those pieces, the end-of-turn token after them adds nothing; and pieces that
    make no character (an answer cut short) are the answer's U+FFFD."""
    def piece(data: bytes, logprob: float) -> dict:
        name = data.decode("utf-8", "replace")  # a piece alone: U+FFFD
        return _entry(name, logprob, data, [_entry(name, logprob, data),
                                            _entry("x", logprob - 1, b"x")])

    entries = [piece(b"\xe6\x97", -0.5), piece(b"\xa5", -0.1), piece("本.".encode(), -0.2),
               piece(b"<end_of_turn>", -0.3)]
    result = _sample(_answer("日本.", entries), teacher_tokenizer)
    assert result["completion_bytes"] == [b"\xe6\x97", b"\xa5", "本.".encode(), b""]
    assert result["topk_bytes"][0] == [b"\xe6\x97", b"x"]
    cut_short = [piece("日".encode(), -0.1), piece(b"\xe6\x97", -0.4)]
    result = _sample(_answer("日\ufffd", cut_short, "length"), teacher_tokenizer)
    assert result["completion_bytes"] == ["日".encode(), b"\xe6\x97"]


def test_tokens_named_by_id_take_the_bytes_of_the_id(teacher_tokenizer):
    """vLLM's --return-tokens-as-token-ids: "token_id:<N>" is N in the student's
    vocabulary (its `bytes` are those of a decoded string, not the token's: ignored); a
    special id writes no text. An id beyond the vocabulary leaves the bytes unknown."""
    blue, sky, dot = teacher_tokenizer("Blue sky.", add_special_tokens=False)["input_ids"]
    eos = teacher_tokenizer.eos_token_id

    def named(token_id, logprob, alternative):
        return _entry(f"token_id:{token_id}", logprob, b"", [
            _entry(f"token_id:{token_id}", logprob, b""),
            _entry(f"token_id:{alternative}", logprob - 1, b"?")])

    entries = [named(blue, -0.5, eos), named(sky, -0.25, dot), named(dot, -0.1, sky),
               named(eos, -0.05, blue)]
    result = _sample(_answer("Blue sky.", entries), teacher_tokenizer)
    assert result["completion_ids"] == [blue, sky, dot, eos]
    assert result["topk_ids"] == [[blue, eos], [sky, dot], [dot, sky], [eos, blue]]
    assert result["completion_bytes"] == [b"Blue", b" sky", b".", b""]
    assert result["completion_logprobs"] == [-0.5, -0.25, -0.1, -0.05]
    assert result["topk_bytes"] == [[b"Blue", b""], [b" sky", b"."], [b".", b" sky"],
                                    [b"", b"Blue"]]
    entries[1]["top_logprobs"][1]["token"] = f"token_id:{len(teacher_tokenizer)}"
    result = _sample(_answer("Blue sky.", entries), teacher_tokenizer)
    assert result["completion_bytes"] == result["completion_logprobs"] == \
        result["topk_bytes"] == []


def test_token_bytes_are_left_out_where_they_are_not_known(teacher_tokenizer):
    """No bytes without log-probs and k alternatives for every token, nor where a token
    or an alternative is a U+FFFD stand-in for a piece of a character; a U+FFFD the
    answer holds is the tokenizer's own."""
    def entries(second: str = " sky", alternatives: int = 2):
        return [_entry(token, -0.5, token.encode(),
                       [_entry(token, -0.5), _entry("x", -2.0)][:alternatives])
                for token in ("Blue", second, ".")]

    def recorded(response, k=2):
        result = _sample(response, teacher_tokenizer, k)
        fields = [result[key] for key in ("completion_bytes", "completion_logprobs",
                                          "topk_bytes")]
        assert all(fields) or not any(fields)
        return bool(fields[0])

    assert recorded(_answer("Blue sky.", entries()))
    assert not recorded(_answer("Blue sky.", entries()), k=0)
    assert not recorded(_answer("Blue sky.", entries(alternatives=1)))
    assert not recorded(_answer("Blue sky.", []))
    assert not recorded(_answer("Blue 日.", entries(" \ufffd")))  # " 日" in pieces
    piece_alternative = entries()
    piece_alternative[0]["top_logprobs"][1] = _entry("\ufffd", -2.0)
    assert not recorded(_answer("Blue sky.", piece_alternative))
    assert recorded(_answer("Blue \ufffd.", entries(" \ufffd")))  # the answer's own


def test_token_bytes_round_trip_the_whole_vocabulary(teacher_tokenizer):
    vocab = TokenBytes(teacher_tokenizer)
    assert all(vocab.lookup(*vocab.token(i)) == i for i in range(len(teacher_tokenizer)))
    assert vocab.lookup("token_id:17", None) == 17
    ids = teacher_tokenizer("naïve 日本 🙂", add_special_tokens=False)["input_ids"]
    assert b"".join(vocab.id_to_bytes[i] for i in ids).decode() == "naïve 日本 🙂"


def test_health_summary_counts_and_percentiles(tmp_path):
    records = [{"prompt_id": f"p{i}", "attempt": 0, "start_s": float(i), "latency_s": 1.0 + i,
                "outcome": "ok", "status": 200, "prompt_tokens": 10, "completion_tokens": 5}
               for i in range(10)]
    records += [{"prompt_id": "p0", "attempt": 1, "start_s": 0.5, "latency_s": 0.1,
                 "outcome": "rate_limited", "status": 429},
                {"prompt_id": "p9", "attempt": 0, "start_s": 0.0, "latency_s": 0.0,
                 "outcome": "cached", "status": 200, "prompt_tokens": 7,
                 "completion_tokens": 3}]
    summary = health.summarize(health.requests_frame(records), prompts=11, failed_prompts=0,
                               price_input_per_million=2.0, price_output_per_million=10.0)
    assert summary["requests"] == 11 and summary["succeeded"] == 10
    assert summary["retries"] == 1 and summary["errors"]["rate_limited"] == 1
    assert summary["cache_hits"] == 1 and summary["cached_completion_tokens"] == 3
    assert summary["latency_s"]["p50"] == pytest.approx(5.5)
    assert summary["latency_s"]["max"] == pytest.approx(10.0)
    assert summary["prompt_tokens"] == 100 and summary["completion_tokens"] == 50
    assert summary["cost_usd"] == pytest.approx((100 * 2 + 50 * 10) / 1e6)
    assert summary["wall_s"] == pytest.approx(19.0)
    frame = health.requests_frame(records)
    rates = health.over_time(frame, buckets=3)
    assert rates["attempts"].tolist() == [4, 3, 4]
    assert rates["rate_limited"].tolist() == pytest.approx([0.25, 0, 0])
    assert rates["t_s"].tolist() == pytest.approx([1.5, 4.5, 7.5])
    health.plot(frame, rates, tmp_path)
    assert (tmp_path / "figures" / "api_health.png").stat().st_size > 0


def test_distill_run_stops_before_creating_the_run_folder(server, tmp_path):
    """The CLI checks the endpoint before any write: exit 2, a message, no run folder."""
    smoke = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"
    for change, message in [(f"base_url=http://127.0.0.1:{free_port()}/v1", "cannot reach"),
                            (f"base_url={server}/v1", "refused the API key")]:
        result = subprocess.run(
            [sys.executable, "-m", "distill.cli", "run", str(smoke), "--set",
             f"run.output_dir={tmp_path}", "--set", "teacher_sampling.backend=openai",
             "--set", f"teacher_sampling.{change}", "--set",
             "teacher_sampling.api_key_env=DISTILL_TEST_WRONG_KEY",
             "--set", "teacher_sampling.generic_samples=0"],  # an API scores no given text
            capture_output=True, text=True,
            env={**os.environ, "DISTILL_TEST_WRONG_KEY": "wrong"})
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_notebook_01_with_a_text_only_api_teacher(server, tmp_path):
    """Notebook 01 end to end on the openai backend without log-probs: text-only
    samples, the health report written, the key in no output."""
    import papermill

    from distill.pipeline import notebooks_dir

    run_dir, executed = tmp_path / "run", tmp_path / "01_teacher_sampling.ipynb"
    papermill.execute_notebook(
        str(notebooks_dir() / "01_teacher_sampling.ipynb"), str(executed),
        parameters={"run_dir": str(run_dir), "backend": "openai", "base_url": f"{server}/v1",
                    "model": NAME, "api_key_env": KEY_ENV, "top_k_logprobs": 0,
                    "heldout_size": 2, "train_size": 4, "max_new_tokens": 4,
                    "request_cache": False},
        kernel_name="python3", progress_bar=False)
    frame = samples.read_samples(run_dir)
    assert len(frame) == 6 and (frame["topk_ids"].map(len) == 0).all()
    assert json.loads((run_dir / "api_health.json").read_text())["succeeded"] == 6
    assert (run_dir / "figures" / "api_health.png").is_file()
    text = executed.read_text()
    assert "text only" in text and KEY not in text
    recorded = json.loads((run_dir / "teacher_fingerprint.json").read_text())
    assert recorded["model"] == NAME and KEY not in json.dumps(recorded)


def test_a_rerun_refuses_an_endpoint_that_now_serves_another_model(server, teacher_tokenizer,
                                                                  tmp_path):
    """The run folder keeps the teacher's fingerprint; the same server passes the check,
    another model behind the same name stops the run before it samples."""
    assert "recorded" in fingerprint_endpoint(endpoint(server), tmp_path)
    assert "is the one" in fingerprint_endpoint(endpoint(server), tmp_path)
    other = create_app(make_tiny_model(seed=9, vocab_size=49152, hidden_size=16,
                                       intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1),
                       teacher_tokenizer, NAME, api_key=KEY)
    with BackgroundServer(other) as url, pytest.raises(ApiTeacherError, match="mix two teachers"):
        fingerprint_endpoint(endpoint(url), tmp_path)
