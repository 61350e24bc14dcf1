"""The OpenAI-compatible API under /openai/v1: chat completions, embeddings, models.

Point OpenAI's clients at `{QUERN_PUBLIC_URL}/openai/v1` with a Quern token as the API key.
Every request is a Quern prediction (`source: openai` in `GET /v1/predictions`); errors here
are OpenAI's `{"error": {"message", "type", "param", "code"}}` (api/errors.py).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from api.deps import CurrentUser, ListenerDep, SettingsDep, TransactionDep
from api.errors import OPENAI_ERRORS, OPENAI_PREFIX
from api.schemas.openai_compat import (
    ChatCompletion,
    ChatCompletionCreate,
    EmbeddingCreate,
    EmbeddingList,
    ModelCard,
    ModelList,
)
from api.services import openai_compat
from api.services.openai_compat import Caller

router = APIRouter(
    prefix=OPENAI_PREFIX,
    tags=["openai"],
    responses={status: spec for status, spec in OPENAI_ERRORS.items() if status != 408},
)
# Only what waits for predictions runs out of time.
_TIMEOUT: dict[int | str, dict[str, Any]] = {408: OPENAI_ERRORS[408]}

_CHAT = (
    "A chat completion: one prediction of the model, answered once it is finished (or "
    "streamed as it is generated). A client that hangs up first cancels it.\n\n"
    "With `stream: true`: Server-Sent Events, each `data: <chat.completion.chunk>` (the first "
    "with the role, then the text as it is generated, then the `finish_reason`; with "
    "`stream_options.include_usage`, a last one with `usage` and no choices), then "
    '`data: [DONE]`. An answer that fails or runs out of time ends with `data: {"error": '
    "{...}}` instead. Lines starting with `:` keep a quiet stream open."
)
_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion, or its chunks",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_TIMEOUT,
}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=_CHAT_RESPONSES,
    description=_CHAT,
)
async def create_chat_completion(
    body: ChatCompletionCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    settings: SettingsDep,
    listener: ListenerDep,
) -> Response:
    caller = Caller.of(request, listener, user, settings, response.headers)
    return await openai_compat.create_chat_completion(caller, body)


@router.post("/embeddings", response_model=EmbeddingList, responses=_TIMEOUT)
async def create_embeddings(
    body: EmbeddingCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    settings: SettingsDep,
    listener: ListenerDep,
) -> Response:
    """Embeddings of a text or a list of texts: one prediction per text, created together so
    that they run batched; answered once all are finished. A client that hangs up first
    cancels them."""
    caller = Caller.of(request, listener, user, settings, response.headers)
    return await openai_compat.create_embeddings(caller, body)


@router.get("/models", response_model=ModelList)
def list_models(tx: TransactionDep, user: CurrentUser) -> ModelList:
    """The models that can serve chat completions (text generation taking `messages`) or
    embeddings, by their latest version; `id` is `owner/name`."""
    return openai_compat.list_models(tx.session)


@router.get("/models/{owner}/{name}", response_model=ModelCard)
def get_model(
    owner: Annotated[str, Path(max_length=100)],
    name: Annotated[str, Path(max_length=100)],
    tx: TransactionDep,
    user: CurrentUser,
) -> ModelCard:
    """One of those models; any other is 404 (`model_not_found`)."""
    return openai_compat.get_model(tx.session, owner, name)
