"""`distill serve` over HTTP on loopback, spoken to with the official openai client:
the answers and log-probs equal the local computation, errors follow the API's
conventions, and concurrent (batched) requests answer as single ones do."""

import concurrent.futures
import json
import urllib.request

import openai
import pytest
import torch

from distill.api.server import create_app
from distill.data import encode_chat
from distill.generation import generate
from distill.testing import BackgroundServer
from distill.token_bytes import TokenBytes

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
