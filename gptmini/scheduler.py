"""Continuous batching: many requests decoded together, joining and leaving between steps.

Every step feeds the last token of each running request through the model as one batch (the
weights stream from memory once for all of them), then samples each row with its own parameters,
seed, stop strings and token limit. A new request is prefilled on its own into a free slot of the
KV pool and joins at the next step; the others' caches are left as they are. A finished or
cancelled request leaves at once and the last slot moves into its place, so the running rows are
always slots 0..n-1 and a step reads plain views of the pool.

Each request's answer is the one it would get alone (Engine.generate): its prefill is the same
batch-1 prefill, its rotary positions and attention mask are its own, and it slides its window
on its own length. With one running request the step is the alone step exactly (no mask at all).
"""
from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .engine import Completion, Engine, SamplingParams, _Row, _Window, sample_next, slid
from .model import GPTConfig, KVCache, StaticCache


# On a CPU a batched step of 8 rows costs about 2x one row (the weights stream once for all), so
# 8 users get ~4x the tokens/s; past ~16 the rows' own work (attention, sampling) dominates and
# every user's per-token latency grows with the batch.
MAX_BATCH = 8


class Cancelled(Exception):
    """A request that was cancelled (its client left, or the scheduler was stopped) before it finished."""


class SlotCache(StaticCache):
    """Keys and values for `slots` sequences, each slot with its own length (the model's cache for a step)."""

    def __init__(self, config: GPTConfig, slots: int, device, dtype) -> None:
        shape = (config.n_layers, slots, config.n_kv_heads, config.context_size, config.head_dim)
        super().__init__(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                         torch.zeros(0, dtype=torch.long, device=device))
        self.lengths = [0] * slots
        self.length = 0  # the longest row of this step: the model attends over keys [0, length]

    def store(self, slot: int, cache: KVCache) -> None:
        """Takes a one-row prefill's cache into `slot`."""
        n = cache.length
        self.k[:, slot, :, :n], self.v[:, slot, :, :n] = cache.k[:, 0, :, :n], cache.v[:, 0, :, :n]
        self.lengths[slot] = n

    def move(self, source: int, slot: int) -> None:
        n = self.lengths[source]
        self.k[:, slot, :, :n], self.v[:, slot, :, :n] = self.k[:, source, :, :n], self.v[:, source, :, :n]
        self.lengths[slot] = n

    def begin(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Rows 0..n-1 each take one token: their (n, 1) positions and (n, S) key mask (None, None for one
        row, whose position is the cache length and which sees every cached key)."""
        device = self.k.device
        self.index, self.length = torch.tensor(self.lengths[:n], device=device), max(self.lengths[:n])
        if n == 1:
            return None, None
        return self.index[:, None], torch.arange(self.length + 1, device=device) <= self.index[:, None]

    def begin_static(self, n: int, bucket: int) -> tuple[torch.Tensor, torch.Tensor, StaticCache]:
        """The compiled step's (bucket, 1) positions, (bucket, context) key mask and cache: rows 0..n-1 as
        in begin, then free slots up to `bucket` rows (so that a few sizes compile), which write at their
        position 0 what no request reads (a slot's keys are stored anew when a request takes it)."""
        device = self.k.device
        index = torch.tensor(self.lengths[:n] + [0] * (bucket - n), device=device)
        key_mask = torch.arange(self.k.shape[3], device=device) <= index[:, None]
        return index[:, None], key_mask, StaticCache(self.k, self.v, index)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes each row's new key/value at its own length; returns the rows' keys up to the longest."""
        keys, values = super().update(layer, k, v)
        return keys[:, :, :self.length + 1], values[:, :, :self.length + 1]

    def end(self, n: int) -> None:
        for i in range(n):
            self.lengths[i] += 1


@dataclass(eq=False)
class Request:
    """One sequence: its prompt, parameters and output so far; `on_text` gets each piece of text,
    `on_done` the Completion (or the exception that ended it) on the scheduler's thread."""

    prompt: list[int]
    window_prompt: list[int]  # the prompt as the window holds it (cut to its budget, see Engine.fit_prompt)
    params: SamplingParams
    row: _Row
    on_text: Callable[[str], None] | None = None
    on_done: Callable[[Completion | None, BaseException | None], None] | None = None
    generator: torch.Generator | None = None
    answer: list[int] = field(default_factory=list)  # the answer tokens in the window (it slides)
    produced: int = 0
    next_token: int | None = None  # sampled, not yet in the cache
    cancelled: bool = False
    completion: Completion | None = None
    error: BaseException | None = None

    def cancel(self) -> None:
        """Ends the request before its next token (thread-safe: the scheduler checks it every step)."""
        self.cancelled = True


class Scheduler:
    """Runs requests submitted from any thread, up to `max_batch` of them decoded together.

    Drive it with `step()` (or `run()` until idle) on one thread, or `serve(stop)` on a background
    thread, which sleeps while there is nothing to do.
    """

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH) -> None:
        model = engine.model
        self.engine, self.max_batch = engine, max_batch
        self.pool = SlotCache(model.config, max_batch, model.embed.weight.device, model.embed.weight.dtype)
        self.running: list[Request] = []  # running[i] owns slot i
        self.waiting: deque[Request] = deque()  # appended from any thread; only step() takes from it
        self.wake = threading.Condition()

    def submit(self, prompt: list[int], params: SamplingParams, on_text: Callable[[str], None] | None = None,
               on_done: Callable[[Completion | None, BaseException | None], None] | None = None) -> Request:
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.pool.k.device).manual_seed(params.seed)
        request = Request(prompt, self.engine.fit_prompt(prompt, params), params,
                          _Row(self.engine.tokenizer.stream_decoder(), params.stop), on_text, on_done, generator)
        with self.wake:
            self.waiting.append(request)
            self.wake.notify()
        return request

    def counts(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        return len(self.running), len(self.waiting)

    def run(self) -> None:
        """Steps until every submitted request has ended."""
        while self.running or self.waiting:
            self.step()

    def serve(self, stop: threading.Event) -> None:
        """Steps while there is work, sleeps while there is none, until `stop` is set (then cancels the rest)."""
        while not stop.is_set():
            with self.wake:
                while not (self.running or self.waiting or stop.is_set()):
                    self.wake.wait()
            if not stop.is_set():
                try:
                    self.step()
                except Exception:  # noqa: BLE001  its requests got the error; the server goes on
                    traceback.print_exc()
        for request in [*self.running, *self.waiting]:
            request.cancel()
        self.step()

    def wake_up(self) -> None:
        """Wakes a sleeping `serve` (after its stop event was set)."""
        with self.wake:
            self.wake.notify_all()

    @torch.inference_mode()
    def step(self) -> int:
        """Drops cancelled requests, admits waiting ones into free slots, decodes one token for every
        running request. Returns the tokens generated."""
        try:
            return self._step()
        except Exception as exc:  # fail the requests in flight, keep the scheduler usable
            for request in [*self.running]:
                self._leave(request, exc)
            raise

    def _step(self) -> int:
        for request in [r for r in self.running if r.cancelled]:
            self._leave(request, Cancelled())
        produced = 0
        while self.waiting and len(self.running) < self.max_batch:
            request = self.waiting.popleft()
            if request.cancelled:
                self._finish(request, None, Cancelled())
            elif request.params.max_new_tokens <= 0:
                self._finish(request, self._completion(request, "length"), None)
            else:
                self.running.append(request)
                produced += self._prefill(request)
        if not self.running:
            return produced
        n = len(self.running)
        logits = self._decode([r.next_token for r in self.running])
        self.pool.end(n)
        greedy = logits.argmax(dim=-1).tolist()
        for i, request in enumerate(list(self.running)):
            params = request.params
            token = greedy[i] if params.temperature <= 0 else int(sample_next(logits[i:i + 1], params, request.generator))
            produced += 1
            self._take(request, token)
        return produced

    @torch.inference_mode()
    def compile_buckets(self) -> None:
        """Compiles the engine's step for every batch bucket now, so that no request waits for a compile
        (`serve --compile` does this before it listens). The steps write into free slots only."""
        for bucket in sorted({min(1 << i, self.max_batch) for i in range(self.max_batch.bit_length() + 1)}):
            tokens = torch.zeros(bucket, 1, dtype=torch.long, device=self.pool.k.device)
            self.engine.decode(tokens, *self.pool.begin_static(0, bucket))

    def _decode(self, tokens: list[int]) -> torch.Tensor:
        """(n, V) logits of the running rows' next tokens: the engine's compiled step on the batch bucket
        (the next power of two) when it has one, else the model on the n rows."""
        n, device, decode = len(tokens), self.pool.k.device, self.engine.decode
        if decode is None:
            positions, key_mask = self.pool.begin(n)
            logits, _ = self.engine.model(torch.tensor(tokens, device=device)[:, None], positions=positions,
                                          key_mask=key_mask, cache=self.pool)
            return logits[:, -1]
        bucket = min(1 << (n - 1).bit_length(), self.max_batch)
        padded = torch.tensor(tokens + [0] * (bucket - n), device=device)[:, None]
        return decode(padded, *self.pool.begin_static(n, bucket))[:n]

    def _prefill(self, request: Request) -> int:
        """Prefills the request's window alone into its slot and takes the token it samples."""
        window = _Window(self.engine.model, [request.window_prompt + request.answer], self.engine.tokenizer.pad_id)
        logits = window.prefill()
        self.pool.store(self.running.index(request), window.cache)
        self._take(request, int(sample_next(logits, request.params, request.generator)))
        return 1

    def _take(self, request: Request, token: int) -> None:
        """One sampled token: text out, then the request finishes, slides its window, or goes on."""
        request.produced += 1
        request.answer.append(token)
        delta = request.row.push(token, self.engine.tokenizer.eot_id)
        finished = request.row.finish_reason or request.produced >= request.params.max_new_tokens
        if finished:
            request.row.finish_reason = request.row.finish_reason or "length"
            delta += request.row.flush()  # the text held back for a stop string that never came
        if delta and request.on_text:
            request.on_text(delta)
        if finished:
            self._leave(request, None)
            return
        request.next_token = token
        ctx, prompt = self.engine.model.config.context_size, request.window_prompt
        if len(prompt) + len(request.answer) > ctx:  # the window is full: slide as Engine.generate does
            request.answer = slid(prompt, request.answer, ctx)
            self._prefill(request)

    def _leave(self, request: Request, error: BaseException | None) -> None:
        slot, last = self.running.index(request), len(self.running) - 1
        if slot != last:
            self.pool.move(last, slot)
        self.running[slot] = self.running[last]
        self.running.pop()
        completion = None if error else self._completion(request, request.row.finish_reason)
        self._finish(request, completion, error)

    def _completion(self, request: Request, finish_reason: str) -> Completion:
        request.row.finish_reason = finish_reason
        return self.engine.completion(request.prompt, request.params, request.row)

    @staticmethod
    def _finish(request: Request, completion: Completion | None, error: BaseException | None) -> None:
        request.completion, request.error = completion, error
        if request.on_done:
            request.on_done(completion, error)
