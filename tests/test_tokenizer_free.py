"""Tokenizer-free figures of notebook 03 (distill.evaluation.metrics.tokenizer_free_scores): bits
per byte of the teacher's answers and next-word agreement under teacher forcing."""

import copy
import json
import math
import re
import string

import pandas as pd
import pytest
import torch

from conftest import MiniTokenizer, make_tiny_model
from distill.evaluation import metrics as evaluation
from distill.lm import data, generation


class TextTokenizer(MiniTokenizer):
    """Text of 64 pieces: letters, ' ' + letter, newline, 'é' (two bytes), '.', digits,
    and EOS (id 1, also the pad). Every text made of them has one tokenization (longest
    match), so decoding and encoding again gives the ids back. With `merge`, id 0 is
    '.\\n': a token across a word's end and the whitespace after it."""

    def __init__(self, merge: bool = False):
        super().__init__(eos_token_id=1, pad_token_id=1)
        letters = string.ascii_lowercase
        self.pieces = [".\n" if merge else "7", "</s>", *letters, *(" " + c for c in letters),
                       "\n", "é", ".", *"0123456"]
        self.ids = {piece: i for i, piece in enumerate(self.pieces) if i != 1}

    def __call__(self, text, add_special_tokens=False):
        ids, position = [], 0
        while position < len(text):
            pair = text[position:position + 2]
            piece = pair if pair in self.ids else text[position]
            ids.append(self.ids[piece])
            position += len(piece)
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 1))


def _frame(prompts: list[str], completions: list[str], reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"messages": [json.dumps([{"role": "user", "content": p}])
                                      for p in prompts],
                         "completion": completions, "finish_reason": reasons})


def _uniform(model):
    """A copy of `model` whose next-token distribution is uniform over its vocabulary."""
    model = copy.deepcopy(model)
    torch.nn.init.zeros_(model.lm_head.weight)
    return model


def test_bits_per_byte_of_a_uniform_model_by_hand():
    """Each token costs log2(64) = 6 bits. ' ab\\né' is 4 tokens in 6 bytes (é is two),
    'cd.' 3 tokens in 3 bytes: 7 * 6 bits / 9 bytes. An empty answer counts nothing."""
    frame = _frame(["hi", "yo", "so"], [" ab\né", "cd.", ""], ["stop", "length", "stop"])
    result = evaluation.tokenizer_free_scores(_uniform(make_tiny_model()), TextTokenizer(),
                                              frame, batch_size=2)
    assert (result["tokens"], result["bytes"]) == (7, 9)
    assert result["bits_per_byte"] == pytest.approx(7 * 6 / 9)
    # words: 'ab' and 'é'; 'cd.' may be cut off (finish_reason length), so not counted
    assert result["words"] == 2 and result["next_word_agreement"] == 0.0


def test_bits_per_byte_equal_a_direct_forward():
    """Batched with padding, the sum of bits is that of one forward pass per sample over
    its chat prompt + completion ids, the completion tokens scored."""
    model, tokenizer = make_tiny_model(seed=2), TextTokenizer()
    prompts, completions = ["hi there", "a"], [" ab cd.\n", "xyzé q"]
    result = evaluation.tokenizer_free_scores(
        model, tokenizer, _frame(prompts, completions, ["stop", "stop"]), batch_size=2)
    bits = 0.0
    for prompt, completion in zip(prompts, completions):
        context = data.encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        ids = tokenizer(completion)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([context + ids])).logits[0, len(context) - 1:-1]
        bits -= float(torch.log_softmax(logits, -1).gather(
            -1, torch.tensor(ids)[:, None]).sum()) / math.log(2)
    total_bytes = sum(len(c.encode()) for c in completions)
    assert result["bytes"] == total_bytes
    assert result["bits_per_byte"] == pytest.approx(bits / total_bytes, rel=1e-5)


