"""`gptmini serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a small web chat page.

Generation runs on one thread, off the event loop, in a continuous-batching scheduler
(scheduler.py): up to `max_batch` requests are decoded together, one batched step per token, and
requests join and leave between steps. Requests beyond them wait in a bounded queue; when it is
full the server answers 429 instead of growing without bound. A client that goes away leaves the
batch before the next step, and a request's place is given back when it ends, whatever ends it.

The page carries the server's title and input placeholder (made once, escaped, into its HTML); a
system prompt given to the server goes first in every chat request that brings none of its own.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import json
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import checkpoint
from .data.templates import get_template
from .device import describe, resolve_device
from .engine import Completion, Engine, SamplingParams
from .errors import GptminiError
from .scheduler import MAX_BATCH, Scheduler
from .tokenizer import Folding

STATIC = Path(__file__).resolve().parent / "static"
PUBLIC_PATHS = ("/", "/health")  # everything else needs the key when there is one
INT64 = 2**63
ASK = "Escreva sua mensagem…"  # the page's placeholder when the checkpoint recorded no question to show


class Message(BaseModel):
    model_config = ConfigDict(strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    """Fields both endpoints take; types are strict ("5" is not a number), unknown fields ignored."""

    model_config = ConfigDict(strict=True)
    model: str | None = None  # one model per server: any name is accepted
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 is greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens


class CompletionRequest(Sampling):
    prompt: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def error_response(status: int, message: str, kind: str, code: str | None = None, param: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


class Server:
    """The engine, its scheduler thread, and the count of admitted requests (touched on the event loop only)."""

    def __init__(self, ckpt: checkpoint.Checkpoint, name: str, max_tokens: int, max_batch: int, queue_size: int,
                 quantize: str | None = None, compile: bool = False) -> None:
        self.engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template or get_template(), quantize, compile)
        self.name, self.max_tokens, self.max_batch = name, max_tokens, max_batch
        self.capacity = max_batch + queue_size
        self.scheduler = Scheduler(self.engine, max_batch)
        if compile:
            self.scheduler.compile_buckets()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.serve, args=(self.stopped,), daemon=True,
                                       name="gptmini-generate")
        self.thread.start()
        self.active = 0  # requests generating or waiting for a place in the batch

    def params(self, body: Sampling, prompt_tokens: int, param: str) -> SamplingParams:
        context = self.engine.model.config.context_size
        if prompt_tokens >= context:
            raise ApiError(400, f"the prompt has {prompt_tokens} tokens; this model's context holds {context} "
                                f"(prompt and answer together): shorten it", code="context_length_exceeded", param=param)
        requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if requested is not None and requested > self.max_tokens:
            raise ApiError(400, f"max_tokens {requested} is above this server's limit of {self.max_tokens}",
                           param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        max_new = requested or self.max_tokens
        if prompt_tokens > self.engine.prompt_budget(max_new):  # never cut the prompt: answer in what is left
            max_new = context - prompt_tokens
        return SamplingParams(max_new, body.temperature, None, body.top_p, body.seed, tuple(s for s in stop if s))

    def start(self, ids: list[int], params: SamplingParams, stream: bool) -> Job:
        if self.active >= self.capacity:
            raise ApiError(429, f"server busy: {self.active} requests generating or waiting, its limit; retry shortly",
                           kind="rate_limit_error", code="queue_full")
        self.active += 1
        try:
            return Job(self, ids, params, stream)
        except BaseException:
            self.active -= 1
            raise

    def close(self) -> None:
        """Stops the scheduler: the requests in flight end as cancelled."""
        self.stopped.set()
        self.scheduler.wake_up()


class Job:
    """One request in the scheduler. With `stream`, its text deltas arrive on `deltas` (None after
    the last). When it ends, however it ends, its place is given back."""

    def __init__(self, server: Server, ids: list[int], params: SamplingParams, stream: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self.future: asyncio.Future[Completion] = self.loop.create_future()
        on_text = (lambda delta: self._call(self.deltas.put_nowait, delta)) if stream else None
        self.request = server.scheduler.submit(ids, params, on_text,
                                               lambda done, error: self._call(self._ended, done, error))

    def _call(self, fn, *args) -> None:
        """Runs fn on the event loop (from the scheduler's thread), unless the loop is already gone."""
        with contextlib.suppress(RuntimeError):  # the loop closed: the server has stopped
            self.loop.call_soon_threadsafe(fn, *args)

    def _ended(self, done: Completion | None, error: BaseException | None) -> None:
        """On the loop, after every delta was queued."""
        if error is None:
            self.future.set_result(done)
        else:
            self.future.set_exception(error)
            self.future.exception()  # mark it seen: nobody awaits a generation whose client left
        self.server.active -= 1
        self.deltas.put_nowait(None)

    def cancel(self) -> None:
        self.request.cancel()


class EventStream(StreamingResponse):
    """Server-sent events whose job is cancelled however the response ends, even when the client
    left before the first byte (the event generator then never runs)."""

    def __init__(self, events: AsyncIterator[str], job: Job) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


class RequireKey:
    """ASGI middleware: 'Authorization: Bearer KEY' on every path but the page and /health."""

    def __init__(self, app, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                          "authentication_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line (and the offending top-level field) from pydantic's errors."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())][1:]  # drop the leading "body"
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})", None
    if not loc:
        return f"the body must be a JSON object ({first.get('msg')})", None
    # A union (stop: str | list) reports one error per alternative: name the field, give them all.
    same = [e for e in errors if [str(p) for p in e.get("loc", ())][1:2] == loc[:1]]
    if len(same) > 1:
        return f"{loc[0]}: " + "; or ".join(dict.fromkeys(e["msg"] for e in same)), loc[0]
    return f"{'.'.join(loc)}: {first.get('msg')}", loc[0]


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was already read, so only that message is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def placeholder_for(ckpt: checkpoint.Checkpoint) -> str:
    """The page's default placeholder: an example, the first question of the data the checkpoint was trained on
    (sft and dpo record it), cut to a line; else a neutral invitation."""
    question = " ".join(str(ckpt.meta.get("data", {}).get("first_question", "")).split())
    if not question:
        return ASK
    return f"{ASK} (ex.: {question if len(question) <= 80 else question[:79] + '…'})"


