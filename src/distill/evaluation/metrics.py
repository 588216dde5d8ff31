"""Metrics that say how much of the teacher a student keeps, and at what cost.

- Teacher-forced fidelity on the held-out teacher completions: forward
  KL(p_T || p_S) per completion token (the training objective's direction) and
  top-1 agreement (student's argmax == teacher's argmax).
- The same on a text corpus that no stage trains on (prose), and perplexity there.
- Tokenizer-free, on the same held-out answers, so runs compare whatever the student's
  vocabulary: bits per byte of the answers' text, and next-word agreement (the model's
  greedy next word, after the answer's text so far, is the answer's).
- Generated answers: ROUGE-L against the teacher's answer (the shipped local
  `evaluate` module), and, where the prompt has a reference, exact match and
  reference-in-answer accuracy.
- Cost: parameters, size on disk, generation tokens/s.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..lm.data import builtin_path, encode_chat
from ..lm.generation import generate, right_padded_logits, stop_token_ids
from ..lm.losses import IGNORE_INDEX, forward_kl
from ..lm.samples import build_examples, collate


@torch.inference_mode()
def teacher_forced_items(teacher, students: dict, samples, pad_id: int,
                         batch_size: int) -> pd.DataFrame:
    """One row per model and item (a held-out answer, a prose window) of `samples` (a
    samples DataFrame, or Examples such as `samples.prose_examples`): over the item's
    completion tokens (`tokens`), the mean forward KL(p_T || p_S) (`kl`), the share where
    the argmaxes agree (`top1_agreement`), the mean of sum_v min(p_T, p_S) = 1 - total
    variation (`acceptance`: the chance that a token the student drafts is accepted by the
    teacher in speculative sampling) and the mean next-token loss on the text itself
    (`nll`). The teacher's logits are computed once per batch for all students."""
    examples = samples if isinstance(samples, list) else build_examples(samples)
    examples = sorted(examples, key=lambda e: len(e.input_ids))  # less padding
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc="teacher-forced scoring"):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(teacher.device) for k, v in collate(chunk, pad_id).items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        teacher_logits = teacher(**inputs).logits[:, :-1].float()
        for name, student in students.items():
            student_logits = teacher_logits if student is teacher else \
                student(**inputs).logits[:, :-1].float()  # the teacher among them: once
            for row, example in enumerate(chunk):  # one item at a time: small vocab-wide tensors
                keep = batch["labels"][row] != IGNORE_INDEX
                log_t = teacher_logits[row][keep].log_softmax(-1)
                log_s = student_logits[row][keep].log_softmax(-1)
                rows.append({
                    "model": name, "item": example.item, "tokens": int(keep.sum()),
                    "kl": float(forward_kl(log_t, log_s).mean()),
                    "top1_agreement": float((log_s.argmax(-1) == log_t.argmax(-1)).float().mean()),
                    "acceptance": float(torch.minimum(log_t.exp(), log_s.exp()).sum(-1).mean()),
                    "nll": float(torch.nn.functional.nll_loss(log_s, batch["labels"][row][keep]))})
    return pd.DataFrame(rows, columns=["model", "item", "tokens", "kl", "top1_agreement",
                                       "acceptance", "nll"])


def teacher_forced_fidelity(teacher, students: dict, samples, pad_id: int,
                            batch_size: int) -> dict[str, dict]:
    """{name: {'kl', 'top1_agreement', 'acceptance', 'nll', 'tokens'}}: `teacher_forced_items`
    over all completion tokens (each item weighted by its tokens); exp(nll): perplexity."""
    return summarize_items(teacher_forced_items(teacher, students, samples, pad_id, batch_size),
                           "tokens")


def summarize_items(items: pd.DataFrame, weight: str) -> dict[str, dict]:
    """{model: {figure: mean over items weighted by the `weight` column, weight: its sum}}
    of an items frame (one row per model and item)."""
    figures = [c for c in items.columns if c not in ("model", "item", weight)]
    summary = {}
    for name, group in items.groupby("model", sort=False):
        total = group[weight].sum()
        summary[name] = {f: float((group[f] * group[weight]).sum() / total) if total else None
                         for f in figures}
        summary[name][weight] = int(total)
    return summary


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and extra spaces (SQuAD-style answer matching)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def exact_match(answer: str, reference: str) -> bool:
    """The normalized answer is the normalized reference."""
    return normalize(answer) == normalize(reference)


