"""The OpenAI-compatible API: each request is a Quern prediction like any other.

A chat completion is one prediction of a text-generation version (its input: the `messages`,
rendered by the worker with the tokenizer's chat template, and the sampling parameters);
embeddings are one prediction per text, created together in one statement so that the worker
batches them. They go through the create path of `POST /v1/predictions` (stored, owned by the
caller, counted against the backlog and in-flight limits, published to the workers), marked
`source: openai`, and are waited on as `Prefer: wait` waits (the status listener), or streamed
from the prediction's event stream (api/services/streams.py). So a request costs what a
create and its wait cost: one statement to create, one to read the outcome.

A client that hangs up before the answer, and a request still unanswered after
QUERN_OPENAI_TIMEOUT_S, cancel its predictions: nobody would read them, and OpenAI's clients
retry, which would run them twice.
"""

import asyncio
import base64
import contextlib
import json
import logging
import re
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from api.deps import request_base_url
from api.errors import OpenAIError, Unprocessable, openai_error
from api.finished_reads import FinishedReads
from api.queue import Publisher
from api.schemas.openai_compat import (
    ChatCompletion,
    ChatCompletionCreate,
    EmbeddingCreate,
    EmbeddingList,
    ModelCard,
    ModelList,
    dump,
)
from api.schemas.predictions import MODEL_REF_PATTERN, PredictionCreate, PredictionOut
from api.services import predictions, versions
from api.services.inputs import validate_input
from api.services.streams import prediction_events
from api.services.versions import Version
from api.services.waiting import RECHECK_S, client_disconnected, is_finished, unless_hung_up
from api.settings import ApiSettings
from api.status_listener import StatusListener, status_listener
from db.ids import ID_PATTERN, new_id
from db.repositories import models
from db.repositories.models import ModelWithOwner
from db.tables import PredictionSource, PredictionStatus, User

log = logging.getLogger(__name__)

CHAT, EMBEDDINGS = "chat", "embeddings"
# A comment line this often keeps proxies from closing a quiet stream.
PING_S = 15.0
# models/text_generation.py's error for a prompt over its token limit.
PROMPT_TOO_LONG = re.compile(r"^The prompt is \d+ tokens long")
# When a worker reports no token counts (an older worker, a model that does not count them):
# about four characters a token, as OpenAI's own rule of thumb has it.
CHARS_PER_TOKEN = 4


def serves(version: Version, endpoint: str) -> bool:
    """Whether the version can answer the endpoint: chat needs a text-generation model whose
    input takes `messages`, embeddings an embeddings model whose input is a `text`."""
    properties = version.validator.schema.get("properties", {})
    if endpoint == CHAT:
        return version.model_type == "text-generation" and "messages" in properties
    return version.model_type == "embeddings" and "text" in properties


