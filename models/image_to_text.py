"""Image to text (captions, OCR) with any transformers VisionEncoderDecoder folder (its image
processor and tokenizer beside it): the batch's images (models/images.py) are encoded together
and decoded greedily, up to the longest `max_new_tokens` asked; each caption is cut to its own
limit. Deterministic: the same image gives the same text."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

from models.base import Metered
from models.images import open_images


class ImageToTextPredictor:
    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device

    def setup(self) -> None:
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.processor = AutoImageProcessor.from_pretrained(self.weights)  # type: ignore[no-untyped-call]
        self.tokenizer = AutoTokenizer.from_pretrained(self.weights)
        # Any: transformers' stubs of this class's `to` and `generate` do not type-check.
        model: Any = VisionEncoderDecoderModel.from_pretrained(self.weights, dtype=dtype)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        images, positions, outputs = open_images(inputs)
        if not images:
            return outputs
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        longest = max(inputs[i]["max_new_tokens"] for i in positions)
        generated = self.model.generate(
            pixel_values=pixels.to(self.device, self.model.dtype),
            max_new_tokens=longest,
            do_sample=False,
        )
        for i, row in zip(positions, generated[:, 1:].tolist(), strict=True):  # after the start
            tokens = row[: inputs[i]["max_new_tokens"]]
            if self.tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(self.tokenizer.eos_token_id)]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            outputs[i] = Metered(text, {"output_token_count": len(tokens)})
        return outputs