def reference_in_answer(answer: str, reference: str) -> bool:
    """The normalized reference appears in the normalized answer as whole words:
    lenient scoring for chat models that answer in a sentence."""
    return re.search(rf"\b{re.escape(normalize(reference))}\b", normalize(answer)) is not None


@functools.cache
def _rouge_metric():
    """The shipped local ROUGE-L module, loaded once per process (not once per model)."""
    import evaluate

    return evaluate.load(str(builtin_path("rouge_l")))


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure per pair, through `evaluate` with the shipped local module."""
    return _rouge_metric().compute(predictions=predictions,
                                   references=references)["rougeL_per_pair"]


def answer_items(answers: list[str], teacher_answers: list[str] | None,
                 references: list[str | None], items: list[str]) -> pd.DataFrame:
    """One row per answer (`item`: its prompt id): ROUGE-L against the teacher's answer
    (NaN without `teacher_answers`) and, where the prompt has a reference (`graded`),
    exact match and reference-in-answer (NaN where it has none)."""
    graded = [r is not None for r in references]
    return pd.DataFrame({
        "item": [str(i) for i in items],
        "rouge_l_vs_teacher": rouge_l(answers, teacher_answers) if teacher_answers is not None
        else [math.nan] * len(answers),
        "graded": graded,
        "exact_match": [float(exact_match(a, r)) if g else math.nan
                        for a, r, g in zip(answers, references, graded)],
        "reference_in_answer": [float(reference_in_answer(a, r)) if g else math.nan
                                for a, r, g in zip(answers, references, graded)]})


def answer_scores(answers: list[str], teacher_answers: list[str],
                  references: list[str | None]) -> dict:
    """ROUGE-L vs the teacher's answers, and accuracy on the prompts with a reference."""
    return scores_of_answers(answer_items(answers, teacher_answers, references,
                                          range(len(answers))))


def scores_of_answers(frame: pd.DataFrame) -> dict:
    """The answer figures of metrics.json from an `answer_items` frame."""
    graded = frame[frame["graded"]]
    return {"rouge_l_vs_teacher": float(frame["rouge_l_vs_teacher"].mean()),
            "graded_prompts": len(graded),
            "exact_match": float(graded["exact_match"].mean()) if len(graded) else None,
            "reference_in_answer": float(graded["reference_in_answer"].mean())
            if len(graded) else None}


# --- tokenizer-free figures ---------------------------------------------------------

WORD = re.compile(r"\S+")  # a word: a maximal run of non-whitespace characters


def tokenizer_free_scores(model, tokenizer, samples, batch_size: int,
                          max_word_tokens: int = 16) -> dict:
    """`tokenizer_free_items` summed over all answers: {'bits_per_byte',
    'next_word_agreement', 'bytes', 'tokens', 'words', 'decoded_words'}."""
    return text_scores_of(tokenizer_free_items(model, tokenizer, samples, batch_size,
                                               max_word_tokens))


def text_scores_of(items: pd.DataFrame) -> dict:
    """The tokenizer-free figures of a `tokenizer_free_items` frame, over all its answers."""
    sums = items[["bits", "bytes", "tokens", "words", "agree", "decoded_words"]].sum()
    return {"bits_per_byte": float(sums["bits"] / sums["bytes"]) if sums["bytes"] else None,
            "next_word_agreement": float(sums["agree"] / sums["words"]) if sums["words"]
            else None, **{key: int(sums[key]) for key in ("bytes", "tokens", "words",
                                                          "decoded_words")}}


