"""ROUGE-L as a local `evaluate` metric, so evaluation needs no hub.

Load it by path: `evaluate.load("<this folder>")`. Scores come from Google's
`rouge_score` package (the reference implementation), with stemming.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """ROUGE-L F-measure: the longest common subsequence of words between a
prediction and a reference, as a harmonic mean of its precision and recall."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings.
    references: list of strings, one per prediction.
    use_stemmer: apply the Porter stemmer before matching (default True).
Returns:
    rougeL: mean F-measure over the pairs.
    rougeL_per_pair: the F-measure of each pair, in order.
"""

_CITATION = """Lin, Chin-Yew. ROUGE: A Package for Automatic Evaluation of Summaries. 2004."""


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure
                  for pred, ref in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0,
                "rougeL_per_pair": scores}
