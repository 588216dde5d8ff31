"""Word error rate as a local `evaluate` metric, so evaluation needs no hub.

Load it by path: `evaluate.load("<this folder>")`. Counts come from `jiwer` (as the
hub's `wer` metric): substitutions, deletions and insertions over reference words,
pooled over the corpus, plus each pair's own rate.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = """WER = (substitutions + deletions + insertions) / reference words, over the
whole corpus (pairs weighted by their length), after the caller's normalisation."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of transcripts.
    references: list of reference transcripts, one per prediction (not empty).
Returns:
    wer: the corpus WER.
    wer_per_pair: each pair's WER, in order.
"""

_CITATION = """Morris, Maier and Green. From WER and RIL to MER and WIL. 2004."""


class WordErrorRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"wer": float("nan"), "wer_per_pair": []}
        per_pair = [jiwer.wer(ref, pred or "") if ref.strip() else float(bool(pred.strip()))
                    for pred, ref in zip(predictions, references)]
        pairs = [(ref, pred or "") for pred, ref in zip(predictions, references) if ref.strip()]
        output = jiwer.process_words([r for r, _ in pairs], [p for _, p in pairs])
        errors = output.substitutions + output.deletions + output.insertions
        words = output.substitutions + output.deletions + output.hits
        return {"wer": errors / max(words, 1), "wer_per_pair": per_pair}
