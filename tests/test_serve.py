"""The real server on 127.0.0.1, spoken to by the official openai client and plain HTTP."""
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn

from gptmini import Engine, SamplingParams, get_template, save
from gptmini.serve import create_app

QUESTIONS = ["Olá", "O que é atenção?", "ação", "modelo de linguagem", "Explique", "oi"]


class LiveServer:
    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def ckpt_dir(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    return tmp_path / "c"


@pytest.fixture
def live(ckpt_dir):
    servers = []

    def start(**options):
        servers.append(LiveServer(create_app(ckpt_dir, **options)))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def greedy(tiny_model, char_tokenizer, question, max_tokens):
    engine = Engine(tiny_model, char_tokenizer, get_template())
    ids = engine.encode_prompt([{"role": "user", "content": question}])
    return engine.generate([ids], SamplingParams(max_new_tokens=max_tokens))[0]


def test_openai_client_chat_stream_equals_non_stream(live, tiny_model, char_tokenizer):
    server = live(max_tokens=16)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["c"]
    messages = [{"role": "user", "content": "Olá"}]
    full = client.chat.completions.create(model="c", messages=messages, max_tokens=12, temperature=0)
    expected = greedy(tiny_model, char_tokenizer, "Olá", 12)
    assert full.choices[0].message.content == expected.text
    assert full.choices[0].finish_reason == expected.finish_reason
    assert full.usage.completion_tokens == len(expected.token_ids)
    assert full.usage.prompt_tokens == full.usage.total_tokens - full.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="c", messages=messages, max_tokens=12, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_completions_health_and_length_finish(live, tiny_model, char_tokenizer):
    server = live()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    out = client.completions.create(model="c", prompt="Atenção", max_tokens=5, temperature=0)
    engine = Engine(tiny_model, char_tokenizer)
    expected = engine.generate([engine.encode_prompt("Atenção")], SamplingParams(max_new_tokens=5))[0]
    assert out.choices[0].text == expected.text and out.choices[0].finish_reason == expected.finish_reason
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def error_of(response):
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]["message"]


def test_error_cases(live):
    server = live(max_tokens=16, api_key="sekret")
    auth = {"Authorization": "Bearer sekret"}
    url = server.url + "/v1/chat/completions"
    assert httpx.post(url, json={"messages": [{"role": "user", "content": "oi"}]}).status_code == 401
    wrong = httpx.post(url, json={"messages": [{"role": "user", "content": "oi"}]}, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401 and "API key" in error_of(wrong)
    ok = httpx.post(url, json={"messages": [{"role": "user", "content": "oi"}], "max_tokens": 3}, headers=auth)
    assert ok.status_code == 200
    long = httpx.post(url, json={"messages": [{"role": "user", "content": "a" * 500}]}, headers=auth)
    assert long.status_code == 400 and "context" in error_of(long)
    cap = httpx.post(url, json={"messages": [{"role": "user", "content": "oi"}], "max_tokens": 999}, headers=auth)
    assert cap.status_code == 400 and "above this server's limit of 16" in error_of(cap)
    bad = httpx.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert bad.status_code == 400 and error_of(bad)
    typed = httpx.post(url, json={"messages": "hello"}, headers=auth)
    assert typed.status_code == 400 and "messages" in error_of(typed)
    assert httpx.get(server.url + "/health").status_code == 200  # not behind the key


def test_full_queue_gets_429_and_the_server_keeps_serving(live):
    server = live(workers=1, queue_size=0, max_tokens=16)
    srv = server.server.config.app.state.server
    gate, original = threading.Event(), srv.run
    srv.run = lambda *a, **k: (gate.wait(10), original(*a, **k))[1]  # the first request holds the only worker
    url = server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "oi"}], "max_tokens": 2}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url, json=body, timeout=30)
        while httpx.get(server.url + "/health").json()["active"] == 0:
            time.sleep(0.01)
        busy = httpx.post(url, json=body)
        assert busy.status_code == 429 and "busy" in error_of(busy)
        gate.set()
        assert first.result().status_code == 200
    assert httpx.post(url, json=body).status_code == 200


def test_a_client_leaving_mid_stream_stops_its_generation_and_frees_its_place(live):
    server = live(workers=1, queue_size=0, max_tokens=30)
    srv = server.server.config.app.state.server
    produced, original = [], srv.run

    def slow(ids, params, on_text=None, cancelled=lambda: False):
        def tick(delta):
            produced.append(delta)
            time.sleep(0.05)
            on_text(delta)
        return original(ids, params, tick, cancelled)

    srv.run = slow
    srv.engine.tokenizer.eot_id = -1  # never stop early: only the disconnect can end it
    url = server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "oi"}], "max_tokens": 30, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body) as response:
        lines = response.iter_lines()
        next(lines), next(lines), next(lines)  # the role chunk and a first delta
    deadline = time.time() + 5
    while httpx.get(server.url + "/health").json()["active"] and time.time() < deadline:
        time.sleep(0.02)
    assert httpx.get(server.url + "/health").json()["active"] == 0
    time.sleep(0.2)
    assert len(produced) < 30  # generation stopped early
    srv.run = original
    ok = httpx.post(url, json={"messages": [{"role": "user", "content": "oi"}], "max_tokens": 2})
    assert ok.status_code == 200


def test_bounded_load_200_requests_at_concurrency_8(live, tiny_model, char_tokenizer):
    server = live(workers=2, queue_size=16, max_tokens=16)
    expected = {q: greedy(tiny_model, char_tokenizer, q, 8).text for q in QUESTIONS}

    def one(i):
        q = QUESTIONS[i % len(QUESTIONS)]
        start = time.perf_counter()
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": q}], "max_tokens": 8, "temperature": 0})
        return q, r.status_code, r.json(), time.perf_counter() - start

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    elapsed = time.perf_counter() - started
    assert all(status == 200 for _, status, _, _ in results)
    assert all(body["choices"][0]["message"]["content"] == expected[q] for q, _, body, _ in results)
    latencies = sorted(r[3] for r in results)
    print(f"\nload: 200 requests, concurrency 8: {200 / elapsed:.1f} requests/s, "
          f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {latencies[int(0.99 * len(latencies)) - 1] * 1000:.0f} ms")
