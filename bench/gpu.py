"""The GPU path, measured: one prepared script for a machine with a CUDA GPU (planned at under 6 minutes).

Prints the GPU, torch and CUDA versions, then
1. pretraining tokens/s and MFU, bf16 autocast, torch.compile off and on, for the bench model and a
   ~100 M config (d_model 768, 12 layers, 12 heads, context 1024, vocab 16384), beside transformers'
   LlamaForCausalLM of the same size (sdpa, bf16 autocast, fused AdamW) on the same batches; MFU
   against the GPU's dense bf16 peak (its data sheet's where known) and a measured bf16 matmul peak;
2. SFT response tokens trained/s, gptmini vs TRL's SFTTrainer, bf16 both (bench/sft.py's runs, on
   the embedded instruction set);
3. decode tokens/s at batch 1 and 16, gptmini's engine vs transformers' generate, greedy, fp32 both;
4. a 2-process torchrun (NCCL) pretraining run: on two GPUs, or both processes on this one if
   NCCL allows it (else what it said);
5. bf16 vs fp32: the mean training loss of the last 10 of 50 steps from the same start and batches,
   within TOLERANCE.
Each part that fails prints its error and the others go on. The last line is `ratio: X`, gptmini's
pretraining tokens/s / transformers' at 100 M (compiled both, else eager both).

`--tiny --device cpu`: every part on tiny models for a few steps, a check that the script runs (about
a minute on 2 cores); its figures mean nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from common import BENCH_MODEL, hf_llama

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer
from gptmini.data.batches import WindowBatches
from gptmini.device import resolve_device
from gptmini.train import Trainer, TrainConfig

HUNDRED_M = {"vocab_size": 16384, "context_size": 1024, "d_model": 768, "n_heads": 12, "n_layers": 12}
TINY = {"vocab_size": 512, "context_size": 64, "d_model": 64, "n_heads": 4, "n_layers": 2}
TOLERANCE = 0.02  # bf16's loss within 2 % of fp32's (mean of the last 10 of 50 steps)
# Dense bf16 peaks from the data sheets (FLOP/s), matched in order against torch.cuda.get_device_name().
PEAKS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
         ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165e12), ("T4", 65e12)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_second(step, device: torch.device, warmup: int, steps: int) -> float:
    """Steps a second of `step()` after `warmup` untimed ones (allocation, compilation)."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps / (time.perf_counter() - start)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 * per_second(lambda: a @ b, device, 3, 20)


def versions(device: torch.device) -> str:
    if device.type != "cuda":
        return f"device {device}; torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"GPU {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}, "
            f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB); torch {torch.__version__}; "
            f"CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}")


