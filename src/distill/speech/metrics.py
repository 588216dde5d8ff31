"""WER after Whisper's English normalisation, through the shipped `evaluate` module."""

from __future__ import annotations

import functools

from ..lm.data import builtin_path


@functools.lru_cache(maxsize=1)
def normalizer():
    """Whisper's English text normaliser (lower case, no punctuation, spelled-out numbers
    as digits: 'twenty three' and '23' read the same). Without Whisper's British-to-
    American spelling table, which is not shipped offline."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


@functools.lru_cache(maxsize=1)
def _wer_metric():
    import evaluate

    return evaluate.load(str(builtin_path("wer")))


def normalize(text: str) -> str:
    return normalizer()(text or "")


def word_error_rate(predictions: list[str], references: list[str]) -> tuple[float, list[float]]:
    """(corpus WER, per-pair WER), both sides normalised the same way."""
    result = _wer_metric().compute(predictions=[normalize(p) for p in predictions],
                                   references=[normalize(r) for r in references])
    return result["wer"], result["wer_per_pair"]


def wer_items(predictions: list[str], references: list[str], items: list[str]):
    """Per pair (`item`): its WER and its reference's `words` (normalised), the weight
    under which per-pair WERs average to the corpus WER; pairs with an empty reference
    weigh 0, as the corpus WER leaves them out."""
    import pandas as pd

    _, per_pair = word_error_rate(predictions, references)
    return pd.DataFrame({"item": [str(i) for i in items], "wer": per_pair,
                         "words": [len(normalize(r).split()) for r in references]})


def clip_items(name: str, model, heldout, texts: list[str], teacher_texts: list[str],
               batch_size: int, states=None):
    """The items-table rows (distill.evaluation.intervals) of one model on the held-out
    clips: per clip, KL and top-1 agreement under teacher forcing (weighted by the
    transcript's tokens), WER against the teacher's transcript and, where the clip has
    its true text, against that (weighted by the reference's words)."""
    from ..evaluation.intervals import long_items
    from .batches import teacher_forced_items

    per_clip = teacher_forced_items(model, heldout, batch_size, states).merge(
        wer_items(texts, teacher_texts, heldout["id"]).rename(
            columns={"wer": "wer_vs_teacher", "words": "teacher_words"}), on="item")
    figures = {"heldout_kl": ("heldout_kl", "tokens"),
               "top1_agreement": ("top1_agreement", "tokens"),
               "wer_vs_teacher": ("wer_vs_teacher", "teacher_words")}
    has_text = heldout["text"].notna().to_numpy()
    if has_text.any():
        truth = wer_items([t for t, keep in zip(texts, has_text) if keep],
                          list(heldout["text"][has_text]), heldout["id"][has_text])
        per_clip = per_clip.merge(truth, on="item", how="left").fillna({"words": 0})
        figures["wer"] = ("wer", "words")
    return long_items(per_clip, figures, name)
