"""Batches for the one training loop: pretraining windows, instruction examples, preference pairs.

Each source hands out micro-batches (`(idx, targets)`; a PairBatch for DPO) and can save/restore its
position as JSON, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from ..errors import GptminiError
from ..model import IGNORE_INDEX


class WindowBatches:
    """Random windows of `context_size + 1` tokens from a token array (nanoGPT-style).

    mix (midtraining, nanochat's word): a second token array, e.g. formatted instruction records,
    and the share of a batch's rows drawn from it instead of the corpus.
    """

    def __init__(self, tokens: np.ndarray, context_size: int, batch_size: int, seed: int, name: str = "corpus",
                 mix: tuple[np.ndarray, float] | None = None) -> None:
        sources = [(tokens, name)] + ([(mix[0], "instruction mix")] if mix else [])
        for source, source_name in sources:
            if len(source) < context_size + 1:
                raise GptminiError(f"{source_name} has {len(source)} tokens, fewer than one context window "
                                   f"({context_size + 1}): add text or lower --context-size")
        self.tokens, self.context_size, self.batch_size = tokens, context_size, batch_size
        self.mix_tokens, self.mix_ratio = mix if mix else (None, 0.0)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        # An epoch, for the training plan: as many windows as cover the corpus and the mix once.
        self.tokens_per_epoch = sum(len(source) for source, _ in sources)
        self.batches_per_epoch = self.tokens_per_epoch / (batch_size * context_size)

    def _windows(self, starts: np.ndarray, sources: list[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        sources = sources or [self.tokens] * len(starts)
        rows = np.stack([src[s:s + self.context_size + 1] for src, s in zip(sources, starts)]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix_tokens is None:  # the same draws as before mixing existed: old runs resume alike
            starts = self.rng.integers(0, len(self.tokens) - self.context_size, size=self.batch_size)
            return self._windows(starts)
        mixed = self.rng.random(self.batch_size) < self.mix_ratio
        sources = [self.mix_tokens if m else self.tokens for m in mixed]
        starts = self.rng.integers(0, [len(src) - self.context_size for src in sources])
        return self._windows(starts, sources)

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


def fit_to_context(ids: list[int], labels: list[int], length: int,
                   policy: str = "pinned") -> tuple[list[tuple[list[int], list[int]]], str]:
    """Sequences of at most `length` tokens from one example, and what was done: ok, windowed,
    instruction cut, truncated or skipped.

    pinned (default): windows that each start with the whole prompt, then the end of the answer
    so far, training the next stretch of the answer (see `pinned_windows`): no answer token is
    ever trained without its question. truncate: drop prompt tokens from the left first (the end
    of the prompt, which announces the response, stays), then response tokens from the right.
    window: overlapping windows (stride half a window) whose labels train each response token
    exactly once.
    """
    if len(ids) <= length:
        return [(ids, labels)], "ok"
    if policy == "pinned":
        return pinned_windows(ids, labels, length)
    if policy == "window":
        return _label_windows(ids, labels, length), "windowed"
    first = first_trained(labels)
    overflow = len(ids) - length
    start = overflow if overflow <= first - 1 else max(0, first - length // 4)
    ids, labels = ids[start:start + length], labels[start:start + length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return [], "skipped"
    return [(ids, labels)], "truncated"


def first_trained(labels: list[int]) -> int:
    """Where the prompt ends: the first trained position (len(labels) when none is)."""
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def slide_keep(prompt_length: int, length: int) -> int:
    """Answer tokens that stay behind the prompt when a full window of `length` tokens slides on.

    Training's pinned windows and the engine's generation both use it, so that a long answer is
    generated in exactly the layout it was trained in: half of the answer room is kept as
    context, the other half is new.
    """
    room = length - prompt_length
    return room - room // 2


def pinned_windows(ids: list[int], labels: list[int], length: int) -> tuple[list[tuple[list[int], list[int]]], str]:
    """An example longer than `length` as windows of prompt + answer context + new answer tokens.

    The first window is the prompt and the start of the answer; each next one repeats the prompt,
    then the last `slide_keep` answer tokens already trained (labels ignored), then new ones.
    Every response label (and the end-of-text) is trained exactly once. Only a prompt longer than
    half the window is cut, from its start (its end announces the answer).
    """
    start = first_trained(labels)
    cut = max(0, start - length // 2)
    prompt, answer, answer_labels = ids[cut:start], ids[start:], labels[start:]
    keep, room = slide_keep(len(prompt), length), length - len(prompt)
    ignored = [IGNORE_INDEX] * len(prompt)
    windows = [(prompt + answer[:room], ignored + answer_labels[:room])]
    for new in range(room, len(answer), room - keep):
        context = range(new - keep, min(new - keep + room, len(answer)))
        window_labels = [answer_labels[j] if j >= new else IGNORE_INDEX for j in context]
        if any(label != IGNORE_INDEX for label in window_labels):
            windows.append((prompt + [answer[j] for j in context], ignored + window_labels))
    return windows, "instruction cut" if cut else "windowed"


def _label_windows(ids: list[int], labels: list[int], length: int) -> list[tuple[list[int], list[int]]]:
    """Windows overlapping by half; a label is kept only in the first window that can predict it."""
    stride, out, trained_until = max(1, length // 2), [], 0
    for start in range(0, len(ids) - 1, stride):
        end = min(start + length, len(ids))
        window = [labels[j] if j >= trained_until else IGNORE_INDEX for j in range(start, end)]
        if any(label != IGNORE_INDEX for label in window[1:]):
            out.append((ids[start:end], window))
        trained_until = end
        if end == len(ids):
            break
    return out


def pad_rows(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, targets): inputs ids[:-1], targets labels[1:] (-100 on the padding)."""
    width = max(len(ids) for ids, _ in sequences) - 1
    idx = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(sequences):
        idx[row, :len(ids) - 1] = torch.tensor(ids[:-1])
        targets[row, :len(ids) - 1] = torch.tensor(labels[1:])
    return idx, targets


class ExampleBatches:
    """Length-grouped batches of whole examples, right-padded: no example attends to another.

    Each epoch shuffles the examples, sorts them by length within chunks of 64 batches (so padding
    stays small while batches stay varied), and shuffles the batch order. The order of an epoch is
    a function of (seed, epoch), so the data position is just (epoch, batch index).
    """

    def __init__(self, sequences: list[tuple[list[int], list[int]]], batch_size: int, seed: int, pad_id: int,
                 group_chunks: int = 64, extra: Callable[[int], list[tuple[list[int], list[int]]]] | None = None) -> None:
        if not sequences:
            raise GptminiError("no training examples left to batch")
        self.base, self.extra, self.batch_size, self.seed, self.pad_id = sequences, extra, batch_size, seed, pad_id
        self.group = batch_size * group_chunks
        self.index = 0
        self._start_epoch(0)
        self.tokens_per_epoch = sum(len(ids) - 1 for ids, _ in self.sequences)  # inputs, for the training plan

    def _start_epoch(self, epoch: int) -> None:
        """extra(epoch): sequences made anew for each pass (question variants, conversations), added to
        the fixed ones; a function of the epoch, so a resumed run sees what the first one would have."""
        self.epoch = epoch
        self.sequences = self.base + self.extra(epoch) if self.extra else self.base
        self._order = self._epoch_batches(epoch)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        order = rng.permutation(len(self.sequences))
        batches = []
        for i in range(0, len(order), self.group):
            chunk = sorted(order[i:i + self.group], key=self.length)
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def length(self, j: int) -> int:
        """Tokens of example j (what batches are grouped by)."""
        return len(self.sequences[j][0])

    def collate(self, members: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for next-token prediction: inputs ids[:-1], targets labels[1:]."""
        return pad_rows([self.sequences[j] for j in members], self.pad_id)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index == len(self._order):
            self.index = 0
            self._start_epoch(self.epoch + 1)
        self.index += 1
        return self.collate(self._order[self.index - 1])

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order)

    def padding_waste(self) -> float:
        """Fraction of computed positions that are padding, over one epoch."""
        computed = real = 0
        for members in self._epoch_batches(0):
            lengths = [self.length(j) - 1 for j in members]
            computed += max(lengths) * len(lengths)
            real += sum(lengths)
        return 1 - real / computed

    def eval_batches(self, max_batches: int | None = None, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, sorted by length (validation sets are small; max_batches is ignored), in
        batches of batch_size (default: the training batch size)."""
        order, size = sorted(range(len(self.sequences)), key=self.length), batch_size or self.batch_size
        for i in range(0, len(order), size):
            yield self.collate(order[i:i + size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]
        self._start_epoch(state["epoch"])


class PairBatch(NamedTuple):
    """B preference pairs as 2B rows: the chosen answers, then the rejected ones in the same order."""
    idx: torch.Tensor  # (2B, T) inputs
    targets: torch.Tensor  # (2B, T) next tokens, -100 outside the answers and their end-of-text
    index: torch.Tensor  # (B,) the pairs' positions in the data
    reference: torch.Tensor | None  # (2B,) the reference model's sequence log-probabilities, once cached


class PairBatches(ExampleBatches):
    """Length-grouped batches of preference pairs (ExampleBatches' order, grouped by the longer answer).

    `sequences` holds (chosen, rejected) per pair, each an (ids, labels) sequence; `reference`, an (N, 2)
    tensor of the reference model's log-probabilities of both, is attached once computed (dpo.py).
    """

    def __init__(self, pairs: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]], batch_size: int,
                 seed: int, pad_id: int) -> None:
        super().__init__(pairs, batch_size, seed, pad_id)
        self.tokens_per_epoch = sum(len(seq[0]) - 1 for pair in pairs for seq in pair)
        self.reference: torch.Tensor | None = None

    def length(self, j: int) -> int:
        return max(len(seq[0]) for seq in self.sequences[j])

    def collate(self, members: list[int]) -> PairBatch:
        rows = [self.sequences[j][0] for j in members] + [self.sequences[j][1] for j in members]
        idx, targets = pad_rows(rows, self.pad_id)
        index = torch.tensor(members, dtype=torch.long)
        reference = None if self.reference is None else self.reference[index].t().flatten()
        return PairBatch(idx, targets, index, reference)
