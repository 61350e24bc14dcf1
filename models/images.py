"""Reading the image file inputs of the vision types: each input's `image` (a local file, as the
worker hands file inputs over) decoded with Pillow, as RGB. A file Pillow cannot read fails
only its own prediction."""

from typing import Any

from PIL import Image, UnidentifiedImageError

from models.base import PredictionError


def open_images(inputs: list[dict[str, Any]]) -> tuple[list[Image.Image], list[int], list[Any]]:
    """(the images that decoded, their positions in `inputs`, one slot per input: None, or
    the PredictionError of an input whose image did not decode)."""
    images: list[Image.Image] = []
    positions: list[int] = []
    outputs: list[Any] = [None] * len(inputs)
    for i, item in enumerate(inputs):
        try:
            with Image.open(item["image"]) as image:
                images.append(image.convert("RGB"))
            positions.append(i)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            outputs[i] = PredictionError(f"input.image is not an image Quern can read: {exc}")
    return images, positions, outputs
