"""The openai teacher backend against a fake vLLM server on loopback, no GPU: the answers
of `vllm serve MODEL --max-logprobs 20 [--return-tokens-as-token-ids]` in vLLM's own JSON
shapes, with the embedded teacher's real tokenizer, sampled by `sample_api` into shards.

The shapes follow vllm-project/vllm (vllm/entrypoints/openai/): chat_completion/serving.py
(`_create_chat_logprobs`, `_get_top_logprobs`), generate/base/serving.py
(`_get_decoded_token`, `format_token_id_placeholder`), chat_completion/protocol.py
(`ChatCompletionLogProb`, `ChatCompletionLogProbsContent`, `ChatCompletionResponse`), and
the per-position log-probs of vllm/logprobs.py (`append_logprobs_for_next_position`) and
vllm/v1/engine/logprobs.py (`_verify_tokens`, `_correct_decoded_token`). What matters here:

* every entry's `bytes` is the UTF-8 of a decoded *string*, never a token's raw bytes, so a
  piece of a character cannot be named by its bytes: before vLLM PR 28874 it comes as "\ufffd",
  after it as "" (or, on the piece that completes the character, the whole character);
* with --return-tokens-as-token-ids every `token` is "token_id:N" (top_logprobs' `bytes` are
  then those of that string; the chosen token's are still its decoded text's);
* a position's top_logprobs list the sampled token first, then the best alternatives, cut at
  top_logprobs entries: a sampled token outside the top k displaces the k-th.

distill's backend sends chat completions only, so vLLM's /v1/completions shape is not faked.
"""

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from distill.lm import samples
from distill.lm.data import encode_chat
from distill.teachers.api_client import Endpoint, check_endpoint
from distill.teachers.openai_api import sample_api
from distill.testing import free_port

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEY_ENV = "DISTILL_TEST_VLLM_KEY"
K = 4
SETTINGS = {"max_new_tokens": 32, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
            "top_k_logprobs": K}
FFFD = "\ufffd"
# Alternatives that decode alone (whole characters, and special tokens) ...
WHOLE = [30, 2, 28, 1, 23390, 2756, 46494, 6376, 314, 20215]
# ... and pieces of characters (bytes a1; 97; " " e6; f0 9f), which do not
PIECES = [111, 241, 17097, 10813]
MIXED = [111, 2, 241, 1, 17097, 30, 10813, 28]  # pieces and special tokens
OUTSIDE = 1  # position whose sampled token is 7th: outside the top K vLLM returns
SECOND = 2  # position whose sampled token is 2nd


