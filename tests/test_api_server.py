"""`distill serve` over HTTP on loopback, spoken to with the official openai client:
the answers and log-probs equal the local computation, errors follow the API's
conventions, and concurrent (batched) requests answer as single ones do."""

import concurrent.futures
import json
import os
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch

from distill.lm.data import encode_chat
from distill.lm.generation import generate
from distill.lm.token_bytes import TokenBytes
from distill.serve.server import create_app
from distill.testing import BackgroundServer

KEY = "test-serve-key-5f2c"
NAME = "tiny-teacher"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(tiny_model_teacher_vocab, teacher_tokenizer):
    app = create_app(tiny_model_teacher_vocab, teacher_tokenizer, NAME, api_key=KEY)
    with BackgroundServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list()] == [NAME]


def test_chat_logprobs_equal_the_local_computation(client, tiny_model_teacher_vocab,
                                                   teacher_tokenizer):
    response = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_completion_tokens=8, temperature=0, logprobs=True,
        top_logprobs=5)
    local = generate(tiny_model_teacher_vocab, teacher_tokenizer,
                     [encode_chat(teacher_tokenizer, MESSAGES)], max_new_tokens=8,
                     top_k_logprobs=5, token_logprobs=True)[0]
    vocab = TokenBytes(teacher_tokenizer)
    content = response.choices[0].logprobs.content
    assert [vocab.lookup(c.token, c.bytes) for c in content] == local["completion_ids"]
    for entry, ids, logprobs, chosen in zip(content, local["topk_ids"], local["topk_logprobs"],
                                            local["token_logprobs"]):
        assert [vocab.lookup(a.token, a.bytes) for a in entry.top_logprobs] == ids
        assert [a.logprob for a in entry.top_logprobs] == pytest.approx(logprobs, abs=1e-5)
        assert entry.logprob == pytest.approx(chosen, abs=1e-5)
    assert response.usage.completion_tokens == len(local["completion_ids"])
    assert response.usage.prompt_tokens == len(encode_chat(teacher_tokenizer, MESSAGES))
    assert response.choices[0].finish_reason == local["finish_reason"]


def test_completions_echo_scores_the_prompt(client, tiny_model_teacher_vocab, teacher_tokenizer):
    prompt = "The sky is blue and the grass is green."
    response = client.completions.create(model=NAME, prompt=prompt, max_tokens=0, echo=True,
                                         logprobs=3)
    ids = teacher_tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = tiny_model_teacher_vocab(torch.tensor([ids])).logits[0, :-1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])
    logprobs = response.choices[0].logprobs
    assert response.choices[0].text == prompt
    assert "".join(logprobs.tokens) == prompt
    assert logprobs.token_logprobs[0] is None
    assert logprobs.token_logprobs[1:] == pytest.approx(expected.squeeze(-1).tolist(), abs=1e-5)
    assert all(len(top) == 3 for top in logprobs.top_logprobs[1:])
    assert response.usage.prompt_tokens == len(ids)


def test_completions_generate_after_the_echoed_prompt(client):
    response = client.completions.create(model=NAME, prompt="Hello", max_tokens=4, echo=True,
                                         logprobs=0, temperature=0)
    choice = response.choices[0]
    assert choice.text.startswith("Hello")
    assert len(choice.logprobs.tokens) == response.usage.prompt_tokens + \
        response.usage.completion_tokens


def test_concurrent_requests_answer_as_single_requests(server, client):
    """Requests batched together (different lengths, different max_tokens) get what
    each would get alone."""
    def ask(max_tokens, text):
        response = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": text}],
            max_completion_tokens=max_tokens, temperature=0, logprobs=True, top_logprobs=2)
        return [(c.token, round(c.logprob, 4)) for c in response.choices[0].logprobs.content]

    jobs = [(3 + i % 4, "word " * (1 + 3 * i)) for i in range(8)]
    alone = [ask(*job) for job in jobs]
    before = _health(server)["batch_sizes"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: ask(*job), jobs))
    after = _health(server)["batch_sizes"]
    batched = {size: after[size] - before.get(size, 0) for size in after if size != "1"}
    assert any(batched.values()), f"no request was batched: {before} -> {after}"
    assert [len(a) for a in alone] == [job[0] for job in jobs]
    assert together == alone


def _health(server) -> dict:
    with urllib.request.urlopen(f"{server}/health") as response:
        return json.load(response)


def test_errors_follow_the_openai_conventions(server, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="other", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2,
                                       logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=NAME, prompt="x", max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.completions.create(model=NAME, prompt=[1, 10**7], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=NAME, messages="not a list", max_tokens=2)


def test_the_key_is_never_echoed(server):
    with pytest.raises(openai.AuthenticationError) as error:
        openai.OpenAI(base_url=f"{server}/v1", api_key=KEY + "x", max_retries=0).models.list()
    assert KEY not in str(error.value)


def test_seeded_sampling_is_reproducible_even_when_requests_arrive_together(client):
    def ask(seed):
        response = client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_completion_tokens=6, temperature=1.0, seed=seed)
        return response.choices[0].message.content

    alone = [ask(seed) for seed in (1, 1, 2)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(ask, [1, 2, 1, 2, 1, 2]))
    assert alone[0] == alone[1]
    assert together == [alone[0], alone[2]] * 3


