"""Image classification with any transformers checkpoint folder (AutoModelForImageClassification
and its image processor): the batch's images (models/images.py) run in one forward pass, and
each gets its `top_k` labels with softmax scores."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from models.images import open_images


class ImageClassificationPredictor:
    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device

    def setup(self) -> None:
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.processor = AutoImageProcessor.from_pretrained(self.weights)  # type: ignore[no-untyped-call]
        self.model = (
            AutoModelForImageClassification.from_pretrained(self.weights, dtype=dtype)
            .to(self.device)
            .eval()
        )

    @torch.inference_mode()
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        images, positions, outputs = open_images(inputs)
        if images:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            logits = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits
            scores = torch.softmax(logits.float(), dim=-1).cpu()
            labels = self.model.config.id2label
            for i, row in zip(positions, scores, strict=True):
                top = torch.topk(row, min(inputs[i]["top_k"], len(row)))
                outputs[i] = [
                    {"label": labels[int(index)], "score": round(float(score), 6)}
                    for score, index in zip(top.values, top.indices, strict=True)
                ]
        return outputs
