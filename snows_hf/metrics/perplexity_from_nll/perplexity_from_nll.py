"""Perplexity from summed token negative log-likelihoods: exp(total NLL / total tokens)."""

import math

import datasets
import evaluate


class PerplexityFromNll(evaluate.Metric):
    """``compute(predictions=NLL summed per sequence, references=tokens scored per sequence)``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: summed NLL (nats) per sequence; references: scored tokens per sequence",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        tokens = sum(references)
        nll = sum(predictions) / tokens if tokens else float("nan")
        return {"perplexity": math.exp(nll), "nll_per_token": nll, "tokens": int(tokens)}
