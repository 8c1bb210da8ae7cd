"""Generation: prefill the prompt once into a KV cache, then decode one token per step.

Greedy by default; temperature / top-k / top-p sampling with an optional seed. A row stops at
end-of-text, at a user stop string, or after `max_new_tokens`. An answer that fills the context
window goes on in a sliding window: the prompt stays pinned, the oldest answer tokens make room
(the layout sft trains long answers in, see data/batches.py).

Long prompts: a prompt keeps its last `max(context_size - max_new_tokens, context_size // 2)`
tokens, so there is room to answer; the cut is reported in `Completion.prompt_truncated`.

Requests that arrive at different times, each with its own parameters, are decoded together by
scheduler.py (continuous batching, what `gptmini serve` runs); they get the answers given here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .compiled import CompiledStep
from .data.batches import slide_keep
from .data.templates import Template
from .errors import GptminiError
from .model import GPTMini, KVCache, StaticCache
from .quantize import quantize as quantized
from .tokenizer import Folding, Tokenizer


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (end-of-text or a stop string) or "length"
    prompt_truncated: int = 0  # prompt tokens dropped from the left to fit the context


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from (B, V) logits."""
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > params.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class _Row:
    """One prompt's output so far; holds back text that may be the start of a stop string."""

    decoder: object
    stop: Sequence[str]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None

    def push(self, token_id: int, eot_id: int) -> str:
        if token_id == eot_id:
            self.finish_reason = "stop"
            return self.flush()
        self.ids.append(token_id)
        self.text += self.decoder.push(token_id)
        for s in self.stop:
            cut = self.text.find(s, max(0, self.emitted - len(s)))
            if cut >= 0:
                self.text, self.finish_reason = self.text[:cut], "stop"
                return self.flush()
        held = max((n for s in self.stop for n in range(len(s), 0, -1) if self.text.endswith(s[:n])), default=0)
        delta = self.text[self.emitted:len(self.text) - held]
        self.emitted += len(delta)
        return delta

    def flush(self) -> str:
        delta, self.emitted = self.text[self.emitted:], len(self.text)
        return delta


def slid(prompt: list[int], answer: list[int], context_size: int) -> list[int]:
    """The answer as the window holds it for the next token: all of it while prompt + answer fit the context;
    once they fill it (context_size + 1 tokens, the last one just sampled), its last `slide_keep` tokens,
    the layout sft's pinned windows trained. Engine.generate and the scheduler slide by this one rule."""
    if len(prompt) + len(answer) <= context_size:
        return answer
    return answer[-slide_keep(len(prompt), context_size + 1):]


