"""Text to image through any diffusers pipeline folder (Stable Diffusion and its kin): PNG files.

Inputs that share a size, a number of steps and a guidance scale run as one pipeline call.
Every image gets its own generator, seeded from its input's seed (image k: seed + k), so a
seed draws the same starting noise alone or in any batch. The image is then the same up to
rounding: kernels may round differently at another batch size (a pixel value off by one).
"""

import io
import secrets
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from models.base import FileOutput, PredictionError, stop_requested

MIN_SIDE, MAX_SIDE = 64, 2048  # pixels; the version's schema usually allows less
MAX_STEPS = 500
MAX_OUTPUTS = 4
# For inputs a version's schema leaves out. No size: the pipeline's own (its UNet's sample size).
DEFAULTS: dict[str, Any] = {
    "negative_prompt": None,
    "width": None,
    "height": None,
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "num_outputs": 1,
    "seed": None,
}


def refusal(item: dict[str, Any]) -> str | None:
    """Why the pipeline cannot take this input, for schemas looser than the built-in one."""
    for side in ("width", "height"):
        value = item[side]
        if value is not None and (value % 8 or not MIN_SIDE <= value <= MAX_SIDE):
            return f"{side} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, not {value}"
    if not 1 <= item["num_inference_steps"] <= MAX_STEPS:
        return f"num_inference_steps must be between 1 and {MAX_STEPS}"
    if not 1 <= item["num_outputs"] <= MAX_OUTPUTS:
        return f"num_outputs must be between 1 and {MAX_OUTPUTS}"
    return None


def call_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """Inputs with equal keys can share one pipeline call."""
    return (item["width"], item["height"], item["num_inference_steps"], item["guidance_scale"])


def png(image: Any) -> FileOutput:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return FileOutput(buffer.getvalue(), "image/png")


class TextToImagePredictor:
    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device

    def setup(self) -> None:
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" in worker logs
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        pipeline = DiffusionPipeline.from_pretrained(self.weights, dtype=dtype)
        self.pipeline = pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        inputs = [DEFAULTS | item for item in inputs]
        outputs: list[Any] = [None] * len(inputs)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, item in enumerate(inputs):
            reason = refusal(item)
            if reason is None:
                groups.setdefault(call_key(item), []).append(index)
            else:
                outputs[index] = PredictionError(reason)
        for indices in groups.values():
            for index, images in zip(indices, self._generate(inputs, indices), strict=True):
                outputs[index] = images
        return outputs

    def _generate(self, inputs: list[dict[str, Any]], indices: list[int]) -> list[Any]:
        """One pipeline call for the inputs at `indices` (equal `call_key`): per input, its
        PNG files, or a PredictionError if the worker asked to stop it meanwhile."""
        prompts, negatives, generators, owners = [], [], [], []
        for index in indices:
            item = inputs[index]
            seed = secrets.randbelow(2**31) if item["seed"] is None else item["seed"]
            for k in range(item["num_outputs"]):
                prompts.append(item["prompt"])
                negatives.append(item["negative_prompt"] or "")  # "" is the pipeline's default
                # On the CPU whatever the device: the same seed draws the same noise everywhere.
                generators.append(torch.Generator("cpu").manual_seed(seed + k))
                owners.append(index)
        stopped: set[int] = set()

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: Any) -> dict[str, Any]:
            flags = stop_requested()
            if flags is not None:
                stopped.update(i for i in indices if flags[i])
                # One batch of latents: it can only stop as a whole, once nobody wants it.
                if stopped.issuperset(indices):
                    pipeline._interrupt = True
            return {}

        first = inputs[indices[0]]
        images = self.pipeline(
            prompt=prompts,
            negative_prompt=negatives,
            width=first["width"],
            height=first["height"],
            num_inference_steps=first["num_inference_steps"],
            guidance_scale=first["guidance_scale"],
            generator=generators,
            callback_on_step_end=on_step_end,
        ).images
        return [
            PredictionError("Stopped before the last step")
            if index in stopped
            else [png(image) for image, owner in zip(images, owners, strict=True) if owner == index]
            for index in indices
        ]
