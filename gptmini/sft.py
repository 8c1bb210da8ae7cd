"""Instruction tuning: a base checkpoint + instruction records -> an assistant checkpoint.

Each example is rendered by the template piece by piece, so labels are exact: -100 on everything
but the response tokens and the end-of-text after them. The loss is averaged over those tokens
across the whole accumulated batch (see train.py).
"""
from __future__ import annotations

import itertools
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, lora
from .data.batches import ExampleBatches, fit_to_context
from .data.corpus import ASSETS
from .data.records import Example, first_question, read_examples
from .data.templates import Template, get_template
from .errors import GptminiError
from .model import IGNORE_INDEX, GPTConfig, GPTMini
from .pretrain import DEFAULT_MODEL, resolve_train_config
from .tokenizer import Tokenizer
from .train import Trainer, amount, no_validation_note, prepare_output, refuse_two_lengths, steps_for_epochs
from .transfer import load_legacy_state_dict, transfer

DEFAULT_INSTRUCTIONS = ASSETS / "instructions.jsonl"


def encode_examples(examples: list[Example], tokenizer: Tokenizer, template: Template, context_size: int,
                    policy: str = "pinned") -> tuple[list[tuple[list[int], list[int]]], Counter, list[int]]:
    """Training sequences (ids, labels) of at most context_size + 1 tokens, what was done to fit them,
    and the context each example would need whole."""
    sequences, outcomes, needed = [], Counter(), []
    for example in examples:
        ids, labels = template.encode(tokenizer, example.messages)
        pieces, outcome = fit_to_context(ids, labels, context_size + 1, policy)
        sequences += pieces
        outcomes[outcome] += 1
        needed.append(len(ids) - 1)
    return sequences, outcomes, needed


def describe_fit(outcomes: Counter, context: int, needed: list[int], share: float = 0.95) -> str:
    """One line for the SFT summary: what fitting the context did, and the --context-size that would
    hold `share` of the examples whole (from encode_examples' `needed`)."""
    line = f"fitting the {context}-token context: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
    if set(outcomes) != {"ok"}:
        lengths = sorted(needed)
        fits = lengths[min(len(lengths) - 1, math.ceil(share * len(lengths)) - 1)]
        line += f" (a --context-size of {fits} would hold {share:.0%} of them whole)"
    return line


def split_validation(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    n_val = math.floor(len(examples) * fraction)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(examples))
    val = set(order[:n_val].tolist())
    return [e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val]


def example_texts(examples: list[Example], template: Template) -> list[str]:
    """Everything the tokenizer will see: contents plus the template's own text."""
    return [m["content"] + m.get("input", "") for e in examples for m in e.messages] + [
        template.prompt, template.prompt_with_input or "", template.system or ""]


def starts_without_checkpoint(base: str) -> bool:
    """True for "none" (from scratch) and for a legacy state-dict file: no tokenizer comes with it."""
    return base == "none" or Path(base).suffix in (".pt", ".pth", ".bin")


def build_model_and_tokenizer(base: str, examples: list[Example], template: Template, tokenizer_spec: str | None,
                              vocab_size: int | None, model_overrides: dict, seed: int) -> tuple[GPTMini, Tokenizer, dict]:
    """The model to fine-tune: from scratch (base "none"), a checkpoint, or a legacy state-dict file."""
    torch.manual_seed(seed)
    base_path = Path(base)
    if starts_without_checkpoint(base):
        tokenizer = new_tokenizer(tokenizer_spec or "char", examples, template, vocab_size)
        model = GPTMini(GPTConfig(vocab_size=tokenizer.vocab_size, **{**DEFAULT_MODEL, **model_overrides}))
        if base != "none":
            print(transfer(load_legacy_state_dict(base_path), model))
        else:  # said out loud: without --base nothing pretrained is used, and a default-size run takes a while
            c = model.config
            print(f"note: no --base: training a new {amount(model.num_parameters())}-parameter model from scratch "
                  f"(--d-model {c.d_model}, --n-layers {c.n_layers}, --n-heads {c.n_heads}, --context-size "
                  f"{c.context_size}, {tokenizer.vocab_size} tokens); --base DIR fine-tunes a pretrained one")
        return model, tokenizer, {"base": base}
    ckpt = checkpoint.load(base_path)
    shape_flags = sorted(set(model_overrides) - {"dropout"})  # dropout is a training choice, not a shape
    if shape_flags:
        print(f"note: model flags {shape_flags} ignored: the model keeps the shape of {base_path}")
    tokenizer = ckpt.tokenizer
    if tokenizer_spec is not None:
        tokenizer = new_tokenizer(tokenizer_spec, examples, template, vocab_size)
    model = GPTMini(GPTConfig.from_dict({**ckpt.model.config.to_dict(), "vocab_size": tokenizer.vocab_size,
                                         **{k: v for k, v in model_overrides.items() if k == "dropout"}}))
    print(transfer(checkpoint.weights_state_dict(ckpt.model), model, ckpt.tokenizer, tokenizer))
    return model, tokenizer, {"base": str(base_path)}


