"""Causal language models (SmolLM2 and friends) through transformers, from a folder or a GGUF file.

A GGUF file is dequantised once (~30 s on 2 cores) and the result cached as safetensors,
so every later load in any process takes well under a second.

An input is a `prompt` (one user message) or a chat's `messages`, either way rendered with the
tokenizer's own chat template. `stop` sequences end a row where one first appears (the output
ends before it). Each output comes with Replicate's `input_token_count` (the rendered prompt's
tokens) and `output_token_count` (the tokens generated for it: up to the end-of-sequence token,
which is not counted, or through the token that completed a stop sequence).
"""

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from models.base import Metered, PredictionError, emit_outputs, stop_requested
from models.weight_cache import build_once, cache_dir

log = logging.getLogger(__name__)

# Attention memory grows with the square of the length: bound the prompt, not just its characters.
MAX_PROMPT_TOKENS = 2048


def converted_gguf(gguf_file: Path) -> Path:
    """The folder holding `gguf_file` dequantised to safetensors, built on first use."""
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir() / f"{gguf_file.stem}-{key.hexdigest()[:16]}"

    def convert(staging: Path) -> None:
        log.info("converting %s to safetensors in %s (once)", gguf_file.name, target)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        # The tensors are plain dequantised floats now; only the quantizer marker forbids saving.
        model.hf_quantizer = None  # type: ignore[assignment]
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(target, "config.json", convert)


def generation_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """Inputs with equal keys can share one `generate` call."""
    return (item["max_new_tokens"], item["temperature"], item["top_p"], item.get("seed"))


class TextGenerationPredictor:
    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device

    def setup(self) -> None:
        folder = converted_gguf(self.weights) if self.weights.suffix == ".gguf" else self.weights
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        self.model = model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        ends = [self.tokenizer.pad_token_id, *(eos if isinstance(eos, list) else [eos])]
        self.row_ends = {int(token) for token in ends if token is not None}

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        outputs: list[Any] = [None] * len(inputs)
        lengths = [0] * len(inputs)
        groups: dict[tuple[Any, ...], list[int]] = {}
        prompts = [self.chat_prompt(item) for item in inputs]
        for index, item in enumerate(inputs):
            length = len(self.tokenizer(prompts[index], add_special_tokens=False)["input_ids"])
            lengths[index] = length
            if length > MAX_PROMPT_TOKENS:
                outputs[index] = PredictionError(prompt_too_long(length))
            else:
                groups.setdefault(generation_key(item), []).append(index)
        for indices in groups.values():
            generated = self._generate([prompts[i] for i in indices], inputs, indices)
            for i, (text, count) in zip(indices, generated, strict=True):
                metrics = {"input_token_count": lengths[i], "output_token_count": count}
                outputs[i] = Metered(text, metrics)
        return outputs

    def chat_prompt(self, item: dict[str, Any]) -> str:
        messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
        return str(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )

    @torch.inference_mode()
    def _generate(
        self, prompts: list[str], inputs: list[dict[str, Any]], indices: list[int]
    ) -> list[tuple[str, int]]:
        """One forward pass for prompts that share generation parameters (those of the first);
        `indices` are their positions in the batch, to stop and stream them. Each row's text
        and how many tokens it generated."""
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        stops = [list(inputs[i].get("stop") or ()) for i in indices]
        with torch.random.fork_rng(devices=[]):  # a seed must not leak into later predictions
            return self._sample(encoded, inputs[indices[0]], indices, stops)

    def _sample(
        self, encoded: Any, first: dict[str, Any], indices: list[int], stops: list[list[str]]
    ) -> list[tuple[str, int]]:
        streamer = RowStreamer(self.decode, indices, self.row_ends, stops)
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
            stopping_criteria=[StopFlagged(indices, streamer.stopped)],
            streamer=streamer,
        )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        texts = [
            streamer.final(row, self.decode(tokens))
            for row, tokens in enumerate(new_tokens.tolist())
        ]
        streamer.finish(texts)
        return list(zip(texts, streamer.counts(), strict=True))

    def decode(self, tokens: list[int]) -> str:
        """A row's new tokens as text: the one decoding for its output and for its stream."""
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


