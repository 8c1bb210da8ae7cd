"""The real server on 127.0.0.1, spoken to by the official openai client and plain HTTP."""
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn
from starlette.requests import ClientDisconnect

from gptmini import Engine, SamplingParams, get_template, load, save
from gptmini.serve import ChatRequest, compute_threads, create_app

TEMPLATE = get_template()
QUESTIONS = ["Olá", "O que é atenção?", "ação", "modelo de linguagem", "Explique", "oi"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn on 127.0.0.1 in a background thread; `server` is the app's gptmini.serve.Server."""

    def __init__(self, app, port: int | None = None):
        self.app, self.server, self.port = app, app.state.server, port or free_port()
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.uvicorn.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.uvicorn.started, "uvicorn did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def active(self) -> int:
        return httpx.get(self.url + "/health").json()["active"]

    def wait_active(self, n: int, timeout: float = 5) -> int:
        deadline = time.time() + timeout
        while (got := self.active()) != n and time.time() < deadline:
            time.sleep(0.01)
        return got

    def stop(self):
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def ckpt_dir(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    return tmp_path / "c"


@pytest.fixture
def live(ckpt_dir):
    servers = []

    def start(model=ckpt_dir, **options):
        servers.append(LiveServer(create_app(model, **options)))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def greedy(model, tokenizer, prompt, max_tokens, template=TEMPLATE):
    """The reference answer: a str is a user question (or, with template=None, a raw prompt)."""
    engine = Engine(model, tokenizer, template)
    if isinstance(prompt, str) and template is not None:
        prompt = [{"role": "user", "content": prompt}]
    ids = engine.encode_prompt(prompt, raw=template is None)
    return engine.generate([ids], SamplingParams(max_new_tokens=max_tokens))[0]


def client_for(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def read_sse(response) -> list[dict]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def slow_generation(server, delay, produced=None):
    """Makes every step of `server`'s scheduler take `delay` seconds more (and records in `produced`
    the tokens each step generated)."""
    original = server.scheduler.step

    def step():
        time.sleep(delay)
        tokens = original()
        if produced is not None and tokens:
            produced.append(tokens)
        return tokens

    server.scheduler.step = step
    return original


def test_openai_client_chat_stream_equals_non_stream(live, tiny_model, char_tokenizer):
    server = live(max_tokens=16)
    client = client_for(server)
    assert [m.id for m in client.models.list().data] == ["c"]
    messages = [{"role": "user", "content": "Olá"}]
    full = client.chat.completions.create(model="c", messages=messages, max_tokens=12, temperature=0)
    expected = greedy(tiny_model, char_tokenizer, "Olá", 12)
    assert expected.finish_reason == "length" and len(expected.token_ids) == 12  # the tiny model never stops
    assert full.choices[0].message.content == expected.text
    assert full.choices[0].finish_reason == "length"
    prompt_tokens = len(Engine(tiny_model, char_tokenizer, get_template()).encode_prompt(messages))
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == (
        prompt_tokens, 12, prompt_tokens + 12)
    chunks = list(client.chat.completions.create(model="c", messages=messages, max_tokens=12, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == 12
    # max_completion_tokens (the newer name) works too; seeded sampling is reproducible
    newer = client.chat.completions.create(model="c", messages=messages, max_completion_tokens=4, temperature=0)
    assert newer.choices[0].message.content == greedy(tiny_model, char_tokenizer, "Olá", 4).text
    sampled = [client.chat.completions.create(model="c", messages=messages, max_tokens=10, temperature=1.0,
                                              top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_completions_models_health(live, tiny_model, char_tokenizer):
    server = live()
    client = client_for(server)
    out = client.completions.create(model="c", prompt="Atenção", max_tokens=5, temperature=0)
    expected = greedy(tiny_model, char_tokenizer, "Atenção", 5, template=None)
    assert out.choices[0].text == expected.text and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(char_tokenizer.encode("Atenção")), 5)
    streamed = list(client.completions.create(model="c", prompt="Atenção", max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected.text
    assert streamed[-1].choices[0].finish_reason == "length"
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "c"
    health = httpx.get(server.url + "/health").json()
    assert health == {"status": "ok", "model": "c", "active": 0, "capacity": 24, "running": 0, "waiting": 0}


def test_stop_strings(live, tiny_model, char_tokenizer):
    server = live()
    client = client_for(server)
    text = greedy(tiny_model, char_tokenizer, "Olá", 16).text
    stop = text[6:8]
    cut = text[:text.find(stop)]
    for value in (stop, [stop, "zzz"], ["", stop]):  # a string or a list; an empty stop string is ignored
        out = client.chat.completions.create(model="c", messages=[{"role": "user", "content": "Olá"}], max_tokens=16,
                                             temperature=0, stop=value)
        assert (out.choices[0].message.content, out.choices[0].finish_reason) == (cut, "stop")
    chunks = list(client.chat.completions.create(model="c", messages=[{"role": "user", "content": "Olá"}],
                                                 max_tokens=16, temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_base_model_serves_completions_and_chats_with_the_default_template(live, tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "base", tiny_model, char_tokenizer)  # no template in its meta
    server = live(tmp_path / "base")
    client = client_for(server)
    raw = client.completions.create(model="base", prompt="modelo", max_tokens=6, temperature=0)
    assert raw.choices[0].text == greedy(tiny_model, char_tokenizer, "modelo", 6, template=None).text
    chat = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "oi"}], max_tokens=6,
                                          temperature=0)
    assert chat.choices[0].message.content == greedy(tiny_model, char_tokenizer, "oi", 6, get_template()).text


def error_of(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_error_cases(live):
    server = live(max_tokens=16, api_key="sekret")
    auth = {"Authorization": "Bearer sekret"}
    url = server.url + "/v1/chat/completions"
    hello = {"messages": [{"role": "user", "content": "oi"}], "max_tokens": 3}
    missing = httpx.post(url, json=hello)
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json=hello, headers={"Authorization": "Bearer sekre"})
    assert wrong.status_code == 401 and "API key" in error_of(wrong)["message"]
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client_for(server, "nope").chat.completions.create(model="c", messages=hello["messages"])
    assert client_for(server, "sekret").chat.completions.create(model="c", messages=hello["messages"], max_tokens=3)
    assert httpx.post(url, json=hello, headers=auth).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # the page and /health are not behind the key
    assert httpx.get(server.url + "/").status_code == 200

    def post(body, path="/v1/chat/completions", **kw):
        response = httpx.post(server.url + path, headers={**auth, **kw.pop("headers", {})}, **({"json": body} | kw))
        return response.status_code, error_of(response)

    status, error = post({"messages": [{"role": "user", "content": "a" * 500}]})
    assert (status, error["code"], error["param"]) == (400, "context_length_exceeded", "messages")
    assert "500" not in error["message"] and "context holds 64" in error["message"]
    status, error = post({"prompt": "a" * 64}, "/v1/completions")
    assert (status, error["code"], error["param"]) == (400, "context_length_exceeded", "prompt")
    status, error = post({**hello, "max_tokens": 999})
    assert status == 400 and "above this server's limit of 16" in error["message"] and error["param"] == "max_tokens"
    status, error = post(None, content=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in error["message"] and error["type"] == "invalid_request_error"
    assert post(None, content=b"[1, 2]", headers={"Content-Type": "application/json"})[0] == 400
    status, error = post({"messages": "hello"})
    assert status == 400 and error["param"] == "messages"
    for field, value in [("max_tokens", "5"), ("max_tokens", 0), ("temperature", 3), ("temperature", True),
                         ("top_p", 0), ("stop", 7), ("stop", ["a", "b", "c", "d", "e"]), ("seed", 2**64),
                         ("stream", "yes"), ("n", 2)]:
        status, error = post({**hello, field: value})
        assert (status, error["param"]) == (400, field), (field, value, error)
    status, error = post({"messages": [{"role": "robot", "content": "oi"}]})
    assert status == 400 and error["message"].startswith("invalid request: messages.0.role")
    status, error = post({"messages": [{"role": "user", "content": "oi"}, {"role": "assistant", "content": "x"}]})
    assert status == 400 and "last message" in error["message"]
    assert post({"messages": []})[0] == 400
    assert post({"prompt": 5}, "/v1/completions")[0] == 400
    assert httpx.get(server.url + "/v1/nothing", headers=auth).status_code == 404
    assert error_of(httpx.get(server.url + "/v1/nothing", headers=auth))["message"] == "Not Found"


def test_full_queue_gets_429_and_the_server_keeps_serving(live):
    server = live(max_batch=1, queue_size=1, max_tokens=16)
    scheduler = server.server.scheduler
    gate, original = threading.Event(), scheduler.step
    scheduler.step = lambda: (gate.wait(10), original())[1]  # holds the scheduler
    url = server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "oi"}], "max_tokens": 2}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, url, json=body, timeout=30)
        assert server.wait_active(1) == 1
        queued = pool.submit(httpx.post, url, json=body, timeout=30)  # waits in the queue
        assert server.wait_active(2) == 2
        busy = httpx.post(url, json=body)
        assert busy.status_code == 429
        error = error_of(busy)
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full") and "busy" in error["message"]
        with pytest.raises(openai.RateLimitError):
            client_for(server).chat.completions.create(model="c", messages=body["messages"], stream=True)
        gate.set()
        assert first.result().status_code == 200 and queued.result().status_code == 200
    assert server.wait_active(0) == 0
    assert httpx.post(url, json=body).status_code == 200


def test_a_client_leaving_mid_stream_stops_its_generation_and_frees_its_place(live):
    server = live(max_batch=1, queue_size=1, max_tokens=40)
    produced = []
    original = slow_generation(server.server, 0.05, produced)
    server.server.engine.tokenizer.eot_id = -1  # never stop early: only the disconnect can end it
    url = server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "oi"}], "max_tokens": 40, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body) as response:
        lines = (line for line in response.iter_lines() if line)
        next(lines), next(lines)  # the role chunk and a first delta, then the client hangs up
    assert server.wait_active(0) == 0
    stopped_at = len(produced)
    time.sleep(0.3)
    assert len(produced) == stopped_at < 15  # generation stopped within a token or two, not at 40
    # A client that gives up on a non-streamed answer (a timeout) stops its generation too.
    produced.clear()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={**body, "stream": False}, timeout=0.5)
    assert server.wait_active(0) == 0
    assert len(produced) < 20
    server.server.scheduler.step = original
    started = time.perf_counter()
    ok = httpx.post(url, json={"messages": [{"role": "user", "content": "oi"}], "max_tokens": 2})
    assert ok.status_code == 200 and time.perf_counter() - started < 2  # the worker is free


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_client_gone_before_the_first_byte_gives_its_place_back(ckpt_dir, spec_version):
    """At the ASGI level: the client is gone before the response starts, so the event generator
    never runs (ASGI 2.4: `send` fails at once; 2.3: the disconnect is already waiting)."""
    app = create_app(ckpt_dir, max_batch=1, queue_size=0, max_tokens=30)
    server = app.state.server
    slow_generation(server, 0.02)
    body = json.dumps({"messages": [{"role": "user", "content": "oi"}], "stream": True, "max_tokens": 30}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def scenario():
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            raise OSError("connection reset by peer")

        with contextlib.suppress(OSError, ClientDisconnect):
            await app(scope, receive, send)
        for _ in range(300):
            if server.active == 0:
                break
            await asyncio.sleep(0.01)
        return server.active

    assert asyncio.run(scenario()) == 0
    server.close()


@pytest.fixture
def lively_ckpt(tmp_path, tiny_model, char_tokenizer):
    """Large random weights: greedy text that depends on the whole context, so a row that read
    another row's keys, positions or cache would answer differently."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    save(tmp_path / "lively", tiny_model, char_tokenizer, {"template": TEMPLATE.to_dict()})
    return tmp_path / "lively"


def test_16_concurrent_greedy_requests_equal_sequential_runs(live, lively_ckpt, tiny_model, char_tokenizer):
    """Different prompts, limits and stop strings decoded in one batch; one request joins mid-way,
    one is cancelled mid-way: every answer is the one the request gets alone."""
    server = live(lively_ckpt, max_batch=16, queue_size=2, max_tokens=20)
    steps = []
    slow_generation(server.server, 0.01, steps)
    engine = Engine(tiny_model, char_tokenizer, TEMPLATE)
    cases = []
    for i in range(17):
        question = QUESTIONS[i % len(QUESTIONS)] + " " + "abcdefghijklmnopq"[i]
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 6 + i % 12, "temperature": 0}
        if i % 4 == 1:  # a stop string the answer reaches
            text = greedy(tiny_model, char_tokenizer, question, body["max_tokens"]).text
            body["stop"] = text[3:5]
        ids = engine.encode_prompt(body["messages"])
        params = server.server.params(ChatRequest(**body), len(ids), "messages")
        cases.append((body, engine.generate([ids], params)[0]))
    assert sum(expected.finish_reason == "stop" for _, expected in cases) >= 4
    client = client_for(server)

    def ask(body):
        out = client.chat.completions.create(model="c", **body)
        return out.choices[0].message.content, out.choices[0].finish_reason

    url = server.url + "/v1/chat/completions"
    with ThreadPoolExecutor(17) as pool:
        answers = [pool.submit(ask, body) for body, _ in cases[:15]]
        with httpx.Client(timeout=30) as http, http.stream("POST", url, json={**cases[15][0], "max_tokens": 20,
                                                                              "stream": True}) as response:
            lines = (line for line in response.iter_lines() if line)
            next(lines), next(lines), next(lines)  # the role chunk and two deltas, then it hangs up
        late = pool.submit(ask, cases[16][0])  # joins the running batch
        answers.append(late)
        got = [a.result() for a in answers]
    for (content, finish), (_, expected) in zip(got, [*cases[:15], cases[16]]):
        assert (content, finish) == (expected.text, expected.finish_reason)
    assert max(steps) >= 12  # the requests were decoded together
    assert server.wait_active(0) == 0
    assert httpx.get(server.url + "/health").json()["running"] == 0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def test_bounded_load_500_requests_at_concurrency_16(live, tiny_model, char_tokenizer):
    """Half streamed, one in five streamed ones hung up after its first delta: no error, every completed
    answer right, the server's memory flat and every place given back. (The queue is larger than the
    concurrency: a client that hung up holds its place until the server sees it gone.)"""
    server = live(max_batch=8, queue_size=16, max_tokens=16)
    expected = {q: greedy(tiny_model, char_tokenizer, q, 8).text for q in QUESTIONS}
    url = server.url + "/v1/chat/completions"

    def one(i, http):
        q, stream = QUESTIONS[i % len(QUESTIONS)], i % 2 == 1
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": 8, "temperature": 0, "stream": stream}
        start = time.perf_counter()
        if stream:
            with http.stream("POST", url, json=body) as r:
                if r.status_code == 200 and i % 10 == 3:  # the client leaves mid-answer
                    lines = (line for line in r.iter_lines() if line)
                    next(lines), next(lines)
                    return q, r.status_code, None, None
                text = "".join(e["choices"][0]["delta"].get("content", "") for e in read_sse(r)) if r.status_code == 200 else None
                status = r.status_code
        else:
            r = http.post(url, json=body)
            status = r.status_code
            text = r.json()["choices"][0]["message"]["content"] if status == 200 else None
        return q, status, text, time.perf_counter() - start

    def load(n):
        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as http, ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda i: one(i, http), range(n)))

    load(50)  # warm-up: allocator pools, threads, connections
    before = rss_mb()
    started = time.perf_counter()
    results = load(500)
    elapsed = time.perf_counter() - started
    statuses = [status for _, status, _, _ in results]
    assert statuses == [200] * 500, {s: statuses.count(s) for s in set(statuses)}
    completed = [(q, text) for q, _, text, latency in results if latency is not None]
    assert len(completed) == 450 and all(text == expected[q] for q, text in completed)
    assert server.wait_active(0) == 0
    assert httpx.get(server.url + "/health").json()["waiting"] == 0
    grown = rss_mb() - before
    assert grown < 50, f"memory grew {grown:.0f} MB over 500 requests"
    latencies = [r[3] * 1000 for r in results if r[3] is not None]
    cuts = statistics.quantiles(latencies, n=100)
    print(f"\nload: 500 requests (half streamed, 50 hung up), concurrency 16, max batch 8, 8 new tokens each: "
          f"{500 / elapsed:.1f} requests/s, p50 {statistics.median(latencies):.0f} ms, p99 {cuts[98]:.0f} ms, "
          f"memory {grown:+.1f} MB")


def test_cli_serve_its_page_flags_and_a_busy_port(ckpt_dir, tiny_model, char_tokenizer):
    port = free_port()
    command = [sys.executable, "-m", "gptmini.cli", "serve", "--model", str(ckpt_dir), "--port", str(port),
               "--max-tokens", "8", "--title", "Padaria Pão Quente", "--placeholder", "Pergunte sobre os pães",
               "--system", "Seja breve.", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in banner, banner + process.stderr.read()
        assert banner.rstrip().endswith("beyond that 429; 1 compute thread)"), banner
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health").json()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health["model"] == "c"
        page = httpx.get(f"http://127.0.0.1:{port}/").text
        assert "<title>Padaria Pão Quente</title>" in page and 'placeholder="Pergunte sobre os pães"' in page
        asked = [{"role": "user", "content": "Olá"}]
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": asked, "temperature": 0})
        system = {"role": "system", "content": "Seja breve."}
        assert reply.json()["choices"][0]["message"]["content"] == greedy(tiny_model, char_tokenizer, [system, *asked], 8).text
        busy = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert busy.stderr.strip() == f"gptmini serve: error: cannot listen on 127.0.0.1:{port} (Address already in use)"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_server_leaves_one_core_to_its_http_side_unless_told(monkeypatch):
    for cores, expected in ((1, 1), (2, 1), (16, 15)):
        monkeypatch.setattr(torch, "get_num_threads", lambda cores=cores: cores)
        assert compute_threads() == expected and compute_threads(3) == 3


def test_what_a_char_vocabulary_cannot_read_is_folded_and_said_beside_the_answer(live, ascii_ckpt):
    server = live(ascii_ckpt, max_tokens=16)
    client = client_for(server)
    ckpt = load(ascii_ckpt)
    typed, plain = "O que é atenção? “ok” €", 'O que e atencao? "ok" €'
    expected = greedy(ckpt.model, ckpt.tokenizer, plain, 16).text
    as_typed = Engine(ckpt.model, ckpt.tokenizer, TEMPLATE).generate(
        [TEMPLATE.encode(ckpt.tokenizer, [{"role": "user", "content": typed}])[0]], SamplingParams(max_new_tokens=16))
    assert as_typed[0].text != expected  # <|unk|> for every accent answers otherwise
    said = {"note": "5 characters folded to the vocabulary: é→e, ç→c, ã→a, “→\", ”→\"; 1 unreadable: '€'",
            "folded": [{"from": c, "to": plain, "count": 1} for c, plain in ("ée", "çc", "ãa", '“"', '”"')],
            "unreadable": [{"character": "€", "count": 1}]}
    messages = [{"role": "user", "content": typed}]
    reply = client.chat.completions.create(model="ascii", messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == expected and reply.model_extra["input_folding"] == said
    chunks = list(client.chat.completions.create(model="ascii", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].model_extra["input_folding"] == said and chunks[-1].choices[0].finish_reason
    raw = client.completions.create(model="ascii", prompt="atenção", max_tokens=4, temperature=0)
    assert raw.model_extra["input_folding"]["note"] == "2 characters folded to the vocabulary: ç→c, ã→a"
    plain_reply = client.chat.completions.create(model="ascii", messages=[{"role": "user", "content": "Tudo bem?"}],
                                                 max_tokens=4, temperature=0)
    assert "input_folding" not in plain_reply.model_extra  # nothing to say: the response is OpenAI's own shape


def test_the_page_and_the_api_carry_the_title_placeholder_and_system_prompt_given(live, lively_ckpt, tmp_path,
                                                                                 tiny_model, char_tokenizer):
    save(tmp_path / "faq", tiny_model, char_tokenizer,  # lively_ckpt's weights, and the question sft records
         {"template": TEMPLATE.to_dict(), "data": {"first_question": "Tem   estacionamento?\n"}})
    page = httpx.get(live(tmp_path / "faq").url + "/").text
    assert "<title>gptmini · faq</title>" in page and '<h1 id="title">gptmini · faq</h1>' in page
    assert 'placeholder="Escreva sua mensagem… (ex.: Tem estacionamento?)"' in page
    assert 'placeholder="Escreva sua mensagem…"' in httpx.get(live(lively_ckpt).url + "/").text  # none recorded
    system = "Seja gentil."
    bakery = live(tmp_path / "faq", title="Padaria <Pão & Cia>", placeholder='Pergunte sobre "pães"', system=system,
                  max_tokens=12)
    page = httpx.get(bakery.url + "/").text
    assert "<title>Padaria &lt;Pão &amp; Cia&gt;</title>" in page and "Padaria <Pão" not in page
    assert 'placeholder="Pergunte sobre &quot;pães&quot;"' in page and "__" not in page
    client = client_for(bakery)
    asked = [{"role": "user", "content": "Olá"}]

    def answer(messages):
        return client.chat.completions.create(model="faq", messages=messages, max_tokens=12,
                                              temperature=0).choices[0].message.content

    with_system = greedy(tiny_model, char_tokenizer, [{"role": "system", "content": system}, *asked], 12).text
    assert answer(asked) == with_system != greedy(tiny_model, char_tokenizer, asked, 12).text
    own = [{"role": "system", "content": "Seja breve."}, *asked]  # a request's own system message wins
    assert answer(own) == greedy(tiny_model, char_tokenizer, own, 12).text != with_system
