"""The one training loop, shared by pretraining and SFT: they differ only in the batches they feed it.

AdamW (fused where available), linear warmup then cosine/linear decay, gradient clipping, gradient
accumulation with the loss averaged over every counted token of the whole accumulated batch,
periodic validation, `last`/`best` checkpoints with a full training state for exact resume,
metrics.jsonl and a loss-curve PNG. Ctrl-C finishes the current step, saves, and exits cleanly.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import checkpoint, lora
from .distributed import World, world
from .errors import GptminiError
from .model import IGNORE_INDEX, GPTMini
from .tokenizer import Tokenizer

STATE_DIR = "train_state"


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    warmup_steps: int | None = None  # None: 5% of max_steps, at most 100
    schedule: str = "cosine"  # cosine, linear or constant
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 10
    save_every: int = 200
    log_every: int = 10
    max_time: float | None = None  # seconds; stop (and save) when exceeded
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # autocast to bfloat16 (CUDA)
    compile: bool = False  # torch.compile the model (CUDA users)
    show_progress: bool = True


class Batches(Protocol):
    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def eval_batches(self, max_batches: int): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, cfg.max_steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)


def make_optimizer(model: GPTMini, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices and embeddings only; norm gains stay undecayed (GPT-2/Llama practice).
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def no_validation_note(reason: str) -> str:
    """Said before a run without validation starts, so that a missing best/ is no surprise after it."""
    return f"note: no validation ({reason}), so no best/ checkpoint will be written: last/ is the final model"


def prepare_output(out: Path, resume: bool, overwrite: bool, device: str = "cpu") -> World:
    """Refuses to mix runs: an output folder holding one needs --resume or --overwrite.

    Under torchrun only rank 0 checks and clears the folder; the others wait for it. Returns the
    process's place in the world.
    """
    w = world(device)
    if w.main:
        _check_output(out, resume, overwrite)
    w.barrier()
    return w


def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    for name in ("last", "best"):
        checkpoint.recover(out / name)
    has_run = (out / "last").exists() or (out / "metrics.jsonl").exists()
    if resume:
        if not (out / "last" / STATE_DIR).is_dir():
            raise GptminiError(f"{out}: nothing to resume (no {out / 'last' / STATE_DIR}); drop --resume to start")
    elif has_run and not overwrite:
        raise GptminiError(f"{out}: holds a previous run; pass --resume to continue it or --overwrite to replace it")
    elif has_run:
        import shutil
        for name in ("last", "best", "metrics.jsonl", "loss.png"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def graceful_interrupt(trainer: "Trainer"):
    """First Ctrl-C (or SIGTERM: timeout, SLURM, docker stop, Kubernetes) asks the loop to stop after
    the current step and save; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