def render_page(title: str, placeholder: str) -> str:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return page.replace("__TITLE__", html.escape(title)).replace("__PLACEHOLDER__", html.escape(placeholder))


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """The server's system prompt first, unless the request brings its own."""
    if not system or any(m["role"] == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]


def create_app(model: str | Path | checkpoint.Checkpoint, api_key: str | None = None, max_tokens: int = 256,
               max_batch: int = MAX_BATCH, queue_size: int = 16, device: str = "cpu",
               quantize: str | None = None, compile: bool = False, title: str | None = None,
               placeholder: str | None = None, system: str | None = None) -> FastAPI:
    """title: the page's (default "gptmini · MODEL"); placeholder: its input's (default: placeholder_for);
    system: the system prompt of chat requests that bring none."""
    if max_batch < 1 or queue_size < 0 or max_tokens < 1:
        raise GptminiError(f"need --max-batch >= 1, --queue-size >= 0 and --max-tokens >= 1 "
                           f"(got {max_batch}, {queue_size}, {max_tokens})")
    ckpt = model if isinstance(model, checkpoint.Checkpoint) else checkpoint.load(model, device=device)
    name = Path(ckpt.path).name if ckpt.path else "gptmini"
    if name in ("last", "best") and ckpt.path:
        name = f"{Path(ckpt.path).parent.name}/{name}"
    server = Server(ckpt, name, max_tokens, max_batch, queue_size, quantize, compile)
    started = int(time.time())
    page_html = render_page(title or f"gptmini · {name}", placeholder or placeholder_for(ckpt))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.close()

    app = FastAPI(title="gptmini", version="1", lifespan=lifespan)
    app.state.server = server
    if api_key:
        app.add_middleware(RequireKey, key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return error_response(400, f"invalid request: {message}", "invalid_request_error", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):  # the traceback goes to the server's log
        return error_response(500, "internal server error", "server_error")

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(page_html)

    @app.get("/health")
    async def health():
        running, waiting = server.scheduler.counts()
        return {"status": "ok", "model": server.name, "active": server.active, "capacity": server.capacity,
                "running": running, "waiting": waiting}

    @app.get("/v1/models")
    async def models():
        return {"object": "list",
                "data": [{"id": server.name, "object": "model", "created": started, "owned_by": "gptmini"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.messages[-1].role != "user":
            raise ApiError(400, "the last message must be the user's: the assistant answers it", param="messages")
        ids, folding = server.engine.read(with_system([m.model_dump() for m in body.messages], system))
        return await respond(body, ids, folding, request, chat=True)

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, request: Request):
        return await respond(body, *server.engine.read(body.prompt, raw=True), request, chat=False)

    async def respond(body: Sampling, ids: list[int], folding: Folding, request: Request, chat: bool):
        # What a char vocabulary could not read as written, beside usage (an extra field: clients keep it).
        read = {"input_folding": folding.to_dict()} if folding else {}
        params = server.params(body, len(ids), "messages" if chat else "prompt")
        job = server.start(ids, params, body.stream)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.stream:
            return EventStream(events(ident, job, len(ids), chat, read), job)
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait([job.future, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            job.cancel()  # no-op when it has finished; otherwise its client left (or the server stops)
        if not job.future.done():
            return error_response(499, "client closed the request", "invalid_request_error")
        done = job.future.result()
        choice = {"message": {"role": "assistant", "content": done.text}} if chat else {"text": done.text, "logprobs": None}
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": server.name, "choices": [{"index": 0, **choice, "finish_reason": done.finish_reason}],
                "usage": usage(len(ids), done), **read}

    async def events(ident: str, job: Job, prompt_tokens: int, chat: bool, read: dict) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | str, finish: str | None = None, **extra) -> str:
            choice = {"delta": delta} if chat else {"text": delta}
            data = {"id": ident, "object": obj, "created": int(time.time()), "model": server.name,
                    "choices": [{"index": 0, **choice, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        if chat:
            yield chunk({"role": "assistant", "content": ""})
        while (delta := await job.deltas.get()) is not None:
            yield chunk({"content": delta} if chat else delta)
        try:
            done = await job.future
        except Exception:  # noqa: BLE001  headers are sent: report it in the stream, as OpenAI does
            error = {"message": "internal server error", "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        yield chunk({} if chat else "", done.finish_reason, usage=usage(prompt_tokens, done), **read)
        yield "data: [DONE]\n\n"

    return app


def usage(prompt_tokens: int, done: Completion) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(done.token_ids),
            "total_tokens": prompt_tokens + len(done.token_ids)}


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise GptminiError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def compute_threads(requested: int | None = None) -> int:
    """The threads a server's products run on: `requested`, else every core but one. The event loop that
    writes each token's event (and, on a laptop, the browser or the client reading them) needs a core
    too: a step spread over all of them waits at every barrier for the one that was busy elsewhere
    (bench/serve.py, 2 cores: 1 thread gives 1.1-1.7x the served tokens/s of 2 at every concurrency)."""
    return requested or max(1, torch.get_num_threads() - 1)


def run_server(model: str | Path, host: str = "127.0.0.1", port: int = 8000, threads: int | None = None,
               **options) -> None:
    """The server in this process, until interrupted; threads: see compute_threads (set for the process)."""
    import uvicorn

    threads = compute_threads(threads)
    torch.set_num_threads(threads)
    app = create_app(model, **options)
    sock = listen(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    if host not in ("127.0.0.1", "localhost", "::1") and not options.get("api_key"):
        print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    server = app.state.server
    requested = options.get("device", "cpu")
    print(f"gptmini serving {model} as {server.name!r} on {describe(resolve_device(requested), requested)}: web chat at {url}/, OpenAI API at {url}/v1 "
          f"({server.max_batch} decoded together, {server.capacity - server.max_batch} more may wait, beyond that 429; "
          f"{threads} compute thread{'s' if threads > 1 else ''})",
          flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
