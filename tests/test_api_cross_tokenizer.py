"""An API teacher over loopback serving Gemma gives the same aligned samples as the local
backend.

The teacher: a tiny randomly initialised Gemma 3 with Gemma's real tokenizer (262144
tokens: SentencePiece with byte fallback, thousands of special tokens), saved to a folder
and served from it as `distill serve FOLDER` serves it. The student: SmolLM2's tokenizer,
onto which Gemma's tokens do not map. Sampled locally and through the openai backend,
the teacher's tokens come back as the same bytes, log-probs and top-k alternatives, so
`distill.lm.alignment` cuts both into the same spans against the student's tokens: an
endpoint with top_logprobs serves token-level KD across tokenizers, not text only."""

from collections import Counter

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from distill.lm import models, samples
from distill.lm.alignment import align_spans
from distill.lm.data import encode_chat, load_prompts, split_prompts
from distill.lm.generation import generate
from distill.lm.token_bytes import TokenBytes
from distill.serve.server import create_app, load_for_serving
from distill.teachers import local as sampling
from distill.teachers.api_client import Endpoint
from distill.teachers.openai_api import sample_api
from distill.testing import BackgroundServer

GEMMA = "gemma3-270m"
NAME = "tiny-gemma"
KEY_ENV, KEY = "DISTILL_TEST_CROSS_KEY", "sk-test-3b7e21"
SETTINGS = {"max_new_tokens": 12, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
            "top_k_logprobs": 5}
TIED = 1e-4  # log-probs closer than this may rank either way in another batch


@pytest.fixture(scope="module")
def prompts():
    return split_prompts(load_prompts("builtin", "prompt", None), 2, 0, 4)  # train, heldout


@pytest.fixture(scope="module")
def teacher_folder(prompts, tmp_path_factory):
    """A tiny Gemma 3 with Gemma's tokenizer, saved as a model folder. Its answers stop:
    <eos> outranks, by 2 %, the token the random model says most often."""
    try:  # as tests/test_models.py, only where the embedded Gemma is installed (or cached)
        tokenizer = models.load_tokenizer(models.resolve_model_path(GEMMA))
    except models.ModelNotFound as error:
        pytest.skip(str(error))
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
        max_position_embeddings=512, layer_types=["full_attention"],
        tie_word_embeddings=False)).eval()
    train, heldout = prompts
    answers = generate(model, tokenizer, [encode_chat(tokenizer, p["messages"])
                                          for p in heldout + train], SETTINGS["max_new_tokens"])
    often = Counter(i for a in answers for i in a["completion_ids"]).most_common(1)[0][0]
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = 1.02 * model.lm_head.weight[often]
    folder = tmp_path_factory.mktemp("tiny-gemma")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(teacher_folder):
    """(model, tokenizer, base URL): the folder loaded as `distill serve` loads it, and
    served on loopback."""
    model, tokenizer, _ = load_for_serving(str(teacher_folder))
    with BackgroundServer(create_app(model, tokenizer, NAME, api_key=KEY)) as url:
        yield model, tokenizer, url


@pytest.fixture(scope="module")
def local(served, prompts, tmp_path_factory):
    """The local backend's samples of the same model (the server idles meanwhile)."""
    model, tokenizer, _ = served
    train, heldout = prompts
    run_dir = tmp_path_factory.mktemp("local")
    sampling.sample_teacher(model, tokenizer, train, heldout, run_dir, seed=0, shard_size=8,
                            batch_size=4, **SETTINGS)
    return samples.read_samples(run_dir)


def sample_through_api(url, tokenizer, prompts, run_dir):
    train, heldout = prompts
    endpoint = Endpoint(base_url=f"{url}/v1", model=NAME, api_key_env=KEY_ENV,
                        concurrency=4, request_timeout=30.0, max_retries=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        stats, _ = sample_api(endpoint, tokenizer, train, heldout, run_dir, seed=0,
                              shard_size=8, cache_dir=None, **SETTINGS)
    assert stats["failed_prompts"] == []
    return samples.read_samples(run_dir)


def test_an_api_teacher_with_another_tokenizer_aligns_as_the_local_one(
        served, local, prompts, teacher_tokenizer, tmp_path):
    _, gemma, url = served
    api = sample_through_api(url, teacher_tokenizer, prompts, tmp_path)  # SmolLM2's student
    assert list(api["prompt_id"]) == list(local["prompt_id"]) and len(api) == 6
    # the setting holds what it should: answers that stop, special tokens of Gemma's in
    # the middle of answers (they write no text) and among the alternatives
    gemma_vocab = TokenBytes(gemma)

    def specials(ids) -> int:
        return sum(i in gemma_vocab.special_ids for i in ids)

    assert "stop" in set(local["finish_reason"])
    assert sum(specials(ids[:-1]) for ids in local["completion_ids"]) > 0
    assert sum(specials(row) for rows in local["topk_ids"] for row in rows) > 0
    # Gemma's tokens are not the student's: ids from the text, no top-k ids, yet the bytes
    assert (api["topk_ids"].map(len) == 0).all()
    assert list(api["completion"]) == list(local["completion"])
    for ours, theirs in zip(api["completion_bytes"], local["completion_bytes"]):
        assert list(ours) == list(theirs)  # the end of an answer too: b"" on both sides
    for ours, theirs in zip(api["completion_logprobs"], local["completion_logprobs"]):
        assert len(theirs) > 0
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    compared = 0
    for ours, theirs, logprobs in zip(api["topk_bytes"], local["topk_bytes"],
                                      local["topk_logprobs"]):
        assert len(ours) == len(theirs)
        for api_row, local_row, row_logprobs in zip(ours, theirs, logprobs):
            if np.diff(row_logprobs).max() > -TIED:  # tied
                continue
            # a special token of Gemma's among the alternatives comes by its spelling: the
            # student's tokenizer cannot tell it from text (it maps onto no student token)
            spelled = [b"" if gemma_vocab.bytes_to_id.get(data) in gemma_vocab.special_ids
                       else data for data in api_row]
            assert spelled == list(local_row)
            compared += 1
    assert compared >= 0.9 * sum(map(len, local["topk_bytes"]))

    student, aligned = TokenBytes(teacher_tokenizer), 0
    for ours, theirs in zip(api["completion_bytes"], local["completion_bytes"]):
        text = b"".join(theirs).decode("utf-8", "replace")
        student_bytes = student.text_bytes(
            teacher_tokenizer(text, add_special_tokens=False)["input_ids"])
        spans = align_spans(list(ours), student_bytes)
        assert spans == align_spans(list(theirs), student_bytes)
        aligned += spans[1]
    assert aligned >= 0.8 * sum(map(len, local["completion_bytes"]))


def test_an_api_teacher_with_the_same_tokenizer_gives_the_local_samples(served, local,
                                                                      prompts, tmp_path):
    """With Gemma's own tokenizer the API's tokens map: ids and top-k ids as well."""
    _, gemma, url = served
    api = sample_through_api(url, gemma, prompts, tmp_path)
    for column in ("prompt_ids", "completion_ids", "completion", "topk_ids",
                   "completion_bytes", "topk_bytes", "finish_reason"):
        assert [_plain(v) for v in api[column]] == [_plain(v) for v in local[column]], column
    for column in ("topk_logprobs", "completion_logprobs"):
        for ours, theirs in zip(api[column], local[column]):
            np.testing.assert_allclose(np.array(_plain(ours)), np.array(_plain(theirs)),
                                       atol=1e-4)


def _plain(value):
    """Parquet's nested arrays as nested lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    return value
