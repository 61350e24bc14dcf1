"""Step-level batching for a causal LM: sequences join and leave a running batch between tokens.

Why not `transformers`' own ContinuousBatchingManager (`generate_batch`)? It runs on the CPU
here, but greedy or sampled decoding and the seed are fixed per manager, not per request; an
error in a step fails every request of that step; and it owns its loop and thread, so the
worker's hooks (cancel flags, streaming, the compute lock) could not run between its steps.

Each step is one forward pass for every row: the running rows' last tokens and the newcomers'
whole prompts, packed side by side in one sequence (as vLLM packs them). A newcomer's prefill
costs no pass of its own: on a small model a pass costs about the same for 16 tokens as for 60
(reading the weights dominates), so prefilling newcomers apart, as padded batches must, ran
about two passes per finished row in a closed loop and halved the throughput. Each row owns a
slot of the cache (SlotCache, written in place: nothing is copied per step, and a row that ends
just frees its slot) and attends only to its own (`rows_attention`, registered with
transformers as an attention implementation), so a row computes what `generate` would compute
for it alone. Each row samples with its own temperature, top-p and seed.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from models.base import PredictionError, is_out_of_memory
from models.text_generation import MAX_PROMPT_TOKENS, RowText, prompt_too_long


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
    slot: int = -1  # its place in the batch's cache
    cached: int = 0  # tokens in its cache: the next token's position
    feed: list[int] = field(default_factory=list)  # the next step's input: prompt, then last
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
        self.cached += len(self.feed)
        self.feed = [token]
        self.steps += 1
        self.pending += self.text.add(token)


ATTENTION = "quern_rows"


@dataclass(frozen=True)
class Layout:
    """Where a step's packed tokens are cached and what each attends to. Rows own slots of the
    cache (its first dimension); a row's token at position p is cached in column p."""

    slots: torch.Tensor  # [tokens]: each packed token's slot
    columns: torch.Tensor  # [tokens]: and its column (its position)
    width: int  # the columns any slot uses after the step
    used: int  # the slots below this one may be in use
    decoding: torch.Tensor  # [rows of one token]: their packed token
    decoding_slots: torch.Tensor  # and their slots
    decode_mask: torch.Tensor  # [used, 1, 1, width]: the columns each slot attends to
    prefills: list[tuple[int, int, int]]  # (slot, first packed token, tokens) of each prompt
    decoding_only: bool  # every slot below `used` has one token, packed in slot order


@dataclass(frozen=True)
class SlotKeys:
    """One layer's cached keys (or values), [slots, columns, heads, head size], in a step."""

    cached: torch.Tensor
    layout: Layout


