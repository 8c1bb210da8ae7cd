"""GPTMini: a decoder-only transformer in plain PyTorch (Llama-style block).

RMSNorm, rotary position embeddings, SwiGLU MLP, no biases, optional tied embeddings. The layout
(rotate-half RoPE, fused projections split in the same order as Llama's q/k/v and gate/up) lets a
checkpoint be exported exactly to `transformers`' LlamaForCausalLM. The faster hand-written pieces
it calls (RoPE and SwiGLU backwards, one-row products, the fused head loss) live in kernels.py,
each beside the plain version it equals.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GptminiError
from .kernels import IGNORE_INDEX, Linear, LinearCrossEntropy, RotaryQKV, SwiGLU, rotary_qkv, swiglu


@dataclass
class GPTConfig:
    vocab_size: int
    context_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads
    mlp_hidden: int | None = None  # None: about 8/3 * d_model, rounded up to a multiple of 32
    dropout: float = 0.0
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.mlp_hidden is None:
            self.mlp_hidden = 32 * math.ceil(8 * self.d_model / 3 / 32)
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        elif (self.d_model // self.n_heads) % 2:
            problems.append("d_model / n_heads must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        for name in ("vocab_size", "context_size", "d_model", "n_heads", "n_layers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if problems:
            raise GptminiError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GptminiError(f"unknown model config fields {unknown}; known: {sorted(known)}")
        return cls(**values)


class KVCache:
    """Preallocated keys/values for every layer: prefill writes the prompt once, decode appends one."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype) -> None:
        shape = (config.n_layers, batch_size, config.n_kv_heads, config.context_size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions already written (the same for every row)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class StaticCache:
    """The decode step's view of a cache (its keys/values, (layers, batch, kv heads, window, head dim)):
    each of the first B rows writes its new key at its own position `index[row]` and attends over the
    whole window (unwritten positions hidden by the step's key mask). Every step then has the same
    shapes, so it is compiled once (GPTMini.decode_step, compiled.py)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> None:
        self.k, self.v, self.index = k, v, index

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager: writes one layer's (B, kv heads, 1, head dim) new keys/values; returns the rows' window."""
        self.write(k[None], v[None], slice(layer, layer + 1))
        return self.k[layer, :len(k)], self.v[layer, :len(v)]

    def write(self, k: torch.Tensor, v: torch.Tensor, layers: slice = slice(None)) -> None:
        """Writes (layers, B, kv heads, 1, head dim) new keys/values, each row at its own position."""
        rows = torch.arange(k.shape[1], device=k.device)
        self.k[layers, rows, :, self.index] = k[:, :, :, 0].transpose(0, 1)  # indexed as (B, layers, heads, dim)
        self.v[layers, rows, :, self.index] = v[:, :, :, 0].transpose(0, 1)


class StepAttention:
    """Attention for one new token per row over a StaticCache that does not hold it yet, inside the compiled
    step: a softmax over the cached keys the row sees and its own new key, computed apart, so the step
    only reads the cache. The new keys/values are collected and written after the step (StaticCache.write):
    written inside, the graph either copies the layer's cache (inductor's functional index_put) or calls
    an op opaque to it (0.75 ms a token on the bench model, about a quarter of the step then)."""

    def __init__(self, cache: StaticCache, key_mask: torch.Tensor) -> None:
        self.cache = cache
        stale = torch.arange(key_mask.shape[1], device=key_mask.device) == cache.index[:, None]
        self.seen = (key_mask & ~stale)[:, None, None, :]  # (B, 1, 1, window): not the slot being written
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, heads, 1, head dim) attention outputs; q (B, heads, 1, head dim), k/v (B, kv heads, 1, head dim)."""
        self.new_k.append(k), self.new_v.append(v)
        B, heads, _, dim = q.shape
        q = q.reshape(B, k.shape[1], heads // k.shape[1], dim) * dim ** -0.5  # heads grouped by kv head
        keys, values = self.cache.k[layer, :B], self.cache.v[layer, :B]
        cached = (q @ keys.transpose(-1, -2)).masked_fill(~self.seen, float("-inf"))
        new = q @ k.transpose(-1, -2)
        peak = torch.maximum(cached.amax(-1, keepdim=True), new)
        weights, weight_new = (cached - peak).exp(), (new - peak).exp()
        y = (weights @ values + weight_new * v) / (weights.sum(-1, keepdim=True) + weight_new)
        return y.reshape(B, heads, 1, dim)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads = layer, config.n_heads, config.n_kv_heads
        self.head_dim, self.dropout = config.head_dim, config.dropout
        self.qkv = Linear(config.d_model, (config.n_heads + 2 * config.n_kv_heads) * config.head_dim)
        self.proj = Linear(config.d_model, config.d_model)

    def forward(self, x, cos, sin, mask, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        rotary = RotaryQKV.apply if qkv.requires_grad else rotary_qkv  # inference: skip autograd's bookkeeping
        q, k, v = (t.transpose(1, 2) for t in rotary(qkv, cos, sin, self.n_heads, self.n_kv_heads))
        if isinstance(cache, StepAttention):
            return self.proj(cache(self.layer, q, k, v).transpose(1, 2).reshape(B, T, -1))
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask if isinstance(mask, torch.Tensor) else None,
            is_causal=mask == "causal",
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate_up = Linear(config.d_model, 2 * config.mlp_hidden)
        self.down = Linear(config.mlp_hidden, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        return self.down(SwiGLU.apply(gate_up) if gate_up.requires_grad else swiglu(gate_up))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def counted_rows(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) hidden states and (N,) targets of the positions whose loss counts. SFT masks its prompts (a
    third to a half of the tokens): on a CPU the head and its softmax need not run there. Fully counted
    (pretraining), compiled (a data-dependent shape breaks the graph) or on an accelerator (choosing the
    rows would wait on the device every micro-batch, for a head that costs little there), every row stays."""
    rows, wanted = x.flatten(0, 1), targets.flatten()
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return rows, wanted
    counted = wanted != IGNORE_INDEX
    return (rows, wanted) if bool(counted.all()) else (rows[counted], wanted[counted])


