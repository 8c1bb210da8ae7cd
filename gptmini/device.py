"""Where a run computes and in what precision: the one place `--device` and `--precision` are resolved.

Device `auto`: a CUDA GPU (under torchrun, the process's own, LOCAL_RANK), else Apple's MPS, else the CPU.
Precision `auto` (nanochat's choice): bfloat16 autocast on a GPU that has it natively (compute capability
≥ 8.0: Ampere and later), fp32 everywhere else: older GPUs (a T4: torch.cuda.is_bf16_supported() says
True there because it counts emulation), MPS and the CPU. fp16 is the opt-in for those older GPUs, with a
gradient scaler (the steps it skips on an overflow are counted). bf16 on a CPU is allowed when asked for:
CPU autocast runs it, faster than fp32 only on CPUs with AMX/AVX-512 BF16. Autocast computes in low
precision; the weights, the optimiser and the checkpoints stay fp32.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from .errors import GptminiError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps() -> bool:
    return torch.backends.mps.is_available()


def supported() -> str:
    """What this torch can use on this machine, for the error lines."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps():
        names.append("mps")
    return f"this torch ({torch.__version__}) can use: {', '.join(names)}"


def _unavailable(device: torch.device) -> str | None:
    """Why `device` cannot be used here, or None."""
    if device.type == "cuda":
        if torch.version.cuda is None:
            return "no CUDA in this build of torch (CUDA builds: pytorch.org/get-started/locally)"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)"
        if (device.index or 0) >= count:
            return f"this machine has {count} CUDA GPU{'s' if count > 1 else ''}"
    elif device.type == "mps" and not _mps():
        return "no Apple MPS device here"
    elif device.type not in ("cpu", "cuda", "mps"):
        return "gptmini runs on cpu, cuda or mps"
    return None


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch.device for `--device` (auto, cpu, cuda, cuda:N, mps); anything this machine cannot use is a
    GptminiError naming what it can. A bare `cuda` is the process's own GPU under torchrun (LOCAL_RANK)."""
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GptminiError(f"--device {name}: unknown device; {supported()}") from None
    why = _unavailable(device)
    if why:
        raise GptminiError(f"--device {name}: {why}; {supported()}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if why := _unavailable(device):
            raise GptminiError(f"--device {name} for process LOCAL_RANK {device.index}: {why}; {supported()}")
    return device


def describe(device: torch.device, requested: str | torch.device) -> str:
    """The device as the plan and the notes say it: "cpu (auto: no CUDA or MPS device)", "cuda:0 (NVIDIA H200)"."""
    notes = [torch.cuda.get_device_name(device)] if device.type == "cuda" else []
    if str(requested) == "auto":
        notes.append("auto: no CUDA or MPS device" if device.type == "cpu" else "auto")
    return f"{device} ({', '.join(notes)})" if notes else str(device)


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 for `--precision` on `device`; fp16 off CUDA, and bf16 on a GPU that would emulate
    it, are GptminiErrors saying what to use instead."""
    if name not in PRECISIONS:
        raise GptminiError(f"--precision {name}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise GptminiError(f"--precision fp16 needs a CUDA GPU (fp16 autocast with a gradient scaler); on "
                           f"{device.type} use fp32 (the default there) or bf16")
    if name == "bf16" and device.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise GptminiError(f"--precision bf16: the {torch.cuda.get_device_name(device)} (compute capability "
                           f"{major}.{minor}) has no native bfloat16, it would be emulated, slower than fp32; "
                           "use --precision fp16 or fp32")
    return name


def precision_text(precision: str, requested: str, device: torch.device) -> str:
    """The precision as the plan says it: "bf16 (auto: compute capability 9.0)", "fp32 (auto)", "fp16"."""
    if requested != "auto":
        return precision
    if device.type != "cuda":
        return f"{precision} (auto)"
    return f"{precision} (auto: compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch tensor on `device`: on CUDA copied from pinned memory without waiting, so the copy of the next
    micro-batch overlaps the GPU's work on this one."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Precision:
    """A training run's mixed precision: its autocast, and for fp16 the gradient scaler."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        self.skipped = 0  # fp16 steps whose gradients overflowed: the scaler skipped them and lowered its scale
        self._scale = self.scaler.get_scale() if self.scaler else None

    def autocast(self):
        if self.name in AUTOCAST:
            return torch.autocast(self.device.type, dtype=AUTOCAST[self.name])
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, grad_clip: float) -> None:
        """Clips the (unscaled) gradients and steps; an fp16 step with inf/NaN gradients is skipped and counted."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        scale = self.scaler.get_scale()  # one read a step: the scale drops exactly when the step was skipped
        self.skipped += scale < self._scale
        self._scale = scale