class Trainer:
    def __init__(self, model: GPTMini, tokenizer: Tokenizer, train: Batches, val: Batches | None,
                 cfg: TrainConfig, out: str | Path, meta: dict | None = None) -> None:
        self.model, self.tokenizer, self.train_batches, self.val_batches = model, tokenizer, train, val
        self.cfg, self.out, self.meta = cfg, Path(out), dict(meta or {})
        self.world = world(cfg.device)
        if cfg.grad_accum % self.world.size:
            raise GptminiError(f"--grad-accum {cfg.grad_accum} is not a multiple of the {self.world.size} processes: "
                               "each process takes an equal share of every step's micro-batches")
        device = f"cuda:{self.world.local_rank}" if cfg.device == "cuda" and self.world.size > 1 else cfg.device
        self.device = torch.device(device)
        self.model.to(self.device)
        self.optimizer = make_optimizer(model, cfg)
        self.forward = torch.compile(model) if cfg.compile else model
        self.train_forward = self.forward
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.train_forward = DistributedDataParallel(self.forward, broadcast_buffers=False)
        self.step, self.tokens, self.trained_tokens, self.best_val, self.elapsed = 0, 0, 0, math.inf, 0.0
        self.stop_requested = False
        self.metrics_file = self.out / "metrics.jsonl"

    # -- one optimisation step ------------------------------------------------------------
    def train_step(self, lr: float) -> tuple[float, int, int]:
        """One optimiser step over grad_accum micro-batches; returns (mean loss, tokens, trained tokens)."""
        micro = [self.train_batches.next() for _ in range(self.cfg.grad_accum)]
        counted = sum(int((t != IGNORE_INDEX).sum()) for _, t in micro)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total = 0.0
        mine = micro[self.world.rank::self.world.size]
        for i, (idx, targets) in enumerate(mine):
            idx, targets = idx.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            sync = nullcontext() if i == len(mine) - 1 or self.world.size == 1 else self.train_forward.no_sync()
            with self.autocast(), sync:
                _, loss_sum = self.train_forward(idx, targets, loss_reduction="sum", return_logits=False)
                # DDP averages gradients over processes; scaling by their number makes it a sum.
                (loss_sum * self.world.size / max(counted, 1)).backward()
            total += loss_sum.item()
        total = self.world.sum(total)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(int((i != self.tokenizer.pad_id).sum()) for i, _ in micro)
        return total / max(counted, 1), tokens, counted

    def autocast(self):
        if self.cfg.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.val_batches is None:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for idx, targets in self.val_batches.eval_batches(self.cfg.eval_batches):
            with self.autocast():
                _, loss_sum = self.forward(idx.to(self.device), targets.to(self.device), loss_reduction="sum")
            total += loss_sum.item()
            count += int((targets != IGNORE_INDEX).sum())
        return total / max(count, 1)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", unit="step",
                   disable=not (cfg.show_progress and self.world.main),
                   dynamic_ncols=True)
        window = {"loss": 0.0, "trained": 0, "tokens": 0, "time": 0.0}
        stopped = None
        with graceful_interrupt(self), bar:
            while self.step < cfg.max_steps:
                started = time.perf_counter()
                lr = lr_at(self.step, cfg)
                loss, tokens, trained = self.train_step(lr)
                if not math.isfinite(loss):
                    raise GptminiError(f"loss became {loss} at step {self.step + 1}; the last good checkpoint is kept in "
                                       f"{self.out / 'last'}; lower --lr or check the data")
                self.step += 1
                spent = time.perf_counter() - started
                self.elapsed += spent
                self.tokens += tokens
                self.trained_tokens += trained
                for key, value in (("loss", loss * trained), ("trained", trained), ("tokens", tokens), ("time", spent)):
                    window[key] += value
                bar.update(1)
                if self.world.any(self.stop_requested):
                    stopped = "interrupted"
                elif self.world.any(bool(cfg.max_time) and self.elapsed >= cfg.max_time):
                    stopped = "time limit"
                val = None
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    val = self.evaluate()
                if self.step % cfg.log_every == 0 or val is not None or self.step == cfg.max_steps or stopped:
                    self.log(window, lr, val, bar)
                    window = dict.fromkeys(window, 0.0)
                if val is not None and val < self.best_val:
                    self.best_val = val
                    self.save("best")
                if stopped or self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save("last")
                    self.plot()
                if stopped:
                    break
        summary = {"steps": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                   "best_val_loss": self.best_val if self.best_val < math.inf else None,
                   "train_seconds": round(self.elapsed, 2),
                   "tokens_per_s": round(self.tokens / max(self.elapsed, 1e-9), 1), "stopped": stopped}
        if stopped == "interrupted":
            tqdm.write(f"interrupted at step {self.step}: saved {self.out / 'last'}; continue with --resume", file=sys.stderr)
        return summary

    def log(self, window: dict, lr: float, val: float | None, bar: tqdm) -> None:
        if not self.world.main:
            return
        record = {"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                  "train_loss": round(window["loss"] / max(window["trained"], 1), 5), "val_loss": val,
                  "lr": lr, "tokens_per_s": round(window["tokens"] / max(window["time"], 1e-9), 1)}
        if val is not None:
            record["val_loss"] = round(val, 5)
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{lr:.1e}", tok_s=f"{record['tokens_per_s']:.0f}",
                        **({"val": f"{val:.3f}"} if val is not None else {}))

    def plot(self) -> None:
        if not self.world.main:
            return
        from .plots import plot_loss_curve

        plot_loss_curve(self.metrics_file, self.out / "loss.png")

    # -- checkpoints and resume -----------------------------------------------------------
    def save(self, name: str) -> None:
        if not self.world.main:
            return
        meta = {**self.meta, "training": {"step": self.step, "tokens": self.tokens, "best_val_loss": self.best_val
                                          if self.best_val < math.inf else None, "config": asdict(self.cfg)}}
        model = lora.merged(self.model) if lora.has_lora(self.model) else self.model
        checkpoint.save(self.out / name, model, self.tokenizer, meta, write_extra=self.write_state)

    def write_state(self, directory: Path) -> None:
        if lora.has_lora(self.model):
            lora.save_adapter(self.model, directory)
        state_dir = directory / STATE_DIR
        state_dir.mkdir()
        opt = self.optimizer.state_dict()
        tensors = {f"opt.{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, str(state_dir / "state.safetensors"))
        state = {"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                 "best_val": self.best_val if self.best_val < math.inf else None, "elapsed": self.elapsed,
                 "param_groups": opt["param_groups"], "batches": self.train_batches.state_dict()}
        (state_dir / "state.json").write_text(json.dumps(state))

    def resume(self) -> None:
        """Continues the run in `out` from `out/last`, exactly where it stopped."""
        self.load_state(self.out / "last")
        if self.step >= self.cfg.max_steps:
            raise GptminiError(f"{self.out / 'last'} already reached step {self.step}; "
                               "pass a larger --max-steps to continue")

    def load_state(self, directory: Path) -> None:
        state_dir = Path(directory) / STATE_DIR
        try:
            state = json.loads((state_dir / "state.json").read_text())
            tensors = load_file(str(state_dir / "state.safetensors"))
        except (OSError, ValueError) as exc:
            raise GptminiError(f"{state_dir}: training state unreadable ({exc}); start again with --overwrite") from None
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        self.train_batches.load_state_dict(state["batches"])
        self.step, self.tokens, self.trained_tokens = state["step"], state["tokens"], state["trained_tokens"]
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.elapsed = state["elapsed"]
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drops metrics logged after the checkpoint we resume from (they will be logged again)."""
        if self.metrics_file.is_file():
            lines = [ln for ln in self.metrics_file.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
            self.metrics_file.write_text("".join(ln + "\n" for ln in lines))
