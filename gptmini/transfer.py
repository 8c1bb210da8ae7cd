"""Weight transfer from a base model: every tensor whose meaning matches is reused.

Same name and shape: copied. Token embeddings and the output head when vocabularies differ:
rows are remapped by token string, and tokens the base never had start at the mean of the base's
rows (a neutral point, not noise). Everything else is reported as skipped, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import GptminiError
from .model import GPTMini
from .tokenizer import Tokenizer

VOCAB_TENSORS = ("embed.weight", "lm_head.weight")


@dataclass
class TransferReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: reason"
    rows_mapped: int = 0
    rows_new: int = 0

    def __str__(self) -> str:
        lines = [f"weight transfer: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped"]
        if self.rows_mapped or self.rows_new:
            lines.append(f"  embedding rows: {self.rows_mapped} mapped by token string, {self.rows_new} new")
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def transfer(source: dict[str, torch.Tensor], model: GPTMini, source_tokenizer: Tokenizer | None = None,
             tokenizer: Tokenizer | None = None) -> TransferReport:
    report = TransferReport()
    targets = dict(model.named_parameters())
    if model.config.tie_embeddings:
        targets.pop("lm_head.weight", None)
    if "lm_head.weight" not in source and "embed.weight" in source:
        source = {**source, "lm_head.weight": source["embed.weight"]}  # a tied base feeds an untied head
    remap = None
    if source_tokenizer is not None and tokenizer is not None and source_tokenizer.vocab() != tokenizer.vocab():
        remap = _row_map(source_tokenizer, tokenizer)
    with torch.no_grad():
        for name, param in targets.items():
            if name not in source:
                report.skipped.append(f"{name}: not in the base")
            elif name in VOCAB_TENSORS and remap is not None and source[name].shape[1:] == param.shape[1:]:
                mapped = _copy_rows(source[name], param, remap)
                report.loaded.append(name)
                report.rows_mapped, report.rows_new = mapped, param.shape[0] - mapped
            elif source[name].shape != param.shape:
                report.skipped.append(f"{name}: shape {tuple(source[name].shape)} in the base, {tuple(param.shape)} here")
            else:
                param.copy_(source[name])
                report.loaded.append(name)
    for name in source:
        if name not in targets and not (name == "lm_head.weight" and model.config.tie_embeddings):
            report.skipped.append(f"{name}: no such tensor in this model")
    return report


def _row_map(source: Tokenizer, target: Tokenizer) -> dict[int, int]:
    """target id -> source id for every token string both vocabularies share."""
    source_vocab = source.vocab()
    return {tid: source_vocab[tok] for tok, tid in target.vocab().items() if tok in source_vocab}


def _copy_rows(source: torch.Tensor, param: torch.Tensor, remap: dict[int, int]) -> int:
    param.copy_(source.mean(dim=0, keepdim=True).expand_as(param))
    rows = [(t, s) for t, s in remap.items() if t < param.shape[0] and s < source.shape[0]]
    if rows:
        t_ids, s_ids = zip(*rows)
        param[list(t_ids)] = source[list(s_ids)]
    return len(rows)


def load_legacy_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A PyTorch state-dict file (e.g. the course's gpt_checkpoint.pt), read without unpickling code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GptminiError(f"{path}: no such file") from None
    except Exception as exc:  # weights_only refuses anything that is not plain tensors/containers
        raise GptminiError(f"{path}: not a plain PyTorch state dict ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("model_state_dict") or state.get("model"), dict):
        state = state.get("model_state_dict") or state.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GptminiError(f"{path}: expected a dict of tensors (a model state_dict)")
    return state
