"""Zero-shot text classification on a sentence-embeddings model (all-MiniLM-L6-v2): the text
and each candidate label are embedded, and the labels scored by cosine similarity, as a
softmax over similarity / TEMPERATURE (how sentence-transformers' zero-shot examples score).

Real weights, real scores: "I loved this film" is nearer `positive` than `negative`. The labels
are the caller's, per input, so one model serves every label set; a batch embeds its texts and
all their distinct labels in one pass.
"""

from pathlib import Path
from typing import Any

import numpy
import torch

from models.base import Metered
from models.embeddings import EmbeddingsPredictor

TEMPERATURE = 0.05


class TextClassificationPredictor:
    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.encoder = EmbeddingsPredictor(weights, device)

    def setup(self) -> None:
        self.encoder.setup()
        self.model = self.encoder.model  # what the worker's model cache measures

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        labels = list(dict.fromkeys(label for item in inputs for label in item["labels"]))
        texts = [{"text": item["text"]} for item in inputs]
        embedded = self.encoder.predict_batch(texts + [{"text": label} for label in labels])
        vectors = torch.from_numpy(numpy.stack([row.output for row in embedded]))
        text_vectors, label_vectors = vectors[: len(inputs)], vectors[len(inputs) :]
        position = {label: i for i, label in enumerate(labels)}
        outputs = []
        for item, vector, measured in zip(inputs, text_vectors, embedded, strict=False):
            mine = label_vectors[[position[label] for label in item["labels"]]]
            scores = torch.softmax(mine @ vector / TEMPERATURE, dim=0).tolist()
            ranked = sorted(zip(item["labels"], scores, strict=True), key=lambda p: -p[1])
            top = [{"label": label, "score": round(score, 6)} for label, score in ranked]
            outputs.append(Metered(top[: item["top_k"]], measured.metrics))
        return outputs
