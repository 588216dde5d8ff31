"""The green-list watermark: its hash, its bias on sampling, and its detector."""

from __future__ import annotations

import math
import random

import pytest
import torch

from distill.core.params import ParamsError, load_params
from distill.lm import generation
from distill.lm.watermark import Watermark, binomial_upper_tail, detect, from_env
from distill.pipeline import preflight
from distill.teachers import local as sampling

PROMPTS = [[3, 9, 14, 2], [5, 7], [11, 12, 13, 20, 21, 22]]


def test_green_share_is_gamma_after_every_token():
    mark = Watermark("secret", gamma=0.25)
    green = mark.green(torch.arange(200)[:, None], torch.arange(4096))
    assert green.float().mean().item() == pytest.approx(0.25, abs=0.005)
    # each previous token has its own list, not one list shifted around
    per_row = green.float().mean(1)
    assert per_row.min() > 0.2 and per_row.max() < 0.3
    assert not torch.equal(green[0], green[1])
    assert torch.equal(green, mark.green(torch.arange(200)[:, None], torch.arange(4096)))
    other = Watermark("other", gamma=0.25).green(torch.arange(200)[:, None], torch.arange(4096))
    assert (green == other).float().mean() < 0.7  # another key, another list


def test_bias_adds_delta_to_green_tokens_only():
    mark = Watermark("k", delta=3.0)
    logits = torch.randn(2, 64)
    previous = torch.tensor([5, 9])
    green = mark.green(previous[:, None], torch.arange(64))
    assert torch.allclose(mark.bias(logits, previous) - logits, 3.0 * green.float())


def test_key_id_names_the_key_without_revealing_it():
    mark = Watermark("a very secret key")
    assert mark.key_id != Watermark("another key").key_id
    assert "secret" not in str(mark.describe())
    assert set(mark.describe()) == {"key_id", "gamma", "delta"}


def test_binomial_upper_tail_matches_direct_sum():
    for n, k, p in [(10, 3, 0.25), (40, 20, 0.25), (7, 0, 0.5), (7, 8, 0.5), (1, 1, 0.3)]:
        direct = sum(math.comb(n, i) * p**i * (1 - p)**(n - i) for i in range(k, n + 1))
        assert binomial_upper_tail(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-15)


def test_detector_counts_each_pair_once():
    mark = Watermark("k")
    once = detect([[1, 2, 3]], mark)
    assert detect([[1, 2, 3, 1, 2, 3, 1, 2, 3], [1, 2]], mark)["pairs"] == once["pairs"] + 1


def test_detector_p_values_are_uniform_on_unmarked_text():
    """Text that knows nothing of the key: over many keys the p-value falls below 0.05
    about 5% of the time, not more (checked loosely: 200 keys)."""
    rng = random.Random(0)
    text = [[rng.randrange(32000) for _ in range(300)] for _ in range(2)]
    p_values = [detect(text, Watermark(f"key-{i}"))["p_value"] for i in range(200)]
    assert sum(p < 0.05 for p in p_values) / 200 <= 0.09
    assert 0.35 < sum(p < 0.5 for p in p_values) / 200 < 0.65


def test_watermarked_generation_is_detected(tiny_model, mini_tokenizer):
    """A model sampling under the watermark writes far more green pairs than gamma;
    the same model without it does not."""
    mark = Watermark("k", gamma=0.25, delta=4.0)
    tokenizer = mini_tokenizer(eos_token_id=63)
    prompts = [[i, i + 1] for i in range(40)]
    texts = {}
    for name, used in (("marked", mark), ("plain", None)):
        torch.manual_seed(0)
        out = generation.generate(tiny_model, tokenizer, prompts, max_new_tokens=24,
                                  do_sample=True, watermark=used)
        texts[name] = detect([p[-1:] + o["completion_ids"] for p, o in zip(prompts, out)], mark)
    assert texts["marked"]["green_share"] > 0.5 and texts["marked"]["p_value"] < 1e-6
    assert texts["plain"]["p_value"] > 1e-3


