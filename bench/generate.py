"""Decode speed, batch 1: gptmini's KV-cache engine vs transformers' generate(use_cache=True).

Same model size (d_model 256, 8 heads, 6 layers, context 256, vocab 8192), greedy, from a
one-token prompt to a full window (255 new tokens), fp32 on CPU; and llama.cpp (llama-cpp-python) on the same model
exported to GGUF (`gptmini export --format gguf`) in f32 and q8_0. Also times the matrix-vector
products alone (as the engine computes them): the memory-bound part of a step, which no cut in
per-operator overhead can remove. `gptmini int8` is our engine with `quantize="int8"` (weight-only int8).
Prints tokens/s, then the int8 ratios (vs our fp32 and vs HF), and ends with `ratio: X` (ours fp32 / HF).
"""
from __future__ import annotations

import tempfile
from itertools import islice
from pathlib import Path

import torch
from common import BENCH_MODEL, hf_llama, machine, median, round_robin, timed

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer, save
from gptmini.gguf_export import export_gguf

NEW_TOKENS = 255
ROUNDS = 5


def llama_cpp_runs(model: GPTMini, prompt: list[int]) -> dict:
    """One decode per GGUF type in llama.cpp, greedy, NEW_TOKENS long (its generate() never stops at EOS)."""
    from llama_cpp import Llama

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:  # GGUF wants merges; decoding ids never reads the vocabulary
        save(Path(tmp) / "ckpt", model, Tokenizer.train_bpe(["xy xy"], vocab_size=300))
        for dtype in ("f32", "q8_0"):
            path = export_gguf(Path(tmp) / "ckpt", Path(tmp) / f"{dtype}.gguf", dtype)
            llm = Llama(str(path), n_ctx=model.config.context_size, n_threads=torch.get_num_threads(),
                        use_mmap=False, verbose=False)  # read into memory: the file goes with tmp

            def run(llm=llm):
                llm.reset()
                assert sum(1 for _ in islice(llm.generate(prompt, temp=0.0), NEW_TOKENS)) == NEW_TOKENS

            run()  # warm-up
            runs[f"llama.cpp {dtype}"] = run
    return runs


def main() -> None:
    torch.manual_seed(0)
    config = GPTConfig(**BENCH_MODEL)
    ours = GPTMini(config).eval()
    tokenizer = Tokenizer.train_bpe(["x"], vocab_size=300)
    tokenizer.eot_id = -1  # a random model must not stop early: both sides decode the full length
    engine, int8 = Engine(ours, tokenizer), Engine(ours, tokenizer, quantize="int8")
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    hf = hf_llama(config).eval()
    prompt = [5]

    def run_ours(engine=engine):
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

    run_ours(), run_ours(int8), run_hf(), run_floor()  # warm-up
    contenders = {"gptmini": run_ours, "gptmini int8": lambda: run_ours(int8), "transformers": run_hf,
                  **llama_cpp_runs(ours, prompt), "matvec floor": run_floor}
    times = round_robin({name: lambda fn=fn: timed(fn) for name, fn in contenders.items()}, ROUNDS)
    import llama_cpp
    import transformers

    print(f"machine: {machine()}; transformers {transformers.__version__}; llama-cpp-python {llama_cpp.__version__}")
    print(f"model: {BENCH_MODEL}, {ours.num_parameters() / 1e6:.2f} M parameters; batch 1, {NEW_TOKENS} new tokens, "
          f"greedy, median of {ROUNDS} interleaved rounds")
    rates = {name: NEW_TOKENS / median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:>13}: {rate:8.1f} tokens/s  (runs: {', '.join(f'{NEW_TOKENS / t:.0f}' for t in times[name])})")
    megabytes = 4 * sum(m.weight.numel() for m in linears) / 1e6
    print(f"matvec floor: every token streams {megabytes:.1f} MB of weights; those products alone run at "
          f"{rates['matvec floor'] / rates['transformers']:.2f}x transformers, with nothing else in a decode step")
    print(f"llama.cpp (same weights, GGUF): f32 {rates['llama.cpp f32'] / rates['gptmini']:.2f}x our fp32, "
          f"q8_0 {rates['llama.cpp q8_0'] / rates['gptmini']:.2f}x our fp32")
    print(f"int8: {rates['gptmini int8'] / rates['gptmini']:.2f}x our fp32, "
          f"{rates['gptmini int8'] / rates['transformers']:.2f}x transformers")
    print(f"ratio: {rates['gptmini'] / rates['transformers']:.2f}")


if __name__ == "__main__":
    main()
