"""The OpenAI-compatible HTTP API: `/v1/completions`, `/v1/models` and `/health`, on FastAPI.

Requests are checked here (a bad one is OpenAI's error shape with 400, never a traceback) and turned
into `Job`s for the `Batcher`, whose worker thread runs the model; the event loop only waits on each
job's events, so it never blocks on the model. Tokenizing a prompt runs in a thread for the same reason.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nano_gpt.errors import NanoGPTError
from nano_gpt.serve.batcher import Batcher, Event, Job, QueueFull, Sampling, TokenLogprobs

logger = logging.getLogger(__name__)

MAX_LOGPROBS = 20
MAX_STOPS = 16  # OpenAI allows 4; lm-eval adds end-of-text to a task's own stop strings
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_SEED = 2**64 - 1  # torch.Generator's range


class CompletionRequest(BaseModel):
    """OpenAI's completions request (the fields nano-gpt implements, plus `top_k`); anything else is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None  # one model is served, whatever this names
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=0)] = 16
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    top_k: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stream: bool = False
    stream_options: dict[Literal["include_usage"], bool] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"{len(stop)} stop strings; at most {MAX_STOPS}")
        if stop is not None and any(s == "" for s in ([stop] if isinstance(stop, str) else stop)):
            raise ValueError("a stop string must not be empty")
        return stop


class APIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _validation_error(e: ValidationError) -> APIError:
    first = e.errors()[0]
    loc = [str(part) for part in first["loc"]]
    param = loc[0] if loc else None
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unknown field {param!r}", param, "unknown_field")
    where = ".".join(loc)
    return APIError(400, f"{where}: {first['msg']}" if where else first["msg"], param, "invalid_value")


