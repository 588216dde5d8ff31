"""The transfer set beyond the chat answers (generic text, documents, mixing) and
quality during training (validation log, best checkpoint)."""

import math

import pandas as pd
import pytest
import torch

from distill import training
from distill.core import params
from distill.lm import data, generation, samples, validation
from distill.teachers import local as sampling
from distill.training import loop
from test_samples import _samples
from test_training import _config


class CharTokenizer:
    """Characters to ids 3..63 (enough for the tiny model's vocabulary of 64)."""
    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 61 for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_document_topk_equal_a_direct_teacher_forward(tiny_model):
    windows = [[5, 9, 3, 7, 2, 11, 4, 8, 8], [4, 8, 6, 10, 12, 30, 31, 2]]  # unequal: padding
    scored = generation.score_documents(tiny_model, windows, top_k=5, batch_size=2)
    for window, result in zip(windows, scored):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([window])).logits[0, :-1]
        direct = torch.log_softmax(logits, -1).topk(5)
        assert result["topk_ids"] == direct.indices.tolist()
        assert torch.allclose(torch.tensor(result["topk_logprobs"]), direct.values, atol=1e-5)


def test_documents_become_shards_of_the_sample_schema(tmp_path, tiny_model):
    tokenizer = CharTokenizer()
    texts = {"a.txt": "the quick brown fox jumps over the lazy dog " * 3}
    stats = sampling.sample_documents(tiny_model, tokenizer, texts, tmp_path, block_size=16,
                                      top_k_logprobs=4, shard_size=2, batch_size=2)
    frame = samples.read_samples(tmp_path, sources=("documents",))
    windows = data.text_windows(tokenizer, texts["a.txt"], 16)
    assert len(frame) == len(windows) and set(frame["source"]) == {"documents"}
    assert stats["tokens"] == sum(len(w) - 1 for w in windows)
    row = frame.iloc[0]
    assert list(row["prompt_ids"]) + list(row["completion_ids"]) == windows[0]
    assert len(row["topk_ids"]) == len(row["completion_ids"]) == 16
    example = samples.build_examples(frame, need_topk=True)[0]
    assert example.source == "documents"
    # chat samples are not mixed into a documents read, nor documents into a chat one
    with pytest.raises(samples.SamplesError):
        samples.read_samples(tmp_path)


def test_text_windows_cover_the_text_with_one_token_of_overlap():
    tokenizer = CharTokenizer()
    ids = tokenizer("abcdefghijklmnopqrstuvwxyz" * 2)["input_ids"]
    windows = data.text_windows(tokenizer, "abcdefghijklmnopqrstuvwxyz" * 2, 10)
    assert windows[0] == ids[:11] and windows[1][0] == ids[10]
    # 52 tokens: windows start at 0, 10, ..., 40; the last, [50, 51], would teach one
    # token and is dropped
    assert [t for w in windows for t in w[1:]] == ids[1:51]


def test_shipped_generic_seeds_and_validation_prose_load():
    seeds = data.load_generic_seeds()
    assert len(seeds) >= 300 and len(set(seeds)) == len(seeds)
    assert not any(s.startswith("# ") for s in seeds)
    prose = data.load_validation_prose()
    assert len(prose) > 5000 and "distill validation prose" not in prose
    corpus = data.load_corpus()
    assert prose[:200] not in corpus  # not the text 03 reports on


def test_epoch_order_follows_the_source_weights():
    sources = ["chat"] * 10 + ["generic"] * 4 + ["documents"] * 6
    order = samples.epoch_order(sources, {"chat": 2.0, "generic": 0.5, "documents": 0}, 0, 0)
    counted = pd.Series([sources[i] for i in order]).value_counts().to_dict()
    assert counted == {"chat": 20, "generic": 2}
    assert samples.epoch_order(sources, {}, 0, 1) != samples.epoch_order(sources, {}, 0, 2)
    assert sorted(samples.epoch_order(sources, {}, 0, 0)) == list(range(20))


@pytest.mark.parametrize("weights, message", [
    ({"chat": 1, "poems": 1}, "source_weights"),
    ({"chat": -1}, "source_weights"),
    ({"chat": 0, "generic": 0}, "source_weights"),
])
def test_mixing_weights_are_validated(weights, message):
    with pytest.raises(params.ParamsError, match=message):
        params.load_params(overrides=[f"student_training.source_weights={weights}"])


def test_generic_and_documents_need_topk_and_the_local_backend():
    with pytest.raises(params.ParamsError, match="top_k_logprobs above 0"):
        params.load_params(overrides=["teacher_sampling.generic_samples=8",
                                      "teacher_sampling.top_k_logprobs=0"])
    with pytest.raises(params.ParamsError, match="local backend"):
        params.load_params(overrides=["teacher_sampling.documents=docs/*.txt",
                                      "teacher_sampling.backend=openai",
                                      "teacher_sampling.base_url=http://127.0.0.1:1/v1"])


