"""The one training loop, shared by pretraining, SFT and preference tuning: they differ only in the
batches they feed it and the objective that turns a micro-batch into a loss (next-token cross-entropy
by default; DPO's pair loss in dpo.py).

AdamW (fused), linear warmup then cosine/linear decay, gradient clipping, gradient
accumulation with the loss averaged over every counted token of the whole accumulated batch,
periodic validation, `last`/`best` checkpoints with a full training state for exact resume,
metrics.jsonl (and TensorBoard/W&B, tracking.py) and a loss-curve PNG. Ctrl-C finishes the current
step, saves, and exits cleanly. The device and the mixed precision are device.py's (auto: a GPU if
there is one, bf16 where it is native); a step's losses add up on the device and are read once, at its end.

Before the first step the run says its plan (parameters, tokens, steps, epochs), then the time it
will take once the first steps are measured. With a time budget (max_time) the decay is fitted to
the steps that budget allows at the measured pace, re-estimated every step, so a time-boxed run
ends annealed instead of stopping at its peak learning rate.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import checkpoint, kernels, lora, progress
from .device import Precision, describe, precision_text, resolve_device, resolve_precision, to_device
from .distributed import World, world
from .errors import GptminiError
from .model import IGNORE_INDEX, GPTMini
from .tokenizer import Tokenizer
from .tracking import MetricsLog

STATE_DIR = "train_state"
ESTIMATE_AFTER = 20  # steps timed (after the first) before the plan states the time the run will take: the
# first few run slower on CPU (seen: half speed over the first 20), which made a 5-step estimate twice too long
MANY_EPOCHS = 20  # beyond this many passes over its data a model mostly memorises it


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
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps (device.resolve_device)
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (device.resolve_precision); the weights stay fp32
    compile: bool = False  # torch.compile the model (CUDA users)
    show_progress: bool = True
    log_to: tuple[str, ...] = ()  # trackers beside metrics.jsonl: tensorboard, wandb (tracking.py)


class Batches(Protocol):
    tokens_per_epoch: int  # input tokens in one pass over the training data (for the plan)
    batches_per_epoch: float  # micro-batches in that pass

    def next(self): ...  # a micro-batch, whatever its objective reads: (idx, targets) for NextTokenLoss
    def eval_batches(self, max_batches: int): ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Objective(Protocol):
    """What a micro-batch's loss is. The loop sums `loss` over a step's micro-batches, divides by the units
    counted in all of them (trained tokens, pairs), and logs the metrics averaged the same way."""

    def sizes(self, batch) -> tuple[int, int, int]: ...  # (units the loss averages over, input tokens, trained tokens)
    def loss(self, forward, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...  # sums


class NextTokenLoss:
    """Pretraining's and SFT's objective: cross-entropy on the targets that are not -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def sizes(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[int, int, int]:
        idx, targets = batch
        counted = int((targets != IGNORE_INDEX).sum())
        return counted, int((idx != self.pad_id).sum()), counted

    def loss(self, forward, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, dict]:
        idx, targets = (to_device(t, device) for t in batch)
        # Training takes the fused head; under no_grad (validation) the model computes the logits path.
        _, loss_sum = forward(idx, targets, loss_reduction="sum", return_logits=False)
        return loss_sum, {}


class StepResult(NamedTuple):
    loss: float  # mean over the step's counted units
    tokens: int  # input tokens that are not padding
    trained: int  # tokens whose loss counts
    counted: int  # units the loss is averaged over (trained tokens; pairs for DPO)
    metrics: dict  # the objective's metrics, averaged like the loss


def lr_at(step: int, cfg: TrainConfig, total: float | None = None) -> float:
    """The learning rate of step `step` (from 0) in a run of `total` steps (default max_steps; a time-boxed
    run passes the steps its budget allows, so that the decay ends when the time does)."""
    total = cfg.max_steps if total is None else total
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, int(total) // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)


class Pace:
    """Seconds per training step, measured in this process: the first step (allocation, compilation) only
    until a second one is measured; a resumed run starts from the pace it saved."""

    def __init__(self, seconds_per_step: float | None = None) -> None:
        self.seconds_per_step = seconds_per_step
        self.measured = 0  # steps timed after this process's first
        self._since: tuple[int, float] | None = None  # (step, elapsed) after that first step

    def update(self, step: int, elapsed: float, spent: float) -> None:
        if self._since is None:
            self._since = (step, elapsed)
            self.seconds_per_step = self.seconds_per_step or spent
            return
        self.measured = step - self._since[0]
        self.seconds_per_step = (elapsed - self._since[1]) / self.measured


def amount(n: float) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e6 else f"{n:,.0f}"


def epochs_text(epochs: float) -> str:
    return f"{epochs:,.1f}" if epochs >= 1 else f"{epochs:.2g}"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def say(text: str) -> None:
    """A progress line: on stderr with the bars it stands beside or replaces (stdout keeps the results, e.g.
    the CLI's JSON summary), without breaking a bar, flushed at once (log files, SLURM)."""
    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def make_optimizer(model: GPTMini, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices and embeddings only; norm gains stay undecayed (GPT-2/Llama practice).
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def refuse_two_lengths(epochs: float | None, overrides: dict | None) -> None:
    """--epochs and --max-steps together are refused: one would silently win over the other."""
    if epochs is not None and "max_steps" in (overrides or {}):
        raise GptminiError("--epochs and --max-steps both set the length of the run; give one of them")


def steps_for_epochs(epochs: float, batches: Batches, grad_accum: int) -> int:
    """Optimiser steps that make `epochs` passes over `batches` (at least one)."""
    return max(1, math.ceil(epochs * batches.batches_per_epoch / grad_accum))


def no_validation_note(reason: str) -> str:
    """Said before a run without validation starts, so that a missing best/ is no surprise after it."""
    return f"note: no validation ({reason}), so no best/ checkpoint will be written: last/ is the final model"


def prepare_output(out: Path, resume: bool, overwrite: bool, train: dict | None = None) -> World:
    """Refuses to mix runs: an output folder holding one needs --resume or --overwrite.

    Under torchrun only rank 0 checks and clears the folder; the others wait for it. Returns the
    process's place in the world. A device this machine lacks, or a precision it cannot train in
    (`train`'s TrainConfig fields), is refused here, before any work.
    """
    device = resolve_device((train or {}).get("device", TrainConfig.device))
    resolve_precision((train or {}).get("precision", TrainConfig.precision), device)
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
        for name in ("last", "best", "metrics.jsonl", "loss.png", "tensorboard"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def add_up(sums: dict[str, torch.Tensor], loss_sum: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
    """Adds a micro-batch's loss and metrics (sums) into `sums`, on the device: no host sync."""
    for name, value in {"loss": loss_sum, **metrics}.items():
        sums[name] = sums.get(name, 0) + value.detach().float()


def means(sums: dict[str, torch.Tensor], count: int, w: World = World()) -> dict[str, float]:
    """The sums (over the processes of `w`) divided by `count`: one read of the device."""
    return {name: value / max(count, 1) for name, value in zip(sums, w.sums(torch.stack(list(sums.values()))))}


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
                 cfg: TrainConfig, out: str | Path, meta: dict | None = None, objective: Objective | None = None) -> None:
        self.model, self.tokenizer, self.train_batches, self.val_batches = model, tokenizer, train, val
        self.objective = objective or NextTokenLoss(tokenizer.pad_id)
        self.cfg, self.out, self.meta = cfg, Path(out), dict(meta or {})
        self.device = resolve_device(cfg.device)
        self.precision = Precision(resolve_precision(cfg.precision, self.device), self.device)
        self.world = world(self.device)
        if cfg.grad_accum % self.world.size:
            raise GptminiError(f"--grad-accum {cfg.grad_accum} is not a multiple of the {self.world.size} processes: "
                               "each process takes an equal share of every step's micro-batches")
        self.model.to(self.device)
        self.optimizer = make_optimizer(model, cfg)
        if cfg.compile:
            kernels.prepare_compile()
        self.forward = torch.compile(model) if cfg.compile else model
        self.train_forward = self.forward
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.train_forward = DistributedDataParallel(self.forward, broadcast_buffers=False)
        self.step, self.tokens, self.trained_tokens, self.best_val, self.elapsed = 0, 0, 0, math.inf, 0.0
        self.stop_requested = False
        self.pace = Pace()
        self.metrics = MetricsLog(self.out, cfg.log_to, asdict(cfg), self.world.main)

    # -- one optimisation step ------------------------------------------------------------
    def train_step(self, lr: float) -> StepResult:
        """One optimiser step over grad_accum micro-batches; their losses are read from the device once, at its end."""
        micro = [self.train_batches.next() for _ in range(self.cfg.grad_accum)]
        counted, tokens, trained = (sum(column) for column in zip(*map(self.objective.sizes, micro)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        sums = {}
        mine = micro[self.world.rank::self.world.size]
        for i, batch in enumerate(mine):
            sync = nullcontext() if i == len(mine) - 1 or self.world.size == 1 else self.train_forward.no_sync()
            with self.precision.autocast(), sync:
                loss_sum, metrics = self.objective.loss(self.train_forward, batch, self.device)
                # DDP averages gradients over processes; scaling by their number makes it a sum.
                self.precision.backward(loss_sum * self.world.size / max(counted, 1))
            add_up(sums, loss_sum, metrics)
        self.precision.step(self.optimizer, self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        step = means(sums, counted, self.world)
        return StepResult(step.pop("loss"), tokens, trained, counted, step)

    @torch.no_grad()
    def evaluate(self) -> tuple[float | None, dict]:
        """The validation loss and the objective's metrics on the validation data (None, {} without it)."""
        if self.val_batches is None:
            return None, {}
        self.model.eval()
        count, sums = 0, {}
        for batch in self.val_batches.eval_batches(self.cfg.eval_batches):
            with self.precision.autocast():
                add_up(sums, *self.objective.loss(self.forward, batch, self.device))
            count += self.objective.sizes(batch)[0]
        val = means(sums, count)
        return val.pop("loss"), val

    # -- the plan -------------------------------------------------------------------------
    def planned_steps(self) -> float:
        """max_steps; with a time budget, the steps that fit in the time left at the measured pace (at most
        max_steps), re-estimated every step: the schedule decays over them."""
        if not self.cfg.max_time or self.pace.seconds_per_step is None:
            return self.cfg.max_steps
        left = max(0.0, self.cfg.max_time - self.elapsed) / self.pace.seconds_per_step
        return min(self.cfg.max_steps, self.step + left)

    def steps_per_epoch(self) -> float:
        return self.train_batches.batches_per_epoch / self.cfg.grad_accum

    def epochs(self, steps: float) -> float:
        return steps / self.steps_per_epoch()

    def plan(self) -> str:
        """The paragraph said before the first step: the run in numbers, from what the batches know."""
        cfg, data = self.cfg, self.train_batches
        params = self.model.num_parameters()
        trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        steps, per_epoch = cfg.max_steps - self.step, self.steps_per_epoch()
        step_tokens = data.tokens_per_epoch / per_epoch
        parts = [f"plan: {amount(params)} parameters" + (f" ({amount(trained)} trained)" if trained != params else ""),
                 f"{'up to ' if cfg.max_time else ''}{steps:,} steps"
                 + (f" (from step {self.step})" if self.step else "") + f" of about {step_tokens:,.0f} tokens ({amount(steps * step_tokens)} tokens)",
                 f"one epoch, a pass over the {data.tokens_per_epoch:,} training tokens, is {per_epoch:,.1f} steps"]
        if cfg.max_time:
            parts.append(f"the time budget, {duration(cfg.max_time)} (--max-time), sets the length: the learning rate "
                         "decays over the steps it allows at the measured pace, re-estimated as the run goes")
        else:
            parts[-1] += f", so the run is {epochs_text(self.epochs(steps))} epochs"
            parts.append("its duration is measured over the first steps")
        parts.append(f"on {describe(self.device, cfg.device)} in "
                     f"{precision_text(self.precision.name, cfg.precision, self.device)}")
        return "; ".join(parts)

    def pace_report(self) -> str:
        """Said once the first steps are timed: how long the run will take (or how far its budget reaches)."""
        per_step = self.pace.seconds_per_step
        if self.cfg.max_time:
            planned = self.planned_steps()
            return (f"plan: {duration(per_step)} a step: the {duration(self.cfg.max_time)} budget allows about "
                    f"{planned:,.0f} steps ({epochs_text(self.epochs(planned))} epochs); the learning rate decays "
                    "over them")
        left = self.cfg.max_steps - self.step
        return f"plan: {duration(per_step)} a step: the {left:,} steps left take about {duration(left * per_step)}"

    def epochs_warning(self, steps: float) -> str | None:
        epochs = self.epochs(steps)
        if epochs <= MANY_EPOCHS:
            return None
        return (f"warning: {steps:,.0f} steps are {epochs:,.0f} epochs of {self.train_batches.tokens_per_epoch:,} "
                "training tokens: the model will mostly memorise them (watch the validation loss); give more data or "
                "fewer steps (--max-steps, --epochs, --max-time)")

    def announce(self, text: str | None) -> None:
        if text and self.world.main:
            say(text)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self.announce(self.plan())
        if not cfg.max_time:  # a time-boxed run's length is known once its pace is
            self.announce(self.epochs_warning(cfg.max_steps))
        bar = progress.bar(cfg.show_progress and self.world.main, total=cfg.max_steps, initial=self.step,
                           desc="training", unit="step")
        window = {"loss": 0.0, "counted": 0, "trained": 0, "tokens": 0, "time": 0.0}
        stopped = None
        with graceful_interrupt(self), bar, closing(self.metrics):
            while self.step < cfg.max_steps:
                started = time.perf_counter()
                lr = lr_at(self.step, cfg, self.planned_steps())
                result = self.train_step(lr)
                loss = result.loss
                if not math.isfinite(loss):
                    raise GptminiError(f"loss became {loss} at step {self.step + 1}; the last good checkpoint is kept in "
                                       f"{self.out / 'last'}; lower --lr or check the data")
                self.step += 1
                spent = self.step_time(started)
                self.elapsed += spent
                self.tokens += result.tokens
                self.trained_tokens += result.trained
                counted = result.counted
                for key, value in (("loss", loss * counted), ("counted", counted), ("trained", result.trained),
                                   ("tokens", result.tokens), ("time", spent),
                                   *((name, value * counted) for name, value in result.metrics.items())):
                    window[key] = window.get(key, 0.0) + value
                self.track_pace(spent, bar)
                bar.update(1)
                if self.world.any(self.stop_requested):
                    stopped = "interrupted"
                elif self.world.any(bool(cfg.max_time) and self.elapsed >= cfg.max_time):
                    stopped = "time limit"
                val, val_metrics = None, {}
                # A time-boxed run ends annealed: its last model is validated (and may be the best).
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps or stopped == "time limit":
                    val, val_metrics = self.evaluate()
                if self.step % cfg.log_every == 0 or val is not None or self.step == cfg.max_steps or stopped:
                    self.log(window, lr, val, bar, val_metrics)
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
                   "tokens_per_s": round(self.tokens / max(self.elapsed, 1e-9), 1), "stopped": stopped,
                   **({"skipped_steps": self.precision.skipped} if self.precision.scaler else {})}  # fp16 overflows
        if stopped == "interrupted":
            say(f"interrupted at step {self.step}: saved {self.out / 'last'}; continue with --resume")
        return summary

    def step_time(self, started: float) -> float:
        """The step's seconds. Under a time budget with several processes, their mean: every process then
        plans the same schedule, and a learning rate that differed between them would split the weights."""
        spent = time.perf_counter() - started
        if self.cfg.max_time and self.world.size > 1:
            spent = self.world.sum(spent) / self.world.size
        return spent

    def track_pace(self, spent: float, bar: tqdm) -> None:
        """Times the step; says the run's duration once measured; a time-boxed bar counts the planned steps."""
        self.pace.update(self.step, self.elapsed, spent)
        if self.pace.measured == ESTIMATE_AFTER:
            self.announce(self.pace_report())
            if self.cfg.max_time:
                self.announce(self.epochs_warning(self.planned_steps()))
        if self.cfg.max_time:
            bar.total = max(self.step + 1, math.ceil(self.planned_steps()))

    def log(self, window: dict, lr: float, val: float | None, bar: tqdm, val_metrics: dict | None = None) -> None:
        if not self.world.main:
            return
        counted = max(window["counted"], 1)
        record = {"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                  "train_loss": round(window["loss"] / counted, 5), "val_loss": val,
                  "lr": lr, "tokens_per_s": round(window["tokens"] / max(window["time"], 1e-9), 1)}
        standard = {"loss", "counted", "trained", "tokens", "time"}
        record.update({name: round(value / counted, 5) for name, value in window.items() if name not in standard})
        if val is not None:
            record["val_loss"] = round(val, 5)
            record.update({f"val_{name}": round(value, 5) for name, value in (val_metrics or {}).items()})
        self.metrics.write(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{lr:.1e}", tok_s=f"{record['tokens_per_s']:.0f}",
                        **({"val": f"{val:.3f}"} if val is not None else {}))
        if not progress.shown(bar):  # no bar to show the numbers: a plain line, as a log file wants
            say(f"step {self.step:,}/{math.ceil(self.planned_steps()):,} | loss {record['train_loss']:.4f}"
                + (f" | val {val:.4f}" if val is not None else "")
                + f" | lr {lr:.2e} | {record['tokens_per_s']:,.0f} tokens/s")

    def plot(self) -> None:
        if not self.world.main:
            return
        from .plots import plot_loss_curve

        plot_loss_curve(self.metrics.path, self.out / "loss.png")

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
                 "seconds_per_step": self.pace.seconds_per_step,  # a time budget's schedule goes on from it
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
        self.pace = Pace(state.get("seconds_per_step"))
        self.metrics.truncate(self.step)
