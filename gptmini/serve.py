"""`gptmini serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a small web chat page.

Generation runs in a pool of worker threads, off the event loop; each request has its own KV
cache (the model's weights are only read). Requests beyond the workers wait in a bounded queue;
when it is full the server answers 429 instead of growing without bound. A client that goes away
mid-stream stops its generation at the next token, freeing its place.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import checkpoint
from .data.templates import get_template
from .engine import Completion, Engine, SamplingParams

STATIC = Path(__file__).resolve().parent / "static"


class Message(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class Sampling(BaseModel):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def error_response(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class Cancelled(Exception):
    """Raised inside a generation whose client went away."""


class Server:
    def __init__(self, ckpt: checkpoint.Checkpoint, name: str, max_tokens: int, workers: int, queue_size: int) -> None:
        self.engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template or get_template())
        self.name, self.max_tokens, self.capacity = name, max_tokens, workers + queue_size
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gptmini-generate")
        self.active = 0  # requests generating or waiting; only touched on the event loop

    def params(self, body: Sampling, prompt_tokens: int) -> SamplingParams:
        context = self.engine.model.config.context_size
        if prompt_tokens >= context:
            raise ApiError(400, f"the prompt has {prompt_tokens} tokens; this model's context holds {context} "
                                f"(prompt and answer together): shorten it", code="context_length_exceeded", param="messages")
        requested = body.max_tokens or self.max_tokens
        if requested > self.max_tokens:
            raise ApiError(400, f"max_tokens {requested} is above this server's limit of {self.max_tokens}",
                           param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        # Fit the answer in what the window has left, so the prompt is never cut.
        return SamplingParams(min(requested, context - prompt_tokens), body.temperature,
                              None, body.top_p, body.seed, tuple(stop))

    def admit(self) -> None:
        if self.active >= self.capacity:
            raise ApiError(429, f"server busy: {self.active} requests in progress or queued; retry shortly",
                           kind="rate_limit_error", code="queue_full")
        self.active += 1

    def run(self, ids: list[int], params: SamplingParams, on_text=None, cancelled=lambda: False) -> Completion:
        def callback(_, delta):
            if cancelled():
                raise Cancelled
            if on_text:
                on_text(delta)
        return self.engine.generate([ids], params, on_text=callback)[0]


def create_app(model: str | Path | checkpoint.Checkpoint, api_key: str | None = None, max_tokens: int = 256,
               workers: int = 1, queue_size: int = 16) -> FastAPI:
    ckpt = model if isinstance(model, checkpoint.Checkpoint) else checkpoint.load(model)
    name = Path(ckpt.path).name if ckpt.path else "gptmini"
    if name in ("last", "best") and ckpt.path:
        name = f"{Path(ckpt.path).parent.name}/{name}"
    server = Server(ckpt, name, max_tokens, workers, queue_size)
    app = FastAPI(title="gptmini", version="1")
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return error_response(400, f"invalid request: {where or 'body'}: {first.get('msg')}", "invalid_request_error",
                              param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                      "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.name, "active": server.active}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.name, "object": "model", "created": 0, "owned_by": "gptmini"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        ids = server.engine.encode_prompt([m.model_dump() for m in body.messages])
        return await respond(body, ids, chat=True)

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest):
        return await respond(body, server.engine.encode_prompt(body.prompt), chat=False)

    async def respond(body: Sampling, ids: list[int], chat: bool):
        params = server.params(body, len(ids))
        server.admit()
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.stream:
            return StreamingResponse(stream(ident, ids, params, chat), media_type="text/event-stream")
        try:
            done = await asyncio.get_running_loop().run_in_executor(server.pool, server.run, ids, params)
        finally:
            server.active -= 1
        choice = ({"message": {"role": "assistant", "content": done.text}} if chat else {"text": done.text})
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": server.name, "choices": [{"index": 0, **choice, "finish_reason": done.finish_reason}],
                "usage": usage(len(ids), done)}

    async def stream(ident: str, ids: list[int], params: SamplingParams, chat: bool):
        loop, queue, gone = asyncio.get_running_loop(), asyncio.Queue(), [False]
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | str, finish: str | None = None, **extra) -> str:
            choice = {"delta": delta} if chat else {"text": delta}
            data = {"id": ident, "object": obj, "created": int(time.time()), "model": server.name,
                    "choices": [{"index": 0, **choice, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def on_text(delta: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        job = loop.run_in_executor(server.pool, server.run, ids, params, on_text, lambda: gone[0])
        # The callback runs on the loop: it marks the outcome as seen and ends the delta stream.
        job.add_done_callback(lambda f: (f.cancelled() or f.exception(), queue.put_nowait(None)))
        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            while (delta := await queue.get()) is not None:
                yield chunk({"content": delta} if chat else delta)
            done = await job
            yield chunk({} if chat else "", done.finish_reason, usage=usage(len(ids), done))
            yield "data: [DONE]\n\n"
        finally:
            gone[0] = True  # a client that left stops the generation at its next token
            server.active -= 1

    return app


def usage(prompt_tokens: int, done: Completion) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(done.token_ids),
            "total_tokens": prompt_tokens + len(done.token_ids)}


def run_server(model: str | Path, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    app = create_app(model, **options)
    print(f"gptmini serving {model} on http://{host}:{port}/  (OpenAI API under /v1)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