class Engine:
    """Generation for one model + tokenizer (+ the template its prompts were trained with).

    quantize="int8": generate with an int8 weight-only copy of the model (quantize.py).
    compile=True: decode through a CompiledStep (the prefill stays eager): the same tokens, after a
    compile per batch size (or its load from the disk, compiled.py); on the 2-core CPU about 2x the eager
    tokens/s at batch 1 (README, "Decoding speed").
    """

    def __init__(self, model: GPTMini, tokenizer: Tokenizer, template: Template | None = None,
                 quantize: str | None = None, compile: bool = False) -> None:
        self.model, self.tokenizer, self.template = quantized(model, quantize).eval(), tokenizer, template
        if self.model.embed.weight.device.type == "cpu":
            self.model.use_decode_layout()
        self.decode = CompiledStep(self.model) if compile else None

    def encode_prompt(self, prompt: str | list[dict], raw: bool = False) -> list[int]:
        """The ids the model answers, formatted by the template as in training (and as the CLI does): a
        string is one user message, a list the conversation's {"role", "content"} messages.

        raw=True: a string's own tokens, no template: a text to continue (a base model, /v1/completions).
        A char vocabulary's missing characters are folded to it first: see `read`.
        """
        return self.read(prompt, raw)[0]

    def read(self, prompt: str | list[dict], raw: bool = False) -> tuple[list[int], Folding]:
        """encode_prompt's ids, and what Tokenizer.fold changed in the texts to fit a char vocabulary (for
        chat, generate and serve to say): every prompt the engine answers is read this one way."""
        if raw:
            if not isinstance(prompt, str):
                raise GptminiError("raw=True takes a string to continue; a list of messages needs the template")
            text, folding = self.tokenizer.fold(prompt)
            return self.tokenizer.encode(text, start=True), folding
        if self.template is None:
            raise GptminiError("this model has no template: pass raw=True to continue the text as given, or give "
                               "the Engine a template, e.g. Engine(model, tokenizer, get_template('comando'))")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        folding, readable = Folding(), []
        for message in messages:
            message = dict(message)
            for key in ("content", "input"):
                if key in message:
                    message[key], folded = self.tokenizer.fold(message[key])
                    folding += folded
            readable.append(message)
        return self.template.encode(self.tokenizer, readable)[0], folding

    def prompt_budget(self, max_new_tokens: int) -> int:
        ctx = self.model.config.context_size
        return max(ctx - max_new_tokens, ctx // 2)

    def stream(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, str]]:
        """(row, text delta) events as tokens are generated; a finished row emits nothing more."""
        yield from self._events(prompts, params, self._new_rows(prompts, params))

    def _new_rows(self, prompts: list[list[int]], params: SamplingParams) -> list[_Row]:
        return [_Row(self.tokenizer.stream_decoder(), params.stop) for _ in prompts]

    def _events(self, prompts: list[list[int]], params: SamplingParams, rows: list[_Row]) -> Iterator[tuple[int, str]]:
        """(row, delta) per piece of text."""
        for tokens in self._token_steps(prompts, params):
            for i, token_id in enumerate(tokens.tolist()):
                if rows[i].finish_reason is None:
                    delta = rows[i].push(token_id, self.tokenizer.eot_id)
                    if delta:
                        yield i, delta
            if all(r.finish_reason for r in rows):
                return
        for i, row in enumerate(rows):
            row.finish_reason = row.finish_reason or "length"
            if delta := row.flush():
                yield i, delta

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 on_text: Callable[[int, str], None] | None = None) -> list[Completion]:
        rows = self._new_rows(prompts, params)
        for row, delta in self._events(prompts, params, rows):
            if on_text:
                on_text(row, delta)
        return self._completions(prompts, params, rows)

    def _completions(self, prompts: list[list[int]], params: SamplingParams, rows: list[_Row]) -> list[Completion]:
        return [self.completion(p, params, r) for r, p in zip(rows, prompts)]

    def completion(self, prompt: list[int], params: SamplingParams, row: _Row) -> Completion:
        budget = self.prompt_budget(params.max_new_tokens)
        return Completion(row.text, row.ids, min(len(prompt), budget), row.finish_reason, max(0, len(prompt) - budget))

    def fit_prompt(self, prompt: list[int], params: SamplingParams) -> list[int]:
        """The prompt as the window holds it: its last `prompt_budget` tokens (end-of-text if empty)."""
        return prompt[-self.prompt_budget(params.max_new_tokens):] if prompt else [self.tokenizer.eot_id]

    @torch.inference_mode()
    def _token_steps(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[torch.Tensor]:
        """Yields the next token of every row, step after step, up to max_new_tokens.

        When a row fills the window (context_size + 1 tokens, the last one just sampled), it
        slides as sft's pinned windows were trained: its prompt stays, its answer keeps only its
        last `slide_keep` tokens, and the batch is prefilled again. Each row slides on its own
        length, so a batched answer is the answer the row would get alone.
        """
        ctx = self.model.config.context_size
        prompts = [self.fit_prompt(p, params) for p in prompts]
        answers: list[list[int]] = [[] for _ in prompts]
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.model.embed.weight.device).manual_seed(params.seed)
        produced = 0
        while produced < params.max_new_tokens:
            window = _Window(self.model, [p + a for p, a in zip(prompts, answers)], self.tokenizer.pad_id,
                             self.decode)
            logits = window.prefill()
            for step in range(min(params.max_new_tokens - produced, window.room)):
                tokens = sample_next(logits, params, generator)
                yield tokens
                produced += 1
                for answer, token in zip(answers, tokens.tolist()):
                    answer.append(token)
                if step < window.room - 1 and produced < params.max_new_tokens:
                    logits = window.step(tokens)
            answers = [slid(p, a, ctx) for p, a in zip(prompts, answers)]


class _Window:
    """Left-padded rows in one KV cache: prefill them, then decode a token per row per step (with `decode`,
    a CompiledStep, through the fixed-shape step)."""

    def __init__(self, model: GPTMini, rows: list[list[int]], pad_id: int, decode: CompiledStep | None = None) -> None:
        self.model, self.decode, config = model, decode, model.config
        device = model.embed.weight.device
        width = max(len(r) for r in rows)
        pads = torch.tensor([width - len(r) for r in rows], device=device)
        self.idx = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
        self.padded = bool(pads.any())
        self.positions = self.key_mask = None
        if self.padded or decode:  # the compiled step always takes them
            self.positions = (torch.arange(width, device=device) - pads[:, None]).clamp(min=0)
            self.key_mask = torch.zeros(len(rows), config.context_size, dtype=torch.bool, device=device)
            self.key_mask[:, :width] = torch.arange(width, device=device) >= pads[:, None]
        self.cache = KVCache(config, len(rows), device, model.embed.weight.dtype)
        self.room = config.context_size - width + 1  # tokens to sample, the last from a full cache

    def prefill(self) -> torch.Tensor:
        """(B, V) logits of every row's next token."""
        positions, key_mask = (self.positions, self.key_mask) if self.padded else (None, None)
        logits, _ = self.model(self.idx, positions=positions, key_mask=key_mask, cache=self.cache, last_only=True)
        return logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.key_mask is not None:
            self.key_mask[:, self.cache.length] = True
            self.positions = self.positions[:, -1:] + 1
        if self.decode:
            index = torch.full((len(tokens),), self.cache.length, device=tokens.device)
            self.cache.length += 1
            return self.decode(tokens[:, None], self.positions, self.key_mask,
                               StaticCache(self.cache.k, self.cache.v, index))
        positions, key_mask = (self.positions, self.key_mask) if self.padded else (None, None)
        logits, _ = self.model(tokens[:, None], positions=positions, key_mask=key_mask, cache=self.cache)
        return logits[:, -1]


def generate(model: GPTMini, tokenizer: Tokenizer, prompt: str, **params) -> str:
    """The continuation of a raw text, no template (greedy unless `temperature` is given); for an answer to
    an instruction use Engine(model, tokenizer, template).encode_prompt(instruction)."""
    engine = Engine(model, tokenizer)
    return engine.generate([engine.encode_prompt(prompt, raw=True)], SamplingParams(**params))[0].text
