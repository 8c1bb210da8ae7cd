"""Preference tuning: an assistant checkpoint + pairs (prompt, chosen, rejected) -> a better assistant.

DPO (Rafailov et al., 2023) raises the chosen answer's log-probability relative to a frozen reference
model (the starting checkpoint) more than the rejected one's:

    loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

A sequence's log-probability is the sum over its answer tokens and the end-of-text after them, masked
exactly as in SFT (prompt and answers encoded piece by piece by the template). --label-smoothing eps
is conservative DPO (the label is wrong with probability eps); --loss ipo is IPO (Azar et al., 2023)
as TRL computes it: the log-ratios averaged over each answer's tokens, then (delta - 1/(2 beta))^2.
The reference log-probabilities are computed once, before training, and cached in the run folder
(reference.safetensors), so each step runs the policy alone and a resumed run reuses them. With LoRA
the reference is the base without adapters: the starting checkpoint itself.

Logged under TRL's names: rewards/chosen, rewards/rejected (beta x log-ratio), rewards/accuracies,
rewards/margins, logps/chosen, logps/rejected. Only the loop's batches and objective are DPO's own;
the loop (train.py) is the one every run uses.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import checkpoint, lora
from .data.batches import PairBatch, PairBatches, fit_to_context
from .data.preferences import Pair, read_pairs
from .data.records import first_question
from .data.templates import Template, get_template
from .device import to_device
from .errors import GptminiError
from .model import IGNORE_INDEX, GPTMini
from .pretrain import resolve_train_config
from .sft import load_run, split_validation
from .tokenizer import Tokenizer
from .train import Trainer, TrainConfig, no_validation_note, prepare_output, refuse_two_lengths, steps_for_epochs

LOSSES = ("sigmoid", "ipo")
DEFAULT_BETA = 0.1
DEFAULT_VAL_FRACTION = 0.05
# A new run's defaults. lr: DPO moves an already tuned model, so a tenth of SFT's; on the demo assistant
# 1e-4 cost most held-out answers (30 % exact match against 87 %) and 1e-5 at most one or two (README).
DPO_TRAIN = {"lr": 1e-5, "batch_size": 8, "eval_every": 50, "save_every": 100}
REFERENCE = "reference.safetensors"
Sequence = tuple[list[int], list[int]]  # (ids, labels)


# -- pairs to training sequences --------------------------------------------------------------------
def encode_pair(pair: Pair, tokenizer: Tokenizer, template: Template, length: int) -> tuple[list[Sequence], str]:
    """(chosen, rejected) sequences of at most `length` tokens, and what fitting them did (the worse of the two).

    The prompt is encoded once and its labels ignored (assistant turns inside it are context, not the
    answer being judged); each answer is encoded on its own, as SFT does, so its labels are SFT's.
    """
    prompt_ids, _ = template.encode(tokenizer, pair.prompt)
    sequences, outcomes = [], []
    for answer in (pair.chosen, pair.rejected):
        ids, labels = template.encode(tokenizer, answer)
        fitted, outcome = fit_to_context(prompt_ids + ids, [IGNORE_INDEX] * len(prompt_ids) + labels, length, "truncate")
        sequences += fitted
        outcomes.append(outcome)
    order = ("ok", "truncated", "skipped")
    return sequences, max(outcomes, key=order.index)


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, template: Template,
                 context_size: int) -> tuple[list[tuple[Sequence, Sequence]], Counter]:
    """Training pairs of at most context_size + 1 tokens each, and what fitting them did."""
    encoded, outcomes = [], Counter()
    for pair in pairs:
        sequences, outcome = encode_pair(pair, tokenizer, template, context_size + 1)
        outcomes[outcome] += 1
        if outcome != "skipped":
            encoded.append(tuple(sequences))
    return encoded, outcomes


# -- the loss --------------------------------------------------------------------------------------
def sequence_logps(forward, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows,) sums of log p(target) over the targets that are not -100 (the head runs on those alone)."""
    return -forward(idx, targets, loss_reduction="row")[1]


@dataclass
class PairLoss:
    losses: torch.Tensor  # (B,) one per pair
    chosen_rewards: torch.Tensor  # (B,) beta x (policy - reference) log-probability of the chosen answer, detached
    rejected_rewards: torch.Tensor


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
              beta: float = DEFAULT_BETA, loss: str = "sigmoid", label_smoothing: float = 0.0,
              chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None) -> PairLoss:
    """DPO's per-pair loss from sequence log-probabilities (policy and reference, chosen and rejected).

    ipo needs the answers' token counts (the log-ratios are averaged over them, as in TRL).
    """
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if loss == "sigmoid":
        delta = beta * (chosen_ratio - rejected_ratio)
        losses = -F.logsigmoid(delta) * (1 - label_smoothing) - F.logsigmoid(-delta) * label_smoothing
    elif loss == "ipo":
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise GptminiError(f"unknown DPO loss {loss!r}: use one of {', '.join(LOSSES)}")
    return PairLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


