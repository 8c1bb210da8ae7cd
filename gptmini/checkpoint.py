"""Checkpoint directories: model.safetensors + config.json + tokenizer.json, written atomically.

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash
mid-write never replaces a good checkpoint with a half-written one. Loading reads safetensors and
JSON only: nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .data.templates import Template
from .device import resolve_device
from .errors import GptminiError
from .model import GPTConfig, GPTMini
from .tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


@dataclass
class Checkpoint:
    model: GPTMini
    tokenizer: Tokenizer
    meta: dict = field(default_factory=dict)  # template, training summary, anything JSON
    path: Path | None = None

    @property
    def template(self) -> Template | None:
        spec = self.meta.get("template")
        return Template.from_dict(spec) if spec else None


@contextmanager
def atomic_directory(path: str | Path):
    """Yields a temporary directory that replaces `path` only if the block completes.

    The swap is two renames (old out of the way, new in); `recover` undoes a crash between them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        if isinstance(exc, OSError):
            raise GptminiError(f"{path}: could not write ({exc.strerror or exc}); the previous version is kept") from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover(path: str | Path) -> None:
    """Puts back a checkpoint that a crash left moved aside mid-swap (see atomic_directory)."""
    path = Path(path)
    if not path.exists():
        for old in sorted(path.parent.glob(f".{path.name}.old-*")):
            old.rename(path)
            return


def weights_state_dict(model: GPTMini) -> dict[str, torch.Tensor]:
    """The model's tensors, without the output head when it is tied to the embedding."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return state


def save(path: str | Path, model: GPTMini, tokenizer: Tokenizer, meta: dict | None = None,
         write_extra: Callable[[Path], None] | None = None) -> Path:
    """Writes the checkpoint directory atomically; `write_extra(tmp_dir)` may add files (train state)."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise GptminiError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    config = {"gptmini_version": __version__, "model": model.config.to_dict(), **(meta or {}),
              "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "specials": tokenizer.specials}}
    with atomic_directory(path) as tmp:
        save_file(weights_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        tokenizer.save(tmp / TOKENIZER)
        if write_extra:
            write_extra(tmp)
    return Path(path)


def resolve_run(path: str | Path) -> Path:
    """A run folder (what --out names) stands for its last/ checkpoint, said in one line on stderr;
    DIR/best names the best one. Anything else is returned as it is."""
    path = Path(path)
    if not (path / CONFIG).is_file() and (path / "last" / CONFIG).is_file():
        print(f"note: {path} is a run folder; using its last checkpoint, {path / 'last'} ({path / 'best'} for the best)",
              file=sys.stderr)
        return path / "last"
    return path


def read_config(path: str | Path) -> dict:
    """config.json of a checkpoint directory, with clear errors for every way it can be wrong."""
    path = resolve_run(path)
    recover(path)
    if not path.is_dir():
        raise GptminiError(f"{path}: checkpoint directory not found")
    file = path / CONFIG
    if not file.is_file():
        raise GptminiError(f"{file}: missing; a checkpoint holds {WEIGHTS}, {CONFIG} and {TOKENIZER}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptminiError(f"{file}: not valid JSON ({exc})") from None
    from .hf import checkpoint_config, is_hf_dir

    if is_hf_dir(path):
        return checkpoint_config(path)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise GptminiError(f"{file}: lacks the \"model\" section with the model config")
    return config


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """A checkpoint directory, a run folder (its last/ checkpoint) or a transformers Llama directory (hf.py), on
    `device` (auto: device.py's choice)."""
    from . import hf  # hf.py builds on this module

    device = resolve_device(device)  # a device this machine lacks fails before the files are read
    path = resolve_run(path)
    config = read_config(path)
    try:
        model_config = GPTConfig.from_dict(config["model"])
    except (GptminiError, TypeError) as exc:
        raise GptminiError(f"{path / CONFIG}: {exc}") from None
    tokenizer = Tokenizer.load(path / TOKENIZER, config.get("tokenizer", {}).get("specials"))
    if tokenizer.vocab_size > model_config.vocab_size:
        raise GptminiError(f"{path / TOKENIZER}: {tokenizer.vocab_size} tokens do not fit the model's "
                           f"vocab_size {model_config.vocab_size} in {path / CONFIG}")
    if hf.is_hf_dir(path):
        state = hf.hf_state(path, model_config)
    else:
        state = read_weights(path / WEIGHTS, model_config)
    model = build_model(model_config, state)
    meta = {k: v for k, v in config.items() if k not in ("model", "gptmini_version")}
    return Checkpoint(model.to(device).eval(), tokenizer, meta, path)


def build_model(config: GPTConfig, state: dict[str, torch.Tensor]) -> GPTMini:
    """A model holding `state` (complete and checked), built without a throwaway random init."""
    with torch.device("meta"):
        model = GPTMini(config)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.rope_cos, model.rope_sin = GPTMini._rope_tables(config)
    return model


def with_dropout(model: GPTMini, dropout: float) -> GPTMini:
    """The same weights in a model whose dropout is `dropout` (a training choice the config carries)."""
    config = GPTConfig.from_dict({**model.config.to_dict(), "dropout": dropout})
    return build_model(config, weights_state_dict(model)).to(model.embed.weight.device)


def read_weights(file: Path, config: GPTConfig) -> dict[str, torch.Tensor]:
    """The weights in `file`, checked name by name and shape by shape against `config`."""
    if not file.is_file():
        raise GptminiError(f"{file}: missing; a checkpoint holds {WEIGHTS}, {CONFIG} and {TOKENIZER}")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise GptminiError(f"{file}: unreadable or corrupted safetensors file ({exc})") from None
    with torch.device("meta"):
        expected = {k: v.shape for k, v in weights_state_dict(GPTMini(config)).items()}
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} has shape {tuple(state[k].shape)}, config expects {tuple(s)}"
                 for k, s in expected.items() if k in state and state[k].shape != s]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise GptminiError(f"{file}: weights do not match {file.parent / CONFIG}: {shown}")
    return state
