"""Step-level batching for a causal LM: sequences join and leave a running batch between tokens.

Why not `transformers`' own ContinuousBatchingManager (`generate_batch`)? It runs on the CPU
here, but greedy or sampled decoding and the seed are fixed per manager, not per request; an
error in a step fails every request of that step; and it owns its loop and thread, so the
worker's hooks (cancel flags, streaming, the compute lock) could not run between its steps.
This is the plain way instead, as TGI does it: the running rows share one left-padded
`DynamicCache`; newcomers are prefilled on their own (their first token is their time to first
token) and their cache is padded and concatenated to the running one; a row that ends is
dropped from it, and padding no row needs any more is cut off. Each step is one forward pass
of one token per row, with its own position and attention mask, so every row computes what
`generate` would compute for it alone. Each row samples with its own temperature, top-p and
seed.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from models.base import PredictionError, is_out_of_memory
from models.text_generation import MAX_PROMPT_TOKENS, RowText, prompt_too_long

T = TypeVar("T")


@dataclass(eq=False)
class Row:
    """One input being generated: its prompt, its sampling, its text so far."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    generator: torch.Generator | None
    text: RowText
    steps: int = 0  # tokens sampled (its end token included)
    pending: str = ""  # text to stream that was not taken yet

    @property
    def done(self) -> bool:
        return self.text.done or self.steps >= self.max_new_tokens

    def take(self) -> str:
        """The text added since the last call, to stream."""
        chunk, self.pending = self.pending, ""
        return chunk

    def close(self) -> None:
        """Done (or stopped): what the final text adds to the chunks joins the pending text."""
        self.pending += self.text.rest(self.text.final())

    def output(self) -> tuple[str, int]:
        """The final text (ending before a stop sequence) and the tokens generated."""
        return self.text.final(), len(self.text.tokens)

    def _add(self, token: int) -> None:
        self.steps += 1
        self.pending += self.text.add(token)