def data_sheet_peak(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((peak for key, peak in PEAKS if key in name), None)


def pretrain_rates(config: dict, batch: int, device: torch.device, precision: str, compiled: bool,
                   steps: int) -> dict[str, float]:
    """Tokens/s of gptmini's training step and of transformers' Llama, the same batches."""
    tokens = np.random.default_rng(0).integers(0, config["vocab_size"], 2_000_000).astype(np.uint16)
    torch.manual_seed(0)
    ours = GPTMini(GPTConfig(**config))
    cfg = TrainConfig(batch_size=batch, show_progress=False, device=str(device), precision=precision,
                      compile=compiled)
    trainer = Trainer(ours, Tokenizer.train_bpe(["x"], vocab_size=300), WindowBatches(tokens, config["context_size"],
                      batch, seed=0), None, cfg, tempfile.mkdtemp())
    per_step = batch * config["context_size"]
    rates = {"gptmini": per_step * per_second(lambda: trainer.train_step(1e-4), device, 3, steps)}
    del trainer, ours
    hf = hf_llama(GPTConfig(**config)).to(device).train()
    forward = torch.compile(hf) if compiled else hf
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    batches = WindowBatches(tokens, config["context_size"], batch, seed=0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def hf_step():
        idx, _ = batches.next()
        idx = idx.to(device, non_blocking=True)
        with autocast:
            loss = forward(input_ids=idx, labels=idx).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rates["transformers"] = per_step * per_second(hf_step, device, 3, steps)
    del hf, forward, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates


def part_pretrain(args, device: torch.device, precision: str) -> float | None:
    """Prints the pretraining table; returns the 100 M ratio."""
    peak = data_sheet_peak(device)
    measured = matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    print(f"{precision} matmul peak measured: {measured / 1e12:.1f} TFLOP/s; data sheet: "
          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown for this GPU"))
    ratio = None
    sizes = [("tiny", TINY, 4)] if args.tiny else [("bench", BENCH_MODEL, 32), ("100M", HUNDRED_M, 16)]
    for label, config, batch in sizes:
        with torch.device("meta"):  # the count only: no memory, no initialisation
            flops = GPTMini(GPTConfig(**config)).flops_per_token()
        for compiled in ((False,) if args.tiny else (False, True)):
            rates = pretrain_rates(config, batch, device, precision, compiled, 3 if args.tiny else 10)
            for name, rate in rates.items():
                mfu = rate * flops / (peak or measured)
                print(f"pretrain {label:>5} {'compiled' if compiled else 'eager':>8} {name:>12}: {rate:10,.0f} tokens/s"
                      f"  MFU {mfu:6.1%} of the {'data sheet' if peak else 'measured'} peak"
                      f" ({rate * flops / measured:6.1%} of measured)")
            ratio = rates["gptmini"] / rates["transformers"]  # the last one, 100 M compiled
        print(f"pretrain {label}: batch {batch} x {config['context_size']}, {flops / 1e6:,.0f} MFLOP/token")
    return ratio


def part_sft(args, device: torch.device, precision: str) -> None:
    from sft import BATCH, run_ours, run_trl

    from gptmini import get_template
    from gptmini.data.records import read_examples
    from gptmini.sft import DEFAULT_INSTRUCTIONS, encode_examples

    config = TINY if args.tiny else BENCH_MODEL
    records = read_examples(DEFAULT_INSTRUCTIONS).examples
    template = get_template()
    texts = [m["content"] for e in records for m in e.messages] + [template.prompt]
    tokenizer = Tokenizer.train_bpe(texts, config["vocab_size"])
    sequences, _, _ = encode_examples(records, tokenizer, template, config["context_size"])
    steps = 6 if args.tiny else 40
    ours, _ = run_ours(sequences, tokenizer, config, str(device), precision, steps)
    trl, _ = run_trl(records, template, tokenizer, config, str(device), precision, steps)
    print(f"sft ({len(records)} embedded records, batch {BATCH}, {precision}): gptmini {ours:,.0f}, TRL {trl:,.0f} "
          f"response tokens trained/s: {ours / trl:.2f}x")


def part_decode(args, device: torch.device) -> None:
    config = GPTConfig(**(TINY if args.tiny else HUNDRED_M))
    new = 16 if args.tiny else 128
    torch.manual_seed(0)
    model = GPTMini(config).to(device).eval()
    tokenizer = Tokenizer.train_bpe(["x"], vocab_size=300)
    tokenizer.eot_id = -1  # a random model must not stop early: both sides decode the full length
    engine, hf = Engine(model, tokenizer), hf_llama(config).to(device).eval()
    params = SamplingParams(max_new_tokens=new)
    for batch in (1, 16):
        prompts = [[5 + i] * 8 for i in range(batch)]
        ids = torch.tensor(prompts, device=device)

        def ours():
            assert all(len(c.token_ids) == new for c in engine.generate(prompts, params))

        def theirs():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                        do_sample=False, pad_token_id=0)

        rates = {name: batch * new * per_second(fn, device, 1, 3) for name, fn in (("gptmini", ours),
                                                                                   ("transformers", theirs))}
        print(f"decode batch {batch:>2} (fp32, {new} new tokens): gptmini {rates['gptmini']:,.0f}, transformers "
              f"{rates['transformers']:,.0f} tokens/s: {rates['gptmini'] / rates['transformers']:.2f}x")


def part_torchrun(args, device: torch.device) -> None:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    target = "cuda" if gpus >= 2 else "cuda:0" if gpus == 1 else "cpu"  # cuda:0 twice: both processes on one GPU
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("O modelo de linguagem prevê a próxima palavra. Atenção!\n" * 400, encoding="utf-8")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "gptmini.cli", "pretrain", "--data", str(corpus), "--out", f"{tmp}/run", "--tokenizer", "char",
                   "--context-size", "32", "--d-model", "32", "--n-heads", "2", "--n-layers", "1", "--max-steps",
                   "5", "--grad-accum", "2", "--batch-size", "4", "--device", target, "--no-progress"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=180)
    backend = "NCCL" if target != "cpu" else "gloo"
    where = "2 GPUs" if gpus >= 2 else "one GPU, both processes" if gpus == 1 else "the CPU"
    if out.returncode == 0:
        print(f"torchrun 2 processes ({backend}, {where}): ran 5 steps")
    else:
        said = [line for line in out.stderr.splitlines() if "Error" in line or "error" in line][-3:]
        print(f"torchrun 2 processes ({backend}, {where}): refused, exit {out.returncode}: {' | '.join(said)[:600]}")


def part_precision_equality(args, device: torch.device) -> None:
    config = TINY if args.tiny else BENCH_MODEL
    steps = np.random.default_rng(1).integers(0, 7, 500_000)
    tokens = (np.cumsum(steps) % config["vocab_size"]).astype(np.uint16)  # learnable: each token is the last + 0..6
    finals = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = GPTMini(GPTConfig(**config))
        cfg = TrainConfig(batch_size=16, lr=1e-3, warmup_steps=5, max_steps=50, show_progress=False,
                          device=str(device), precision=precision)
        trainer = Trainer(model, Tokenizer.train_bpe(["x"], vocab_size=300),
                          WindowBatches(tokens, config["context_size"], 16, seed=0), None, cfg, tempfile.mkdtemp())
        losses = [trainer.train_step(1e-3).loss for _ in range(50)]
        finals[precision] = float(np.mean(losses[-10:]))
    gap = abs(finals["bf16"] - finals["fp32"]) / finals["fp32"]
    print(f"bf16 vs fp32, 50 steps from the same start: last-10 mean loss {finals['bf16']:.4f} vs {finals['fp32']:.4f}"
          f" ({gap:.2%}; tolerance {TOLERANCE:.0%}: {'within' if gap <= TOLERANCE else 'OUTSIDE'})")


def attempt(name: str, fn, *args):
    """Runs one part; a failure is printed and the next part goes on."""
    started = time.perf_counter()
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - one prepared run: every part's result matters
        print(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(limit=4)
    finally:
        print(f"  ({name}: {time.perf_counter() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (the GPU), cuda:N, or cpu with --tiny")
    parser.add_argument("--tiny", action="store_true", help="tiny models, few steps: a check that every part runs")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(versions(device), flush=True)
    ratio = attempt("pretrain", part_pretrain, args, device, precision)
    attempt("sft", part_sft, args, device, precision)
    attempt("decode", part_decode, args, device)
    attempt("torchrun", part_torchrun, args, device)
    attempt("bf16 vs fp32", part_precision_equality, args, device)
    print(f"ratio: {ratio:.2f}" if ratio else "ratio: none (the pretraining part failed)")


if __name__ == "__main__":
    main()
