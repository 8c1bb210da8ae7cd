"""Pretraining: a text corpus -> a base checkpoint (the course's chapter 05)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .data import variants
from .data.batches import WindowBatches
from .data.corpus import DEFAULT_CORPUS, build_tokenizer, corpus_files, load_prepared, prepare
from .data.records import read_examples
from .data.templates import get_template
from .model import GPTConfig, GPTMini
from .tokenizer import Tokenizer
from .train import Trainer, TrainConfig, no_validation_note, prepare_output

DEFAULT_MODEL = {"context_size": 256, "d_model": 256, "n_heads": 8, "n_layers": 6}


def resolve_train_config(out: Path, resume: bool, overrides: dict) -> TrainConfig:
    """On resume the saved config is authoritative; flags given again (e.g. --max-steps) win."""
    base = {}
    if resume:
        saved = checkpoint.read_config(out / "last").get("training", {}).get("config", {})
        base = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
        if "betas" in base:
            base["betas"] = tuple(base["betas"])
        if saved.get("bf16"):  # a run saved before --precision: its --bf16
            base.setdefault("precision", "bf16")
    return TrainConfig(**{**base, **overrides})


def load_or_build_tokenizer(spec: str, files: list[Path], vocab_size: int | None) -> Tokenizer:
    """spec: "char", "bpe" (trained on the corpus), a tokenizer.json, or a checkpoint directory."""
    if spec in ("char", "bpe"):
        return build_tokenizer(files, spec, vocab_size)
    path = Path(spec)
    return Tokenizer.load(path / "tokenizer.json" if path.is_dir() else path)


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Validation loss (nats/token) of the unigram baseline: token frequencies of the training split
    (add-one smoothed), no context at all. A base model must beat it to have learnt anything."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1
    return float(-np.log(counts / counts.sum())[val].mean())


def instruction_mix(path: str | Path, tokenizer: Tokenizer, template: str | None, fields: str | None,
                    augment: int | str = "auto", seed: int = 0) -> np.ndarray:
    """Midtraining tokens: every record rendered by the template (answer and end-of-text included), and
    `augment` question variants of each as sft makes them ("auto": as many as sft would; 0: none).
    Records follow each other behind their end-of-text, so windows already hold conversations."""
    records = read_examples(path, fields)
    examples = records.examples
    forms = variants.readable_forms(examples, variants.variant_count(augment, len(examples)), seed, tokenizer)
    print(f"instruction mix: {records.report()}" + (f", with {len(forms)} question variants" if forms else ""))
    tmpl = get_template(template)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(examples) + len(forms))
    pool = examples + forms
    ids = [i for j in order for i in tmpl.encode(tokenizer, pool[j].messages)[0]]
    return np.asarray(ids, dtype=np.int64)


def pretrain(out: str | Path, data: list[str | Path] | None = None, tokenizer: str = "bpe",
             vocab_size: int | None = None, model: dict | None = None, train: dict | None = None,
             resume: bool = False, overwrite: bool = False, val_fraction: float = 0.05,
             mix_data: str | Path | None = None, mix_ratio: float = 0.1, template: str | None = None,
             fields: str | None = None, augment: int | str = "auto") -> dict:
    """Trains a base model on `data` (default: the embedded Portuguese corpus); returns a summary.

    mix_data (midtraining): instruction records, formatted by `template`, that make up `mix_ratio`
    of the training windows; validation stays on the corpus alone. augment: question variants of each
    mixed record (as sft's; "auto" as many as sft would make, 0: none).
    """
    out = Path(out)
    files = corpus_files(data or [DEFAULT_CORPUS])
    w = prepare_output(out, resume, overwrite, train)
    cfg = resolve_train_config(out, resume, train or {})
    if resume:
        ckpt = checkpoint.load(out / "last", device=cfg.device)
        net, tok = ckpt.model, ckpt.tokenizer
    else:
        tok = load_or_build_tokenizer(tokenizer, files, vocab_size)
    if w.main:  # one process writes the token files; the others read them
        prepare(files, tok, out / "data", val_fraction, show_progress=cfg.show_progress)
    w.barrier()
    corpus = load_prepared(out / "data")
    if corpus.meta["unknown_tokens"] and w.main:
        print(f"note: {corpus.meta['unknown_tokens']} characters are outside the tokenizer's vocabulary "
              "and were encoded as <|unk|>")
    if not resume:
        torch.manual_seed(cfg.seed)
        net = GPTMini(GPTConfig(vocab_size=tok.vocab_size, **{**DEFAULT_MODEL, **(model or {})}))
    context = net.config.context_size
    mix = (instruction_mix(mix_data, tok, template, fields, augment, cfg.seed), mix_ratio) if mix_data else None
    train_batches = WindowBatches(corpus.train, context, cfg.batch_size, cfg.seed, name="training split", mix=mix)
    val_batches = None
    if len(corpus.val) > context:
        val_batches = WindowBatches(corpus.val, context, cfg.batch_size, cfg.seed, name="validation split")
    elif w.main:
        print(no_validation_note("--val-fraction 0" if not val_fraction else
                                 f"the validation split has {len(corpus.val)} tokens, fewer than one window"))
    baseline = unigram_loss(corpus.train, corpus.val, tok.vocab_size) if len(corpus.val) else None
    meta = {"kind": "base", "data": {"files": [str(f) for f in files], "train_tokens": corpus.meta["train_tokens"],
                                     "val_tokens": corpus.meta["val_tokens"], "unigram_val_loss": baseline}}
    if mix:
        meta["data"]["mix"] = {"file": str(mix_data), "ratio": mix_ratio, "tokens": len(mix[0])}
    trainer = Trainer(net, tok, train_batches, val_batches, cfg, out, meta)
    if resume:
        trainer.resume()
    summary = trainer.run()
    if baseline is not None and summary["best_val_loss"] is not None and w.main:
        print(f"validation loss {summary['best_val_loss']:.3f} nats/token against {baseline:.3f} for the unigram "
              "baseline (token frequencies alone)")
    return {**summary, "unigram_val_loss": baseline}