def rows_attention(
    module: Any, query: torch.Tensor, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """`sdpa`, except in a step (keys come as SlotKeys): the rows of one token attend to their
    own slot's columns together (one call for all of them), each prompt causally to its own.
    Rows are gathered and scattered with index_select/index_copy_: indexing assignment
    (`t[idx] = x`) cost about ten times as much on these small tensors."""
    if not isinstance(key, SlotKeys):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layout, scale = key.layout, kwargs.get("scaling")
    keys = key.cached[: layout.used, : layout.width].transpose(1, 2)  # [slots, heads, columns, d]
    values = value.cached[: layout.used, : layout.width].transpose(1, 2)
    if layout.decoding_only:  # packed in slot order, one token a slot: no gather, no scatter
        queries = query[0].transpose(0, 1)[:, :, None]
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=layout.decode_mask, scale=scale, enable_gqa=True
        )
        return attended[None, :, :, 0], None
    out = torch.empty_like(query)
    if len(layout.decoding):
        queries = query.new_zeros((layout.used, query.shape[1], 1, query.shape[3]))
        decoding = query[0].index_select(1, layout.decoding).transpose(0, 1)
        queries[:, :, 0].index_copy_(0, layout.decoding_slots, decoding)
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=layout.decode_mask, scale=scale, enable_gqa=True
        )
        rows = attended[:, :, 0].index_select(0, layout.decoding_slots).transpose(0, 1)
        out[0].index_copy_(1, layout.decoding, rows)
    for slot, first, count in layout.prefills:
        out[:, :, first : first + count] = F.scaled_dot_product_attention(
            query[:, :, first : first + count],
            keys[slot : slot + 1, :, :count],
            values[slot : slot + 1, :, :count],
            is_causal=True,
            scale=scale,
            enable_gqa=True,
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, rows_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # `generate` on the same model: as sdpa


class SlotCache:
    """Keys and values per layer in one tensor of slots, given to the model as its cache: a
    step writes its packed new keys into their rows' slots and columns in place, so nothing is
    copied per step (it grows by doubling), and a failed step leaves nothing a row can see.
    Stored [slots, columns, heads, head size], so that a slot's column is one row of a flat
    view: written with one index_copy_ (indexing assignment over two dimensions cost about
    ten times as much); attention reads it transposed, at no cost."""

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.layout: Layout | None = None  # the step's

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[SlotKeys, SlotKeys]:
        layout = self.layout
        assert layout is not None
        cached_keys = self.keys[layer_idx] = _room(self.keys[layer_idx], keys, layout)
        cached_values = self.values[layer_idx] = _room(self.values[layer_idx], values, layout)
        # Each packed token's row of the flat view (keys and values grow alike).
        at = layout.slots * cached_keys.shape[1] + layout.columns
        for cached, new in ((cached_keys, keys), (cached_values, values)):
            cached.view(-1, *cached.shape[2:]).index_copy_(0, at, new[0].transpose(0, 1))
        return SlotKeys(cached_keys, layout), SlotKeys(cached_values, layout)


def _room(cached: torch.Tensor | None, new: torch.Tensor, layout: Layout) -> torch.Tensor:
    """`cached` ([slots, columns, heads, head size]) if it has room for the layout's slots and
    columns, else a copy twice as large; `new` ([1, heads, tokens, head size]) gives the rest
    of the shape."""
    slots, columns = layout.used, layout.width
    if cached is not None and cached.shape[0] >= slots and cached.shape[1] >= columns:
        return cached
    have = (0, 0) if cached is None else (cached.shape[0], cached.shape[1])
    shape = (max(slots, have[0]), max(64, have[1], 1 << (columns - 1).bit_length()), new.shape[1])
    grown = new.new_zeros((*shape, new.shape[3]))
    if cached is not None:
        grown[: have[0], : have[1]] = cached
    return grown


@dataclass(eq=False)
class StepBatch:
    """The running rows of one model and their cache. Not thread-safe: one engine thread
    calls it."""

    model: Any
    rows: list[Row] = field(default_factory=list)
    cache: SlotCache | None = None

    def __post_init__(self) -> None:
        full_attention_only(self.model)

    def admit(self, rows: list[Row]) -> None:
        """Add `rows`, each in a free slot: the next step prefills them with the others' next
        tokens."""
        taken = {row.slot for row in self.rows}
        free = (slot for slot in range(len(self.rows) + len(rows)) if slot not in taken)
        for row, slot in zip(rows, free, strict=False):
            row.slot, row.cached, row.feed = slot, 0, list(row.prompt)
        self.rows += rows

    def step(self) -> dict[Row, BaseException]:
        """One token for every row (a newcomer's first). A step that raises anything but out of
        memory (which is the caller's to handle: admit fewer) is run again row by row: the rows
        that still fail are removed and returned."""
        if not self.rows:
            return {}
        try:
            self._step(self.rows)
            return {}
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
        failed: dict[Row, BaseException] = {}
        for row in list(self.rows):
            try:
                self._step([row])
            except Exception as exc:
                failed[row] = exc
        self.remove(list(failed))
        return failed

    def remove(self, rows: Sequence[Row]) -> None:
        gone = {id(row) for row in rows}
        self.rows = [row for row in self.rows if id(row) not in gone]
        if not self.rows:
            self.cache = None  # its memory back

    @torch.inference_mode()
    def _step(self, rows: list[Row]) -> None:
        """One forward pass for `rows`: their fed tokens packed in one sequence. A row advances
        only once its token is sampled: a step that raises leaves every row as it was."""
        rows = sorted(rows, key=lambda row: row.slot)  # rows_attention's fast path wants it
        if self.cache is None:
            self.cache = SlotCache(self.model.config.num_hidden_layers)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        last = []  # each row's last packed token: its logits sample the row's next token
        prefills = []
        for row in rows:
            if len(row.feed) > 1:
                prefills.append((row.slot, len(ids), len(row.feed)))
            ids += row.feed
            positions += range(row.cached, row.cached + len(row.feed))
            slots += [row.slot] * len(row.feed)
            last.append(len(ids) - 1)
        device = self.model.device
        self.cache.layout = layout(rows, self.rows, slots, positions, last, prefills, device)
        logits = self.model(
            input_ids=torch.tensor([ids], device=device),
            # 4D, so transformers takes it as it is: rows_attention masks by slot itself.
            attention_mask=torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device),
            position_ids=torch.tensor([positions], device=device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=torch.tensor(last, device=device),
        ).logits[0]
        for row, token in zip(rows, sample(logits, rows), strict=True):
            row._add(token)


def layout(
    rows: list[Row],
    running: list[Row],
    slots: list[int],
    positions: list[int],
    last: list[int],
    prefills: list[tuple[int, int, int]],
    device: Any,
) -> Layout:
    """The Layout of a step of `rows` among the `running` ones."""
    used = max(row.slot for row in running) + 1
    lengths = [1] * used  # a slot that does not decode attends to its column 0: never to none
    decoding = [(row.slot, at) for row, at in zip(rows, last, strict=True) if len(row.feed) == 1]
    for row in rows:
        if len(row.feed) == 1:
            lengths[row.slot] = row.cached + 1
    width = max(max(row.cached + len(row.feed) for row in rows), *lengths)
    mask = torch.arange(width, device=device)[None] < torch.tensor(lengths, device=device)[:, None]
    return Layout(
        slots=torch.tensor(slots, device=device),
        columns=torch.tensor(positions, device=device),
        width=width,
        used=used,
        decoding=torch.tensor([at for _, at in decoding], dtype=torch.long, device=device),
        decoding_slots=torch.tensor(
            [slot for slot, _ in decoding], dtype=torch.long, device=device
        ),
        decode_mask=mask[:, None, None],
        prefills=prefills,
        decoding_only=len(decoding) == used and [slot for slot, _ in decoding] == list(range(used)),
    )


def full_attention_only(model: Any) -> None:
    """Rows attend in full: a sliding window (or a linear-attention state) would need its own
    cache and mask. Set the model to rows_attention (`generate` on it still runs as sdpa)."""
    config = model.config
    kinds = getattr(config, "layer_types", None)
    windowed = (
        any(kind != "full_attention" for kind in kinds)
        if kinds
        else bool(getattr(config, "sliding_window", None))
    )
    if windowed:
        raise TypeError("continuous batching needs a model whose layers all attend in full")
    if config._attn_implementation != ATTENTION:
        model.set_attn_implementation(ATTENTION)


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
