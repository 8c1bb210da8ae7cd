"""`gptmini chat`: a multi-turn assistant at the terminal, streaming as it answers.

History is formatted with the checkpoint's template and trimmed from the oldest turn (never half
a turn) so the prompt leaves room for the answer. Commands: /reset, /temp X, /quit. Input may be
piped, one user turn per line, so sessions can be scripted; the prompt marker and the banner only
appear when stdin is a terminal, and piped answers come numbered, a blank line apart (`heading`).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from .engine import Engine, SamplingParams
from .tokenizer import Folding

HELP = "commands: /reset (forget the conversation), /temp X (sampling temperature; 0 = greedy), /quit"
MARKER = "você> "


def heading(n: int) -> str:
    """The line before the n-th answer of a piped chat or a `generate --file`, so that answers of several
    lines stay apart: a blank line after the previous answer, then [n]."""
    return ("\n" if n > 1 else "") + f"[{n}]"


def note(text: str, number: int | None = None) -> None:
    """A note about prompt `number` (None: the only one) on stderr, apart from the answers."""
    print(f"note: {'' if number is None else f'prompt {number}: '}{text}", file=sys.stderr)


def note_folding(folding: Folding, number: int | None = None) -> None:
    if folding:
        note(folding.note(), number)


class Conversation:
    """The turns so far, and how they become the next prompt."""

    def __init__(self, engine: Engine, system: str | None = None) -> None:
        self.engine, self.system = engine, system
        self.turns: list[tuple[str, str]] = []  # (user, assistant) pairs, oldest first

    def reset(self) -> None:
        self.turns = []

    def messages(self, user_text: str, turns: list[tuple[str, str]] | None = None) -> list[dict]:
        history = self.turns if turns is None else turns
        system = [{"role": "system", "content": self.system}] if self.system else []
        past = [m for user, answer in history
                for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
        return system + past + [{"role": "user", "content": user_text}]

    def prompt_ids(self, user_text: str, max_new_tokens: int) -> list[int]:
        """The template-formatted history + this turn, dropping the oldest turns until it fits.

        The budget is the engine's (context minus max_new_tokens, but at least half the context),
        so what is kept here is exactly what the engine will see. The system message always stays;
        a single turn too long for the budget is left to the engine, which keeps its end.
        """
        budget = self.engine.prompt_budget(max_new_tokens)
        turns = list(self.turns)
        while True:
            ids = self.engine.encode_prompt(self.messages(user_text, turns))
            if len(ids) <= budget or not turns:
                return ids
            turns.pop(0)

    def reply(self, user_text: str, params: SamplingParams,
              on_text: Callable[[int, str], None] | None = None, number: int | None = None) -> str:
        """Answers `user_text` (streaming through `on_text`) and adds the turn to the history. What the
        vocabulary could not read as typed is said once, for the new text (and the system message at the
        first turn): the history was said when it was new. `number` labels the notes."""
        new = self.messages(user_text, []) if not self.turns else [{"role": "user", "content": user_text}]
        note_folding(self.engine.read(new)[1], number)
        ids = self.prompt_ids(user_text, params.max_new_tokens)
        [completion] = self.engine.generate([ids], params, on_text=on_text)
        if completion.prompt_truncated:
            note(f"the message was too long; its first {completion.prompt_truncated} tokens were dropped", number)
        self.turns.append((user_text, completion.text))
        return completion.text


def read_line(stdin: TextIO, stdout: TextIO, interactive: bool) -> str | None:
    """The next line without its newline; None at end of input (Ctrl-D) or Ctrl-C at the prompt."""
    try:
        if interactive and stdin is sys.stdin and stdout is sys.stdout:
            return input(MARKER)  # readline editing: arrows, history, accented characters
        if interactive:
            stdout.write(MARKER)
            stdout.flush()
        line = stdin.readline()
        return line.rstrip("\r\n") if line else None
    except (EOFError, KeyboardInterrupt):
        if interactive:
            stdout.write("\n")
        return None


def run_chat(conversation: Conversation, params: SamplingParams, stdin: TextIO = sys.stdin,
             stdout: TextIO = sys.stdout) -> None:
    """The read-answer loop until /quit or end of input. Ctrl-C while answering stops that answer."""
    interactive = stdin.isatty()
    if interactive:
        print(f"gptmini chat — {HELP}", file=stdout)
        try:
            import readline  # noqa: F401  (importing it is what turns on line editing for input())
        except ImportError:  # Windows
            pass

    def show(_, delta: str) -> None:
        stdout.write(delta)
        stdout.flush()

    answered = 0
    while (line := read_line(stdin, stdout, interactive)) is not None:
        text = line.strip()
        command, _, argument = text.partition(" ")
        if command == "/quit":
            return
        if command == "/reset":
            conversation.reset()
            print("(conversation reset)", file=stdout)
        elif command == "/temp":
            try:
                temperature = float(argument)
                if not temperature >= 0:  # also rejects nan
                    raise ValueError
                params = replace(params, temperature=temperature)
                print(f"(temperature {params.temperature})", file=stdout)
            except ValueError:
                print("(usage: /temp 0.7 — a number >= 0; 0 = greedy)", file=stdout)
        elif command.startswith("/"):
            print(f"(unknown command; {HELP})", file=stdout)
        elif text:
            answered += 1
            if not interactive:
                print(heading(answered), file=stdout)
            try:
                conversation.reply(line, params, on_text=show, number=None if interactive else answered)
            except KeyboardInterrupt:  # the half answer is dropped: it is not kept in the history
                stdout.write(" (interrupted)")
            stdout.write("\n")
            stdout.flush()


def answers_at_turn(engine: Engine, questions: list[str], turn: int, params: SamplingParams,
                    system: str | None = None, batch: int = 64) -> list[str]:
    """Each question asked as turn `turn` of a conversation, as chat and the web page send it: the earlier
    turns are the questions before it in the list (cyclically) with the model's own answers to them."""
    n = len(questions)
    conversations = [Conversation(engine, system) for _ in questions]
    for t in range(turn):
        asked = [questions[(i - turn + 1 + t) % n] for i in range(n)]
        prompts = [c.prompt_ids(q, params.max_new_tokens) for c, q in zip(conversations, asked)]
        answers = [c.text for i in range(0, n, batch) for c in engine.generate(prompts[i:i + batch], params)]
        for conversation, question, answer in zip(conversations, asked, answers):
            conversation.turns.append((question, answer))
    return [c.turns[-1][1] for c in conversations]
