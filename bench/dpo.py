"""DPO throughput: gptmini vs TRL's DPOTrainer, preference pairs trained per second, same work.

Same model size (BENCH_MODEL; TRL trains the same-size transformers Llama), same pairs (the embedded
instruction set: chosen = an instruction's answer, rejected = the answer of another instruction), same
BPE tokenizer and template, beta 0.1, sigmoid loss, batch of 8 pairs, fp32 on CPU, the same number of
steps. Both pay for the reference model once per pair: TRL (its default) runs it beside the policy
in every step; gptmini caches it before training, and each trained pair is charged its share of
that pass. TRL with `precompute_ref_log_probs=True` (one reference pass before training, as ours) runs
too, its pass charged the same way, and is printed beside; the ratio stays against TRL's default so
that figures compare across runs. Interleaved rounds, medians. Ends with `ratio: X` (ours / TRL).
"""
from __future__ import annotations

import copy
import tempfile
import time
import warnings

import datasets
import torch
from common import BENCH_MODEL, OURS, hf_llama, machine, median, peer_precision, precisions

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template
from gptmini.data.batches import PairBatches
from gptmini.data.preferences import Pair
from gptmini.data.records import read_examples
from gptmini.demo import DEMO_INSTRUCTIONS
from gptmini.dpo import DPOLoss, cache_reference, encode_pairs
from gptmini.train import Trainer, TrainConfig

BATCH, STEPS, WARMUP, ROUNDS, LR, BETA = 8, 14, 4, 3, 5e-6, 0.1


def preference_pairs() -> list[Pair]:
    """Each instruction's answer (chosen) against the answer of an instruction 40 records on (rejected)."""
    examples = read_examples(DEMO_INSTRUCTIONS).examples
    pairs = []
    for i, e in enumerate(examples):
        other = examples[(i + 40) % len(examples)].messages[-1]
        if other["content"] != e.messages[-1]["content"]:
            pairs.append(Pair(e.messages[:-1], [e.messages[-1]], [other], e.where))
    return pairs


def run_ours(encoded, tokenizer) -> tuple[float, float]:
    """(pairs trained per second, reference seconds per pair)."""
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(**BENCH_MODEL))
    batches = PairBatches(encoded, BATCH, seed=0, pad_id=tokenizer.pad_id)
    start = time.perf_counter()
    cache_reference(model, batches)
    reference_per_pair = (time.perf_counter() - start) / len(encoded)
    trainer = Trainer(model, tokenizer, batches, None, TrainConfig(batch_size=BATCH, lr=LR, show_progress=False),
                      tempfile.mkdtemp(), objective=DPOLoss(tokenizer.pad_id, BETA))
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        trainer.train_step(LR)
        times.append(time.perf_counter() - start)
    pairs = BATCH * (STEPS - WARMUP)
    return pairs / (sum(times[WARMUP:]) + pairs * reference_per_pair), reference_per_pair


def run_trl(pairs: list[Pair], template, tokenizer, precompute: bool = False) -> tuple[float, float]:
    """(pairs trained per second, reference seconds per pair: 0 unless TRL precomputes the reference)."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token="<|endoftext|>",
                                     pad_token="<|pad|>", unk_token="<|unk|>")
    data = Dataset.from_list([{"prompt": template.prompt_text(p.prompt[-1]["content"]),
                               "chosen": p.chosen[0]["content"], "rejected": p.rejected[0]["content"]} for p in pairs])
    torch.manual_seed(0)
    model = hf_llama(GPTConfig(**BENCH_MODEL))
    times, reference = [], []

    class Precomputing(DPOTrainer):  # times TRL's one reference pass (precompute_ref_log_probs=True)
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            reference.append((time.perf_counter() - start) / len(dataset))
            return out

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    config = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=STEPS,
                       learning_rate=LR, beta=BETA, max_length=BENCH_MODEL["context_size"] + 1, report_to=[],
                       save_strategy="no", logging_strategy="no", use_cpu=True, bf16=False, fp16=False,
                       dataloader_num_workers=0, seed=0, disable_tqdm=True, precompute_ref_log_probs=precompute)
    peer_precision(model, config)
    trainer = Precomputing(model=model, ref_model=copy.deepcopy(model), args=config, train_dataset=data,
                         processing_class=hf_tok, callbacks=[Clock()])
    trainer.train()
    trained, per_pair = BATCH * (STEPS - WARMUP), sum(reference)
    return trained / (sum(times[WARMUP:]) + trained * per_pair), per_pair


def main() -> None:
    warnings.filterwarnings("ignore")
    pairs = preference_pairs()
    template = get_template()
    texts = [m["content"] for p in pairs for m in p.prompt + p.chosen] + [template.prompt]
    tokenizer = Tokenizer.train_bpe(texts, BENCH_MODEL["vocab_size"])
    encoded, _ = encode_pairs(pairs, tokenizer, template, BENCH_MODEL["context_size"])
    datasets.disable_caching()  # TRL would otherwise reuse its precomputed reference from the previous round
    contenders = {"gptmini": lambda: run_ours(encoded, tokenizer), "trl": lambda: run_trl(pairs, template, tokenizer),
                  "trl-precomputed": lambda: run_trl(pairs, template, tokenizer, precompute=True)}
    results, reference = {name: [] for name in contenders}, {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, run in contenders.items():
            rate, per_pair = run()
            results[name].append(rate)
            reference[name].append(per_pair)
    import transformers
    import trl

    print(f"machine: {machine()}; transformers {transformers.__version__}, trl {trl.__version__}")
    print(precisions(gptmini=OURS, trl=OURS, **{"trl-precomputed": OURS}))
    print(f"data: {len(pairs)} pairs from the embedded instruction set; model {BENCH_MODEL}; batch {BATCH} pairs, "
          f"{STEPS} steps per run ({WARMUP} warm-up steps not timed), median of {ROUNDS} interleaved runs")
    for name, rates in results.items():
        print(f"{name:>8}: {median(rates):6.1f} pairs trained/s  (runs {', '.join(f'{r:.1f}' for r in rates)})")
    for name in ("gptmini", "trl-precomputed"):
        per_pair = median(reference[name])
        print(f"{name}'s one reference pass: {per_pair * 1000:.1f} ms a pair ({per_pair * len(encoded):.1f} s for the "
              f"{len(encoded)} pairs), counted in its rate above")
    print(f"against TRL with precompute_ref_log_probs=True: "
          f"{median(results['gptmini']) / median(results['trl-precomputed']):.2f}")
    print(f"ratio: {median(results['gptmini']) / median(results['trl']):.2f}")


if __name__ == "__main__":
    main()