def test_multibyte_answer_with_the_teachers_tokenizer(teacher_tokenizer,
                                                      tiny_model_teacher_vocab):
    """The teacher's byte-level tokenizer and chat template: bytes are UTF-8 bytes
    ('café' 5, '😀' 4, 'naïve' 6, two spaces), tokens its own. The uniform model's greedy
    token is a special one that decodes to nothing, so every word goes to the greedy
    decode and stays undecided up to the cap: no agreement."""
    completion = "café 😀 naïve"
    result = evaluation.tokenizer_free_scores(
        _uniform(tiny_model_teacher_vocab), teacher_tokenizer,
        _frame(["Say something."], [completion], ["stop"]), batch_size=4, max_word_tokens=3)
    tokens = len(teacher_tokenizer(completion, add_special_tokens=False)["input_ids"])
    assert result["bytes"] == 17 and result["tokens"] == tokens
    assert result["bits_per_byte"] == pytest.approx(math.log2(49152) * tokens / 17)
    assert result["words"] == 3 and result["decoded_words"] == 3
    assert result["next_word_agreement"] == 0.0


def _greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> pd.DataFrame:
    prompt_ids = [data.encode_chat(tokenizer, [{"role": "user", "content": p}])
                  for p in prompts]
    outputs = generation.generate(model, tokenizer, prompt_ids, max_new_tokens)
    return _frame(prompts, [tokenizer.decode(o["completion_ids"]) for o in outputs],
                  [o["finish_reason"] for o in outputs])


PROMPTS = ["ab", "the cat", "q", "hello world", "x y z", "mn"]


def test_the_generator_agrees_with_its_own_greedy_text():
    model, tokenizer = make_tiny_model(seed=0), TextTokenizer()
    frame = _greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=24)
    result = evaluation.tokenizer_free_scores(model, tokenizer, frame, batch_size=4)
    assert result["words"] >= len(PROMPTS)
    assert result["next_word_agreement"] == 1.0
    other = evaluation.tokenizer_free_scores(make_tiny_model(seed=3), tokenizer, frame, 4)
    assert other["next_word_agreement"] < 1.0 and other["bits_per_byte"] > \
        result["bits_per_byte"]


def _plain_agreement(model, tokenizer, frame: pd.DataFrame, max_word_tokens: int) -> float:
    """The definition run word by word: greedy decoding by plain forward passes from the
    prompt + the answer's text up to the previous word's end."""
    agree = words = 0
    for messages, text, reason in zip(frame["messages"], frame["completion"],
                                      frame["finish_reason"]):
        prompt = data.encode_chat(tokenizer, json.loads(messages))
        found = list(re.finditer(r"\S+", text))
        for k, word in enumerate(found):
            if word.end() == len(text) and reason != "stop":
                continue
            end = found[k - 1].end() if k else 0
            sequence = prompt + tokenizer(text[:end])["input_ids"]
            tokens = []
            with torch.no_grad():
                while len(tokens) < max_word_tokens and tokenizer.eos_token_id not in tokens:
                    tokens.append(int(model(torch.tensor([sequence + tokens])).logits[0, -1]
                                      .argmax()))
            rest = tokenizer.decode(tokens).lstrip()
            stopped = tokens[-1] == tokenizer.eos_token_id
            words += 1
            agree += rest.startswith(word.group()) and (
                rest[len(word.group()):len(word.group()) + 1].isspace()
                or (stopped and rest == word.group()))
    return agree / words


@pytest.mark.parametrize("student_seed", [0, 3])
def test_next_word_agreement_equals_word_by_word_greedy_decoding(student_seed):
    """The one-forward shortcut and the batched decode give what the definition gives,
    also where a token spans a word's end and the newline after it (merge: a context
    that ends inside the answer's tokens) and where text re-encodes to other ids."""
    generator, tokenizer = make_tiny_model(seed=0), TextTokenizer(merge=True)
    frame = pd.concat([_greedy_answers(generator, tokenizer, PROMPTS, max_new_tokens=24),
                       _frame(["ab", "cd"], ["ab.\ncd ef. gh", " q.\n\nr st"],
                              ["stop", "length"])], ignore_index=True)
    student = make_tiny_model(seed=student_seed)
    result = evaluation.tokenizer_free_scores(student, tokenizer, frame, batch_size=3,
                                              max_word_tokens=6)
    assert result["decoded_words"] > 0
    assert result["next_word_agreement"] == pytest.approx(
        _plain_agreement(student, tokenizer, frame, max_word_tokens=6))