@torch.inference_mode()
def tokenizer_free_items(model, tokenizer, samples, batch_size: int,
                         max_word_tokens: int = 16) -> pd.DataFrame:
    """One row per held-out answer (`item`: its prompt id): the answer's `bits` and
    `bytes`, its `tokens`, counted `words`, words the model agreed on (`agree`) and words
    that needed decoding (`decoded_words`). Summed over answers they give the bits per
    byte and next-word agreement of `model` on the teacher's answers in `samples` (a
    samples DataFrame: `messages`, `completion`, `finish_reason`): figures
    of text, not tokens, so they compare models whose tokenizers differ.

    Each model reads each sample with its own `tokenizer`: the prompt formatted by its
    chat template (`encode_chat`) and the completion text c tokenized alone (no special
    tokens), the two id lists concatenated. Encoding them apart keeps the prompt's end
    a token boundary for every tokenizer; no end-of-turn token is scored or counted.

    bits_per_byte = sum over samples of -log2 p(c's tokens | prompt) / sum of bytes(c),
    bytes(c) the UTF-8 length of c.

    next_word_agreement = agreeing words / counted words, over all samples. The words of
    c are its maximal runs of non-whitespace, w_k ending at character e_k (e_0 = 0);
    w_k counts when it is complete (followed by whitespace in c, or last in an answer
    that ended with a stop token rather than at the length limit). Its context is the
    prompt and c[:e_{k-1}]: the text up to the end of the previous word, so the
    whitespace before w_k is the model's to predict. The model agrees when its greedy
    continuation of the context, leading whitespace removed, reads w_k followed by
    whitespace or a stop token within `max_word_tokens` tokens (whatever tokens spell
    it). The context's ids are the model's tokens of c up to e_{k-1} where they end
    there, else its tokenization of c[:e_{k-1}]. One forward pass over prompt + c gives
    the greedy token after every prefix, and the greedy continuation follows c's tokens
    while it picks them, so most words are decided without decoding; the rest
    (`decoded_words`) get a short batched greedy decode.
    """
    stops = set(stop_token_ids(tokenizer, model.generation_config))
    names = samples["prompt_id"] if "prompt_id" in samples else samples.index
    rows = [(json.loads(m) if isinstance(m, str) else m, c, reason == "stop", str(name))
            for m, c, reason, name in zip(samples["messages"], samples["completion"],
                                          samples["finish_reason"], names) if c]
    rows.sort(key=lambda row: len(row[1]))  # batches of like length pad little
    sums = [{"item": name, "bits": 0.0, "bytes": 0, "tokens": 0, "words": 0, "agree": 0,
             "decoded_words": 0} for *_, name in rows]
    undecided = []  # (answer's index, context ids, greedy tokens known after it, word)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        encoded = [(encode_chat(tokenizer, m), tokenizer(c, add_special_tokens=False)
                    ["input_ids"]) for m, c, *_ in chunk]
        logits = right_padded_logits(model, [p + ids for p, ids in encoded])
        for row, ((prompt, ids), (_, text, stopped, _)) in enumerate(zip(encoded, chunk)):
            mine = sums[start + row]
            scored = logits[row, len(prompt) - 1:len(prompt) + len(ids)].float()
            targets = torch.tensor(ids, device=scored.device)[:, None]
            nll = scored[:-1].logsumexp(-1) - scored[:-1].gather(-1, targets).squeeze(-1)
            mine["bits"] += float(nll.sum()) / math.log(2)
            mine["bytes"] += len(text.encode("utf-8"))
            mine["tokens"] += len(ids)
            greedy = scored.argmax(-1).tolist()  # greedy[j]: after prompt + ids[:j]
            ends = _token_ends(tokenizer, ids, text)
            words = list(WORD.finditer(text))
            for k, word in enumerate(words):
                if word.end() == len(text) and not stopped:
                    continue  # maybe cut off by the length limit
                mine["words"] += 1
                end = words[k - 1].end() if k else 0
                if end in ends:
                    i = ends[end]
                    known = _known_greedy(greedy, ids, i, max_word_tokens)
                    context = prompt + ids[:i]
                else:
                    known = []
                    context = prompt + tokenizer(text[:end], add_special_tokens=False)[
                        "input_ids"]
                verdict = _word_verdict(tokenizer, known, word.group(), stops)
                if verdict is None and len(known) < max_word_tokens:
                    undecided.append((start + row, context, known, word.group()))
                    mine["decoded_words"] += 1
                else:
                    mine["agree"] += bool(verdict)
    steps = 4  # most words are decided within a few tokens: decode in rounds, not to the cap
    while undecided:
        still = []
        for start in range(0, len(undecided), batch_size):  # in order: long shared prefixes
            chunk = undecided[start:start + batch_size]
            more = generate(model, tokenizer, [c + known for _, c, known, _ in chunk],
                            min(steps, max(max_word_tokens - len(k) for *_, k, _ in chunk)))
            for (answer, context, known, word), out in zip(chunk, more):
                tokens = (known + out["completion_ids"])[:max_word_tokens]
                verdict = _word_verdict(tokenizer, tokens, word, stops)
                if verdict is None and len(tokens) < max_word_tokens:
                    still.append((answer, context, tokens, word))
                else:
                    sums[answer]["agree"] += bool(verdict)
        undecided, steps = still, 2 * steps
    return pd.DataFrame(sums, columns=["item", "bits", "bytes", "tokens", "words", "agree",
                                       "decoded_words"])


