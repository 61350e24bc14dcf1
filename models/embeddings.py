"""Sentence embeddings (all-MiniLM-L6-v2 and other BERT-style encoders): mean pooling + L2 norm."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from models.base import Metered

MAX_TOKENS = (
    256  # the model's max_seq_length; longer text is truncated, as sentence-transformers does
)


class EmbeddingsPredictor:
    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device

    def setup(self) -> None:
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.weights)
        self.model = AutoModel.from_pretrained(self.weights, dtype=dtype).to(self.device).eval()

    @torch.inference_mode()
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        encoded = self.tokenizer(
            [item["text"] for item in inputs],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        ).to(self.device)
        token_embeddings = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(token_embeddings.dtype)
        pooled = (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        normalized = torch.nn.functional.normalize(pooled, p=2, dim=1)
        # The tokens each text was embedded from (its special tokens included; a text cut at
        # MAX_TOKENS counts MAX_TOKENS): what OpenAI's embeddings `usage` reports.
        counts = encoded["attention_mask"].sum(dim=1).tolist()
        # float32 rows as numpy arrays: the worker writes them as JSON in C, each value in its
        # shortest exact float32 form (about 9 digits, where a Python float takes 17).
        rows = normalized.float().cpu().numpy()
        return [
            Metered(row, {"input_token_count": int(count)})
            for row, count in zip(rows, counts, strict=True)
        ]
