"""Prompt templates: how a conversation becomes token ids and training labels.

Each piece (system text, a user's prompt, an assistant's response) is encoded on its own and the
ids are concatenated, so no token ever straddles the prompt/response boundary and inference
encodes prompts exactly as training did. Labels are -100 (ignored) everywhere except on
assistant responses and the end-of-text token that closes each one: the model learns to stop.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import GptminiError
from ..model import IGNORE_INDEX
from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str  # text before a response; holds "{instruction}"
    prompt_with_input: str | None = None  # used when a record has a non-empty "input"
    system: str | None = None  # holds "{system}"; rendered once, before the first turn

    def __post_init__(self) -> None:
        if "{instruction}" not in self.prompt:
            raise GptminiError(f"template {self.name!r}: prompt lacks the {{instruction}} placeholder")
        if self.prompt_with_input is not None and "{input}" not in self.prompt_with_input:
            raise GptminiError(f"template {self.name!r}: prompt_with_input lacks the {{input}} placeholder")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Template":
        return cls(**values)

    def prompt_text(self, instruction: str, input: str = "") -> str:
        if input and self.prompt_with_input:
            return self.prompt_with_input.replace("{instruction}", instruction).replace("{input}", input)
        if input:  # a template without an input slot still must not lose the input
            instruction = f"{instruction}\n\n{input}"
        return self.prompt.replace("{instruction}", instruction)

    def encode(self, tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(ids, labels) for a conversation of {"role", "content"[, "input"]} messages.

        Ending on a user message gives the prompt for generation (the model answers next).
        """
        ids: list[int] = []
        labels: list[int] = []

        def add(text: str, trained: bool, end: list[int] = ()) -> None:
            # The first piece opens the sequence (BOS where the model has one); the others continue it.
            piece_ids = (tokenizer.encode_next(text) if ids else tokenizer.encode(text, start=True)) + list(end)
            ids.extend(piece_ids)
            labels.extend(piece_ids if trained else [IGNORE_INDEX] * len(piece_ids))

        for message in messages:
            role, content = message["role"], message["content"]
            if role == "system":
                if self.system:
                    add(self.system.replace("{system}", content), False)
            elif role == "user":
                add(self.prompt_text(content, message.get("input", "")), False)
            elif role == "assistant":
                add(content, True, [tokenizer.eot_id])
            else:
                raise GptminiError(f"unknown message role {role!r}: use system, user or assistant")
        return ids, labels


BUILTIN = {
    "comando": Template(
        "comando",
        prompt="### Comando:\n{instruction}\n\n### Resposta:\n",
        prompt_with_input="### Comando:\n{instruction}\n\n### Entrada:\n{input}\n\n### Resposta:\n",
        system="{system}\n\n",
    ),
    "alpaca": Template(
        "alpaca",
        prompt="Below is an instruction that describes a task. Write a response that appropriately "
               "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        prompt_with_input="Below is an instruction that describes a task, paired with an input that "
                          "provides further context. Write a response that appropriately completes the "
                          "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        system="{system}\n\n",
    ),
    "chat": Template(
        "chat",
        prompt="<|user|>\n{instruction}\n<|assistant|>\n",
        prompt_with_input="<|user|>\n{instruction}\n\n{input}\n<|assistant|>\n",
        system="<|system|>\n{system}\n",
    ),
}
DEFAULT_TEMPLATE = "comando"


def get_template(spec: str | None = None) -> Template:
    """A built-in name, a JSON file with Template fields, or a text file "...{instruction}...{response}"."""
    spec = spec or DEFAULT_TEMPLATE
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise GptminiError(f"template {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return Template.from_dict({"name": path.stem, **json.loads(text)})
        except (json.JSONDecodeError, TypeError) as exc:
            raise GptminiError(f"{path}: not a template JSON with fields prompt[, prompt_with_input, system] ({exc})") from None
    prompt, sep, rest = text.partition("{response}")
    if not sep:
        raise GptminiError(f"{path}: template lacks the {{response}} placeholder (the response goes there)")
    if rest.strip():
        raise GptminiError(f"{path}: {{response}} must end the template (found {rest.strip()[:30]!r} after it)")
    return Template(path.stem, prompt=prompt)