def _token_ends(tokenizer, ids: list[int], text: str) -> dict[int, int]:
    """{character offset e: i} wherever the first i tokens of `ids` decode to text[:e]."""
    ends = {}
    for i in range(len(ids) + 1):
        piece = tokenizer.decode(ids[:i], skip_special_tokens=True)
        if text.startswith(piece):
            ends[len(piece)] = i
    return ends


def _known_greedy(greedy: list[int], ids: list[int], i: int, limit: int) -> list[int]:
    """The first greedy tokens after prompt + ids[:i] that one forward pass tells: while
    greedy picks the next token of `ids` the continuation is `ids`, and the first token it
    picks otherwise ends what is known."""
    known = []
    for j in range(i, min(len(ids), i + limit - 1) + 1):
        known.append(greedy[j])
        if j == len(ids) or greedy[j] != ids[j]:
            break
    return known


def _word_verdict(tokenizer, tokens: list[int], word: str, stops: set[int]) -> bool | None:
    """Whether a continuation that starts with `tokens` gives `word` as its next word:
    True once its text, leading whitespace removed, reads `word` then whitespace or a stop
    token; False once it cannot any more; None while its tokens so far leave it open."""
    for m in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:m], skip_special_tokens=True).lstrip()
        if text.startswith(word) and text[len(word):len(word) + 1].isspace():
            return True
        if tokens[m - 1] in stops:
            return text == word
        if not word.startswith(text.rstrip("\ufffd")):  # U+FFFD: a character not yet whole
            return False
    return None


def summary_table(contenders: dict, folders: dict, fidelity: dict, prose: dict,
                  text_scores: dict, scores: dict, speed: dict, serving: dict | None = None):
    """One row per model, one column per figure: size and cost, fidelity under teacher
    forcing on the held-out answers and on held-out prose (with the perplexity there,
    exp of its mean next-token loss), the tokenizer-free figures (`text_scores`, from
    `tokenizer_free_scores`), answer scores, what the model is worth as the teacher's
    draft, the answers' generation speed (`speed`: the held-out answers' tokens/s, early
    stops included) and the fixed-length serving figures (`serving`, from
    `speed.speed_table`): what metrics.json holds. A model missing from `fidelity` and
    `prose` (another tokenizer than the teacher's: per-token figures are undefined) gets
    NaN there."""
    import pandas as pd

    from ..lm.models import count_parameters, folder_size
    from ..lm.speed import DRAFT_GAMMA, expected_accepted_tokens

    serving = serving or {}
    rows = {}
    for name, model in contenders.items():
        acceptance = fidelity.get(name, {}).get("acceptance", math.nan)
        rows[name] = {
            "parameters_m": count_parameters(model) / 1e6,
            "layers": getattr(model.config, "num_hidden_layers", math.nan),
            "size_mb": folder_size(folders[name]) / 2**20 if Path(folders[name]).is_dir()
            else None,
            # per-token figures exist for models of the teacher's vocabulary only
            "heldout_kl": fidelity.get(name, {}).get("kl", math.nan),
            "top1_agreement": fidelity.get(name, {}).get("top1_agreement", math.nan),
            "prose_kl": prose.get(name, {}).get("kl", math.nan),
            "prose_top1_agreement": prose.get(name, {}).get("top1_agreement", math.nan),
            "perplexity": math.exp(prose[name]["nll"]) if name in prose else math.nan,
            "bits_per_byte": text_scores[name]["bits_per_byte"],
            "next_word_agreement": text_scores[name]["next_word_agreement"],
            **scores[name],
            "draft_acceptance": acceptance,
            f"draft_tokens_per_step_gamma{DRAFT_GAMMA}": math.nan if math.isnan(acceptance)
            else expected_accepted_tokens(acceptance),
            "generation_tokens_per_second": speed[name],
            **serving.get(name, {}),
        }
    return pd.DataFrame(rows).T