@dataclass(eq=False)
class StepBatch:
    """The running rows of one model and their shared cache. Not thread-safe: one engine
    thread calls it."""

    model: Any
    rows: list[Row] = field(default_factory=list)
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None  # [rows, cached tokens]: 0 for left padding
    positions: torch.Tensor | None = None  # [rows]: the next token's position
    last: torch.Tensor | None = None  # [rows]: the last token, the next step's input

    def admit(self, rows: list[Row]) -> dict[Row, BaseException]:
        """Prefill `rows` and add them to the batch, each with its first token. A group that
        raises is split in halves until the culprit is alone: the failures are returned, the
        others join."""
        return isolating(rows, self._prefill_and_join)

    def step(self) -> dict[Row, BaseException]:
        """One token for every running row. A step that raises anything but out of memory
        (which is the caller's to handle: admit fewer) is run again row by row: the rows that
        still fail are removed and returned."""
        if not self.rows:
            return {}
        try:
            self._step()
            return {}
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
        alone = [self._take([i]) for i in range(len(self.rows))]
        failed: dict[Row, BaseException] = {}
        self._become(StepBatch(self.model))
        for single in alone:
            try:
                single._step()
                self._join(single)
            except Exception as exc:
                failed[single.rows[0]] = exc
        return failed

    def remove(self, rows: Sequence[Row]) -> None:
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) < len(self.rows):
            self._become(self._take(keep))

    # --- the model --------------------------------------------------------------------------

    @torch.inference_mode()
    def _prefill_and_join(self, rows: list[Row]) -> None:
        width = max(len(row.prompt) for row in rows)
        ids = torch.tensor([[0] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.model.device
        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        tokens = sample(logits, rows)
        joining = StepBatch(
            self.model, list(rows), cache, mask.to(device), positions[:, -1].to(device) + 1
        )
        joining.last = torch.tensor(tokens, device=device)
        self._join(joining)
        for row, token in zip(rows, tokens, strict=True):
            row._add(token)

    @torch.inference_mode()
    def _step(self) -> None:
        assert self.cache is not None and self.mask is not None
        assert self.positions is not None and self.last is not None
        mask = F.pad(self.mask, (0, 1), value=1)
        # A step that raises may have grown some layers: each is put back as it was.
        before = kv(self.cache)
        try:
            logits = self.model(
                input_ids=self.last[:, None],
                attention_mask=mask,
                position_ids=self.positions[:, None],
                past_key_values=self.cache,
                use_cache=True,
            ).logits[:, -1]
            tokens = sample(logits, self.rows)
        except BaseException:
            for layer, (keys, values) in zip(layers(self.cache), before, strict=True):
                layer.keys, layer.values = keys, values
            raise
        self.mask, self.positions = mask, self.positions + 1
        self.last = torch.tensor(tokens, device=self.last.device)
        for row, token in zip(self.rows, tokens, strict=True):
            row._add(token)

    # --- the shared cache -------------------------------------------------------------------

    def _join(self, other: "StepBatch") -> None:
        """Add `other`'s rows: both caches left-padded to one length and concatenated."""
        if not self.rows:
            self._become(other)
            return
        assert self.cache is not None and self.mask is not None and other.mask is not None
        assert other.cache is not None
        width = max(self.mask.shape[1], other.mask.shape[1])

        def padded(tensor: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = width - tensor.shape[-dim_from_end]
            return F.pad(tensor, (0, 0) * (dim_from_end - 1) + (missing, 0))

        joined = [
            (torch.cat([padded(k, 2), padded(k2, 2)]), torch.cat([padded(v, 2), padded(v2, 2)]))
            for (k, v), (k2, v2) in zip(kv(self.cache), kv(other.cache), strict=True)
        ]
        self._become(
            StepBatch(
                self.model,
                self.rows + other.rows,
                DynamicCache(ddp_cache_data=joined),
                torch.cat([padded(self.mask, 1), padded(other.mask, 1)]),
                torch.cat([_known(self.positions), _known(other.positions)]),
                torch.cat([_known(self.last), _known(other.last)]),
            )
        )

    def _take(self, indices: list[int]) -> "StepBatch":
        """A batch of the rows at `indices`, without the padding none of them needs."""
        if not indices:
            return StepBatch(self.model)
        assert self.cache is not None and self.mask is not None
        at = torch.tensor(indices, device=self.mask.device)
        mask = self.mask[at]
        start = int((mask.sum(0) > 0).int().argmax())  # the first column a row uses
        kept = [(keys[at, :, start:], values[at, :, start:]) for keys, values in kv(self.cache)]
        return StepBatch(
            self.model,
            [self.rows[i] for i in indices],
            DynamicCache(ddp_cache_data=kept),
            mask[:, start:],
            _known(self.positions)[at],
            _known(self.last)[at],
        )

    def _become(self, other: "StepBatch") -> None:
        self.rows, self.cache, self.mask = other.rows, other.cache, other.mask
        self.positions, self.last = other.positions, other.last


def layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers: full attention only (a sliding window or a linear-attention state
    cannot be padded and concatenated this way)."""
    found = list(cache.layers)
    if not all(type(layer) is DynamicLayer for layer in found):
        raise TypeError("continuous batching needs a model whose layers all attend in full")
    return found  # type: ignore[return-value]


def kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values, [rows, heads, tokens, head size]."""
    return [(_known(layer.keys), _known(layer.values)) for layer in layers(cache)]


def _known(tensor: torch.Tensor | None) -> torch.Tensor:
    assert tensor is not None
    return tensor


def sample(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """Each row's next token: greedy at temperature 0, else sampled with its temperature and
    top-p, from its own generator when it has a seed."""
    greedy = logits.argmax(-1).tolist()
    tokens = []
    for i, row in enumerate(rows):
        if row.temperature <= 0:
            tokens.append(int(greedy[i]))
            continue
        probs = torch.softmax(logits[i].float() / row.temperature, -1)
        if row.top_p < 1:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > row.top_p  # the best one always stays
            probs = probs.scatter(0, order, ordered.masked_fill(outside, 0))
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens


def new_row(predictor: Any, item: dict[str, Any]) -> Row:
    """A row for a validated input of a TextGenerationPredictor; a PredictionError if its
    prompt is too long."""
    prompt = predictor.tokenizer(predictor.chat_prompt(item), add_special_tokens=False)
    ids = list(prompt["input_ids"])
    if len(ids) > MAX_PROMPT_TOKENS:
        raise PredictionError(prompt_too_long(len(ids)))
    generator = None
    if item.get("seed") is not None:
        generator = torch.Generator(predictor.model.device).manual_seed(item["seed"])
    return Row(
        prompt=ids,
        max_new_tokens=item["max_new_tokens"],
        temperature=item["temperature"],
        top_p=item["top_p"],
        generator=generator,
        text=RowText(predictor.decode, predictor.row_ends, list(item.get("stop") or ())),
    )


def isolating(items: list[T], run: Callable[[list[T]], None]) -> dict[T, BaseException]:
    """`run(items)`; when it raises, halves run again until each culprit is alone. Returns
    what failed, with why."""
    try:
        run(items)
        return {}
    except Exception as exc:
        if len(items) == 1:
            return {items[0]: exc}
    half = len(items) // 2
    return isolating(items[:half], run) | isolating(items[half:], run)
