"""Preference pairs from JSON, JSONL, CSV or TSV, in TRL's two formats, through records.py's one reader.

    standard        {"prompt": text, "chosen": text, "rejected": text}; the prompt is an instruction,
                    rendered by the template like sft's prompt/completion records
    conversational  {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}

`--fields prompt=COL,chosen=COL,rejected=COL` names other columns (names matched as in sft: case, accents
and surrounding spaces aside). As in sft, a JSON number or boolean
in a text field becomes its text (counted), a blank prompt or answer skips the record (counted), and
anything else wrong is one error naming the file and line. Pairs whose chosen answer equals the
rejected one teach nothing: they are skipped and counted too.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GptminiError
from .records import EmptyField, Converter, checked_names, field_key, raw_records, parse_fields

PAIR_FIELDS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
PAIR_FIELDS_HINT = "--fields prompt=COLUMN,chosen=COLUMN,rejected=COLUMN"


@dataclass
class Pair:
    prompt: list[dict]  # the conversation before the answers (ends on a user message)
    chosen: list[dict]  # the preferred answer's assistant message(s)
    rejected: list[dict]
    where: str  # "file:line"


@dataclass
class Pairs:
    pairs: list[Pair]
    skipped: list[str]  # "file:line: reason" per record with a blank field
    same: list[str]  # "file:line" per pair whose chosen equals its rejected answer
    shapes: Counter = field(default_factory=Counter)
    as_text: list[tuple[str, str]] = field(default_factory=list)

    def report(self) -> str:
        """"40 pairs (shape: standard); skipped 2 whose chosen equals rejected (first: f.jsonl:7)"."""
        shapes = ", ".join(f"{name} {n}" for name, n in self.shapes.most_common())
        parts = [f"{len(self.pairs)} pairs" + (f" (shape: {next(iter(self.shapes))})" if len(self.shapes) == 1
                                                else f" (shapes: {shapes})")]
        if self.as_text:
            where, text = self.as_text[0]
            parts.append(f"{len(self.as_text)} numbers/booleans read as text (first: {where} = {text})")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} with an empty field (first: {self.skipped[0]})")
        if self.same:
            parts.append(f"skipped {len(self.same)} whose chosen equals rejected (first: {self.same[0]})")
        return "; ".join(parts)


def _answer(converter: Converter, value: object, name: str, where: str) -> list[dict]:
    """A conversational answer: assistant messages, not all blank."""
    messages = converter.message_list(value, name, where)
    if any(m["role"] != "assistant" for m in messages):
        raise GptminiError(f"{where}: {name!r} must hold assistant messages only (the prompt holds the rest)")
    if not "".join(m["content"] for m in messages).strip():
        raise EmptyField(f"{where}: field {name!r} is empty")
    return messages


def _pair(converter: Converter, record: object, names: dict[str, str], where: str) -> tuple[str, Pair]:
    if not isinstance(record, dict):
        raise GptminiError(f"{where}: expected a JSON object, found {type(record).__name__}")
    keys = {role: field_key(checked_names(record, where), column) for role, column in names.items()}
    missing = [names[role] for role, key in keys.items() if key is None]
    if missing:
        keys = ", ".join(map(repr, record)) or "no fields"
        raise GptminiError(f"{where}: record lacks field {missing[0]!r} (it has: {keys}); a preference pair has "
                           f"a prompt, a chosen and a rejected answer: name its columns with {PAIR_FIELDS_HINT}")
    prompt, chosen, rejected = (record[keys[k]] for k in ("prompt", "chosen", "rejected"))
    if isinstance(prompt, list):  # TRL's conversational format
        messages = converter.message_list(prompt, "prompt", where)
        if messages[-1]["role"] != "user":
            raise GptminiError(f"{where}: the prompt must end with a user message (the answers follow it)")
        return "conversational", Pair(messages, _answer(converter, chosen, "chosen", where),
                                      _answer(converter, rejected, "rejected", where), where)
    user, good, bad = (converter.value_of(record, keys[k], where) for k in ("prompt", "chosen", "rejected"))
    return "standard", Pair([{"role": "user", "content": user}], [{"role": "assistant", "content": good}],
                            [{"role": "assistant", "content": bad}], where)


def read_pairs(path: str | Path, fields: dict | str | None = None, encoding: str | None = None) -> Pairs:
    """All preference pairs of `path`; fields: "prompt=COL,chosen=COL,rejected=COL" or parse_fields' dict."""
    path = Path(path)
    names = fields if isinstance(fields, dict) else parse_fields(fields, PAIR_FIELDS)
    converter = Converter(None, False, True)
    pairs, skipped, same, shapes = [], [], [], Counter()
    for where, record in raw_records(path, encoding):
        try:
            shape, pair = _pair(converter, record, names, where)
        except EmptyField as exc:
            skipped.append(str(exc))
            continue
        if pair.chosen == pair.rejected:
            same.append(where)
            continue
        shapes[shape] += 1
        pairs.append(pair)
    if not pairs:
        reason = skipped[0] if skipped else (f"{same[0]}: chosen equals rejected" if same else "")
        raise GptminiError(f"{path}: holds no usable preference pairs" + (f" ({reason})" if reason else ""))
    return Pairs(pairs, skipped, same, shapes, converter.as_text)
