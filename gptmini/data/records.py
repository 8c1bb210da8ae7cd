"""Instruction records from JSON, JSONL, CSV or TSV, as conversations ready for a template.

Accepted shapes: `{instruction, response}` (the seed), Alpaca `{instruction, input, output}`,
chat `{"messages": [{"role", "content"}, ...]}`, and any other field names through a mapping
such as `instruction=pergunta,response=resposta`. Every problem names the file and line.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GptminiError

ROLES = ("system", "user", "assistant")
DEFAULT_FIELDS = {"instruction": "instruction", "input": "input", "response": "response"}
ALPACA_RESPONSE = "output"


class EmptyField(GptminiError):
    """A record whose instruction or response is blank: skipped and counted, not trained on."""


@dataclass
class Example:
    messages: list[dict]
    where: str  # "file:line", for messages about this record


def parse_fields(spec: str | None) -> dict[str, str]:
    """"instruction=pergunta,response=resposta" -> {"instruction": "pergunta", "response": "resposta"}."""
    mapping = dict(DEFAULT_FIELDS)
    for part in filter(None, (spec or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in DEFAULT_FIELDS or not value.strip():
            raise GptminiError(f"--fields {spec!r}: expected NAME=COLUMN pairs with NAME in {sorted(DEFAULT_FIELDS)}")
        mapping[key.strip()] = value.strip()
    return mapping


def _raw_records(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed record) pairs; line is the record's index (1-based) in a JSON list."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GptminiError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise GptminiError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    except OSError as exc:
        raise GptminiError(f"{path}: cannot read ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [(reader.line_num, row) for row in reader]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptminiError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise GptminiError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
        return list(enumerate(data, 1))
    if suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise GptminiError(f"{path}:{n}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
        return records
    raise GptminiError(f"{path}: unsupported format {suffix!r}; use .json, .jsonl, .csv or .tsv")


def _text(record: dict, key: str, where: str, fields: dict, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if not required:
            return ""
        hint = ",".join(f"{k}=COLUMN" for k in ("instruction", "response"))
        raise GptminiError(f"{where}: record lacks field {key!r} (it has: {', '.join(map(str, record))}); "
                           f"name your columns with --fields {hint}")
    if not isinstance(value, str):
        raise GptminiError(f"{where}: field {key!r} must be text, found {type(value).__name__} {str(value)[:40]!r}")
    if required and not value.strip():
        raise EmptyField(f"{where}: field {key!r} is empty")
    return value


def _messages(record: dict, where: str, require_answer: bool = True) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise GptminiError(f"{where}: \"messages\" must be a non-empty list of {{role, content}}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise GptminiError(f"{where}: message {i} must be {{\"role\": one of {ROLES}, \"content\": text}}")
        out.append({"role": m["role"], "content": m["content"]})
    if require_answer and not any(m["role"] == "assistant" for m in out):
        raise GptminiError(f"{where}: conversation has no assistant message to learn from")
    return out


def to_example(record: object, where: str, fields: dict, require_answer: bool = True) -> Example:
    """One record as a conversation. require_answer=False (evaluation) keeps a record without an
    answer as a prompt-only conversation, for the caller to count; blank answers still skip."""
    if not isinstance(record, dict):
        raise GptminiError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if "messages" in record:
        return Example(_messages(record, where, require_answer), where)
    response_key = fields["response"]
    if response_key not in record and fields["response"] == DEFAULT_FIELDS["response"] and ALPACA_RESPONSE in record:
        response_key = ALPACA_RESPONSE  # Alpaca records name the answer "output"
    instruction = _text(record, fields["instruction"], where, fields)
    user = {"role": "user", "content": instruction}
    if extra := _text(record, fields["input"], where, fields, required=False).strip():
        user["input"] = extra
    if not require_answer and record.get(response_key) is None:
        return Example([user], where)
    return Example([user, {"role": "assistant", "content": _text(record, response_key, where, fields)}], where)


@dataclass
class Records:
    examples: list[Example]
    skipped: list[str]  # one "file:line: reason" per record left out

    def report(self) -> str:
        if not self.skipped:
            return f"{len(self.examples)} records"
        return (f"{len(self.examples)} records; skipped {len(self.skipped)} with an empty field "
                f"(first: {self.skipped[0]})")


def read_examples(path: str | Path, fields: dict | str | None = None, require_answer: bool = True) -> Records:
    """All records of `path`; blank instructions/responses are skipped and listed, anything else wrong fails."""
    path = Path(path)
    mapping = fields if isinstance(fields, dict) else parse_fields(fields)
    examples, skipped = [], []
    for line, record in _raw_records(path):
        try:
            examples.append(to_example(record, f"{path}:{line}", mapping, require_answer))
        except EmptyField as exc:
            skipped.append(str(exc))
    if not examples:
        raise GptminiError(f"{path}: holds no usable records" + (f" ({skipped[0]})" if skipped else ""))
    return Records(examples, skipped)
