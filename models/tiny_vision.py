"""Tiny image models with random weights, built locally: no image model's weights ship on
PyPI, and nothing is downloaded. From a fixed seed, so every machine builds the same ones:

- a classifier: a transformers ViT (32x32 pixels, patches of 8, two layers) with CIFAR-10's
  ten labels (`generated://tiny-vit-classifier`);
- a captioner: a VisionEncoderDecoder, that ViT's encoder feeding a two-layer GPT-2 decoder
  with cross-attention, and tiny_diffusion's generated one-token-per-character tokenizer
  (`generated://tiny-vit-captioner`).

They exercise the real image-classification and image-to-text paths (file inputs, the image
processor, batched forward passes and generation); their answers mean nothing. Register a
real checkpoint folder with `file:///...` for real ones.
"""

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from models import tiny_diffusion
from models.weight_cache import build_once

# Changes whenever this file does, so a cached build made by other code is never reused.
VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
SEED = 0
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIDE = 32


def _vit() -> ViTConfig:
    return ViTConfig(
        image_size=SIDE,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )


def classifier() -> PreTrainedModel:
    config = _vit()
    config.id2label = dict(enumerate(LABELS))  # ten labels: ten outputs
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    return ViTForImageClassification(config)


def captioner() -> PreTrainedModel:
    tokens = tiny_diffusion.tokenizer()
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokens),
            n_positions=128,
            n_embd=32,
            n_layer=2,
            n_head=2,
            add_cross_attention=True,
            bos_token_id=tokens.bos_token_id,
            eos_token_id=tokens.eos_token_id,
        )
    )
    model = VisionEncoderDecoderModel(encoder=ViTModel(_vit()), decoder=decoder)
    model.config.decoder_start_token_id = tokens.bos_token_id
    model.config.pad_token_id = tokens.pad_token_id
    model.config.eos_token_id = tokens.eos_token_id
    model.generation_config.decoder_start_token_id = tokens.bos_token_id
    model.generation_config.pad_token_id = tokens.pad_token_id
    model.generation_config.eos_token_id = tokens.eos_token_id
    return model


def build(target: Path, make: Callable[[], PreTrainedModel]) -> Path:
    """Save the model made by `make`, its image processor (and tokenizer, for the captioner)
    into `target` unless it is there already."""

    def save(staging: Path) -> None:
        with torch.random.fork_rng(devices=[]):  # the seed must not leak into the caller's RNG
            torch.manual_seed(SEED)
            model = make()
        model.save_pretrained(staging)
        ViTImageProcessor(size={"height": SIDE, "width": SIDE}).save_pretrained(staging)
        if make is captioner:
            tiny_diffusion.tokenizer().save_pretrained(staging)

    return build_once(target, "preprocessor_config.json", save)


BUILDERS = {"tiny-vit-classifier": classifier, "tiny-vit-captioner": captioner}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in BUILDERS:
        sys.exit(f"usage: python -m models.tiny_vision {{{','.join(BUILDERS)}}} DIR")
    print(build(Path(sys.argv[2]), BUILDERS[sys.argv[1]]))