def new_tokenizer(spec: str, examples: list[Example], template: Template, vocab_size: int | None) -> Tokenizer:
    if spec == "char":
        return Tokenizer.train_char(example_texts(examples, template))
    if spec == "bpe":
        return Tokenizer.train_bpe(example_texts(examples, template), vocab_size or 8192)
    path = Path(spec)
    return Tokenizer.load(path / "tokenizer.json" if path.is_dir() else path)


def load_run(out: Path, device: str, dropout: float | None = None) -> tuple[GPTMini, Tokenizer, Template | None, dict]:
    """What a resumed fine-tuning run goes on from: the model of out/last (LoRA: the untouched base with the
    run's adapters), its tokenizer, template and metadata (less the training summary). dropout: rebuild the
    model with this dropout (DPO trains without)."""
    ckpt = checkpoint.load(out / "last", device=device)
    meta = {k: v for k, v in ckpt.meta.items() if k != "training"}
    net = checkpoint.load(meta["source"]["base"], device=device).model if "lora" in meta else ckpt.model
    if dropout is not None:
        net = checkpoint.with_dropout(net, dropout)
    if "lora" in meta:  # adapters continue on top of the untouched base
        lora.add_lora(net, meta["lora"]["rank"], meta["lora"]["alpha"], meta["lora"].get("embeddings", False))
        lora.load_adapter(net, out / "last")
    return net, ckpt.tokenizer, ckpt.template, meta


