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

