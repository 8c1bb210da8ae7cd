"""`gptmini demo`: the whole journey on the embedded defaults, in a few minutes on a laptop CPU.

Builds a BPE tokenizer and pretrains a small base on the embedded Portuguese corpus, instruction-
tunes it on the embedded instruction set (the seed's 4 examples + the team's), evaluates base and
assistant side by side on the held-out rewordings (runs/demo/eval/), and prints a few answers.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import checkpoint
from .data.corpus import ASSETS
from .data.templates import get_template
from .engine import Engine, SamplingParams
from .pretrain import pretrain
from .sft import sft

DEMO_MODEL = {"context_size": 128, "d_model": 192, "n_heads": 6, "n_layers": 4}
SEED_PROMPTS = ["Explique Machine Learning", "O que é um modelo de linguagem?", "Para que serve a atenção?",
                "Defina inteligência artificial"]


def answer(run: Path, prompts: list[str], max_new_tokens: int = 96) -> list[str]:
    """Greedy answers; a base model (no template of its own) gets the assistant's template."""
    ckpt = checkpoint.load(run)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template or get_template())
    ids = [engine.encode_prompt([{"role": "user", "content": p}]) for p in prompts]
    return [c.text for c in engine.generate(ids, SamplingParams(max_new_tokens=max_new_tokens))]


def demo(out: str | Path = "runs/demo", pretrain_steps: int = 300, sft_epochs: float = 25, seed: int = 0,
         show_progress: bool = True) -> dict:
    out = Path(out)
    started = time.time()
    common = {"seed": seed, "show_progress": show_progress, "batch_size": 16}
    print("== 1/3 pretraining a base model on the embedded Portuguese corpus")
    base = pretrain(out / "base", tokenizer="bpe", vocab_size=1024, model=DEMO_MODEL, overwrite=True,
                    train={**common, "max_steps": pretrain_steps, "lr": 2e-3, "eval_every": 50, "save_every": 100})
    print(f"   base: {base['steps']} steps, best validation loss {base['best_val_loss']:.3f}, "
          f"{base['tokens_per_s']:.0f} tokens/s")
    print("== 2/3 instruction tuning (loss on the answers only)")
    tuned = sft(out / "sft", base=str(out / "base" / "best"), val_data=ASSETS / "instructions_eval.jsonl",
                epochs=sft_epochs, overwrite=True, train={**common, "lr": 1e-3, "eval_every": 50, "save_every": 100})
    print(f"   sft: {tuned['steps']} steps, {tuned['tokens_per_s']:.0f} tokens/s, padding {tuned['padding_waste']:.1%}")
    print("== 3/3 evaluation on held-out rewordings, and the assistant in action (greedy)")
    report = evaluate_demo(out)
    print(f"demo finished in {time.time() - started:.0f} s; everything is in {out}/")
    return {"base": base, "sft": tuned, **report}


def evaluate_demo(out: Path) -> dict:
    from .data.records import read_examples
    from .evaluate import metrics_table, run_eval

    held_out = read_examples(ASSETS / "instructions_eval.jsonl").examples
    reports = run_eval([out / "sft" / "last", out / "base" / "best"], held_out, out / "eval",
                       SamplingParams(max_new_tokens=96))
    print(metrics_table(reports))
    print(f"report: {out / 'eval' / 'report.md'}")
    # The held-out answers are the evaluation's own; only the seed's prompts are answered anew.
    prompts = SEED_PROMPTS + [e.messages[0]["content"] for e in held_out[:4]]
    base_answers = answer(out / "base" / "best", prompts[:2], max_new_tokens=48)
    sft_answers = answer(out / "sft" / "last", SEED_PROMPTS) + reports[0].answers[:4]
    for prompt, text in zip(prompts[:2], base_answers):
        print(f"[base] {prompt}\n   -> {text!r}")
    for i, (prompt, text) in enumerate(zip(prompts, sft_answers)):
        print(f"[sft{' held-out' if i >= len(SEED_PROMPTS) else ''}] {prompt}\n   -> {text}")
    return {"answers": dict(zip(prompts, sft_answers)), "eval": {r.name: r.metrics for r in reports}}
