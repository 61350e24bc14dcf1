"""The OpenAI-compatible API's bodies (api/routes/openai_compat.py), as OpenAI names them.

What a request may hold is what Quern does: a parameter it cannot honour is refused (400
naming it), never silently dropped, unless it does not change the answer (`user`, `metadata`,
`store`...). The document states each rule it can; the rest depend on the model's own input
schema (the longest message, the most tokens), and a request over them is a 400 naming the
parameter.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.base import RequestBody

SEED_MAX = 2**31 - 1
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit
StopSequence = Annotated[str, Field(min_length=1, max_length=100)]
EmbeddingText = Annotated[str, Field(min_length=1, max_length=20_000)]


class TextPart(RequestBody):
    type: Literal["text"]
    text: str = Field(max_length=8000)


class ChatMessage(RequestBody):
    """A message of the chat. `developer` is read as `system`. Quern runs no tools: `tool`
    messages and tool calls are refused."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(
        description="Text, or text parts (joined with newlines). The model's input schema "
        "bounds its length (8,000 characters for Quern's text generation)."
    )
    name: str | None = Field(
        default=None, max_length=256, description="Accepted; the chat template does not use it."
    )


class StreamOptions(RequestBody):
    include_usage: bool | None = Field(
        default=None,
        description="A last chunk with `usage` and no choices, before `data: [DONE]`.",
    )
    include_obfuscation: bool | None = Field(
        default=None, description="Accepted; Quern's chunks carry no obfuscation."
    )


class ResponseFormatText(RequestBody):
    type: Literal["text"]


class ChatCompletionCreate(RequestBody):
    """`POST /openai/v1/chat/completions`. Sampling parameters that are not given take the
    model's defaults (Quern's text generation: 128 tokens, temperature 0.7, top_p 0.9)."""

    model: str = Field(
        min_length=1,
        max_length=200,
        description="`owner/name` (its latest version) or a version id, of a text-generation "
        "model whose input takes `messages` (`GET /openai/v1/models`). Anything else is 404.",
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="The most tokens to generate (the model's input schema bounds it: 512 for "
        "Quern's text generation). Wins over `max_tokens` when both are given.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="The same as `max_completion_tokens` (older name)."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="0 is greedy: the same answer every time."
    )
    top_p: float | None = Field(
        default=None, ge=0, le=1, description="Nucleus sampling; 0 keeps only the likeliest token."
    )
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=4)] | None = Field(
        default=None,
        description="Up to 4 sequences (1-100 characters each) where generation stops; the "
        "answer ends before the first to appear.",
    )
    n: int | None = Field(default=None, ge=1, le=1, description="1: one choice per request.")
    stream: bool | None = Field(
        default=None,
        description="Server-Sent Events of `chat.completion.chunk` objects, then `data: [DONE]`.",
    )
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(
        default=None, ge=0, le=0, description="Not supported: 0 only."
    )
    frequency_penalty: float | None = Field(
        default=None, ge=0, le=0, description="Not supported: 0 only."
    )
    logprobs: Literal[False] | None = Field(default=None, description="Not supported: false only.")
    logit_bias: dict[str, float] | None = Field(
        default=None, max_length=0, description="Not supported: empty only."
    )
    response_format: ResponseFormatText | None = Field(
        default=None, description='`{"type": "text"}` only.'
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted; not used.")
    metadata: dict[str, str] | None = Field(default=None, description="Accepted; not used.")
    store: bool | None = Field(
        default=None, description="Accepted: Quern stores every prediction anyway."
    )
    service_tier: str | None = Field(default=None, max_length=64, description="Accepted; not used.")
    parallel_tool_calls: bool | None = Field(default=None, description="Accepted; no tools run.")
    prompt_cache_key: str | None = Field(
        default=None, max_length=256, description="Accepted; not used."
    )
    safety_identifier: str | None = Field(
        default=None, max_length=256, description="Accepted; not used."
    )


class EmbeddingCreate(RequestBody):
    """`POST /openai/v1/embeddings`. A list of texts becomes one prediction per text, created
    together (one statement), so the worker runs them in batches."""

    model: str = Field(
        min_length=1,
        max_length=200,
        description="`owner/name` (its latest version) or a version id, of an embeddings model "
        "(`GET /openai/v1/models`). Anything else is 404.",
    )
    input: (
        EmbeddingText
        | Annotated[list[EmbeddingText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    ) = Field(
        description=f"A text, or up to {MAX_EMBEDDING_INPUTS} texts, each of 1 to 20,000 "
        "characters (the model's input schema decides: Quern's embeddings model reads 256 "
        "tokens and cuts the rest). Token arrays are not supported."
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        default=None,
        description="`float` (the default) or `base64`: the float32 values, little-endian.",
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted; not used.")


# --- Answers ---------------------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(Answer):
    """Counted with the model's tokenizer by the worker (`metrics.input_token_count` and
    `output_token_count` of the predictions)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EmbeddingUsage(Answer):
    prompt_tokens: int
    total_tokens: int


class AssistantMessage(Answer):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(Answer):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] = Field(
        description="`length` when the answer used all of `max_completion_tokens`, else `stop`."
    )


class ChatCompletion(Answer):
    id: str = Field(description="`chatcmpl-<prediction id>`: GET /v1/predictions/{id} shows it.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The model's `owner/name`.")
    system_fingerprint: str = Field(description="The id of the model version that ran.")
    choices: list[Choice]
    usage: Usage


class Delta(Answer):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Answer):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(Answer):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Embedding(Answer):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of float32 values.")


class EmbeddingList(Answer):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(Answer):
    id: str = Field(description="`owner/name`")
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Answer):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(answer: BaseModel) -> dict[str, Any]:
    return answer.model_dump(mode="json")