def _handle_errors_and_keys(app: FastAPI, api_key: str | None) -> None:
    """Every error as an OpenAI-style JSON error; with `api_key`, `/v1/*` answers 401 without the key."""
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else None
        return APIError(e.status_code, str(e.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> JSONResponse:
        logger.exception("internal error")
        return APIError(500, f"internal error: {type(e).__name__}", kind="server_error").response()

    if api_key is not None:
        app.add_middleware(_RequireKey, api_key=api_key)


class _RequireKey:
    """`/v1/*` answers 401 without `Authorization: Bearer KEY`. Plain ASGI, not `@app.middleware`: Starlette's
    BaseHTTPMiddleware hides a client's disconnect from the endpoint, which must free the client's rows."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                                    code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _prompt_ids(tokenizer: Any, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """A request's prompts as token ids: text is encoded (a character-level vocabulary may lack some: a 400),
    ids pass as given."""
    try:
        if isinstance(prompt, str):
            return [tokenizer.encode_ordinary(prompt)]
        if prompt and isinstance(prompt[0], str):
            return [tokenizer.encode_ordinary(p) for p in prompt]
    except NanoGPTError as e:
        raise APIError(400, str(e), "prompt", "invalid_prompt") from None
    if prompt and isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _check_request(batcher: Batcher, req: CompletionRequest, prompts: list[list[int]]) -> None:
    """Refuse what the batcher cannot serve, as a 400 naming the field, before any job is queued."""
    tokenizer, config = batcher.tokenizer, batcher.model.config
    if not prompts:
        raise APIError(400, "the prompt is an empty list", "prompt", "empty_prompt")
    if len(prompts) > batcher.max_queue:
        raise APIError(400, f"{len(prompts)} prompts in one request; at most {batcher.max_queue}", "prompt")
    if req.n > batcher.max_batch_size:
        raise APIError(400, f"n={req.n} is more than this server decodes at once ({batcher.max_batch_size}; "
                            "see serve --max-batch-size)", "n")
    vocab = min(tokenizer.n_vocab, config.vocab_size)
    for ids in prompts:
        if not ids:
            raise APIError(400, "a prompt is empty", "prompt", "empty_prompt")
        if min(ids) < 0 or max(ids) >= vocab:
            raise APIError(400, f"token id {min(ids) if min(ids) < 0 else max(ids)} is outside the vocabulary "
                                f"(0 to {vocab - 1})", "prompt", "invalid_token")
        if len(ids) + req.max_tokens > config.block_size:
            raise APIError(400, f"this model's maximum context length is {config.block_size} tokens, but "
                                f"{len(ids) + req.max_tokens} were requested ({len(ids)} in the prompt, "
                                f"{req.max_tokens} for the completion)", "max_tokens", "context_length_exceeded")
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens=0 generates nothing; it is for echo with logprobs", "max_tokens")


def create_app(batcher: Batcher, model_name: str, api_key: str | None = None) -> FastAPI:
    """The API over `batcher`'s model; with `api_key`, `/v1/*` requires `Authorization: Bearer KEY`."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="nano-gpt", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    tokenizer, config = batcher.tokenizer, batcher.model.config
    created = int(time.time())

    _handle_errors_and_keys(app, api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **batcher.load()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "nano-gpt",
                "max_model_len": config.block_size}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        try:
            body = await request.body()
        except ClientDisconnect:  # gone before sending the whole request: no one to answer
            logger.info("a client left before sending its whole request")
            return Response(status_code=499)
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="body_too_large")
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise APIError(400, f"the body is not valid JSON ({type(e).__name__})", code="invalid_json") from None
        if not isinstance(obj, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            req = CompletionRequest.model_validate(obj)
        except ValidationError as e:
            raise _validation_error(e) from None
        prompts = await run_in_threadpool(_prompt_ids, tokenizer, req.prompt)
        _check_request(batcher, req, prompts)
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        sampling = Sampling(req.temperature, req.top_k, req.top_p, req.seed)
        jobs = []
        for i, ids in enumerate(prompts):
            def deliver(event: Event, i: int = i) -> None:
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (i, event))
                except RuntimeError:  # the loop has closed: the server is stopping
                    pass
            jobs.append(Job(ids, req.n, req.max_tokens, sampling, deliver, logprobs=req.logprobs,
                            echo_logprobs=req.echo and req.logprobs is not None, stop=stops))
        try:
            batcher.submit(jobs)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}", code="queue_full", kind="rate_limit_error") from None
        completion = _Completion(req, prompts, jobs, model_name, token_text, tokenizer.decode)
        if req.stream:
            return StreamingResponse(_stream(completion, events), media_type="text/event-stream")
        try:
            await _wait_all(completion, events, request)
        finally:
            for job in jobs:
                job.cancel()  # a no-op for jobs that finished; frees the rest when the client has gone
        return completion.response()

    def token_text(token: int) -> str:
        return tokenizer.decode_single_token_bytes(token).decode("utf-8", errors="replace")

    return app


class _Choice:
    def __init__(self) -> None:
        self.text = ""
        self.tokens: list[TokenLogprobs] = []
        self.finish_reason: str | None = None
        self.offset = 0  # characters streamed so far, for the logprobs' text_offset


