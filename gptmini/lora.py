"""LoRA: train small low-rank adapters on the attention and MLP projections, freeze the rest.

W x becomes W x + (alpha / r) * B A x with A (r x in) and B (out x r); B starts at zero so training
starts from the base model exactly. Checkpoints hold the merged weights (W + (alpha / r) B A), so
`generate`, `eval`, `serve` and `export` use them like any other, plus `adapter.safetensors`
(A and B only) from which a run resumes on top of its base.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import GptminiError
from .model import GPTMini

TARGETS = ("attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down")
ADAPTER = "adapter.safetensors"


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        base.weight.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a)


def spec(rank: int, alpha: float | None = None, train_embeddings: bool = False) -> dict:
    """What a run's metadata says of its adapters (alpha defaults to 2 x rank), for resuming and export."""
    return {"rank": rank, "alpha": alpha or 2.0 * rank, "embeddings": train_embeddings}


def add_lora(model: GPTMini, rank: int, alpha: float | None = None, train_embeddings: bool = False) -> str:
    """Freezes `model` and wraps its projections with adapters; returns a one-line report.

    train_embeddings: also train the token embedding (and the head tied to it) in full: cheap for
    small vocabularies, and what lets a tiny model's adapters sharpen its answers.
    """
    if rank < 1:
        raise GptminiError(f"--lora-rank must be at least 1 (got {rank})")
    full = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    for block in model.blocks:
        for path in TARGETS:
            parent_name, attr = path.split(".")
            parent = getattr(block, parent_name)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, spec(rank, alpha)["alpha"]))
    if train_embeddings:
        model.embed.weight.requires_grad_(True)
        model.lm_head.weight.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adam_mb = lambda n: 2 * 4 * n / 2**20  # noqa: E731  (two fp32 moments per trained parameter)
    return (f"LoRA rank {rank}: {trainable:,} trainable parameters of {full:,} ({trainable / full:.1%}); "
            f"optimizer state {adam_mb(trainable):.1f} MB instead of {adam_mb(full):.1f} MB")


def has_lora(model: GPTMini) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merged(model: GPTMini) -> GPTMini:
    """A plain GPTMini whose weights include the adapters (the model is left as it is).

    Built without a random init, so saving a checkpoint never moves the RNG that dropout uses.
    """
    from .checkpoint import build_model, weights_state_dict

    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.weight"] = module.merged_weight().detach()
    for name, tensor in model.state_dict().items():
        if ".lora_" not in name:
            state.setdefault(name.replace(".base.weight", ".weight"), tensor)
    with torch.device("meta"):
        names = list(weights_state_dict(GPTMini(model.config)))
    plain = build_model(model.config, {k: state[k] for k in names})
    return plain.to(model.embed.weight.device).eval()


def save_adapter(model: GPTMini, directory: Path) -> None:
    """Everything that trains (adapters, and embeddings when they train), to resume on the base."""
    state = {k: p.detach().contiguous() for k, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(directory / ADAPTER))


def load_adapter(model: GPTMini, directory: Path) -> None:
    file = directory / ADAPTER
    try:
        state = load_file(str(file))
    except (OSError, ValueError) as exc:
        raise GptminiError(f"{file}: cannot read the LoRA adapter ({exc})") from None
    missing = [k for k in model.state_dict() if ".lora_" in k and k not in state]
    if missing:
        raise GptminiError(f"{file}: adapter does not match the model (missing {missing[0]})")
    model.load_state_dict(state, strict=False)
