"""Pretraining: a text corpus -> a base checkpoint (the course's chapter 05)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from . import checkpoint
from .data.batches import WindowBatches
from .data.corpus import DEFAULT_CORPUS, build_tokenizer, corpus_files, load_prepared, prepare
from .model import GPTConfig, GPTMini
from .tokenizer import Tokenizer
from .train import Trainer, TrainConfig, prepare_output

DEFAULT_MODEL = {"context_size": 256, "d_model": 256, "n_heads": 8, "n_layers": 6}


def resolve_train_config(out: Path, resume: bool, overrides: dict) -> TrainConfig:
    """On resume the saved config is authoritative; flags given again (e.g. --max-steps) win."""
    base = {}
    if resume:
        saved = checkpoint.read_config(out / "last").get("training", {}).get("config", {})
        base = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
        if "betas" in base:
            base["betas"] = tuple(base["betas"])
    return TrainConfig(**{**base, **overrides})


def load_or_build_tokenizer(spec: str, files: list[Path], vocab_size: int | None) -> Tokenizer:
    """spec: "char", "bpe" (trained on the corpus), a tokenizer.json, or a checkpoint directory."""
    if spec in ("char", "bpe"):
        return build_tokenizer(files, spec, vocab_size)
    path = Path(spec)
    return Tokenizer.load(path / "tokenizer.json" if path.is_dir() else path)


def pretrain(out: str | Path, data: list[str | Path] | None = None, tokenizer: str = "bpe",
             vocab_size: int | None = None, model: dict | None = None, train: dict | None = None,
             resume: bool = False, overwrite: bool = False, val_fraction: float = 0.05) -> dict:
    """Trains a base model on `data` (default: the embedded Portuguese corpus); returns a summary."""
    out = Path(out)
    files = corpus_files(data or [DEFAULT_CORPUS])
    w = prepare_output(out, resume, overwrite, (train or {}).get("device", "cpu"))
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
    train_batches = WindowBatches(corpus.train, context, cfg.batch_size, cfg.seed, name="training split")
    val_batches = None
    if len(corpus.val) > context:
        val_batches = WindowBatches(corpus.val, context, cfg.batch_size, cfg.seed, name="validation split")
    elif val_fraction > 0:
        print(f"note: validation split has {len(corpus.val)} tokens, fewer than one window; no validation")
    meta = {"kind": "base", "data": {"files": [str(f) for f in files], "train_tokens": corpus.meta["train_tokens"],
                                     "val_tokens": corpus.meta["val_tokens"]}}
    trainer = Trainer(net, tok, train_batches, val_batches, cfg, out, meta)
    if resume:
        trainer.resume()
    return trainer.run()