def prompt_too_long(length: int) -> str:
    """The error of a prompt over MAX_PROMPT_TOKENS (the API's OpenAI routes recognise it)."""
    return f"The prompt is {length} tokens long; the limit is {MAX_PROMPT_TOKENS}"


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the first of `stops` to appear in `text` begins, if one does."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: list[str]) -> str:
    at = first_stop(text, stops)
    return text if at is None else text[:at]


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could begin a stop sequence, so must not be
    streamed until the next tokens tell."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class StopFlagged(StoppingCriteria):
    """Between tokens: finish the rows the worker flagged (canceled, past their deadline) and
    those that reached a stop sequence (`stopped`, which the streamer sets). The others go
    on; when every row is finished, `generate` returns."""

    def __init__(self, indices: list[int], stopped: list[bool] | None = None) -> None:
        self.indices = indices
        self.stopped = stopped or [False] * len(indices)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        flags = stop_requested()
        rows = [
            self.stopped[row] or (flags is not None and flags[i])
            for row, i in enumerate(self.indices)
        ]
        return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class RowText:
    """One row's generated text as its tokens come: what may be streamed so far, and whether it
    is done. Each token decodes the row's new tokens so far exactly as its output will be
    decoded, and `add` answers what was added since the last chunk. Text ending in U+FFFD (a
    character whose bytes are not all there yet) waits for the next token; so does a decoding
    that would rewrite sent text (it cannot be taken back). With stop sequences, text that
    could be the start of one waits too, and a row whose text holds one is done (`stopped`): its
    text ends before the stop. `rest` gives what the final text adds to the chunks, so a row's
    chunks concatenated equal its output. `tokens` are the ones it generated (its end token not
    included)."""

    def __init__(
        self, decode: Callable[[list[int]], str], ends: set[int], stops: list[str] | None = None
    ) -> None:
        self.decode = decode
        self.ends = ends  # token ids that end a row
        self.stops = stops or []
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False
        self.stopped = False  # reached a stop sequence
        self.cut = ""  # a stopped row's text: up to the stop

    def add(self, token: int) -> str:
        """The new chunk to stream after `token` ("" if none); a finished row ignores it."""
        if self.done or token in self.ends:
            self.done = True
            return ""
        self.tokens.append(token)
        text = self.decode(self.tokens)
        if self.stops:
            at = first_stop(text, self.stops)
            if at is not None:
                text = self.cut = text[:at]
                self.done = self.stopped = True
            else:
                text = text[: len(text) - held_back(text, self.stops)]
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        chunk, self.sent = text[len(self.sent) :], text
        return chunk

    def final(self, text: str | None = None) -> str:
        """The output, from `text` (the new tokens decoded; by default its own): for a stopped
        row, its text up to the stop sequence that ended it (the first to be complete, not the
        first in a text that ran on a token while the row was being stopped)."""
        if self.stopped:
            return self.cut
        return cut_at_stop(self.decode(self.tokens) if text is None else text, self.stops)

    def rest(self, text: str) -> str:
        """What the final `text` adds to the chunks sent."""
        if not text.startswith(self.sent):
            log.warning("streamed text of a row is not a prefix of its output")
            return ""
        return text[len(self.sent) :]


class RowStreamer(BaseStreamer):
    """Streams every row's text while the rows generate as one batch (TextStreamer takes one).

    `generate` calls `put` with the prompt ids, then with each step's next token of every row,
    which its `RowText` turns into the chunk to emit; a row that finished (end of sequence, or
    stopped) only gets pad tokens, which are ignored. `stopped` asks `generate` to finish the
    rows that reached a stop sequence. `finish` emits the rest of each final text. `counts` are
    the tokens each row generated (its end-of-sequence token not included).
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        indices: list[int],
        finished: set[int],
        stops: list[list[str]] | None = None,
    ) -> None:
        self.indices = indices  # row in this `generate` call -> input's index in the batch
        self.rows = [
            RowText(decode, finished, row_stops) for row_stops in stops or [[]] * len(indices)
        ]
        self.stopped = [False] * len(indices)  # shared with StopFlagged
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the prompt ids: not output
            self.prompt_seen = True
            return
        chunks: dict[int, str] = {}
        for row, token in enumerate(value.tolist()):
            if chunk := self.rows[row].add(token):
                chunks[self.indices[row]] = chunk
            self.stopped[row] = self.rows[row].stopped
        emit_outputs(chunks)

    def end(self) -> None:
        """Nothing: `finish` flushes, with the texts that become the outputs."""

    def finish(self, texts: list[str]) -> None:
        chunks: dict[int, str] = {}
        for row, text in enumerate(texts):
            if chunk := self.rows[row].rest(text):
                chunks[self.indices[row]] = chunk
        emit_outputs(chunks)

    def final(self, row: int, text: str) -> str:
        """The output of `row`, whose new tokens decode to `text` (RowText.final)."""
        return self.rows[row].final(text)

    def counts(self) -> list[int]:
        return [len(row.tokens) for row in self.rows]
