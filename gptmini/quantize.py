"""Weight-only int8 inference: every projection and the output head as int8 weights, one scale per output row.

Decoding a token streams every weight from memory for a handful of FLOPs, so a quarter of the
bytes is most of the win. The products run in PyTorch's own weight-only int8 kernel
(`aten._weight_int8pack_mm`, the one torchao's int8 weight-only mode calls on CPU); its fast CPU
path takes bfloat16 activations (float32 ones fall to a scalar loop ~10x slower), so each product
rounds its input to bfloat16 and its bfloat16 result goes back to float32: the rest of the model
(norms, attention and its cache, the residual stream, SwiGLU, the logits that greedy decoding
compares) stays float32, and the quantized model is a drop-in for the float32 one. `gptmini eval --quantize int8 --compare` measures what it costs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import GptminiError
from .model import GPTMini

QUANTIZE_CHOICES = ("int8",)


class Int8Linear(nn.Module):
    """y = x @ (int8 weight * per-row scale).T, computed in bfloat16, the weight stored as int8 (out, in)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # symmetric: the row's largest |w| maps to 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight,
                                               self.scales)
        return y.view(*x.shape[:-1], self.out_features).float()


def quantize(model: GPTMini, mode: str | None) -> GPTMini:
    """The model itself for mode None; for "int8" a copy whose every nn.Linear (the output head too, even
    tied to the embedding, which stays float32 for the lookup) is an Int8Linear."""
    if mode is None:
        return model
    if mode not in QUANTIZE_CHOICES:
        raise GptminiError(f"unknown quantization {mode!r}; choose from {', '.join(QUANTIZE_CHOICES)}")
    if model.embed.weight.device.type != "cpu":
        raise GptminiError(f"--quantize int8 runs on the CPU (PyTorch's int8 weight-only kernel), not on "
                           f"{model.embed.weight.device}: give --device cpu, or drop --quantize")
    quantized = copy.deepcopy(model).eval()
    for module in list(quantized.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return quantized