def sft(out: str | Path, data: str | Path | None = None, base: str = "none", template: str | None = None,
        fields: str | dict | None = None, val_data: str | Path | None = None, val_fraction: float = 0.05,
        tokenizer: str | None = None, vocab_size: int | None = None, long_examples: str = "pinned",
        epochs: float | None = None, model: dict | None = None, train: dict | None = None,
        resume: bool = False, overwrite: bool = False, lora_rank: int | None = None,
        lora_alpha: float | None = None, lora_embeddings: bool = False, encoding: str | None = None) -> dict:
    """Fine-tunes `base` on `data` (default: the embedded instruction set); returns a summary.

    lora_rank: train LoRA adapters of this rank instead of every weight (see lora.py).
    encoding: of data and val_data (default UTF-8).
    """
    if lora_rank and (base == "none" or tokenizer):
        raise GptminiError("--lora-rank adapts an existing base with its own tokenizer: give --base DIR, no --tokenizer")
    refuse_two_lengths(epochs, train)
    out = Path(out)
    records = read_examples(data or DEFAULT_INSTRUCTIONS, fields, encoding=encoding)
    print(f"data: {records.report()}")
    prepare_output(out, resume, overwrite, (train or {}).get("device", "cpu"))
    cfg_overrides = dict(train or {})
    if resume:
        cfg = resolve_train_config(out, True, cfg_overrides)
        net, tok, tmpl, meta = load_run(out, cfg.device)
    else:
        tmpl = get_template(template)
        cfg = resolve_train_config(out, False, cfg_overrides)
        net, tok, source = build_model_and_tokenizer(base, records.examples, tmpl, tokenizer, vocab_size, model or {}, cfg.seed)
        meta = {"kind": "sft", "template": tmpl.to_dict(), "source": source}
        if lora_rank:
            print(lora.add_lora(net, lora_rank, lora_alpha, lora_embeddings))
            meta["lora"] = lora.spec(lora_rank, lora_alpha, lora_embeddings)
    train_examples, val_examples = split_validation(records.examples, 0 if val_data else val_fraction, cfg.seed)
    if val_data:
        val_records = read_examples(val_data, fields, encoding=encoding, fields_fallback=True)  # its own shape first
        print(f"validation data: {val_records.report()}")
        val_examples = val_records.examples
    unknown = sum(tok.count_unknown(t) for t in example_texts(records.examples, tmpl))
    if unknown:
        print(f"note: {unknown} characters of the data are not in the tokenizer's vocabulary; encoded as <|unk|>")
    context = net.config.context_size
    train_seqs, outcomes, needed = encode_examples(train_examples, tok, tmpl, context, long_examples)
    print(f"examples: {len(train_examples)} train, {len(val_examples)} validation; "
          + describe_fit(outcomes, context, needed))
    train_batches = ExampleBatches(train_seqs, cfg.batch_size, cfg.seed, tok.pad_id)
    val_batches = None
    if val_examples:
        val_seqs, _, _ = encode_examples(val_examples, tok, tmpl, context, long_examples)
        val_batches = ExampleBatches(val_seqs, cfg.batch_size, cfg.seed, tok.pad_id) if val_seqs else None
    if val_batches is None:
        n = len(records.examples)
        print(no_validation_note("--val-fraction 0" if not val_fraction else
                                 f"--val-fraction {val_fraction} of {n} records is under one example"))
    if epochs is not None:  # with --max-steps too it was refused above
        cfg.max_steps = steps_for_epochs(epochs, train_batches, cfg.grad_accum)
    meta["data"] = {"file": str(data or "embedded"), "train_examples": len(train_examples),
                    "val_examples": len(val_examples), "fit": dict(outcomes), "skipped_records": len(records.skipped),
                    "padding_waste": round(train_batches.padding_waste(), 4)}
    meta["data"]["first_question"] = first_question(e.messages for e in records.examples)  # serve's example
    trainer = Trainer(net, tok, train_batches, val_batches, cfg, out, meta)
    if resume:
        trainer.resume()
    return {**trainer.run(), "padding_waste": meta["data"]["padding_waste"]}


def preview_masks(data: str | Path | None, base: str, template: str | None, fields: str | dict | None,
                  tokenizer: str | None, vocab_size: int | None, n: int, encoding: str | None = None) -> str:
    """`sft --show-masks N`: the first N examples as sft would train them, trained tokens marked."""
    tmpl = get_template(template)
    examples = read_examples(data or DEFAULT_INSTRUCTIONS, fields, encoding=encoding).examples
    if starts_without_checkpoint(base) or tokenizer:
        tok = new_tokenizer(tokenizer or "char", examples, tmpl, vocab_size)
    else:
        tok = checkpoint.load(base).tokenizer
    return show_masks(examples, tok, tmpl, n)


def show_masks(examples: list[Example], tokenizer: Tokenizer, template: Template, n: int, color: bool | None = None) -> str:
    """N formatted examples with the trained tokens marked: green on a terminal, ⟦…⟧ otherwise."""
    color = sys.stdout.isatty() if color is None else color
    open_mark, close_mark = ("\033[1;32m", "\033[0m") if color else ("⟦", "⟧")
    blocks = []
    for example in examples[:n]:
        ids, labels = template.encode(tokenizer, example.messages)
        text = []
        for trained, run in itertools.groupby(zip(ids, labels), key=lambda pair: pair[1] != IGNORE_INDEX):
            run_ids = [token_id for token_id, _ in run]
            piece = tokenizer.decode(run_ids) + ("<|endoftext|>" if run_ids[-1] == tokenizer.eot_id else "")
            text.append(f"{open_mark}{piece}{close_mark}" if trained else piece)
        trained_count = sum(label != IGNORE_INDEX for label in labels)
        blocks.append(f"--- {example.where} ({len(ids)} tokens, {trained_count} trained)\n" + "".join(text))
    return "\n".join(blocks)
