"""Training throughput: gptmini's training step vs transformers' LlamaForCausalLM (sdpa), same size.

Forward + backward + AdamW on batch 16 x 256 tokens (d_model 256, 8 heads, 6 layers, vocab 8192),
fp32 on CPU, interleaved rounds, medians. Also measures this machine's fp32 matmul peak in the
same run and reports the fraction of it that gptmini's step reaches. Ends with `ratio: X`.
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch
from common import BENCH_MODEL, OURS, hf_llama, machine, median, peer_precision, precisions, round_robin, timed

from gptmini import GPTConfig, GPTMini, Tokenizer
from gptmini.data.batches import WindowBatches
from gptmini.train import Trainer, TrainConfig

BATCH, STEPS, ROUNDS = 16, 3, 5


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """Best observed fp32 FLOP/s of a square matmul, the practical peak of this CPU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for _ in range(repeats):
        best = max(best, 2 * n**3 / timed(lambda: torch.mm(a, b)))
    return best


def main() -> None:
    torch.manual_seed(0)
    config = GPTConfig(**BENCH_MODEL)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 200_000).astype(np.uint16)
    ours = GPTMini(config)
    tokenizer = Tokenizer.train_bpe(["x"], vocab_size=300)
    trainer = Trainer(ours, tokenizer, WindowBatches(tokens, config.context_size, BATCH, seed=0), None,
                      TrainConfig(batch_size=BATCH, show_progress=False), tempfile.mkdtemp())

    hf = hf_llama(config).train()
    peer = peer_precision(hf)  # a plain loop, no TrainingArguments: fp32 weights and no autocast is all there is
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    hf_batches = WindowBatches(tokens, config.context_size, BATCH, seed=0)

    def hf_step():
        idx, targets = hf_batches.next()
        loss = hf(input_ids=idx, labels=idx).loss  # HF shifts labels itself: same next-token task
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    def ours_steps():
        for _ in range(STEPS):
            trainer.train_step(1e-3)

    def hf_steps():
        for _ in range(STEPS):
            hf_step()

    ours_steps(), hf_steps()  # warm-up
    peak_before = matmul_peak()
    times = round_robin({"gptmini": lambda: timed(ours_steps), "transformers": lambda: timed(hf_steps)}, ROUNDS)
    peak = max(peak_before, matmul_peak())
    import transformers

    tokens_per_run = STEPS * BATCH * config.context_size
    rates = {name: tokens_per_run / median(t) for name, t in times.items()}
    flops = ours.flops_per_token()
    print(f"machine: {machine()}; transformers {transformers.__version__}")
    print(f"model: {BENCH_MODEL}, {ours.num_parameters() / 1e6:.2f} M parameters, {flops / 1e6:.1f} MFLOP/token "
          f"(forward+backward); batch {BATCH} x {config.context_size}; median of {ROUNDS} interleaved rounds of {STEPS} steps")
    print(precisions(gptmini=OURS, transformers=peer))
    print(f"fp32 matmul peak (1024^3 torch.mm, best of 40): {peak / 1e9:.1f} GFLOP/s")
    for name, rate in rates.items():
        print(f"{name:>13}: {rate:8.0f} tokens/s = {rate * flops / 1e9:6.1f} GFLOP/s = {rate * flops / peak:6.1%} of peak")
    c = config  # nanoGPT's estimate_mfu (PaLM's 6N + 12·L·H·Q·T) also counts the masked half of attention
    palm = flops + 12 * c.n_layers * c.d_model * c.context_size // 2
    print(f"(counted as nanoGPT/PaLM do, {palm / 1e6:.1f} MFLOP/token with the full attention matrix: "
          f"gptmini {rates['gptmini'] * palm / peak:.1%} of peak)")
    print(f"ratio: {rates['gptmini'] / rates['transformers']:.2f}")


if __name__ == "__main__":
    main()
