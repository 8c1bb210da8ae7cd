"""Instruction tuning: a base checkpoint + instruction records -> an assistant checkpoint.

Each example is rendered by the template piece by piece, so labels are exact: -100 on everything
but the response tokens and the end-of-text after them. The loss is averaged over those tokens
across the whole accumulated batch (see train.py).
"""
from __future__ import annotations

import itertools
import math
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, lora
from .data import conversations as chats
from .data import variants
from .data.batches import ExampleBatches, first_trained, fit_to_context
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
DEFAULT_AUGMENT = "auto"  # question variants per record, each epoch (see data/variants.py and variant_count)
VARIANT_ANSWER_CHARS = 100  # of its answer, what a question variant asked alone trains (see answer_start)
DEFAULT_CONVERSATIONS = 4  # the longest chained conversation, in turns (see data/conversations.py)


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


def answer_start(sequence: tuple[list[int], list[int]], answer: str, answer_chars: int | None,
                 context_size: int) -> list[tuple[list[int], list[int]]]:
    """A question variant asked alone trains its answer's first `answer_chars` characters (about as many
    tokens as they take; None: all of it): the start is where the model decides which answer a question
    asks for; the rest of a long answer it learns from the record itself, every epoch. A short answer
    (the course's, a FAQ's) is trained whole."""
    ids, labels = sequence
    start = first_trained(labels)
    end = len(ids)
    if answer_chars and len(answer) > answer_chars:
        end = start + 1 + math.ceil(answer_chars * (len(ids) - start) / len(answer))
    return fit_to_context(ids[:end], labels[:end], context_size + 1)[0]


class Variety:
    """What each epoch trains beside the records themselves, made anew for every epoch (12 epochs see 12
    different sets): `augment` question variants per record, chained into conversations of 2 to
    `max_turns` turns (< 2: none) as far as they fit the context; without variants the records
    themselves are chained again. Cheap to make, so made when needed, from (seed, epoch) alone."""

    def __init__(self, examples: list[Example], tokenizer: Tokenizer, template: Template, context_size: int,
                 augment: int, max_turns: int, seed: int, answer_chars: int | None = None) -> None:
        self.examples, self.tokenizer, self.template, self.context = examples, tokenizer, template, context_size
        self.augment, self.max_turns, self.seed, self.answer_chars = augment, max_turns, seed, answer_chars
        self.counts: dict[str, int] = {}

    def __call__(self, epoch: int) -> list[tuple[list[int], list[int]]]:
        forms = variants.readable_forms(self.examples, self.augment, self.seed * 100_003 + epoch, self.tokenizer)
        pool = [e for e in forms or self.examples if chats.single_turn(e)]
        encoded = [self.template.encode(self.tokenizer, e.messages) for e in pool]
        groups = [[i] for i in range(len(encoded))]
        if self.max_turns >= 2:
            lengths, rng = [len(ids) for ids, _ in encoded], random.Random(f"{self.seed}:{epoch}")
            groups = chats.chain(lengths, self.max_turns, self.context + 1, rng)
        conversations = [self.template.encode(self.tokenizer, [m for i in group for m in pool[i].messages])
                         for group in groups if len(group) > 1]  # never longer than its turns' encodings
        alone = [group[0] for group in groups if len(group) == 1] if forms else []  # the records: in base
        multi_turn = [self.template.encode(self.tokenizer, f.messages) for f in forms if not chats.single_turn(f)]
        self.counts = {"question_variants": len(forms), "conversations": len(conversations)}
        answers = [pool[i].messages[-1]["content"] for i in alone]
        return ([piece for i, answer in zip(alone, answers)
                 for piece in answer_start(encoded[i], answer, self.answer_chars, self.context)]
                + [piece for seq in multi_turn for piece in fit_to_context(*seq, self.context + 1)[0]]
                + conversations)


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
        lora_alpha: float | None = None, lora_embeddings: bool = False, encoding: str | None = None,
        augment: int | str = DEFAULT_AUGMENT, conversations: int = DEFAULT_CONVERSATIONS,
        augment_answer_chars: int | None = VARIANT_ANSWER_CHARS) -> dict:
    """Fine-tunes `base` on `data` (default: the embedded instruction set); returns a summary.

    augment: question variants per training record each epoch, in the forms people type ("auto": see
        variants.variant_count; 0: none; data/variants.py).
    conversations: training records also chained into conversations of 2 to this many turns (< 2: none).
    augment_answer_chars: of its answer, what a variant asked alone trains (None: the whole answer).

    lora_rank: train LoRA adapters of this rank instead of every weight (see lora.py).
    encoding: of data and val_data (default UTF-8).
    """
    if lora_rank and (base == "none" or tokenizer):
        raise GptminiError("--lora-rank adapts an existing base with its own tokenizer: give --base DIR, no --tokenizer")
    refuse_two_lengths(epochs, train)
    out = Path(out)
    records = read_examples(data or DEFAULT_INSTRUCTIONS, fields, encoding=encoding)
    print(f"data: {records.report()}")
    prepare_output(out, resume, overwrite, train)
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
    augment = variants.variant_count(augment, len(train_examples))
    made = Variety(train_examples, tok, tmpl, context, augment, conversations, cfg.seed, augment_answer_chars)
    train_batches = ExampleBatches(train_seqs, cfg.batch_size, cfg.seed, tok.pad_id, extra=made)
    print(f"variety, each epoch: {made.counts['question_variants']} question variants (--augment "
          f"{augment or 'none'}), " + (f"{made.counts['conversations']} conversations of 2-{conversations} turns"
                                       if conversations >= 2 else "no conversations (--conversations none)"))
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
                    "val_examples": len(val_examples), "fit": dict(outcomes), **made.counts, "skipped_records": len(records.skipped),
                    "padding_waste": round(train_batches.padding_waste(), 4)}
    meta["data"]["first_question"] = first_question(e.messages for e in records.examples)  # serve's example
    trainer = Trainer(net, tok, train_batches, val_batches, cfg, out, meta)
    if resume:
        trainer.resume()
    return {**trainer.run(), "padding_waste": meta["data"]["padding_waste"]}


