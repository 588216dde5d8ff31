"""distill.lm.cross_tokenizer and the cross-tokenizer objectives: samples re-read in a
student's tokens, and the objectives on a batch of them, against direct references."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from distill.core.params import ParamsError, load_params
from distill.lm import alignment, cross_tokenizer, losses, samples
from distill.lm.data import encode_chat
from distill.lm.token_bytes import TokenBytes

K = 5


@pytest.fixture(scope="module")
def gemma_tokenizer():
    """Gemma 3's tokenizer (SentencePiece, 262,144 ids, byte fallback); converts the
    embedded model once (~60 s), as tests/test_models.py does."""
    from distill.lm.models import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path("gemma3-270m"))


def _row(tokenizer, text: str, seed: int = 0, finish: str = "stop") -> dict:
    """A teacher sample of `text` as stage 01 records it (schema 2), its top-k made up:
    the token itself most likely, then K - 1 other ordinary tokens."""
    vocab = TokenBytes(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if finish == "stop":
        ids.append(tokenizer.eos_token_id)
    generator = np.random.default_rng(seed)
    ordinary = [i for i in range(1000, 5000) if i not in vocab.special_ids]
    topk_ids, topk_logprobs = [], []
    for token in ids:
        others = [int(i) for i in generator.choice(ordinary, K - 1, replace=False) if i != token]
        row = [token, *others][:K]
        while len(row) < K:
            row.append(ordinary[len(row)])
        probs = generator.dirichlet(np.ones(K + 1))[:K]  # the rest is the tail
        probs = np.sort(probs)[::-1]
        topk_ids.append(row)
        topk_logprobs.append(np.log(probs).tolist())
    messages = [{"role": "user", "content": "Say something."}]
    return {"prompt_id": f"p{seed}", "kind": "chat", "split": "train",
            "messages": json.dumps(messages), "prompt_ids": encode_chat(tokenizer, messages),
            "completion_ids": ids, "completion": tokenizer.decode(ids, skip_special_tokens=True),
            "topk_ids": topk_ids, "topk_logprobs": topk_logprobs, "finish_reason": finish,
            "reference": None, "completion_bytes": vocab.text_bytes(ids),
            "completion_logprobs": [lps[0] for lps in topk_logprobs],
            "topk_bytes": [vocab.text_bytes(row) for row in topk_ids]}


TEXTS = ["The cat sat on the mat.", "Héllo wörld, 123 + 45 = 168!", "Ünïcödé 😀 and\ttabs\n"]


def test_one_tokenizer_gives_one_to_one_spans_and_the_same_forward_kl(teacher_tokenizer):
    frame = pd.DataFrame([_row(teacher_tokenizer, t, seed=i) for i, t in enumerate(TEXTS)])
    plain = samples.build_examples(frame, need_topk=True)
    stats = {}
    cross = cross_tokenizer.cross_examples(frame, teacher_tokenizer, True, stats)
    assert stats["coverage"] == {"one_to_one": 1.0, "multi_token": 0.0, "unaligned": 0.0}
    for a, b in zip(plain, cross):
        assert a.input_ids == b.input_ids and a.labels == b.labels
        assert b.cross["kind"] == [alignment.ONE_TO_ONE] * len(b.topk_ids)
        assert b.topk_ids == a.topk_ids  # every string maps back onto its own id
    pad = teacher_tokenizer.pad_token_id
    batch_plain, batch_cross = samples.collate(plain, pad), samples.collate(cross, pad)
    logits = torch.randn(*batch_plain["labels"].shape, len(teacher_tokenizer),
                         generator=torch.Generator().manual_seed(0))
    same = losses.OBJECTIVES["forward_kl"](logits, batch_plain["labels"], batch_plain)
    mapped = alignment.CROSS_OBJECTIVES["mapped_kl"](logits, batch_cross["labels"], batch_cross)
    assert mapped.item() == pytest.approx(same.item(), rel=1e-5)
    # with every span one to one, the hybrid has no ULD part: it is the mapped KL
    options = {"kd_mapped_weight": 1.0, "kd_uld_weight": 3.0}
    hybrid = alignment.CROSS_OBJECTIVES["hybrid"](logits, batch_cross["labels"], batch_cross,
                                                  options=options)
    assert hybrid.item() == pytest.approx(same.item(), rel=1e-5)


def test_gemma_samples_are_reread_in_smollm2_tokens(gemma_tokenizer, teacher_tokenizer):
    rows = [_row(gemma_tokenizer, t, seed=i) for i, t in enumerate(TEXTS)]
    frame = pd.DataFrame(rows)
    stats = {}
    examples = cross_tokenizer.cross_examples(frame, teacher_tokenizer, True, stats)
    assert stats["coverage"]["unaligned"] == 0.0 and stats["coverage"]["multi_token"] > 0
    student = TokenBytes(teacher_tokenizer)
    for example, row in zip(examples, rows):
        completion = [label for label in example.labels if label != losses.IGNORE_INDEX]
        assert completion[-1] == teacher_tokenizer.eos_token_id  # the answer ended: so does it
        assert b"".join(student.text_bytes(completion)) == b"".join(row["completion_bytes"])
        assert example.input_ids[:example.prompt_length] == encode_chat(
            teacher_tokenizer, json.loads(row["messages"]))
        kinds, index = example.cross["kind"], example.cross["span_index"]
        starts = [i for i, kind in enumerate(kinds) if kind]
        # every span has one first position, the spans number the positions in order
        assert [index[i] for i in starts] == list(range(len(starts)))
        assert all(b >= a for a, b in zip(index, index[1:])) and min(index) == 0
        # the spans' teacher log P add up to the teacher's log P of the whole answer
        assert sum(example.cross["span_teacher"]) == pytest.approx(
            sum(row["completion_logprobs"]), rel=1e-6)
        # ULD reads the teacher's own top-k at each span's first teacher token
        assert example.cross["raw_logprobs"][starts[0]] == pytest.approx(row["topk_logprobs"][0])


def test_batch_span_kl_is_span_kl_of_each_rows_chain_rule_sums(gemma_tokenizer,
                                                                teacher_tokenizer):
    frame = pd.DataFrame([_row(gemma_tokenizer, t, seed=i) for i, t in enumerate(TEXTS)])
    examples = cross_tokenizer.cross_examples(frame, teacher_tokenizer, True)
    batch = samples.collate(examples, teacher_tokenizer.pad_token_id)
    logits = torch.randn(*batch["labels"].shape, len(teacher_tokenizer),
                         generator=torch.Generator().manual_seed(1))
    got = alignment.CROSS_OBJECTIVES["span_kl"](logits, batch["labels"], batch)
    teacher_spans, student_spans = [], []
    logprobs = torch.log_softmax(logits, -1)
    for row, example in enumerate(examples):
        start = len(example.input_ids) - 1 - len(example.topk_ids)
        index = example.cross["span_index"]
        for span in range(max(index) + 1):
            positions = [start + i for i, s in enumerate(index) if s == span]
            student_spans.append(sum(logprobs[row, p, batch["labels"][row, p]] for p in positions))
            teacher_spans.append(example.cross["span_teacher"][positions[0] - start])
    want = alignment.span_kl(torch.tensor(teacher_spans), torch.stack(student_spans))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(alignment.CROSS_OBJECTIVES))
def test_each_cross_objective_trains_the_student(name, gemma_tokenizer, teacher_tokenizer,
                                                 tiny_model_teacher_vocab):
    """One step of gradient descent on the objective lowers it (finite gradients)."""
    import copy

    frame = pd.DataFrame([_row(gemma_tokenizer, t, seed=i) for i, t in enumerate(TEXTS)])
    batch = samples.collate(cross_tokenizer.cross_examples(frame, teacher_tokenizer, True),
                            teacher_tokenizer.pad_token_id)
    model = copy.deepcopy(tiny_model_teacher_vocab)
    objective = alignment.CROSS_OBJECTIVES[name]

    def value():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1]
        return objective(logits, batch["labels"], batch)

    before = value()
    before.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad / (p.grad.norm() + 1e-12)
    assert value().item() < before.item()


def test_samples_without_bytes_are_text_only_or_refused(teacher_tokenizer):
    row = _row(teacher_tokenizer, "Plain text.")
    old = pd.DataFrame([{**row, "completion_bytes": np.array([]), "topk_bytes": np.array([]),
                         "completion_logprobs": np.array([])}])
    (example,) = cross_tokenizer.cross_examples(old, teacher_tokenizer, False)
    assert example.cross is None and example.topk_ids == [[] for _ in example.topk_ids]
    with pytest.raises(ValueError, match="schema 2"):
        cross_tokenizer.cross_examples(old, teacher_tokenizer, True)


def test_a_schema_1_shard_is_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.core.runs import SAMPLES

    old_schema = pa.schema([f for f in samples.SAMPLE_SCHEMA
                            if f.name not in samples.SCHEMA_2_COLUMNS])
    row = {"prompt_id": "a", "kind": "chat", "split": "train", "messages": "[]",
           "prompt_ids": [1], "completion_ids": [2, 3], "completion": "x", "topk_ids": [],
           "topk_logprobs": [], "finish_reason": "stop", "reference": None}
    (tmp_path / SAMPLES).mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema),
                   samples.shard_path(tmp_path, 0))
    frame = samples.read_samples(tmp_path)
    assert list(frame["completion_ids"][0]) == [2, 3]
    assert all(len(frame[column][0]) == 0 for column in samples.SCHEMA_2_COLUMNS)


def test_params_name_the_cross_objectives_where_tokenizers_differ(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run: {teacher: gemma3-270m}\n"
                    "student_training: {student: smollm2-135m-instruct}\n")
    with pytest.raises(ParamsError, match="span_kl, mapped_kl, uld, hybrid"):
        load_params(path)
    assert load_params(path, ["student_training.kd_loss=uld"]).student_training.cross_objective
    # sequence-level KD needs no token-level objective
    load_params(path, ["student_training.kd_weight=0", "student_training.ce_weight=1"])
    with pytest.raises(ParamsError, match="offline"):
        load_params(path, ["student_training.kd_loss=span_kl", "student_training.lmbda=0.5"])
    with pytest.raises(ParamsError, match="temperature"):
        load_params(path, ["student_training.kd_loss=hybrid", "student_training.temperature=2"])


def test_a_teacher_string_the_student_lacks_goes_to_its_first_token(teacher_tokenizer):
    student = cross_tokenizer.StudentVocabulary(teacher_tokenizer)
    word = b" Questioningly"
    spelled = teacher_tokenizer(" Questioningly", add_special_tokens=False)["input_ids"]
    assert word not in student.ids and len(spelled) > 1
    assert student.get(word) == spelled[0]
    assert student.get(b" the") == student.vocab.bytes_to_id[b" the"]  # shared: itself
    assert student.get(b"") == teacher_tokenizer.eos_token_id  # the teacher's end
    ids, logprobs, valid = alignment.map_topk(
        [[(word, math.log(0.2)), (teacher_tokenizer.decode(spelled[:1]).encode(),
                                  math.log(0.3))]], student, 3)
    # both strings start with the same student token: one entry, their mass summed
    assert ids[0, 0].item() == spelled[0] and valid.tolist() == [[True, False, False]]
    assert logprobs[0, 0].exp().item() == pytest.approx(0.5)


def test_added_tokens_that_are_text_keep_their_bytes(gemma_tokenizer):
    """Gemma lists "\\n", "\\n\\n", runs of spaces among its added tokens, not flagged
    special: they write text, so they keep their bytes (b"" would drop the newlines from
    every re-read answer)."""
    vocab = TokenBytes(gemma_tokenizer)
    text = "One.\n\nTwo:\n    three\tfour  five"
    ids = gemma_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(i in gemma_tokenizer.added_tokens_decoder for i in ids)
    assert b"".join(vocab.text_bytes(ids)) == text.encode()
    assert vocab.text_bytes([gemma_tokenizer.eos_token_id]) == [b""]