def test_validation_is_logged_and_best_is_kept(tmp_path, tiny_model_factory, monkeypatch):
    examples = samples.build_examples(_samples(n=12))
    examples, held = validation.split_validation(examples, 3, seed=0)
    assert len(examples) == 9 and len(held) == 3
    # a constructed validation curve: lowest at step 4 of 6
    curve = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(loop, "topk_fidelity", lambda model, ex, pad_id: {
        "kl": next(curve) if ex is held else 0.5, "top1_agreement": 0.25, "tokens": 9})
    saved = {}
    monkeypatch.setattr(loop, "save_best", lambda model, run_dir: saved.update(
        weights={k: v.clone() for k, v in model.state_dict().items()}))
    monkeypatch.setattr(loop, "load_best", lambda model, run_dir: model.load_state_dict(
        saved["weights"]))
    student = tiny_model_factory(seed=1)
    log = training.train(student, examples, tmp_path, _config(max_steps=6, validation_every=2,
                                                              keep="best"),
                         validation={"val": held, "prose": held[:1]})
    assert {"val_kl", "val_top1", "prose_kl", "prose_top1"} <= set(log.columns)
    assert log["val_kl"].dropna().tolist() == [3.0, 1.0, 2.0]
    assert log.dropna(subset=["val_kl"])["step"].tolist() == [2, 4, 6]
    assert math.isnan(log["val_kl"].iloc[0])
    written = pd.read_csv(tmp_path / "train_log.csv")
    assert written["val_kl"].dropna().tolist() == [3.0, 1.0, 2.0]
    for name, value in student.state_dict().items():  # the student ends as at step 4
        assert torch.equal(value, saved["weights"][name])


def test_topk_fidelity_of_the_teacher_itself(tiny_model):
    """A model scored against its own top-k has KL ~0 and agrees everywhere."""
    windows = [[5, 9, 3, 7, 2, 11, 4, 8, 8, 7], [4, 8, 6, 10, 12, 30, 31, 2]]
    scored = generation.score_documents(tiny_model, windows, top_k=64)
    examples = [samples.Example(w, w[1:], s["topk_ids"], s["topk_logprobs"])
                for w, s in zip(windows, scored)]
    result = validation.topk_fidelity(tiny_model, examples, pad_id=0)
    assert result["kl"] < 1e-4 and result["top1_agreement"] == 1.0
    assert result["tokens"] == sum(len(w) - 1 for w in windows)


def test_prose_fidelity_gives_kl_agreement_and_perplexity(tiny_model, tiny_model_factory):
    """On plain text: the teacher against itself has KL 0 and agreement 1; exp(nll) is the
    perplexity of every token after the first, computed directly."""
    from distill.evaluation import metrics as evaluation

    tokenizer = CharTokenizer()
    text = "a small model reads a plain text, one character at a time. " * 2
    examples = samples.prose_examples(tokenizer, text, max_tokens=100, block_size=32)
    ids = tokenizer(text)["input_ids"][:100]
    assert [t for e in examples for t in e.labels] == ids[1:]  # every token once
    other = tiny_model_factory(seed=5)
    scores = evaluation.teacher_forced_fidelity(tiny_model, {"teacher": tiny_model,
                                                             "other": other}, examples, 0, 2)
    assert scores["teacher"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert scores["teacher"]["top1_agreement"] == 1.0
    assert scores["other"]["kl"] > 0.01 and scores["other"]["tokens"] == 99
    with torch.no_grad():
        nll = sum(float(torch.nn.functional.cross_entropy(
            other(input_ids=torch.tensor([w])).logits[0, :-1], torch.tensor(w[1:]),
            reduction="sum")) for w in data.id_windows(ids, 32))
    assert scores["other"]["nll"] == pytest.approx(nll / 99, rel=1e-5)


def test_length_grouped_batches_pad_less_and_keep_every_example():
    draws = torch.randint(5, 200, (96,), generator=torch.Generator().manual_seed(0))
    lengths = [int(x) for x in draws]
    order = torch.randperm(96, generator=torch.Generator().manual_seed(1)).tolist()
    grouped = samples.length_grouped(lengths, order, batch_size=8, seed=0, span=4)
    assert sorted(i for batch in grouped for i in batch) == list(range(96))
    assert all(len(batch) == 8 for batch in grouped)

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    plain = [order[i:i + 8] for i in range(0, 96, 8)]
    assert padded(grouped) < 0.8 * padded(plain)
    assert grouped == samples.length_grouped(lengths, order, 8, seed=0, span=4)  # resumable
