"""Decode speed, batch 1: gptmini's KV-cache engine vs transformers' generate(use_cache=True).

Same model size (d_model 256, 8 heads, 6 layers, context 256, vocab 8192), greedy, from a
one-token prompt to a full window (255 new tokens), fp32 on CPU. Also times the matrix-vector
products alone (as the engine computes them): the memory-bound part of a step, which no cut in
per-operator overhead can remove.
Prints tokens/s, ends with `ratio: X` (ours / HF).
"""
from __future__ import annotations

import torch
from common import BENCH_MODEL, hf_llama, machine, median, round_robin, timed

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer

NEW_TOKENS = 255
ROUNDS = 5


def main() -> None:
    torch.manual_seed(0)
    config = GPTConfig(**BENCH_MODEL)
    ours = GPTMini(config).eval()
    tokenizer = Tokenizer.train_bpe(["x"], vocab_size=300)
    tokenizer.eot_id = -1  # a random model must not stop early: both sides decode the full length
    engine = Engine(ours, tokenizer)
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    hf = hf_llama(config).eval()
    prompt = [5]

    def run_ours():
        [c] = engine.generate([prompt], params)
        assert len(c.token_ids) == NEW_TOKENS

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        assert out.shape[1] == 1 + NEW_TOKENS

    linears = [m for m in ours.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {m.in_features: torch.randn(1, 1, m.in_features) for m in linears}

    def run_floor():  # each token's matrix-vector products alone, as the engine computes them
        with torch.inference_mode():
            for _ in range(NEW_TOKENS):
                for m in linears:
                    m(vectors[m.in_features])

    run_ours(), run_hf(), run_floor()  # warm-up
    contenders = {"gptmini": run_ours, "transformers": run_hf, "matvec floor": run_floor}
    times = round_robin({name: lambda fn=fn: timed(fn) for name, fn in contenders.items()}, ROUNDS)
    import transformers

    print(f"machine: {machine()}; transformers {transformers.__version__}")
    print(f"model: {BENCH_MODEL}, {ours.num_parameters() / 1e6:.2f} M parameters; batch 1, {NEW_TOKENS} new tokens, "
          f"greedy, median of {ROUNDS} interleaved rounds")
    rates = {name: NEW_TOKENS / median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:>13}: {rate:8.1f} tokens/s  (runs: {', '.join(f'{NEW_TOKENS / t:.0f}' for t in times[name])})")
    megabytes = 4 * sum(m.weight.numel() for m in linears) / 1e6
    print(f"matvec floor: every token streams {megabytes:.1f} MB of weights; those products alone run at "
          f"{rates['matvec floor'] / rates['transformers']:.2f}x transformers, with nothing else in a decode step")
    print(f"ratio: {rates['gptmini'] / rates['transformers']:.2f}")


if __name__ == "__main__":
    main()