# --- work nobody waits for is dropped -------------------------------------------

STEP_S = 0.03  # each forward pass of the slowed model takes at least this long


@pytest.fixture
def slow_server(tiny_model_factory, teacher_tokenizer):
    """A server whose model is slowed by a sleep in every forward pass, as a busy CPU
    would be; yields (url, app, forward-pass counter)."""
    model = tiny_model_factory(seed=1, vocab_size=49152, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=1, max_position_embeddings=1024)
    forwards = []

    def slow(module, args):
        forwards.append(1)
        time.sleep(STEP_S)
    model.register_forward_pre_hook(slow)
    app = create_app(model, teacher_tokenizer, NAME, max_batch_size=2, batch_wait_ms=10)
    with BackgroundServer(app) as url:
        yield url, app, forwards


def _settled(app, forwards, quiet_s: float = 0.5, limit_s: float = 10.0) -> float:
    """Seconds until the worker is idle and no forward pass ran for `quiet_s`."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = len(forwards)
        time.sleep(quiet_s)
        worker = app.state.worker
        if len(forwards) == before and not worker.running and worker.queue.empty():
            return time.monotonic() - start
    raise AssertionError(f"the server still works {limit_s} s after its clients left")


def _burst(url: str, n: int, max_tokens: int, timeout: float, headers: dict | None = None):
    """n completion requests at once, each from a client that gives up after `timeout`;
    returns how many timed out on the client side."""
    def one(i):
        body = json.dumps({"model": NAME, "prompt": [1, 2, 3 + i], "max_tokens": max_tokens,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", data=body, headers={
            "Content-Type": "application/json", **(headers or {})})
        try:
            urllib.request.urlopen(request, timeout=timeout).read()
            return 0
        except urllib.error.HTTPError as error:
            return int(error.code == 408)
        except OSError:  # the client's own timeout: it closes the connection
            return 1
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return sum(pool.map(one, range(n)))


def test_clients_that_disconnect_leave_no_work_running(slow_server):
    """8 requests of 200 tokens (~6 s each batch of 2) whose clients give up after 0.5 s
    and close the connection: the running batch stops, the queued jobs are dropped,
    and the model falls idle instead of generating ~1,600 tokens for nobody."""
    url, app, forwards = slow_server
    assert _burst(url, n=8, max_tokens=200, timeout=0.5) == 8
    _settled(app, forwards)
    assert len(forwards) < 200  # far fewer steps than the 4 batches x 200 asked for
    assert app.state.worker.dropped >= 4  # queued jobs never started
    # the server still answers afterwards
    body = json.dumps({"model": NAME, "prompt": [1, 2, 3], "max_tokens": 2,
                       "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert answer["usage"]["completion_tokens"] == 2


def test_a_request_past_its_deadline_is_dropped_while_its_client_waits(slow_server):
    """The openai client sends its timeout as x-stainless-read-timeout; past it the
    server stops the job and answers 408, even while the connection stays open."""
    url, app, forwards = slow_server
    started = time.monotonic()
    timed_out = _burst(url, n=2, max_tokens=200, timeout=30,
                       headers={"x-stainless-read-timeout": "0.5"})
    assert timed_out == 2
    assert time.monotonic() - started < 5  # 408 soon after the deadline, not after 6 s
    _settled(app, forwards)
    assert len(forwards) < 100


def test_distill_serve_waits_passively_unless_told_otherwise(monkeypatch):
    """Spinning OpenMP threads beside another CPU-heavy process made generation ~8x
    slower (measured): distill serve asks for passive waiting before torch loads,
    and keeps a policy the user set."""
    import uvicorn

    from distill import cli
    from distill.serve import server

    monkeypatch.setattr(server, "load_for_serving", lambda *args: (None, None, "m"))
    monkeypatch.setattr(server, "create_app", lambda *args, **kwargs: None)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["serve", "--precision", "fp32"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["serve", "--precision", "fp32"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_endpoint_answers_equal_local_greedy_answers(server, tiny_model_teacher_vocab,
                                                     teacher_tokenizer, monkeypatch):
    """`distill provenance` reaches a model behind an API by BASE_URL#MODEL: its greedy
    answers are those the model gives locally."""
    from distill.lm.generation import chat_answers
    from distill.teachers.api_client import endpoint_from_spec, is_endpoint
    from distill.teachers.openai_api import endpoint_answers

    monkeypatch.setenv("PROVENANCE_KEY", KEY)
    spec = f"{server}/v1#{NAME}"
    assert is_endpoint(spec) and not is_endpoint("smollm2-135m-instruct")
    messages = [MESSAGES, [{"role": "user", "content": "Say hello."}]]
    remote = endpoint_answers(endpoint_from_spec(spec, "PROVENANCE_KEY"), messages, 8)
    local, _ = chat_answers(tiny_model_teacher_vocab, teacher_tokenizer, messages, 8, 2, "local")
    assert remote == local
    with pytest.raises(ValueError, match="BASE_URL#MODEL"):
        endpoint_from_spec(server)