@dataclass
class Step:
    """One generated position: the sampled token and its logprob, and the position's best
    alternatives, best first (the sampled one among them at its rank, if in the top 6)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Answer:
    steps: list[Step]
    content: str | None = None  # default: the in-vocabulary steps decoded as vLLM does
    extra: dict[int, str] = field(default_factory=dict)  # served ids beyond our vocabulary


def scripted(ids: list[int], pool: list[int], pieces_at: int | None = None) -> Answer:
    """An answer of `ids`; alternatives drawn from `pool` (from PIECES at `pieces_at`)."""
    steps = []
    for position, token in enumerate(ids):
        source = PIECES + pool if position == pieces_at else pool
        turn = position % len(source)  # each alternative near the top somewhere
        others = [i for i in source[turn:] + source[:turn] if i != token]
        logprobs = [-(rank + 1) / 4 for rank in range(7)]  # exact in float32
        rank = {OUTSIDE: 7, SECOND: 2}.get(position, 1)
        ranked = others[:rank - 1] + [token] + others[rank - 1:]
        top = list(zip(ranked, logprobs))[:6]
        steps.append(Step(token, logprobs[rank - 1], top))
    return Answer(steps)


class FakeVllm:
    """`vllm serve` on loopback, answering scripted completions (keyed by the last user
    message) in vLLM's JSON. `token_ids`: --return-tokens-as-token-ids. `repair_pieces`:
    vLLM after PR 28874 (a piece of a character decoded in context, else ""); before it,
    a piece decoded alone is "\ufffd"."""

    def __init__(self, tokenizer, answers: dict[str, Answer], token_ids: bool,
                 repair_pieces: bool = True):
        self.tokenizer, self.answers = tokenizer, answers
        self.token_ids, self.repair_pieces = token_ids, repair_pieces
        self.requests: list[dict] = []
        self.sent: dict[str, list[list[tuple[int, float]]]] = {}  # top_logprobs as sent
        self.responses: dict[str, dict] = {}

    def __enter__(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path == "/v1/models":
                    self._reply(200, fake.models())
                else:
                    self._reply(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._reply(404, {"detail": "Not Found"})
                    return
                fake.requests.append(body)
                self._reply(200, fake.chat(body))

            def _reply(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def models(self) -> dict:
        permission = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                      "created": int(time.time()), "allow_create_engine": False,
                      "allow_sampling": True, "allow_logprobs": True,
                      "allow_search_indices": False, "allow_view": True,
                      "allow_fine_tuning": False, "organization": "*", "group": None,
                      "is_blocking": False}
        return {"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": int(time.time()), "owned_by": "vllm",
             "root": MODEL, "parent": None, "max_model_len": 8192,
             "permission": [permission]}]}

    def decoded(self, answer: Answer, token: int, context: list[int]) -> str:
        """A token's text as vLLM's detokenizer gives it for log-probs."""
        if token in answer.extra:
            return answer.extra[token]
        text = self.tokenizer.decode([token])
        if not (self.repair_pieces and text.endswith(FFFD)):
            return text
        # decoded after up to 4 sampled tokens; the text that the pieces of the same
        # character before it (themselves given as "") add is put on this one
        for n in range(1, min(4, len(context)) + 1):
            window = context[-n:]
            whole = self.tokenizer.decode([*window, token])
            if whole.endswith(FFFD):
                continue
            clean = list(window)
            while clean and self.tokenizer.decode([clean[-1]]).endswith(FFFD):
                clean.pop()
            prefix = self.tokenizer.decode(clean) if clean else ""
            return whole[len(prefix):] if whole.startswith(prefix) else whole
        return ""

    def chat(self, body: dict) -> dict:
        key = body["messages"][-1]["content"]
        answer = self.answers[key]
        k = body.get("top_logprobs") or 0
        content, sent, context = [], [], []
        for step in answer.steps:
            # the position's log-probs: sampled token first, then the alternatives by rank
            # (once each); the response lists the first k
            position = {step.token: step.logprob}
            for token, logprob in step.top:
                position.setdefault(token, logprob)
            listed = list(position.items())[:k]
            text = {token: self.decoded(answer, token, context) for token in position}
            name = {token: f"token_id:{token}" if self.token_ids else text[token]
                    for token in position}
            content.append({
                "token": name[step.token], "logprob": max(step.logprob, -9999.0),
                "bytes": list(text[step.token].encode("utf-8", errors="replace")),
                "top_logprobs": [{"token": name[t], "logprob": max(lp, -9999.0),
                                  "bytes": list(name[t].encode("utf-8", errors="replace"))}
                                 for t, lp in listed]})
            sent.append(listed)
            context.append(step.token)
        ids = [s.token for s in answer.steps]
        text = answer.content if answer.content is not None else self.tokenizer.decode(
            [i for i in ids if i not in answer.extra], skip_special_tokens=True)
        prompt_tokens = len(encode_chat(self.tokenizer, body["messages"]))
        response = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None,
                            "annotations": None, "audio": None, "function_call": None,
                            "reasoning": None},
                "logprobs": {"content": content} if body.get("logprobs") else None,
                "finish_reason": "stop", "stop_reason": None, "token_ids": None}],
            "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + len(ids),
                      "completion_tokens": len(ids), "prompt_tokens_details": None},
            "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
        self.sent[key], self.responses[key] = sent, response
        return response


def encode(tokenizer, text: str) -> list[int]:
    """The answer's ids as the teacher generates them: the text's tokens, then EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def answers(tokenizer) -> dict[str, Answer]:
    vocab = len(tokenizer)
    beyond = scripted([23390, vocab, 30, tokenizer.eos_token_id], WHOLE)
    beyond.extra, beyond.content = {vocab: " sky"}, "Blue sky."
    beyond_alternative = scripted(encode(tokenizer, "Blue sky."), WHOLE)
    beyond_alternative.steps[1].top[0] = (vocab + 1, beyond_alternative.steps[1].top[0][1])
    return {
        # a character in pieces: "日" is e6 97 + a5, each "\ufffd" decoded alone
        "split": scripted(encode(tokenizer, "Tokyo (日本), naïve café."), MIXED),
        "whole": scripted(encode(tokenizer, "Blue skies, naïve café."), WHOLE),
        "piece_alternative": scripted(encode(tokenizer, "Blue skies, naïve café."), WHOLE,
                                      pieces_at=3),
        "genuine_fffd": scripted(encode(tokenizer, "Blue \ufffd sky."), WHOLE),
        "beyond": beyond, "beyond_alternative": beyond_alternative}


