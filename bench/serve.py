"""Serving under concurrent users: continuous batching (`gptmini serve`, default --max-batch 8) vs the
same server decoding one request at a time (--max-batch 1), the batched one with --compile (its decode
step compiled per batch bucket, during the warm-up), and the batched one on every core (`--threads` all,
the default before serve left a core to its HTTP side, see compute_threads), in the same run.

All servers are real `gptmini serve` processes on 127.0.0.1, serving the same checkpoint: the bench
model's shape (d_model 256, 8 heads, 6 layers, context 256) with a 2,048-token BPE vocabulary, so that
every generated token decodes to text (random weights, greedy). Clients send streamed chat requests
(different questions, so rows of different lengths share a batch), up to 64 new tokens each; every
client sends its next request when its answer ends. At each concurrency, the servers take turns
(ROUNDS rounds, interleaved). Reported per server and concurrency: aggregate generated tokens/s
(every answer's tokens over the wall time), and p50/p99 of the time to first token and of the time
per token after it (as each client sees them).
Ends with `ratio: X` (batched ÷ one at a time, aggregate tokens/s at concurrency 8).
"""
from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from common import BENCH_MODEL, OURS, machine, precisions

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template, save
from gptmini.data.records import read_examples

ASSETS = Path(__file__).resolve().parents[1] / "gptmini" / "assets"
CONCURRENCY = (1, 4, 8, 16)
REQUESTS_PER_CLIENT = 3
ROUNDS = 2
MAX_TOKENS = 64
BATCHED, SINGLE, COMPILED = "--max-batch 8", "--max-batch 1", "--max-batch 8 --compile"
EVERY_CORE = f"--max-batch 8 --threads {torch.get_num_threads()}"  # the default before serve --threads: no core left to HTTP


def checkpoint(folder: Path) -> Path:
    texts = [p.read_text(encoding="utf-8") for p in sorted((ASSETS / "corpus").glob("*.txt"))]
    tokenizer = Tokenizer.train_bpe(texts, vocab_size=2048)
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(**{**BENCH_MODEL, "vocab_size": tokenizer.vocab_size}))
    save(folder / "model", model, tokenizer, {"template": get_template().to_dict()})
    return folder / "model"


def start_server(model: Path, flags: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "gptmini.cli", "serve", "--model", str(model), "--port", str(port),
                                *flags.split(), "--queue-size", "64", "--max-tokens", str(MAX_TOKENS)],
                               stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # --compile compiles its four batch buckets before it listens (~20 s each, cold)
    while time.time() < deadline:
        try:
            httpx.get(url + "/health")
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the server with {flags} did not start in 300 s")


def ask(http: httpx.Client, url: str, question: str) -> tuple[float, float | None, int]:
    """One streamed answer: (time to first token, mean time per token after it, tokens generated)."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True}
    start, first, last, tokens = time.perf_counter(), None, None, 0
    with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    per_token = (last - first) / (tokens - 1) if tokens > 1 and first else None
    return (first or time.perf_counter()) - start, per_token, tokens


def load(url: str, questions: list[str], concurrency: int) -> tuple[float, list[tuple]]:
    """`concurrency` clients, each asking REQUESTS_PER_CLIENT questions in turn: (wall seconds, answers)."""
    def client(k: int) -> list[tuple]:
        with httpx.Client(timeout=300) as http:
            return [ask(http, url, questions[(k * REQUESTS_PER_CLIENT + i) % len(questions)])
                    for i in range(REQUESTS_PER_CLIENT)]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = [a for per_client in pool.map(client, range(concurrency)) for a in per_client]
    return time.perf_counter() - started, answers


def percentiles(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {statistics.median(ms):6.1f} p99 {statistics.quantiles(ms, n=100, method='inclusive')[98]:6.1f} ms"


def main() -> None:
    questions = [e.messages[0]["content"] for e in read_examples(ASSETS / "instructions_eval.jsonl").examples]
    with tempfile.TemporaryDirectory() as tmp:
        model = checkpoint(Path(tmp))
        servers = {name: start_server(model, name) for name in (BATCHED, SINGLE, COMPILED, EVERY_CORE)}
        try:
            for _, url in servers.values():
                load(url, questions, 8)  # warm-up; --compile compiles its batch buckets (1, 2, 4, 8) here
            results = {}
            for concurrency in CONCURRENCY:
                for _ in range(ROUNDS):
                    for name, (_, url) in servers.items():
                        seconds, answers = load(url, questions, concurrency)
                        total = results.setdefault((name, concurrency), [0.0, []])
                        total[0] += seconds
                        total[1] += answers
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    print(f"machine: {machine()}")
    print(precisions(**{name: OURS for name in servers}))
    print(f"model: {BENCH_MODEL} with vocab_size 2048, random weights; streamed chat, up to {MAX_TOKENS} new tokens, "
          f"greedy; {REQUESTS_PER_CLIENT} requests per client, {ROUNDS} interleaved rounds")
    rates = {}
    for (name, concurrency), (seconds, answers) in results.items():
        rates[name, concurrency] = sum(tokens for _, _, tokens in answers) / seconds
        per_token = [p for _, p, _ in answers if p is not None]
        print(f"{name} concurrency {concurrency:2d}: {rates[name, concurrency]:7.1f} tokens/s; first token "
              f"{percentiles([t for t, _, _ in answers])}; per token {percentiles(per_token)}")
    for concurrency in CONCURRENCY:
        print(f"concurrency {concurrency:2d}: batched / one at a time = "
              f"{rates[BATCHED, concurrency] / rates[SINGLE, concurrency]:.2f}")
    print(f"--compile at concurrency 8: {rates[COMPILED, 8] / rates[BATCHED, 8]:.2f}x the batched eager server, "
          f"{rates[COMPILED, 8] / rates[EVERY_CORE, 8]:.2f}x it on every core ({EVERY_CORE})")
    for concurrency in CONCURRENCY:
        print(f"concurrency {concurrency:2d}: default threads / every core = "
              f"{rates[BATCHED, concurrency] / rates[EVERY_CORE, concurrency]:.2f}")
    print(f"ratio: {rates[BATCHED, 8] / rates[SINGLE, 8]:.2f}")


if __name__ == "__main__":
    main()
