"""Decode speed: gptmini's engine (eager, compiled; fp32, int8) vs transformers and llama.cpp.

Same model size (d_model 256, 8 heads, 6 layers, context 256, vocab 8192), greedy, from a
one-token prompt to a full window (255 new tokens), batch 1, on CPU. Contenders, round-robin:
gptmini eager and compiled (`Engine(compile=True)`: the fixed-shape decode step compiled by AOTInductor)
in fp32 and int8 (weight-only int8 products), transformers' generate(use_cache=True) in fp32, and
llama.cpp (llama-cpp-python) on the same model exported to GGUF in f32 and q8_0. Also: the
matrix-vector products alone (the memory-bound floor of a step), our eager and compiled fp32 at
batch 8, the compile time (cold, then a second process loading the step from the disk), and where
compiling pays (answer tokens, at batch 1 and 8).
Ends with `llama.cpp ratio: X` (our best fp32 / llama.cpp f32) and `ratio: X` (ours eager fp32 / HF).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

# The compile time reported is a cold one: inductor's and gptmini's disk caches start empty for this run.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
os.environ["GPTMINI_CACHE"] = tempfile.mkdtemp(prefix="bench-gptmini-")

import torch  # noqa: E402
from common import BENCH_MODEL, OURS, hf_llama, machine, median, peer_precision, precisions, round_robin, timed  # noqa: E402

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer, save  # noqa: E402
from gptmini.gguf_export import export_gguf  # noqa: E402

NEW_TOKENS = 255
ROUNDS = 5
BATCH = 8
INT8 = "int8 weights x bf16 activations (fp32 elsewhere)"
WARM_START = """
import sys, time, torch
from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer
from common import BENCH_MODEL
tokenizer = Tokenizer.train_bpe(["x"], vocab_size=300)
model = GPTMini(GPTConfig(**BENCH_MODEL))
Engine(model, tokenizer)  # the weights' decode layout, in which the bench's own int8 engines quantize them
engine = Engine(model, tokenizer, quantize=sys.argv[1] or None, compile=True)
engine.decode.report = lambda line: None
engine.generate([[5]], SamplingParams(max_new_tokens=2))
print(engine.decode.seconds[1])
"""


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


def warm_start(quantize: str) -> float:
    """Seconds a second process takes to get the same step, now on disk (gptmini.compiled.cache_dir)."""
    bench = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(bench.parent), str(bench)])}
    out = subprocess.run([sys.executable, "-c", WARM_START, quantize], env=env, capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[-1])


def main() -> None:
    torch.manual_seed(0)
    config = GPTConfig(**BENCH_MODEL)
    ours = GPTMini(config).eval()
    tokenizer = Tokenizer.train_bpe(["x"], vocab_size=300)
    tokenizer.eot_id = -1  # a random model must not stop early: every side decodes the full length
    engines = {"gptmini": Engine(ours, tokenizer), "gptmini compiled": Engine(ours, tokenizer, compile=True),
               "gptmini int8": Engine(ours, tokenizer, quantize="int8"),
               "gptmini int8 compiled": Engine(ours, tokenizer, quantize="int8", compile=True)}
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    hf = hf_llama(config).eval()
    prompt = [5]

    def run_ours(engine, batch=1):
        completions = engine.generate([prompt] * batch, params)
        assert all(len(c.token_ids) == NEW_TOKENS for c in completions)

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

    for engine in engines.values():
        if engine.decode:
            engine.decode.report = lambda line: None
        run_ours(engine)  # warm-up; compiles the compiled ones (timed in engine.decode.seconds)
    run_ours(engines["gptmini"], BATCH), run_ours(engines["gptmini compiled"], BATCH), run_hf(), run_floor()
    contenders = {name: lambda e=e: run_ours(e) for name, e in engines.items()}
    contenders.update({"transformers": run_hf, **llama_cpp_runs(ours, prompt), "matvec floor": run_floor,
                       f"gptmini batch {BATCH}": lambda: run_ours(engines["gptmini"], BATCH),
                       f"gptmini compiled batch {BATCH}": lambda: run_ours(engines["gptmini compiled"], BATCH)})
    times = round_robin({name: lambda fn=fn: timed(fn) for name, fn in contenders.items()}, ROUNDS)
    compiled = {name: e.decode.seconds for name, e in engines.items() if e.decode}
    warm = {name: warm_start("int8" if "int8" in name else "") for name in compiled}
    import llama_cpp
    import transformers

    print(f"machine: {machine()}; transformers {transformers.__version__}; llama-cpp-python {llama_cpp.__version__}")
    print(f"model: {BENCH_MODEL}, {ours.num_parameters() / 1e6:.2f} M parameters; batch 1 (and {BATCH}), "
          f"{NEW_TOKENS} new tokens, greedy, median of {ROUNDS} interleaved rounds")
    print(precisions(gptmini=OURS, **{"gptmini int8": INT8, "transformers": peer_precision(hf),
                                      "llama.cpp f32": "f32", "llama.cpp q8_0": "q8_0 weights and activations"}))
    rates = {name: NEW_TOKENS * (BATCH if "batch" in name else 1) / median(t) for name, t in times.items()}
    for name, rate in rates.items():
        runs = ", ".join(f"{NEW_TOKENS * (BATCH if 'batch' in name else 1) / t:.0f}" for t in times[name])
        print(f"{name:>24}: {rate:8.1f} tokens/s  (runs: {runs})")
    for name, seconds in compiled.items():
        print(f"{name}: compile {', '.join(f'batch {b} {s:.1f} s' for b, s in seconds.items())} (cold, "
              f"not in the rates); a second process loads it from the disk: {warm[name]:.1f} s")
    for batch, eager, fast in ((1, "gptmini", "gptmini compiled"),
                               (BATCH, f"gptmini batch {BATCH}", f"gptmini compiled batch {BATCH}")):
        saved = batch / rates[eager] - batch / rates[fast]  # seconds saved per step (a token for each row)
        cold = compiled["gptmini compiled"][batch]
        pays = f"after {cold / saved:,.0f} tokens per answer" if saved > 0 else "never (slower per token)"
        if batch == 1 and saved > 0:  # the second process's load was measured for batch 1
            loaded = warm["gptmini compiled"]
            pays += f"; loaded from the disk ({loaded:.1f} s), after {loaded / saved:,.0f}"
        print(f"batch {batch}: compiled fp32 {rates[fast] / rates[eager]:.2f}x eager; its cold compile ({cold:.1f} s) "
              f"pays {pays}")
    megabytes = 4 * sum(m.weight.numel() for m in linears) / 1e6
    print(f"matvec floor: every token streams {megabytes:.1f} MB of weights; those products alone run at "
          f"{rates['matvec floor'] / rates['transformers']:.2f}x transformers, with nothing else in a decode step")
    print(f"targets: compiled fp32 {rates['gptmini compiled'] / rates['llama.cpp f32']:.2f}x llama.cpp f32 "
          f"(>= 0.9); compiled int8 {rates['gptmini int8 compiled'] / rates['llama.cpp q8_0']:.2f}x q8_0 (>= 0.7)")
    print(f"int8: {rates['gptmini int8'] / rates['gptmini']:.2f}x our fp32 eager, "
          f"{rates['gptmini int8'] / rates['transformers']:.2f}x transformers")
    best = max(rates["gptmini"], rates["gptmini compiled"])
    print(f"llama.cpp ratio: {best / rates['llama.cpp f32']:.2f}")
    print(f"ratio: {rates['gptmini'] / rates['transformers']:.2f}")


if __name__ == "__main__":
    main()
