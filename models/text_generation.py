"""Causal language models (SmolLM2 and friends) through transformers, from a folder or a GGUF file.

A GGUF file is dequantised once (~30 s on 2 cores) and the result cached as safetensors,
so every later load in any process takes well under a second.
"""

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

from models.base import PredictionError, pick_device, stop_requested
from models.weights import cache_dir

log = logging.getLogger(__name__)

# Attention memory grows with the square of the length: bound the prompt, not just its characters.
MAX_PROMPT_TOKENS = 2048


def converted_gguf(gguf_file: Path) -> Path:
    """The folder holding `gguf_file` dequantised to safetensors, built on first use."""
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir() / f"{gguf_file.stem}-{key.hexdigest()[:16]}"
    if (target / "config.json").exists():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf_file.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The tensors are plain dequantised floats now; only the quantizer marker forbids saving.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.__dict__.pop("quantization_config", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent or killed loader never sees half a folder.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def generation_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """Inputs with equal keys can share one `generate` call."""
    return (item["max_new_tokens"], item["temperature"], item["top_p"], item.get("seed"))


class TextGenerationPredictor:
    def __init__(self, weights: Path) -> None:
        self.weights = weights
        self.device = "cpu"

    def setup(self) -> None:
        folder = converted_gguf(self.weights) if self.weights.suffix == ".gguf" else self.weights
        self.device = pick_device()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        self.model = model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        outputs: list[Any] = [None] * len(inputs)
        groups: dict[tuple[Any, ...], list[int]] = {}
        prompts = [self._chat_prompt(item["prompt"]) for item in inputs]
        for index, item in enumerate(inputs):
            length = len(self.tokenizer(prompts[index], add_special_tokens=False)["input_ids"])
            if length > MAX_PROMPT_TOKENS:
                outputs[index] = PredictionError(
                    f"The prompt is {length} tokens long; the limit is {MAX_PROMPT_TOKENS}"
                )
            else:
                groups.setdefault(generation_key(item), []).append(index)
        for indices in groups.values():
            stop = StopFlagged(indices)
            texts = self._generate([prompts[i] for i in indices], inputs[indices[0]], stop)
            for i, text in zip(indices, texts, strict=True):
                outputs[i] = text
        return outputs

    def _chat_prompt(self, prompt: str) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        )

    @torch.inference_mode()
    def _generate(
        self, prompts: list[str], first: dict[str, Any], stop: StoppingCriteria
    ) -> list[str]:
        """One forward pass for prompts that share generation parameters (those of `first`)."""
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        with torch.random.fork_rng(devices=[]):  # a seed must not leak into later predictions
            return self._sample(encoded, first, stop)

    def _sample(self, encoded: Any, first: dict[str, Any], stop: StoppingCriteria) -> list[str]:
        sampling = first["temperature"] > 0
        if first.get("seed") is not None:
            torch.manual_seed(first["seed"])
        generated = self.model.generate(
            **encoded,
            max_new_tokens=first["max_new_tokens"],
            do_sample=sampling,
            temperature=first["temperature"] if sampling else None,
            top_p=first["top_p"] if sampling else None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=[stop],
        )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [str(text) for text in texts]


class StopFlagged(StoppingCriteria):
    """Between tokens: finish the rows the worker flagged (canceled, past their deadline).
    The others go on; when every row is finished, `generate` returns."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        flags = stop_requested()
        rows = [False] * len(self.indices) if flags is None else [flags[i] for i in self.indices]
        return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