@pytest.mark.parametrize("do_sample", [False, True])
def test_a_zero_bonus_changes_nothing(tiny_model, mini_tokenizer, do_sample):
    """delta 0 passes through the watermark code and gives what no watermark gives,
    token for token and log-prob for log-prob."""
    tokenizer = mini_tokenizer(eos_token_id=63)
    results = []
    for used in (None, Watermark("k", delta=0.0)):
        torch.manual_seed(1)
        results.append(generation.generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=8,
                                           do_sample=do_sample, top_k_logprobs=4,
                                           token_logprobs=True, watermark=used))
    assert results[0] == results[1]


def test_recorded_logprobs_are_the_watermarked_distribution(tiny_model, mini_tokenizer):
    mark = Watermark("k", delta=2.0)
    (out,) = generation.generate(tiny_model, mini_tokenizer(eos_token_id=63), [PROMPTS[0]],
                                 max_new_tokens=1, top_k_logprobs=64, watermark=mark)
    with torch.no_grad():
        logits = tiny_model(torch.tensor([PROMPTS[0]])).logits[0, -1]
    expected = torch.log_softmax(mark.bias(logits, torch.tensor(PROMPTS[0][-1])), -1)
    recorded = dict(zip(out["topk_ids"][0], out["topk_logprobs"][0]))
    assert all(abs(recorded[i] - expected[i].item()) < 1e-4 for i in range(64))


def test_documents_scored_under_the_watermark(tiny_model):
    mark = Watermark("k", delta=2.0)
    window = [3, 9, 14, 2, 7]
    (plain,) = generation.score_documents(tiny_model, [window], top_k=64)
    (marked,) = generation.score_documents(tiny_model, [window], top_k=64, watermark=mark)
    for t in range(len(window) - 1):
        green = mark.green(torch.tensor(window[t]), torch.tensor(window[t + 1])).item()
        # a green next token gains probability under the watermark, a red one loses it
        assert (marked["token_logprobs"][t] > plain["token_logprobs"][t]) == green


def test_watermark_off_leaves_the_shard_settings_as_before(tiny_model, mini_tokenizer,
                                                              tmp_path, monkeypatch):
    """Shards sampled before watermarks existed still resume: off adds nothing to the
    settings; on, the settings name the key id, never the key."""
    seen = []
    monkeypatch.setattr(sampling, "sample_shards",
                        lambda run_dir, train, heldout, size, settings, fn, **kw:
                        seen.append(settings))
    for used in (None, Watermark("a secret", delta=1.0)):
        sampling.sample_teacher(tiny_model, mini_tokenizer(eos_token_id=63), [], [], tmp_path,
                                seed=0, shard_size=4, batch_size=2, watermark=used,
                                max_new_tokens=4, do_sample=False, temperature=1.0, top_p=1.0,
                                top_k_logprobs=2)
    assert "watermark" not in seen[0]
    assert seen[1]["watermark"] == Watermark("a secret", delta=1.0).describe()
    assert "a secret" not in str(seen[1])


def test_key_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MY_MARK", raising=False)
    with pytest.raises(ValueError, match="MY_MARK is not set"):
        from_env("MY_MARK")
    monkeypatch.setenv("MY_MARK", "s3cret")
    with pytest.raises(ValueError, match="fewer than 16 characters"):
        from_env("MY_MARK")
    monkeypatch.setenv("MY_MARK", "a long enough s3cret")
    mark = from_env("MY_MARK", gamma=0.5)
    assert mark.gamma == 0.5 and "s3cret" not in repr(mark)
    with pytest.raises(ValueError, match="gamma"):
        Watermark("k", gamma=1.0)


def test_params_refuse_a_watermark_they_cannot_apply(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("teacher_sampling: {watermark: true, backend: openai, "
                    "base_url: 'http://127.0.0.1:1/v1'}\n")
    with pytest.raises(ParamsError, match="watermark: sampling under a watermark needs a teacher "
                       "that runs in this process"):
        load_params(path)
    path.write_text("teacher_sampling: {watermark: true, watermark_gamma: 1.5}\n")
    with pytest.raises(ParamsError, match="watermark_gamma"):
        load_params(path)
    path.write_text("teacher_sampling: {watermark: true, watermark_key_env: NO_SUCH_MARK}\n")
    monkeypatch.delenv("NO_SUCH_MARK", raising=False)
    with pytest.raises(ParamsError, match="NO_SUCH_MARK is not set"):
        preflight(load_params(path), path)