class DPOLoss:
    """The loop's objective for preference pairs: DPO's loss against the cached reference log-probabilities,
    averaged over pairs; the metrics TRL logs, summed over pairs (the loop averages them)."""

    def __init__(self, pad_id: int, beta: float = DEFAULT_BETA, loss: str = "sigmoid", label_smoothing: float = 0.0) -> None:
        self.pad_id, self.beta, self.kind, self.label_smoothing = pad_id, beta, loss, label_smoothing

    def sizes(self, batch: PairBatch) -> tuple[int, int, int]:
        return len(batch.index), int((batch.idx != self.pad_id).sum()), int((batch.targets != IGNORE_INDEX).sum())

    def loss(self, forward, batch: PairBatch, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.reference is None:
            raise RuntimeError("reference log-probabilities not cached: call cache_reference first")
        idx, targets = to_device(batch.idx, device), to_device(batch.targets, device)
        chosen, rejected = sequence_logps(forward, idx, targets).chunk(2)
        ref_chosen, ref_rejected = batch.reference.to(device).chunk(2)
        chosen_tokens, rejected_tokens = (targets != IGNORE_INDEX).sum(dim=1).chunk(2)
        out = pair_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.kind, self.label_smoothing,
                        chosen_tokens, rejected_tokens)
        margins = out.chosen_rewards - out.rejected_rewards
        metrics = {"rewards/chosen": out.chosen_rewards.sum(), "rewards/rejected": out.rejected_rewards.sum(),
                   "rewards/accuracies": (margins > 0).float().sum(), "rewards/margins": margins.sum(),
                   "logps/chosen": chosen.detach().sum(), "logps/rejected": rejected.detach().sum()}
        return out.losses.sum(), metrics  # tensors: the loop adds them up on the device


# -- the reference ---------------------------------------------------------------------------------
@torch.no_grad()
def cache_reference(model: GPTMini, batches: PairBatches, device: str | torch.device = "cpu",
                    batch_size: int = 64) -> torch.Tensor:
    """The model's log-probabilities of every pair's chosen and rejected answer, (N, 2), attached to the batches.

    batch_size: pairs per forward pass (no gradients to keep: larger than training's, fewer passes)."""
    was_training = model.training
    model.eval()
    reference = torch.zeros(len(batches.sequences), 2)
    for batch in batches.eval_batches(batch_size=batch_size):
        logps = sequence_logps(model, batch.idx.to(device), batch.targets.to(device)).float().cpu()
        reference[batch.index] = torch.stack(logps.chunk(2), dim=1)
    model.train(was_training)
    batches.reference = reference
    return reference


def reference_for_run(out: Path, model: GPTMini, splits: dict[str, PairBatches | None], resume: bool,
                      device: str, main: bool) -> None:
    """Attaches the reference log-probabilities to each split: read from the run (resume), else computed and saved."""
    file = out / REFERENCE
    splits = {name: batches for name, batches in splits.items() if batches is not None}
    if resume:
        try:
            saved = load_file(str(file))
        except (OSError, ValueError) as exc:
            raise GptminiError(f"{file}: cannot read the cached reference log-probabilities ({exc}); start again "
                               "with --overwrite") from None
        for name, batches in splits.items():
            if name not in saved or len(saved[name]) != len(batches.sequences):
                raise GptminiError(f"{file}: cached for other data than --data now holds ({name} pairs differ); "
                                   "resume with the run's data, or start again with --overwrite")
            batches.reference = saved[name]
        return
    for batches in splits.values():
        cache_reference(model, batches, device)
    if main:
        partial = file.with_suffix(".partial")  # a kill mid-write must not leave a truncated cache behind
        save_file({name: batches.reference for name, batches in splits.items()}, str(partial))
        partial.replace(file)


# -- the run ---------------------------------------------------------------------------------------
def starting_model(base: str, template: str | None, device: str) -> tuple[GPTMini, Tokenizer, Template]:
    """The checkpoint to tune, rebuilt without dropout (log-probabilities must not be noisy: TRL's default
    too), and its template (--template only for a checkpoint without one)."""
    ckpt = checkpoint.load(base, device=device)
    tmpl = get_template(template) if template or ckpt.template is None else ckpt.template
    return checkpoint.with_dropout(ckpt.model, 0.0), ckpt.tokenizer, tmpl


