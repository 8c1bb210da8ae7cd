"""`gptmini chat`: a multi-turn assistant at the terminal, streaming as it answers.

History is formatted with the checkpoint's template and trimmed from the oldest turn (never half
a turn) so the prompt leaves room for the answer. Commands: /reset, /temp X, /quit. Input may be
piped, one user turn per line, so sessions can be scripted.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import TextIO

from .engine import Engine, SamplingParams

HELP = "commands: /reset (forget the conversation), /temp X (sampling temperature; 0 = greedy), /quit"


class Conversation:
    def __init__(self, engine: Engine, system: str | None = None) -> None:
        self.engine, self.system, self.turns = engine, system, []

    def reset(self) -> None:
        self.turns = []

    def prompt_ids(self, user_text: str, max_new_tokens: int) -> list[int]:
        """The template-formatted history + this turn, dropping the oldest turns until it fits."""
        budget = self.engine.prompt_budget(max_new_tokens)
        turns = list(self.turns)
        while True:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                m for user, answer in turns for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
            ids = self.engine.encode_prompt(messages + [{"role": "user", "content": user_text}])
            if len(ids) <= budget or not turns:
                return ids
            turns.pop(0)

    def reply(self, user_text: str, params: SamplingParams, on_text=None) -> str:
        ids = self.prompt_ids(user_text, params.max_new_tokens)
        [completion] = self.engine.generate([ids], params, on_text=on_text)
        self.turns.append((user_text, completion.text))
        return completion.text


def run_chat(conversation: Conversation, params: SamplingParams, stdin: TextIO = sys.stdin,
             stdout: TextIO = sys.stdout) -> None:
    interactive = stdin.isatty()
    if interactive:
        print(f"gptmini chat — {HELP}", file=stdout)

    def show(_, delta: str) -> None:
        stdout.write(delta)
        stdout.flush()

    while True:
        if interactive:
            stdout.write("você> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            conversation.reset()
            print("(conversation reset)", file=stdout)
        elif text.startswith("/temp"):
            try:
                params = replace(params, temperature=float(text.split()[1]))
                print(f"(temperature {params.temperature})", file=stdout)
            except (IndexError, ValueError):
                print("(usage: /temp 0.7)", file=stdout)
        elif text.startswith("/"):
            print(f"(unknown command; {HELP})", file=stdout)
        elif text.strip():
            conversation.reply(text, params, on_text=show)
            stdout.write("\n")
            stdout.flush()