def preview_masks(data: str | Path | None, base: str, template: str | None, fields: str | dict | None,
                  tokenizer: str | None, vocab_size: int | None, n: int, encoding: str | None = None,
                  png: str | Path | None = None, augment: int | str = DEFAULT_AUGMENT,
                  conversations: int = DEFAULT_CONVERSATIONS) -> str:
    """`sft --show-masks N`: the first N examples as sft would train them, trained tokens marked, then the
    question variants of the first of them and one chained conversation (epoch 0's); with `png`, the
    examples also drawn there (plots.draw_mask)."""
    if png and not Path(png).resolve().parent.is_dir():
        raise GptminiError(f"--png {png}: the folder {Path(png).resolve().parent} does not exist")
    tmpl = get_template(template)
    examples = read_examples(data or DEFAULT_INSTRUCTIONS, fields, encoding=encoding).examples
    if starts_without_checkpoint(base) or tokenizer:
        tok = new_tokenizer(tokenizer or "char", examples, tmpl, vocab_size)
    else:
        tok = checkpoint.load(base).tokenizer
    text = show_masks(examples, tok, tmpl, n) + variety_preview(examples, tok, tmpl, augment, conversations)
    if png:
        from .plots import draw_mask

        encoded = [tmpl.encode(tok, e.messages) for e in examples[:n]]
        draw_mask(encoded, tok, png, [f"{e.where} ({len(ids)} tokens)" for e, (ids, _) in zip(examples, encoded)])
        text += f"\nmask picture: {png}"
    return text


def variety_preview(examples: list[Example], tok: Tokenizer, tmpl: Template, augment: int | str,
                    conversations: int) -> str:
    """The first record's question variants and a conversation chained from the first ones, as text."""
    augment, text = variants.variant_count(augment, len(examples)), ""
    forms = variants.readable_forms(examples[:3], augment, 0, tok)
    if forms:
        text += f"\n=== question variants of the first record (--augment {augment}; its answer as above):\n"
        text += "\n".join(f"  {v.messages[0]['content']}" for v in forms[:augment])
    turns = [e for e in forms[::augment] or examples if chats.single_turn(e)][:min(3, conversations)]
    if conversations >= 2 and len(turns) >= 2:
        chained = Example([m for e in turns for m in e.messages], "a conversation chained from them")
        text += f"\n=== {chained.where} (--conversations {conversations}):\n" + show_masks([chained], tok, tmpl, 1)
    return text


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