def pair_batches(train_pairs: list[Pair], val_pairs: list[Pair], tokenizer: Tokenizer, template: Template,
                 context: int, cfg: TrainConfig) -> tuple[PairBatches, PairBatches | None, dict]:
    """Training and validation batches (None without validation pairs) and what fitting the context did."""
    train_seqs, outcomes = encode_pairs(train_pairs, tokenizer, template, context)
    print(f"pairs: {len(train_seqs)} train, {len(val_pairs)} validation; fitting the {context}-token context: "
          + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))
    if not train_seqs:
        raise GptminiError(f"no training pair fits the {context}-token context with its answers")
    val_seqs = encode_pairs(val_pairs, tokenizer, template, context)[0]
    val = PairBatches(val_seqs, cfg.batch_size, cfg.seed, tokenizer.pad_id) if val_seqs else None
    return PairBatches(train_seqs, cfg.batch_size, cfg.seed, tokenizer.pad_id), val, dict(outcomes)


def dpo(out: str | Path, data: str | Path, base: str | None = None, fields: str | dict | None = None,
        val_data: str | Path | None = None, val_fraction: float | None = None, template: str | None = None,
        beta: float | None = None, loss: str | None = None, label_smoothing: float | None = None,
        epochs: float | None = None, train: dict | None = None, resume: bool = False, overwrite: bool = False,
        lora_rank: int | None = None, lora_alpha: float | None = None, lora_embeddings: bool = False,
        encoding: str | None = None) -> dict:
    """Tunes the checkpoint `base` on the preference pairs in `data`; returns the run's summary.

    beta, loss ("sigmoid" or "ipo"), label_smoothing, val_fraction: default 0.1, sigmoid, 0, 0.05; a resumed
    run keeps its own (its reference log-probabilities are cached for its split). lora_rank: train LoRA
    adapters (the reference stays the base). train: TrainConfig fields over DPO_TRAIN.
    """
    if not resume and not base:
        raise GptminiError("--base is required: the checkpoint to tune (and the reference it is held to)")
    refuse_two_lengths(epochs, train)
    out = Path(out)
    records = read_pairs(data, fields, encoding)
    print(f"data: {records.report()}")
    w = prepare_output(out, resume, overwrite, train)
    cfg = resolve_train_config(out, resume, {**({} if resume else DPO_TRAIN), **(train or {})})
    if resume:
        net, tok, tmpl, meta = load_run(out, cfg.device, dropout=0.0)
        settings = meta["dpo"]
        val_fraction = meta["data"]["val_fraction"] if val_fraction is None else val_fraction
    else:
        net, tok, tmpl = starting_model(base, template, cfg.device)
        settings = {"beta": beta or DEFAULT_BETA, "loss": loss or "sigmoid", "label_smoothing": label_smoothing or 0.0}
        meta = {"kind": "dpo", "template": tmpl.to_dict(), "source": {"base": str(checkpoint.resolve_run(base))},
                "dpo": settings}
        val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if settings["loss"] not in LOSSES:
        raise GptminiError(f"--loss {settings['loss']!r}: use one of {', '.join(LOSSES)}")
    if val_data:
        val_records = read_pairs(val_data, fields, encoding)
        print(f"validation data: {val_records.report()}")
    split = split_validation(records.pairs, 0 if val_data else val_fraction, cfg.seed)
    train_pairs, val_pairs = (split[0], val_records.pairs) if val_data else split
    train_batches, val_batches, fit = pair_batches(train_pairs, val_pairs, tok, tmpl, net.config.context_size, cfg)
    if val_batches is None:
        print(no_validation_note("--val-fraction 0" if not val_fraction else
                                 f"--val-fraction {val_fraction} of {len(records.pairs)} pairs is under one pair"))
    # The reference is the model as it starts: before adapters (LoRA) or any step.
    reference_for_run(out, net, {"train": train_batches, "val": val_batches}, resume, net.embed.weight.device, w.main)
    if lora_rank and not resume:
        torch.manual_seed(cfg.seed)  # the adapters' initialisation
        print(lora.add_lora(net, lora_rank, lora_alpha, lora_embeddings))
        meta["lora"] = lora.spec(lora_rank, lora_alpha, lora_embeddings)
    if epochs is not None:
        cfg.max_steps = steps_for_epochs(epochs, train_batches, cfg.grad_accum)
    meta["data"] = {"file": str(data), "val_fraction": val_fraction, "train_pairs": len(train_batches.sequences),
                    "val_pairs": len(val_batches.sequences) if val_batches else 0, "fit": fit,
                    "skipped_records": len(records.skipped), "same_answers": len(records.same)}
    meta["data"]["first_question"] = first_question(p.prompt for p in records.pairs)  # serve's example
    objective = DPOLoss(tok.pad_id, settings["beta"], settings["loss"], settings["label_smoothing"])
    trainer = Trainer(net, tok, train_batches, val_batches, cfg, out, meta, objective)
    if resume:
        trainer.resume()
    summary = trainer.run()
    pairs = summary["steps"] * cfg.batch_size * cfg.grad_accum
    return {**summary, "pairs_per_s": round(pairs / max(summary["train_seconds"], 1e-9), 2)}
