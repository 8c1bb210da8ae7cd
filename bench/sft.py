"""SFT throughput on Pirá: gptmini vs TRL's SFTTrainer (completion-only loss), same work.

Same model size (d_model 256, 8 heads, 6 layers, context 256, vocab 8192; TRL trains the same-size
transformers Llama), same BPE tokenizer (trained on Pirá), same template, batch size 16, the same
number of steps, fp32 on CPU on both sides (TRL's bf16 default is turned off: common.peer_precision). Measures response tokens trained per second (answer + end-of-text:
the tokens whose loss counts) and the padding waste of each side's batches. Interleaved rounds,
medians. Ends with `ratio: X` (ours / TRL).
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import BENCH_MODEL, OURS, hf_llama, machine, median, peer_precision, precisions

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template
from gptmini.data.batches import ExampleBatches
from gptmini.data.records import read_examples
from gptmini.model import IGNORE_INDEX
from gptmini.sft import encode_examples
from gptmini.train import Trainer, TrainConfig

PIRA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft" / "pira_pt_train.jsonl"
BATCH, STEPS, WARMUP, ROUNDS, LR = 16, 24, 4, 3, 5e-4


class Meter:
    """Step times, and the trained (counted) tokens of the steps after the warm-up."""

    def __init__(self):
        self.times, self.trained = [], 0

    def add(self, seconds, targets):
        self.times.append(seconds)
        if len(self.times) > WARMUP:
            self.trained += int((targets != IGNORE_INDEX).sum())

    def rate(self):
        return self.trained / sum(self.times[WARMUP:])


def run_ours(sequences, tokenizer, model_config: dict = BENCH_MODEL, device: str = "cpu", precision: str = "fp32",
             steps: int = STEPS) -> tuple[float, float]:
    """(response tokens trained/s, padding waste); bench/gpu.py runs it on a GPU in bf16."""
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(**model_config))
    batches = ExampleBatches(sequences, BATCH, seed=0, pad_id=tokenizer.pad_id)
    cfg = TrainConfig(batch_size=BATCH, lr=LR, show_progress=False, device=device, precision=precision)
    trainer = Trainer(model, tokenizer, batches, None, cfg, tempfile.mkdtemp())
    meter = Meter()
    for _ in range(steps):  # train_step reads its loss from the device: each step is timed to its end
        state = batches.state_dict()
        _, targets = batches.next()
        batches.load_state_dict(state)  # the trainer takes the very same batch
        start = time.perf_counter()
        trainer.train_step(LR)
        meter.add(time.perf_counter() - start, targets)
    return meter.rate(), batches.padding_waste()


def run_trl(records, template, tokenizer, model_config: dict = BENCH_MODEL, device: str = "cpu",
            precision: str = "fp32", steps: int = STEPS) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token="<|endoftext|>",
                                     pad_token="<|pad|>", unk_token="<|unk|>")
    data = Dataset.from_list([{"prompt": template.prompt_text(e.messages[0]["content"]),
                               "completion": e.messages[1]["content"]} for e in records])
    torch.manual_seed(0)
    model = hf_llama(GPTConfig(**model_config))
    meter = Meter()

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if device != "cpu":
                torch.cuda.synchronize()  # the GPU's work, not only its launch
            meter.times.append(time.perf_counter() - self.start)

    config = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=steps,
                       learning_rate=LR, completion_only_loss=True, max_length=model_config["context_size"] + 1,
                       packing=False, report_to=[], save_strategy="no", logging_strategy="no",
                       use_cpu=device == "cpu", dataloader_num_workers=0, seed=0, disable_tqdm=True,
                       bf16=precision == "bf16", fp16=False)  # TRL's default bf16=True autocasts even on a CPU
    if precision == "fp32":
        peer_precision(model, config)  # fp32 like ours, never a default's autocast
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=hf_tok, callbacks=[Clock()])
    collate, batches = trainer.data_collator, []

    def recording_collator(features):
        batch = collate(features)
        batches.append(batch)
        return batch

    trainer.data_collator = recording_collator
    trainer.train()
    timed_batches = batches[-len(meter.times):][WARMUP:]
    trained = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in timed_batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return trained / sum(meter.times[WARMUP:]), 1 - real / sum(b["input_ids"].numel() for b in batches)


def main() -> None:
    warnings.filterwarnings("ignore")
    records = read_examples(PIRA, "instruction=pergunta,response=resposta").examples
    template = get_template()
    tokenizer = Tokenizer.train_bpe([m["content"] for e in records for m in e.messages] + [template.prompt], 8192)
    sequences, _, _ = encode_examples(records, tokenizer, template, BENCH_MODEL["context_size"])
    results = {"gptmini": [], "trl": []}
    waste = {}
    for _ in range(ROUNDS):
        rate, waste["gptmini"] = run_ours(sequences, tokenizer)
        results["gptmini"].append(rate)
        rate, waste["trl"] = run_trl(records, template, tokenizer)
        results["trl"].append(rate)
    import transformers
    import trl

    print(f"machine: {machine()}; transformers {transformers.__version__}, trl {trl.__version__}")
    print(precisions(gptmini=OURS, trl=OURS))
    print(f"data: Pirá, {len(records)} examples; model {BENCH_MODEL}; batch {BATCH}, {STEPS} steps per run "
          f"({WARMUP} warm-up steps not timed), median of {ROUNDS} interleaved runs")
    for name, rates in results.items():
        print(f"{name:>8}: {median(rates):7.0f} response tokens trained/s  (runs {', '.join(f'{r:.0f}' for r in rates)}); "
              f"padding waste {waste[name]:.1%}")
    print(f"ratio: {median(results['gptmini']) / median(results['trl']):.2f}")


if __name__ == "__main__":
    main()
