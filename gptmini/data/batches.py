"""Batches for the one training loop: pretraining windows and instruction examples.

Each source hands out micro-batches `(idx, targets)` and can save/restore its position as JSON,
so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import GptminiError


class WindowBatches:
    """Random windows of `context_size + 1` tokens from a token array (nanoGPT-style)."""

    def __init__(self, tokens: np.ndarray, context_size: int, batch_size: int, seed: int, name: str = "corpus") -> None:
        if len(tokens) < context_size + 1:
            raise GptminiError(f"{name} has {len(tokens)} tokens, fewer than one context window "
                               f"({context_size + 1}): add text or lower --context-size")
        self.tokens, self.context_size, self.batch_size = tokens, context_size, batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.tokens[s:s + self.context_size + 1] for s in starts]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.tokens) - self.context_size, size=self.batch_size)
        return self._windows(starts)

    def eval_batches(self, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evenly spaced windows, the same every time, so validation losses are comparable."""
        last = len(self.tokens) - self.context_size - 1
        n = min(max_batches * self.batch_size, last // self.context_size + 1)
        starts = np.linspace(0, last, n).astype(np.int64)
        for i in range(0, n, self.batch_size):
            yield self._windows(starts[i:i + self.batch_size])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
