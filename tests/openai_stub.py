"""A small OpenAI-compatible server with canned replies, on real HTTP (uvicorn on 127.0.0.1): what a teacher
or a judge answers can be chosen, which a tiny gptmini model cannot do, and so can its failures."""
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from gptmini import GPTConfig, GPTMini, get_template, save
from gptmini.serve import create_app
from tests.test_serve import LiveServer


@dataclass
class Stub:
    """reply(prompt) -> text answers each request; `script` holds what the next requests get instead, one entry
    each (a status such as 503, "slow": the reply after `delay` seconds, "junk": a 200 that is no completion);
    from request number `fail_from` (1-based) on, every request gets `fail_with` (one of those)."""
    reply: Callable[[str], str] = lambda prompt: "ok"
    models: tuple = ("teacher",)
    key: str | None = None
    delay: float = 1.0
    script: list = field(default_factory=list)
    fail_from: int | None = None
    fail_with: object = 500
    requests: list = field(default_factory=list)  # the bodies received (those past the key and model checks)

    def prompts(self) -> list[str]:
        return [b["messages"][-1]["content"] for b in self.requests if b.get("max_tokens") != 1]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "stub", "code": None}}, status_code=status)


def stub_app(stub: Stub) -> FastAPI:
    app = FastAPI()
    app.state.server = None  # LiveServer's handle on a gptmini server: there is none

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in stub.models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if stub.key and request.headers.get("authorization") != f"Bearer {stub.key}":
            return error(401, "Incorrect API key provided")
        body = await request.json()
        if body["model"] not in stub.models:
            return error(404, f"model '{body['model']}' not found")
        stub.requests.append(body)
        fault = stub.script.pop(0) if stub.script else None
        if stub.fail_from is not None and len(stub.requests) >= stub.fail_from:
            fault = stub.fail_with
        if fault == "slow":
            await asyncio.sleep(stub.delay)
        elif fault == "junk":
            return PlainTextResponse("<html>gateway</html>")
        elif fault is not None:
            return error(fault, "the stub is overloaded")
        content = stub.reply(body["messages"][-1]["content"])
        return {"object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}

    return app


@pytest.fixture
def stub_server():
    """stub_server(Stub(...)) -> its base URL (http://127.0.0.1:PORT/v1); stopped after the test."""
    servers = []

    def start(stub: Stub) -> str:
        servers.append(LiveServer(stub_app(stub)))
        return servers[-1].url + "/v1"

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gptmini_server(tmp_path, char_tokenizer):
    """gptmini_server(**create_app options) -> a LiveServer of `gptmini serve` on a tiny random model whose
    context holds a teacher's or a judge's prompt (a few hundred characters)."""
    config = GPTConfig(vocab_size=char_tokenizer.vocab_size, context_size=1024, d_model=32, n_heads=4, n_layers=1)
    save(tmp_path / "served", GPTMini(config), char_tokenizer, {"template": get_template().to_dict()})
    servers = []

    def start(**options) -> LiveServer:
        servers.append(LiveServer(create_app(tmp_path / "served", max_tokens=24, **options)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
