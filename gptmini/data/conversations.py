"""Multi-turn conversations made from single-turn examples, so the assistant answers turn 4 as turn 1.

`chat`, the web page and the chat API send the whole conversation: the model answers its last
question behind earlier questions and its own earlier answers. Trained on single questions only,
it has never seen a question behind a conversation and answers it badly. Here single-turn
examples are chained into conversations, every answer trained, each behind its whole question
with the earlier turns before it.

A template encodes each message on its own (templates.py), so a conversation is never longer than its
turns encoded alone (a SentencePiece-style tokenizer's BOS even comes once): a chain is only made
as long as those lengths fit the context, so no turn is ever cut or dropped.
"""
from __future__ import annotations

import random

from .records import Example


def single_turn(example: Example) -> bool:
    """One question and its answer, no system message (a system text belongs at a conversation's start)."""
    return [m["role"] for m in example.messages] == ["user", "assistant"]


def chain(lengths: list[int], max_turns: int, length: int, rng: random.Random) -> list[list[int]]:
    """The examples (given by their token counts) in a random order, grouped into conversations: each
    group draws a size from 2 to max_turns turns and takes examples while they fit in `length` tokens.
    Every example lands in exactly one group; a group of one (the next did not fit, or the last) is a
    question asked alone.

    No group is drawn alone on purpose: the records themselves already train every answer behind a lone
    question, and a variant is worth more behind a history (bench/conversation.py, two seeds: turn 4 from
    83.0 / 75.5 % to 86.8 / 81.1 % against sizes drawn from 1, turn 1 at 94.3 / 88.7 % against 92.5 / 90.6 %)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    groups, i = [], 0
    while i < len(order):
        size, group, used = rng.randint(min(2, max_turns), max_turns), [], 0
        while i < len(order) and len(group) < size and (not group or used + lengths[order[i]] <= length):
            group.append(order[i])
            used += lengths[order[i]]
            i += 1
        groups.append(group)
    return groups