class _Completion:
    """One request's choices, built from its jobs' events (choice i * n + j is prompt i's row j)."""

    def __init__(self, req: CompletionRequest, prompts: list[list[int]], jobs: list[Job], model_name: str,
                 token_text: Callable[[int], str], decode: Callable[[list[int]], str]) -> None:
        self.req, self.prompts, self.jobs, self.model_name = req, prompts, jobs, model_name
        self.token_text, self.decode = token_text, decode
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices = [_Choice() for _ in range(len(prompts) * req.n)]
        self.prompt_logprobs: dict[int, list[TokenLogprobs]] = {}
        self.pending = len(jobs)
        self.error: str | None = None

    def apply(self, i: int, event: Event) -> list[dict[str, Any]]:
        """Record prompt i's event; the stream choices it makes."""
        if event.done:
            self.pending -= 1
            self.error = self.error or event.error
            return []
        if event.prompt_logprobs is not None:
            self.prompt_logprobs[i] = event.prompt_logprobs
            return self.echo_choices(i)
        out = []
        for j, delta in enumerate(event.deltas or []):
            index = i * self.req.n + j
            choice = self.choices[index]
            choice.text += delta.text
            choice.tokens += delta.tokens
            choice.finish_reason = choice.finish_reason or delta.finish_reason
            if delta.text or delta.tokens or delta.finish_reason:
                out.append(self._choice(index, delta.text, delta.tokens, delta.finish_reason))
        return out

    def echo_choices(self, i: int) -> list[dict[str, Any]]:
        """The stream's first choices for prompt i under `echo`: its text (and its tokens' logprobs)."""
        text = self.decode(self.prompts[i])
        return [self._choice(i * self.req.n + j, text, self.prompt_logprobs.get(i, []), None) for j in range(self.req.n)]

    def _choice(self, index: int, text: str, tokens: list[TokenLogprobs], finish_reason: str | None) -> dict[str, Any]:
        choice = self.choices[index]
        logprobs = None if self.req.logprobs is None else self._logprobs(tokens, choice.offset)
        choice.offset += len(text)
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def _logprobs(self, tokens: list[TokenLogprobs], offset: int) -> dict[str, list[Any]]:
        texts = [self.token_text(t.token) for t in tokens]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        tops = [None if t.logprob is None else {self.token_text(i): lp for i, lp in t.top} for t in tokens]
        return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens], "top_logprobs": tops,
                "text_offset": offsets}

    def usage(self) -> dict[str, int]:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(job.completion_tokens for job in self.jobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def response(self) -> dict[str, Any]:
        if self.error is not None:
            raise APIError(500, self.error, kind="server_error")
        choices = []
        for index, choice in enumerate(self.choices):
            i = index // self.req.n
            text, tokens = choice.text, choice.tokens
            if self.req.echo:
                text = self.decode(self.prompts[i]) + text
                tokens = self.prompt_logprobs.get(i, []) + tokens
            logprobs = None if self.req.logprobs is None else self._logprobs(tokens, 0)
            choices.append({"text": text, "index": index, "logprobs": logprobs, "finish_reason": choice.finish_reason})
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": choices, "usage": self.usage()}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "object": "text_completion", "created": self.created,
                                "model": self.model_name, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"


POLL_SECONDS = 0.5  # how often a waiting non-streaming request checks that its client is still there


async def _wait_all(completion: _Completion, events: "asyncio.Queue[tuple[int, Event]]", request: Request) -> None:
    """Collect every job's events; return early when the client has gone (the caller cancels the jobs). Asked
    every POLL_SECONDS whether events keep coming or not: a busy batch sends one for every token."""
    checked = time.monotonic()
    while completion.pending:
        try:
            i, event = await asyncio.wait_for(events.get(), POLL_SECONDS)
            completion.apply(i, event)
        except asyncio.TimeoutError:
            pass
        if time.monotonic() - checked >= POLL_SECONDS:
            if await request.is_disconnected():
                return
            checked = time.monotonic()


async def _stream(completion: _Completion, events: "asyncio.Queue[tuple[int, Event]]") -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, then `data: [DONE]`. A client that disconnects cancels
    this generator, and the `finally` frees its rows in the batch."""
    req = completion.req
    try:
        if req.echo and req.logprobs is None:
            yield completion.chunk([c for i in range(len(completion.prompts)) for c in completion.echo_choices(i)])
        while completion.pending:
            i, event = await events.get()
            choices = completion.apply(i, event)
            if choices:
                yield completion.chunk(choices)
        if completion.error is not None:
            error = {"message": completion.error, "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        elif req.stream_options and req.stream_options.get("include_usage"):
            yield completion.chunk([], completion.usage())
        yield "data: [DONE]\n\n"
    finally:
        for job in completion.jobs:
            job.cancel()