class GPTMini(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = Linear(config.d_model, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = self._rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):  # GPT-2: scale residual writes by depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim)
        angles = torch.outer(torch.arange(config.context_size).float(), inv_freq)
        return angles.cos(), angles.sin()  # (context, head_dim / 2): both halves share an angle

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        loss_reduction: str = "mean",
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) and the loss over targets != -100 (None without targets).

        targets: (B, T), ALREADY SHIFTED: targets[:, t] is the token that should follow idx[:, t], i.e.
        `model(tokens[:, :-1], tokens[:, 1:])` (what the training batches hold). Passing the inputs
        themselves, `model(idx, idx)`, would train the model to copy its input.
        labels: (B, T), the inputs' own ids as in transformers: shifted here (position t learns labels[:, t + 1],
        the last position none), so `model(idx, labels=idx)` is the next-token loss. Give targets or labels.
        positions: (B, T) rotary positions when rows are left-padded (default: consecutive).
        key_mask: (B, S) True for real tokens, for left-padded batches (S = cache length + T).
        loss_reduction: "mean" over counted targets, or "sum" so that a caller can divide by the
        count of a whole accumulated batch, or "row": (B,) sums per sequence (DPO's log-probabilities,
        negated), with logits (returned None) computed only where a target counts.
        return_logits=False (training): logits come back None and the loss takes the fused
        chunked head (LinearCrossEntropy), which is faster and lighter.
        """
        if labels is not None:
            if targets is not None:
                raise GptminiError("give targets (already shifted) or labels (shifted here), not both")
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds context_size {self.config.context_size}")
        if positions is None:  # angles broadcast over (B, T, heads, head_dim / 2)
            cos, sin = self.rope_cos[start:start + T, None], self.rope_sin[start:start + T, None]
        else:
            cos, sin = self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2)
        mask = self._attention_mask(T, start, key_mask, idx.device)
        x = self.dropout(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if last_only:
            x = x[:, -1:]
        if targets is not None and loss_reduction == "row":
            counted = targets != IGNORE_INDEX
            nll = torch.zeros(B, T, device=idx.device)
            nll[counted] = F.cross_entropy(self.lm_head(x[counted]).float(), targets[counted], reduction="none")
            return None, nll.sum(dim=1)
        if targets is not None and not return_logits and torch.is_grad_enabled():
            rows, wanted = counted_rows(x, targets)
            total = LinearCrossEntropy.apply(rows, self.lm_head.weight, wanted)
            return None, total if loss_reduction == "sum" else total / (targets != IGNORE_INDEX).sum().clamp(min=1)
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        return logits, self.loss(logits, targets, loss_reduction)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                    cache: StaticCache, graph: Callable | None = None) -> torch.Tensor:
        """(B, V) logits of one token per row, every shape fixed whatever the rows' lengths; the rows' new
        keys/values are then written into the cache at `cache.index`.

        tokens, positions: (B, 1) ids and rotary positions; key_mask: (B, context) True where a row sees
        a key (its new one included). graph: decode_graph compiled (compiled.CompiledStep), once per batch size.
        """
        logits, keys, values = (graph or self.decode_graph)(tokens, positions, key_mask, cache)
        cache.write(keys, values)
        return logits

    def decode_graph(self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                     cache: StaticCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """decode_step's computation, which only reads the cache: the logits and the new keys/values
        (layers, B, kv heads, 1, head dim) to write."""
        cos, sin = self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2)
        attention = StepAttention(cache, key_mask)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin, None, attention)
        return self.lm_head(self.norm(x))[:, -1], torch.stack(attention.new_k), torch.stack(attention.new_v)

    @staticmethod
    def _attention_mask(T: int, start: int, key_mask, device):
        """"causal", None (one query sees every cached key) or a boolean (B, 1, T, S) mask."""
        if key_mask is None and (T == 1 or start == 0):
            return "causal" if T > 1 else None
        S = start + T
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=start)
        if key_mask is None:
            return causal
        return causal & key_mask[:, None, None, :S]

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        # Summing then dividing by the count keeps an all-ignored batch at loss 0 with a zero
        # gradient, where cross_entropy's own mean would return NaN.
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        if reduction == "sum":
            return total
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def use_decode_layout(self) -> "GPTMini":
        """Stores every matmul weight transposed in memory, (in, out), keeping its (out, in) shape.

        Decoding one token is one matrix-vector product per weight, bound by how fast the weights
        stream from memory; MKL streams this layout about 40 % faster on CPU (bench/generate.py).
        Values, shapes, state_dict and training are unaffected; the Engine calls this.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):  # includes the output head (the embedding when tied)
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    def num_parameters(self, include_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if include_embedding else total - self.embed.weight.numel()

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6 per matmul weight plus attention.

        The input embedding is a lookup (no FLOPs); the output head is a matmul even when tied.
        """
        c = self.config
        matmul_weights = self.num_parameters(include_embedding=False) + (0 if not c.tie_embeddings else c.vocab_size * c.d_model)
        norm_weights = (2 * c.n_layers + 1) * c.d_model
        attention = 12 * c.n_layers * c.d_model * c.context_size // 2  # causal: half the scores
        return 6 * (matmul_weights - norm_weights) + attention
