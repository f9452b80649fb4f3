"""Top-k accuracy: the share of samples whose label is among the k highest scores."""

import datasets
import evaluate
import numpy as np


class TopKAccuracy(evaluate.Metric):
    """``compute(predictions=scores (n, classes), references=labels (n,), k=1)``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: class scores per sample; references: the true class index",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=1):
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return {f"top{k}_accuracy": float((top == labels[:, None]).any(axis=1).mean())}