def sample_from(server: FakeVllm, tokenizer, run_dir) -> dict[str, dict]:
    """Every scripted prompt through `sample_api` into shards and back: {prompt: row}."""
    prompts = [{"prompt_id": key, "kind": "test", "reference": None,
                "messages": [{"role": "user", "content": key}]} for key in server.answers]
    with pytest.MonkeyPatch.context() as patch, server as url:
        patch.setenv(KEY_ENV, "EMPTY")
        endpoint = Endpoint(base_url=f"{url}/v1", model=MODEL, api_key_env=KEY_ENV,
                            concurrency=2, request_timeout=10.0, max_retries=0)
        assert check_endpoint(endpoint) == [MODEL]
        stats, _ = sample_api(endpoint, tokenizer, prompts, [], run_dir, seed=0, shard_size=8,
                              cache_dir=None, **SETTINGS)
    assert stats["failed_prompts"] == []
    frame = samples.read_samples(run_dir)
    return {row["prompt_id"]: {key: _plain(value) for key, value in row.items()}
            for row in frame.to_dict("records")}


def _plain(value):
    """Parquet's nested arrays as nested lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    return value


@pytest.fixture(scope="module")
def served(teacher_tokenizer, tmp_path_factory):
    """{flavour: (fake server, {prompt: sample row})} for three vLLM flavours: with
    --return-tokens-as-token-ids, without it, and without it before PR 28874."""
    flavours = {"token_ids": {"token_ids": True}, "text": {"token_ids": False},
                "text_before_28874": {"token_ids": False, "repair_pieces": False}}
    result = {}
    for flavour, options in flavours.items():
        server = FakeVllm(teacher_tokenizer, answers(teacher_tokenizer), **options)
        rows = sample_from(server, teacher_tokenizer, tmp_path_factory.mktemp(flavour))
        result[flavour] = (server, rows)
    return result


def ids_of(server: FakeVllm, key: str) -> list[int]:
    return [step.token for step in server.answers[key].steps]


def best_first(listed: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    ordered = sorted(listed, key=lambda pair: -pair[1])[:K]
    return [i for i, _ in ordered], [lp for _, lp in ordered]


def assert_token_level(server: FakeVllm, row: dict, key: str):
    """Completion ids and top-k ids/log-probs exactly as the server encoded them."""
    assert row["completion_ids"] == ids_of(server, key)
    expected = [best_first(listed) for listed in server.sent[key]]
    assert row["topk_ids"] == [ids for ids, _ in expected]
    assert row["topk_logprobs"] == [lps for _, lps in expected]


def assert_text_only(tokenizer, row: dict, text: str):
    """The text-only fallback: the text re-tokenized, then EOS; no top-k ids (its
    log-probs only where the tokens' bytes were recorded, for an aligning student)."""
    assert row["completion"] == text
    assert row["completion_ids"] == encode(tokenizer, text)
    assert row["topk_ids"] == []
    assert len(row["topk_logprobs"]) == len(row["topk_bytes"])


def test_the_client_asks_vllm_for_top_k_logprobs(served):
    server, _ = served["token_ids"]
    assert len(server.requests) == len(server.answers)
    for request in server.requests:
        assert request["model"] == MODEL and request["logprobs"] is True
        assert request["top_logprobs"] == K <= 20  # --max-logprobs 20
        assert request["max_completion_tokens"] == SETTINGS["max_new_tokens"]
        assert request["temperature"] == 0.0 and isinstance(request["seed"], int)


@pytest.mark.parametrize("key", ["split", "whole", "genuine_fffd"])
def test_token_ids_give_the_exact_ids_and_top_k(served, teacher_tokenizer, key):
    """With --return-tokens-as-token-ids every token is "token_id:N": pieces of characters,
    special tokens and all come back exactly, though the bytes vLLM sends cannot tell."""
    server, rows = served["token_ids"]
    entries = server.responses[key]["choices"][0]["logprobs"]["content"]
    assert all(e["token"] == f"token_id:{i}" for e, i in zip(entries, ids_of(server, key)))
    assert_token_level(server, rows[key], key)
    row = rows[key]
    assert row["completion"] == server.responses[key]["choices"][0]["message"]["content"]
    assert row["finish_reason"] == "stop" and row["completion_ids"][-1] == 2
    if key == "split":
        pieces = [i for i in row["completion_ids"] if teacher_tokenizer.decode([i]) == FFFD]
        assert len(pieces) == 2  # "日" in two pieces, neither nameable by its bytes
        alternatives = {i for ids in row["topk_ids"] for i in ids}
        assert set(PIECES) <= alternatives and {1, 2} <= alternatives


def test_vllm_lists_the_sampled_token_first_and_distill_sorts(served):
    """vLLM's top_logprobs start with the sampled token; outside the top K it displaces
    the K-th alternative. distill keeps what came, best first."""
    server, rows = served["token_ids"]
    step, sent = server.answers["whole"].steps, server.sent["whole"]
    assert [i for i, _ in sent[SECOND]] == [step[SECOND].token] + [
        i for i, _ in step[SECOND].top if i != step[SECOND].token][:K - 1]
    assert rows["whole"]["topk_ids"][SECOND] == [i for i, _ in step[SECOND].top[:K]]
    alternatives = [i for i, _ in step[OUTSIDE].top]
    assert step[OUTSIDE].token not in alternatives
    assert rows["whole"]["topk_ids"][OUTSIDE] == alternatives[:K - 1] + [step[OUTSIDE].token]
    assert rows["whole"]["topk_logprobs"][OUTSIDE] == [-0.25, -0.5, -0.75, -1.75]


@pytest.mark.parametrize("flavour", ["text", "text_before_28874"])
def test_token_text_and_bytes_give_the_ids_of_whole_characters(served, flavour):
    """Without the flag a token is its text, `bytes` that text's UTF-8: whole characters
    (multi-byte ones too) and special tokens map back to the same ids and top-k."""
    server, rows = served[flavour]
    entries = server.responses["whole"]["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries][-3:] == [" café", ".", "<|im_end|>"]
    assert entries[-3]["bytes"] == list(" café".encode())
    assert {1, 2} <= {i for ids in rows["whole"]["topk_ids"] for i in ids}
    assert_token_level(server, rows["whole"], "whole")


def test_pieces_of_a_character_fall_back_to_the_text(served, teacher_tokenizer):
    """vLLM cannot name a piece of a character by its bytes: it sends "" (or the whole
    character on the last piece). No id is guessed: the text is re-tokenized, which with
    the teacher's own tokenizer gives back the same ids, without top-k."""
    server, rows = served["text"]
    entries = server.responses["split"]["choices"][0]["logprobs"]["content"]
    pieces = [(e["token"], e["bytes"]) for e, i in zip(entries, ids_of(server, "split"))
              if teacher_tokenizer.decode([i]) == FFFD]
    assert pieces == [("", []), ("日", list("日".encode()))]
    assert_text_only(teacher_tokenizer, rows["split"], "Tokyo (日本), naïve café.")
    assert rows["split"]["completion_ids"] == ids_of(server, "split")
    # the tokenizer's own U+FFFD token ends in U+FFFD too: vLLM now sends it as "" as well
    entries = server.responses["genuine_fffd"]["choices"][0]["logprobs"]["content"]
    assert entries[2]["token"] == "" and ids_of(server, "genuine_fffd")[2] == 24211
    assert_text_only(teacher_tokenizer, rows["genuine_fffd"], "Blue \ufffd sky.")


def test_a_piece_among_the_alternatives_drops_only_the_top_k(served):
    server, rows = served["text"]
    alternatives = server.sent["piece_alternative"][3]
    assert any(i in PIECES for i, _ in alternatives)
    assert rows["piece_alternative"]["completion_ids"] == ids_of(server, "piece_alternative")
    assert rows["piece_alternative"]["topk_ids"] == []


def test_replacement_char_stand_ins_are_not_the_replacement_char_token(served,
                                                                       teacher_tokenizer):
    """vLLM before PR 28874 names each piece of "日" "\ufffd" (bytes ef bf bd), which is
    also the spelling of a real token (24211). The answer holds no U+FFFD, so those are
    stand-ins: the text-only fallback, not 24211 in place of the teacher's tokens."""
    server, rows = served["text_before_28874"]
    entries = server.responses["split"]["choices"][0]["logprobs"]["content"]
    assert sum(e["token"] == FFFD and e["bytes"] == [239, 191, 189] for e in entries) == 2
    assert_text_only(teacher_tokenizer, rows["split"], "Tokyo (日本), naïve café.")
    assert 24211 not in rows["split"]["completion_ids"]
    # where the answer does hold a U+FFFD, "\ufffd" is that token, top-k and all
    assert_token_level(server, rows["genuine_fffd"], "genuine_fffd")
    assert 24211 in rows["genuine_fffd"]["completion_ids"]


def test_a_token_id_beyond_the_vocabulary_falls_back_to_the_text(served, teacher_tokenizer):
    """A sampled "token_id:N" that the tokenizer does not have (N >= its length, here 49152):
    the text-only sample; one only among the alternatives: the ids, without top-k."""
    server, rows = served["token_ids"]
    vocab = len(teacher_tokenizer)
    entries = server.responses["beyond"]["choices"][0]["logprobs"]["content"]
    assert entries[1]["token"] == f"token_id:{vocab}"
    assert_text_only(teacher_tokenizer, rows["beyond"], "Blue sky.")
    listed = server.sent["beyond_alternative"][1]
    assert (vocab + 1) in [i for i, _ in listed]
    assert rows["beyond_alternative"]["completion_ids"] == ids_of(server, "beyond_alternative")
    assert rows["beyond_alternative"]["topk_ids"] == []
