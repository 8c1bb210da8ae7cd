"""Shared bench helpers: the machine line, round-robin timing, medians, the bench model config."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

BENCH_MODEL = {"vocab_size": 8192, "context_size": 256, "d_model": 256, "n_heads": 8, "n_layers": 6}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}; {torch.get_num_threads()} threads"


def round_robin(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Runs each contender once per round, alternating, so machine drift hits both alike."""
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(fn())
    return results


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


# Every contender runs at the precision ours runs at (fp32 on a CPU): a peer slowed by a default (TRL's
# SFTConfig trains under bf16 autocast even with use_cpu=True, emulated on a CPU without AVX-512) is not
# a result. Each bench states the precision per contender and refuses a peer that would autocast.
OURS = "fp32"
AUTOCAST_FLAGS = ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval")


def peer_precision(model, args=None) -> str:
    """OURS when a transformers model (and its TrainingArguments, TRL's SFTConfig/DPOConfig) runs in fp32
    without autocast; raises otherwise, naming the setting to change."""
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    if dtypes != ["torch.float32"]:
        raise RuntimeError(f"the peer's weights are {dtypes}, ours fp32: load it with dtype=torch.float32")
    on = [flag for flag in AUTOCAST_FLAGS if getattr(args, flag, False)]
    if on:
        raise RuntimeError(f"{type(args).__name__} autocasts ({', '.join(f'{f}=True' for f in on)}) while gptmini "
                           f"runs fp32: pass {', '.join(f'{f}=False' for f in on)}")
    if torch.is_autocast_enabled("cpu"):
        raise RuntimeError("CPU autocast is on while gptmini runs fp32")
    return OURS


def precisions(**contenders: str) -> str:
    """The line each bench prints: every contender's precision."""
    return "precision: " + "; ".join(f"{name} {p}" for name, p in contenders.items())


def hf_llama(config, attn="sdpa"):
    """The same-size Hugging Face Llama (same width, depth, heads, MLP, tied embeddings), fp32 like ours."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.d_model,
                            intermediate_size=config.mlp_hidden, num_hidden_layers=config.n_layers,
                            num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
                            max_position_embeddings=config.context_size, rms_norm_eps=config.norm_eps,
                            rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings,
                            attention_bias=False, mlp_bias=False, attn_implementation=attn)
    return LlamaForCausalLM(hf_config).to(torch.float32)
