"""A tiny, randomly initialised Stable Diffusion pipeline, built locally: `python -m
models.tiny_diffusion DIR`.

No real diffusion weights are reachable here, so this stands in for them. Its pictures are
random noise: it exercises the real loading and running code of the `text-to-image` type
(diffusers UNet, VAE, CLIP text encoder and tokenizer, scheduler) at a size that builds in
seconds and draws a 64x64 image in a fraction of one, on a CPU. A fixed seed makes every
machine build the same weights.
"""

import hashlib
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from models.weight_cache import build_once

# Changes whenever this file does, so a cached build made by other code is never reused.
VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
SEED = 0
MAX_PROMPT_TOKENS = 77  # as CLIP's: longer prompts are truncated
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with no merges: one token per character (each byte's symbol, alone
    or ending a word), so the vocabulary is generated here instead of downloaded."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = [*alphabet, *(f"{char}</w>" for char in alphabet), *SPECIAL]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_PROMPT_TOKENS)


def pipeline() -> StableDiffusionPipeline:
    """The untrained pipeline. Its VAE scales by 8 like Stable Diffusion's: 64x64 pixels are
    8x8 latents."""
    tokens = tokenizer()
    with torch.random.fork_rng(devices=[]):  # the seed must not leak into the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokens),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_PROMPT_TOKENS,
                bos_token_id=tokens.bos_token_id,
                eos_token_id=tokens.eos_token_id,
                pad_token_id=tokens.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            sample_size=64,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=4,
        )
    scheduler = DDIMScheduler(  # Stable Diffusion 1.x's schedule
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokens,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build(target: Path) -> Path:
    """Save the pipeline (safetensors) into `target` unless it is there already; returns it.

    Built beside the target and renamed into place, so concurrent builders never see half a
    folder: the first rename wins and the others' copies are dropped.
    """
    return build_once(
        target, "model_index.json", lambda staging: pipeline().save_pretrained(staging)
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m models.tiny_diffusion DIR")
    print(build(Path(sys.argv[1])))