def _serves_any(found: ModelWithOwner) -> bool:
    latest = found.latest_version
    if latest is None:
        return False
    properties = latest.input_schema.get("properties", {})
    return (latest.model_type == "text-generation" and "messages" in properties) or (
        latest.model_type == "embeddings" and "text" in properties
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


async def resolve(listener: StatusListener, model: str, endpoint: str) -> Version:
    """The version `model` names (`owner/name`: its latest; or a version id), if it serves
    `endpoint`; else 404."""
    if re.fullmatch(MODEL_REF_PATTERN, model):
        body = PredictionCreate.model_construct(model=model, version=None, input={})
    elif re.fullmatch(ID_PATTERN, model):
        body = PredictionCreate.model_construct(model=None, version=model, input={})
    else:
        raise model_not_found(model)
    try:
        version = await versions.resolve(listener.versions, body)
    except Unprocessable:
        raise model_not_found(model) from None
    if not serves(version, endpoint):
        what = "a chat model" if endpoint == CHAT else "an embeddings model"
        raise OpenAIError(
            404,
            f"`{model}` is not {what}: it cannot serve /openai/v1/{_PATHS[endpoint]} "
            "(GET /openai/v1/models lists the models that can)",
            param="model",
        )
    return version


_PATHS = {CHAT: "chat/completions", EMBEDDINGS: "embeddings"}


def _input_error(exc: Unprocessable, params: Mapping[str, str]) -> OpenAIError:
    """The model's input schema refused a field: a 400 naming the request's parameter."""
    first = (exc.invalid_fields or [{"field": "input", "message": exc.detail}])[0]
    field = first["field"].removeprefix("input.")
    name = re.split(r"[.\[]", field, maxsplit=1)[0]
    param = params.get(name, name) + field[len(name) :]
    return OpenAIError(400, f"{param}: {first['message']}", param=param)


def _timestamp(prediction: PredictionOut) -> int:
    return int(prediction.created_at.timestamp())


# --- Chat completions ------------------------------------------------------------------------


def chat_input(body: ChatCompletionCreate) -> tuple[dict[str, Any], dict[str, str]]:
    """The prediction's input for the model's schema, and which request parameter each of its
    fields came from (to name it in a 400)."""
    messages = [
        {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.content
            if isinstance(message.content, str)
            else "\n".join(part.text for part in message.content),
        }
        for message in body.messages
    ]
    item: dict[str, Any] = {"messages": messages}
    params = {"messages": "messages"}
    if body.max_completion_tokens is not None:
        item["max_new_tokens"] = body.max_completion_tokens
        params["max_new_tokens"] = "max_completion_tokens"
    elif body.max_tokens is not None:
        item["max_new_tokens"], params["max_new_tokens"] = body.max_tokens, "max_tokens"
    if body.top_p == 0:  # only the likeliest token: greedy decoding
        item["temperature"], params["temperature"] = 0, "top_p"
    else:
        if body.temperature is not None:
            item["temperature"] = body.temperature
        if body.top_p is not None:
            item["top_p"] = body.top_p
    if body.seed is not None:
        item["seed"] = body.seed
    if body.stop is not None:
        item["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    return item, params


def finish_reason(prediction: PredictionOut) -> str:
    """`length` when the answer used every token it was allowed, else `stop` (an end of
    sequence or a stop sequence)."""
    allowed = prediction.input.get("max_new_tokens")
    generated = prediction.metrics.output_token_count
    return "length" if generated is not None and generated == allowed else "stop"


def chat_usage(prediction: PredictionOut) -> dict[str, int]:
    text = prediction.output if isinstance(prediction.output, str) else ""
    prompt = prediction.metrics.input_token_count
    if prompt is None:
        chars = sum(len(m["content"]) for m in prediction.input.get("messages", ()))
        prompt = _estimate(chars)
    completion = prediction.metrics.output_token_count
    if completion is None:
        completion = _estimate(len(text))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _estimate(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _chat_completion(prediction: PredictionOut) -> Response:
    failed = _failure(prediction)
    if failed is not None:
        return failed.response()
    completion = ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{prediction.id}",
            "created": _timestamp(prediction),
            "model": prediction.model,
            "system_fingerprint": prediction.version,
            "choices": [
                {
                    "index": 0,
                    "message": {"content": prediction.output},
                    "finish_reason": finish_reason(prediction),
                }
            ],
            "usage": chat_usage(prediction),
        }
    )
    return JSONResponse(dump(completion))


def _failure(prediction: PredictionOut) -> OpenAIError | None:
    """The error to answer for a prediction that ended without an answer."""
    if prediction.status == PredictionStatus.SUCCEEDED:
        return None
    error = prediction.error or ""
    if prediction.status == PredictionStatus.FAILED and PROMPT_TOO_LONG.match(error):
        return OpenAIError(400, error, param="messages", code="context_length_exceeded")
    detail = f": {error}" if error else ""
    return OpenAIError(
        500,
        f"Prediction {prediction.id} {prediction.status}{detail}",
        code=f"prediction_{prediction.status}",
    )


@dataclass(frozen=True)
class Caller:
    """What every create needs from the request."""

    pool: AsyncConnectionPool
    reads: FinishedReads
    publisher: Publisher
    listener: StatusListener
    user: User
    settings: ApiSettings
    base_url: str
    headers: dict[str, str]  # the rate limit's

    @classmethod
    def of(
        cls,
        request: Request,
        listener: StatusListener,
        user: User,
        settings: ApiSettings,
        headers: Mapping[str, str],
    ) -> "Caller":
        return cls(
            request.state.pool,
            request.state.reads,
            request.state.publisher,
            listener,
            user,
            settings,
            request_base_url(request),
            dict(headers),
        )

    async def cancel(self, ids: list[str], model_ref: str) -> None:
        await predictions.cancel_async(self.pool, self.user, ids, model_ref)

    async def load_many(self, ids: list[str]) -> list[PredictionOut]:
        return await predictions.load_many_async(self.pool, self.user, ids, self.base_url)


async def create_chat_completion(caller: Caller, body: ChatCompletionCreate) -> Response:
    version = await resolve(caller.listener, body.model, CHAT)
    item, params = chat_input(body)
    prediction_id = new_id()
    # Watched before the row exists: no change can go unheard, so no first read.
    watching = caller.listener.watch(prediction_id)
    try:
        prediction = await predictions.create(
            caller.pool,
            caller.publisher,
            caller.listener.versions,
            caller.user,
            PredictionCreate.model_construct(
                version=version.id, model=None, input=item, webhook=None
            ),
            caller.base_url,
            caller.settings,
            None,
            prediction_id,
            version=version,
            source=PredictionSource.OPENAI,
        )
    except Unprocessable as exc:
        caller.listener.unwatch(prediction_id, watching)
        raise _input_error(exc, params) from None
    except BaseException:
        caller.listener.unwatch(prediction_id, watching)
        raise
    cancel = partial(caller.cancel, [prediction.id], prediction.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        load = partial(
            predictions.load_async, caller.reads, caller.user, prediction.id, caller.base_url
        )
        chunks = chat_chunks(prediction, watching, load, include_usage=include_usage)
        return OpenAIStream(chunks, caller.settings.openai_timeout_s, cancel, caller.headers)
    return OpenAIWait(
        [prediction],
        {prediction.id: watching},
        caller.load_many,
        lambda done: _chat_completion(done[0]),
        caller.settings.openai_timeout_s,
        cancel,
        caller.headers,
    )


def _sse(data: Any) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"data: {text}\n\n".encode()


DONE = b"data: [DONE]\n\n"


async def chat_chunks(
    prediction: PredictionOut,
    watching: asyncio.Event,
    load: Callable[[], Awaitable[PredictionOut]],
    *,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """`chat.completion.chunk`s: the role, each piece of text as the worker streams it (the
    prediction's own event stream, so the pieces join to its stored output), the finish
    reason, with `include_usage` a last chunk with the usage, then `[DONE]`. An answer that
    fails ends with an `error` object, as OpenAI's streams do."""
    head = {
        "id": f"chatcmpl-{prediction.id}",
        "object": "chat.completion.chunk",
        "created": _timestamp(prediction),
        "model": prediction.model,
        "system_fingerprint": prediction.version,
    }
    tail = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(head | {"choices": [choice]} | tail)

    yield chunk({"role": "assistant", "content": ""})
    ended: list[PredictionOut] = []
    async for event in prediction_events(
        prediction, load, None, watching=watching, ended=ended.append
    ):
        if event.event == "output" and isinstance(event.data, str):
            yield chunk({"content": event.data})
        elif event.event == "error" and not ended:  # an attempt it was showing was lost
            yield _sse({"error": _error_body(500, str(event.data), "attempt_interrupted")})
            return
    if not ended:
        return
    failed = _failure(ended[0])
    if failed is not None:
        yield _sse({"error": _error_body(failed.status, failed.message, failed.code, failed.param)})
        return
    yield chunk({}, finish_reason(ended[0]))
    if include_usage:
        yield _sse(head | {"choices": [], "usage": chat_usage(ended[0])})
    yield DONE


def _error_body(
    status: int, message: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """The `error` object of `openai_error`'s body, for a stream to send."""
    body: dict[str, Any] = json.loads(
        bytes(openai_error(status, message, param=param, code=code).body)
    )
    error: dict[str, Any] = body["error"]
    return error


# --- Embeddings ------------------------------------------------------------------------------


async def create_embeddings(caller: Caller, body: EmbeddingCreate) -> Response:
    version = await resolve(caller.listener, body.model, EMBEDDINGS)
    texts = [body.input] if isinstance(body.input, str) else body.input
    settings = caller.settings
    most = min(settings.max_in_flight_per_user, settings.max_queued_per_version)
    if len(texts) > most:
        raise OpenAIError(400, f"input: at most {most} texts in one request", param="input")
    inputs = []
    for index, text in enumerate(texts):
        try:
            item = validate_input(
                version.validator, {"text": text}, settings.max_input_string_chars
            )
        except Unprocessable as exc:
            where = "input" if isinstance(body.input, str) else f"input[{index}]"
            raise _input_error(exc, {"text": where}) from None
        inputs.append(item)
    ids = [new_id() for _ in inputs]
    listener = caller.listener
    watching = {id: listener.watch(id) for id in ids}
    try:
        created = await predictions.create_many(
            caller.pool,
            caller.publisher,
            listener.versions,
            caller.user,
            version,
            inputs,
            caller.base_url,
            settings,
            ids,
            source=PredictionSource.OPENAI,
        )
    except BaseException:
        for id, event in watching.items():
            listener.unwatch(id, event)
        raise
    encoding = body.encoding_format or "float"
    return OpenAIWait(
        created,
        watching,
        caller.load_many,
        partial(_embedding_list, encoding=encoding),
        settings.openai_timeout_s,
        partial(caller.cancel, ids, version.model_ref),
        caller.headers,
    )


def encode_base64(vector: list[float]) -> str:
    """OpenAI's `base64`: the float32 values, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _embedding_list(done: list[PredictionOut], *, encoding: str) -> Response:
    for prediction in done:
        failed = _failure(prediction)
        if failed is not None:
            return failed.response()
    tokens = sum(
        p.metrics.input_token_count
        if p.metrics.input_token_count is not None
        else _estimate(len(p.input["text"]))
        for p in done
    )
    answer = EmbeddingList.model_validate(
        {
            "data": [
                {
                    "index": index,
                    "embedding": encode_base64(list(p.output or ()))
                    if encoding == "base64"
                    else p.output,
                }
                for index, p in enumerate(done)
            ],
            "model": done[0].model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
    return JSONResponse(dump(answer))


# --- Models ----------------------------------------------------------------------------------


def list_models(session: Session) -> ModelList:
    """The models whose latest version serves chat completions or embeddings."""
    return ModelList(data=[_card(found) for found in models.list(session) if _serves_any(found)])


def get_model(session: Session, owner: str, name: str) -> ModelCard:
    found = models.get(session, owner=owner, name=name)
    if found is None or not _serves_any(found):
        raise model_not_found(f"{owner}/{name}")
    return _card(found)


def _card(found: ModelWithOwner) -> ModelCard:
    return ModelCard(
        id=found.ref, created=int(found.model.created_at.timestamp()), owned_by=found.owner
    )


# --- Answering -------------------------------------------------------------------------------

Cancel = Callable[[], Awaitable[None]]


class OpenAIWait(Response):
    """The answer once every prediction is finished: `render`ed, or 408 (and canceled) when
    `timeout_s` runs out first. A client that hangs up cancels them, and gets nothing.

    `watching`: the listener's event per prediction, watched since before its row existed
    (so nothing needs reading first); this response stops the watches."""

    def __init__(
        self,
        created: list[PredictionOut],
        watching: dict[str, asyncio.Event],
        load_many: Callable[[list[str]], Awaitable[list[PredictionOut]]],
        render: Callable[[list[PredictionOut]], Response],
        timeout_s: float,
        cancel: Cancel,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(status_code=200)
        self.created, self.watching, self.load_many = created, watching, load_many
        self.answer, self.timeout_s, self.cancel = render, timeout_s, cancel
        self.extra_headers = dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = status_listener()
        try:
            done = await self._wait(receive)
        finally:
            for id, event in self.watching.items():
                listener.unwatch(id, event)
        if done is None:  # the client left: nobody will read the answer
            await self.cancel()
            return
        response: Response
        if all(is_finished(p) for p in done):
            response = self.answer(done)
        else:
            await self.cancel()
            response = openai_error(
                408,
                f"Not finished within {self.timeout_s:g} s (QUERN_OPENAI_TIMEOUT_S): canceled",
            )
        response.headers.update(self.extra_headers)
        await response(scope, receive, send)

    async def _wait(self, receive: Receive) -> list[PredictionOut] | None:
        done = await unless_hung_up(self._until_finished(), receive)
        return None if done is None else done.result()

    async def _until_finished(self) -> list[PredictionOut]:
        """The predictions once all are terminal, or as they are when the time is up. Each
        wake-up (all of their events set, or a recheck while the listener is down) reads them
        all in one query."""
        listener = status_listener()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        current = self.created
        while (remaining := deadline - loop.time()) > 0:
            pending = [self.watching[p.id] for p in current if not is_finished(p)]
            if not pending:
                break
            timeout = remaining if listener.connected else min(remaining, RECHECK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_all_set(pending), timeout)
            for event in pending:
                event.clear()
            current = await self.load_many([p.id for p in self.created])
        return current


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


class OpenAIStream(Response):
    """Server-Sent Events from `chunks`, with a comment line when quiet for PING_S. A stream
    that ends before `data: [DONE]` cancels its prediction: the client hung up, the time
    (`timeout_s`) ran out (the stream then ends with an `error`), or the answer failed (then
    it has ended already, and the cancel changes nothing)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        timeout_s: float,
        cancel: Cancel,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(status_code=200)
        self.chunks, self.timeout_s, self.cancel = chunks, timeout_s, cancel
        self.extra_headers = dict(headers) | {"X-Accel-Buffering": "no"}
        self.done = False  # [DONE] went out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.extra_headers.items()
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        lock = asyncio.Lock()

        async def emit(body: bytes, more: bool = True) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": body, "more_body": more})

        producing = asyncio.ensure_future(self._produce(emit))
        hung_up = asyncio.ensure_future(client_disconnected(receive))
        pinging = asyncio.ensure_future(_ping(emit))
        try:
            await asyncio.wait(
                {producing, hung_up}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            pinging.cancel()
            left = hung_up.done() and not producing.done()
            hung_up.cancel()
            producing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producing  # closes the chunks, and so the prediction's watch
        if not self.done:
            await self.cancel()
        if left:  # nobody to tell
            return
        if producing.cancelled():  # the time ran out
            message = f"Not finished within {self.timeout_s:g} s (QUERN_OPENAI_TIMEOUT_S): canceled"
            await emit(_sse({"error": _error_body(408, message, "timeout")}))
        elif (error := producing.exception()) is not None:
            log.error("an OpenAI stream failed: %r", error)
            body = _error_body(500, "The stream failed; the prediction was canceled", None)
            await emit(_sse({"error": body}))
        await emit(b"", more=False)

    async def _produce(self, emit: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            async for chunk in self.chunks:
                await emit(chunk)
                self.done = chunk == DONE
        finally:
            await self.chunks.aclose()


async def _ping(emit: Callable[[bytes], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(PING_S)
        await emit(b": ping\n\n")
