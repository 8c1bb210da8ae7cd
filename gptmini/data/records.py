"""Instruction records from JSON, JSONL, CSV, TSV, parquet or a Hub dataset, as conversations ready for a template.

Shapes are recognised per record, without flags (a CSV's rows share its header, so there the shape is
in effect per file); the first that fits wins, in this order:

    messages              {"messages": [{"role", "content"}, ...]}
    sharegpt              {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
    instruction/response  {instruction, response[, input]}
    alpaca                {instruction, input, output}
    prompt/completion     {prompt, completion}: texts, or TRL's conversational lists of messages
    question/answer       {question, answer}
    pergunta/resposta     {pergunta, resposta}
    instrução/resposta    {instrução, resposta[, entrada]}

Names are matched as people write them, in a header or as JSON keys: case, accents and surrounding
spaces aside ("Pergunta", " RESPOSTA ", "Instrucao" all fit; `--fields` names too). Two names of one
record that are the same name that way are an error: which one was meant cannot be known.

`--fields instruction=COL,response=COL` names the columns instead (the nested messages/conversations
shapes stay recognised); for a file that should use its own shape where it has one (sft's --val-data),
`fields_fallback=True` tries the mapping last. The data report names what it found:
"142 records (shape: pergunta/resposta)".

Text is read exactly as written: UTF-8 (a BOM is dropped) unless an encoding is given, and a file that
is not valid in it is one error naming the line of the first bad byte; CSV/TSV go through the csv module
with quoted line breaks kept; JSONL splits on "\\n" only (U+2028 inside a string is text). JSON numbers
and booleans in a text field become their text as written ("1996", "true"), counted in the report.
Every problem names the file and line (a record's first line; its 1-based index in a JSON list).
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import GptminiError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
DEFAULT_FIELDS = {"instruction": "instruction", "input": "input", "response": "response"}
FIELDS_HINT = "--fields instruction=COLUMN,response=COLUMN"
UTF8_HINT = ("if it is Latin-1 (Excel's plain 'CSV'), read it with --encoding latin-1, or convert it once: "
             "iconv -f latin1 -t utf-8 {path} > {fixed}")


class EmptyField(GptminiError):
    """A record whose instruction or response is blank: skipped and counted, not trained on."""


class _JsonNumber(str):
    """A JSON number kept as the text it was written as ("1.50" stays "1.50", not 1.5), marked so that
    it can be counted when it lands in a text field."""


@dataclass
class Example:
    messages: list[dict]
    where: str  # "file:line", for messages about this record


@dataclass(frozen=True)
class Shape:
    """A flat record: the keys of its prompt, its answer and an optional input."""
    name: str
    prompt: str
    answer: str
    input: str | None = None


FLAT_SHAPES = (
    Shape("instruction/response", "instruction", "response", "input"),
    Shape("alpaca", "instruction", "output", "input"),
    Shape("prompt/completion", "prompt", "completion"),
    Shape("question/answer", "question", "answer"),
    Shape("pergunta/resposta", "pergunta", "resposta"),
    Shape("instrução/resposta", "instrução", "resposta", "entrada"),
)
RECOGNISED = ("instruction/response, alpaca instruction/input/output, prompt/completion, question/answer, "
              "pergunta/resposta, instrução/resposta, messages, ShareGPT conversations")


@lru_cache(maxsize=4096)
def name_form(name: str) -> str:
    """A column or field name as it is matched: "  Instrução " -> "instrucao" (no accents, lower case, trimmed)."""
    bare = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return bare.strip().casefold()


def same_names(names: Iterable[str]) -> list[str] | None:
    """The first names that are one name by name_form (two or more, as written), or None."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if isinstance(name, str) and name.strip():  # blank: a trailing delimiter's column, never looked up
            groups.setdefault(name_form(name), []).append(name)
    return next((group for group in groups.values() if len(group) > 1), None)


def field_key(record: dict, name: str) -> str | None:
    """The key of `record` that is `name` as people write it (name_form), or None. The caller has checked that
    no two keys are one name (same_names)."""
    wanted = name_form(name)
    return next((key for key in record if isinstance(key, str) and name_form(key) == wanted), None)


def checked_names(record: dict, where: str) -> dict:
    """`record`, unless two of its keys are one name once case, accents and spaces are set aside."""
    if twice := same_names(record):
        raise GptminiError(f"{where}: {twice_message(twice, 'field')}")
    return record


def twice_message(names: list[str], noun: str) -> str:
    if len(set(names)) == 1:  # only a CSV header can repeat a name exactly
        return f"{noun} {names[0]!r} appears twice in the header; rename one"
    return (f"{noun}s {' and '.join(map(repr, names))} are one name once case, accents and surrounding spaces are "
            "set aside; rename one")


def first_question(conversations: Iterable[list[dict]]) -> str:
    """The first user message of the first conversation that has one ("" if none): serve's page shows it as
    an example of what to ask."""
    return next((m["content"] for c in conversations for m in c if m["role"] == "user"), "")


def parse_fields(spec: str | None, defaults: dict[str, str] = DEFAULT_FIELDS) -> dict[str, str]:
    """"instruction=pergunta,response=resposta" -> {"instruction": "pergunta", "response": "resposta"}
    (with the other names of `defaults` as they are there)."""
    mapping = dict(defaults)
    for part in filter(None, (spec or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in defaults or not value.strip():
            raise GptminiError(f"--fields {spec!r}: expected NAME=COLUMN pairs with NAME in {sorted(defaults)}")
        mapping[key.strip()] = value.strip()
    return mapping


# -- bytes to text ----------------------------------------------------------------------------------
def _codec(encoding: str | None) -> str:
    """The codec to decode with: UTF-8 (with or without a BOM) by default, else exactly the one asked for."""
    try:
        name = codecs.lookup(encoding or "utf-8").name
    except LookupError:
        raise GptminiError(f"--encoding {encoding!r}: unknown encoding (e.g. utf-8, latin-1, cp1252)") from None
    return "utf-8-sig" if name == "utf-8" else name  # Excel's "CSV UTF-8" starts with a BOM; drop it


def _decode_error(path: Path, data: bytes, exc: UnicodeDecodeError, codec: str) -> GptminiError:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    name = "UTF-8" if codec == "utf-8-sig" else codec
    where = f"{path}:{line}: not {name} text (byte 0x{data[exc.start]:02x} at byte {column} of the line)"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # a declaration, not a guess
        return GptminiError(f"{where}; it starts with a UTF-16 byte-order mark: read it with --encoding utf-16")
    if codec != "utf-8-sig":
        return GptminiError(f"{where}; check which encoding the file was saved in")
    fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return GptminiError(f"{where}; {UTF8_HINT.format(path=path, fixed=fixed)}")


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """The whole file as text, never guessing an encoding: a byte that is not valid is one error with its line."""
    path, codec = Path(path), _codec(encoding)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GptminiError(f"{path}: no such file") from None
    except OSError as exc:
        raise GptminiError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, data, exc, codec) from None


# -- text to raw records ------------------------------------------------------------------------------
def _json(text: str):
    """json.loads that keeps numbers as their written text (see _JsonNumber)."""
    return json.loads(text, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_JsonNumber)


def _json_list(path: Path, text: str) -> list[tuple[int, object]]:
    try:
        data = _json(text)
    except json.JSONDecodeError as exc:
        hint = "; one object per line is JSON Lines: name the file .jsonl" if exc.msg == "Extra data" else ""
        raise GptminiError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}){hint}") from None
    if not isinstance(data, list):
        raise GptminiError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return list(enumerate(data, 1))


def _jsonl(path: Path, text: str) -> list[tuple[int, object]]:
    # Only "\n" ends a record: str.splitlines() would also split at U+2028/U+2029, which json.dumps
    # (ensure_ascii=False) writes raw inside strings. A "\r" left by CRLF is JSON whitespace.
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip(" \t\r"):
            try:
                records.append((n, _json(line)))
            except json.JSONDecodeError as exc:
                raise GptminiError(f"{path}:{n}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
    return records


def _delimiter(path: Path, text: str) -> str:
    """Comma, semicolon (Excel in Brazil and Portugal) or tab, sniffed from the header line only: data
    lines may hold any of them inside quoted, multi-line texts. One column: the suffix decides."""
    try:
        return csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
    except csv.Error:
        return "\t" if path.suffix.lower() == ".tsv" else ","


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line, values) per row. strict: an unclosed quote is an error instead of swallowing the rest
    of the file into one field. A StringIO with newline="" reads like open(newline=""): quoted line
    breaks (\\n or \\r\\n) stay in the field exactly."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, end = [], 0
    try:
        for row in reader:
            if row:  # a blank line is no record
                rows.append((end + 1, row))
            end = reader.line_num
    except csv.Error as exc:
        raise GptminiError(f"{path}:{end + 1}: malformed CSV ({exc}); a quoted text must end with a quote, "
                           'and a quote inside it is written twice ("")') from None
    return rows


def _csv(path: Path, text: str) -> list[tuple[int, object]]:
    delimiter = _delimiter(path, text)
    rows = _csv_rows(path, text, delimiter)
    if not rows:
        return []
    (_, header), body = rows[0], rows[1:]
    if twice := same_names(header):
        raise GptminiError(f"{path}:1: {twice_message(twice, 'column')}")
    records = []
    for line, values in body:
        if any(v for v in values[len(header):]):  # an unquoted delimiter in a text would cut it in two
            raise GptminiError(f"{path}:{line}: {len(values)} values but {len(header)} columns in the header; "
                               f"a text containing {delimiter!r} must be in double quotes")
        # A short row lacks its last columns (None), like csv.DictReader: eval keeps it as a prompt.
        records.append((line, {name: values[i] if i < len(values) else None for i, name in enumerate(header)}))
    return records


def _text_records(path: Path, encoding: str | None) -> list[tuple[str, object]]:
    readers = {".csv": _csv, ".tsv": _csv, ".json": _json_list, ".jsonl": _jsonl}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise GptminiError(f"{path}: unsupported format {path.suffix!r}; use .json, .jsonl, .csv, .tsv, .parquet "
                           "(or a folder of .parquet shards) or hf:OWNER/NAME[:SPLIT]")
    return [(f"{path}:{line}", record) for line, record in reader(path, read_text(path, encoding))]


def raw_records(path: Path, encoding: str | None) -> list[tuple[str, object]]:
    """("file:line", parsed record) pairs; the line is the record's first line (its 1-based index in a JSON
    list); parquet and Hub datasets say "file:row N"."""
    if str(path).startswith("hf:"):
        from .tables import hub_records  # pyarrow/datasets only load for the formats that need them
        return hub_records(str(path))
    if path.suffix.lower() == ".parquet" or path.is_dir():
        from .tables import parquet_records
        return parquet_records(path)
    return _text_records(path, encoding)


# -- raw records to conversations -------------------------------------------------------------------
class Converter:
    """Turns the records of one file into Examples, noting the shapes found and the values read as text."""

    def __init__(self, fields: dict | None, fields_fallback: bool, require_answer: bool) -> None:
        own = Shape(f"--fields {fields['instruction']}/{fields['response']}", fields["instruction"],
                    fields["response"], fields["input"]) if fields else None
        if own is None:
            self.shapes = FLAT_SHAPES
        else:
            self.shapes = (*FLAT_SHAPES, own) if fields_fallback else (own,)
        self.require_answer = require_answer
        self.found: Counter[str] = Counter()
        self.as_text: list[tuple[str, str]] = []  # (where and field, text) of each number/boolean read as text

    def text(self, value: object, path: str, where: str) -> str:
        """A text field's value; a JSON number or boolean becomes its text (counted), anything else fails."""
        if isinstance(value, bool):
            value = _JsonNumber("true" if value else "false")  # as JSON writes it, not Python's "True"
        if isinstance(value, _JsonNumber):
            self.as_text.append((f"{where} {path}", str(value)))
            return str(value)
        if isinstance(value, str):
            return value
        raise GptminiError(f"{where}: field {path} must be text, found {type(value).__name__} {str(value)[:40]!r}")

    def message_list(self, items: object, path: str, where: str, role_key: str = "role",
                     content_key: str = "content", roles: dict | None = None) -> list[dict]:
        """Validated {"role", "content"} messages; `roles` maps another naming (ShareGPT's) to ours."""
        roles = roles or {r: r for r in ROLES}
        if not isinstance(items, list) or not items:
            raise GptminiError(f"{where}: {path!r} must be a non-empty list of {{{role_key}, {content_key}}}")
        out = []
        for i, m in enumerate(items):
            role = content = None
            if isinstance(m, dict):
                role, content = (field_key(checked_names(m, where), key) for key in (role_key, content_key))
            if role is None or not isinstance(m[role], str) or m[role] not in roles or content is None:
                raise GptminiError(f"{where}: {path}[{i}] must be {{{role_key!r}: one of {sorted(roles)}, "
                                   f"{content_key!r}: text}}")
            out.append({"role": roles[m[role]], "content": self.text(m[content], f"{path}[{i}].{content}", where)})
        return out

    def checked(self, messages: list[dict], where: str) -> list[dict]:
        if self.require_answer and not any(m["role"] == "assistant" for m in messages):
            raise GptminiError(f"{where}: conversation has no assistant message to learn from")
        return messages

    def flat_shape(self, record: dict) -> Shape | None:
        """The first shape with both keys, its keys as the record writes them; without answers required, else
        the first with its prompt key."""
        shapes = [written(shape, record) for shape in self.shapes]
        for shape in shapes:
            if shape.prompt in record and shape.answer in record:
                return shape
        return None if self.require_answer else next((s for s in shapes if s.prompt in record), None)

    def value_of(self, record: dict, key: str, where: str, required: bool = True) -> str:
        value = record.get(key)
        if value is None:
            if not required:
                return ""
            raise GptminiError(f"{where}: field {key!r} has no value (null, or a CSV row with fewer values than "
                               "the header has columns)")
        text = self.text(value, repr(key), where)
        if required and not text.strip():
            raise EmptyField(f"{where}: field {key!r} is empty")
        return text

    def conversational(self, record: dict, shape: Shape, where: str) -> list[dict]:
        """TRL's conversational prompt/completion: both lists of messages."""
        messages = self.message_list(record[shape.prompt], shape.prompt, where)
        if record.get(shape.answer) is not None or self.require_answer:
            messages += self.message_list(record.get(shape.answer), shape.answer, where)
        return self.checked(messages, where)

    def flat(self, record: dict, shape: Shape, where: str) -> list[dict]:
        user = {"role": "user", "content": self.value_of(record, shape.prompt, where)}
        if shape.input and (extra := self.value_of(record, shape.input, where, required=False)).strip():
            user["input"] = extra  # kept as written: only the test for blankness strips
        if not self.require_answer and record.get(shape.answer) is None:
            return [user]
        return [user, {"role": "assistant", "content": self.value_of(record, shape.answer, where)}]

    def messages(self, record: dict, where: str) -> tuple[str, list[dict]]:
        """(shape name, conversation) of one record."""
        if (key := field_key(record, "messages")) is not None:
            return "messages", self.checked(self.message_list(record[key], key, where), where)
        if (key := field_key(record, "conversations")) is not None:
            turns = self.message_list(record[key], key, where, "from", "value", SHAREGPT_ROLES)
            return "sharegpt", self.checked(turns, where)
        shape = self.flat_shape(record)
        if shape is None:
            raise self.unrecognised(record, where)
        if name_form(shape.prompt) == "prompt" and isinstance(record[shape.prompt], list):
            return "prompt/completion (conversational)", self.conversational(record, shape, where)
        return shape.name, self.flat(record, shape, where)

    def example(self, record: object, where: str) -> Example:
        if not isinstance(record, dict):
            raise GptminiError(f"{where}: expected a JSON object, found {type(record).__name__}")
        name, messages = self.messages(checked_names(record, where), where)
        self.found[name] += 1
        return Example(messages, where)

    def unrecognised(self, record: dict, where: str) -> GptminiError:
        keys = ", ".join(map(repr, record)) or "no fields"
        if len(self.shapes) == 1:  # --fields named the columns: say which one is missing
            missing = next(k for k in (self.shapes[0].prompt, self.shapes[0].answer) if field_key(record, k) is None)
            return GptminiError(f"{where}: record lacks field {missing!r} (it has: {keys}); check --fields")
        return GptminiError(f"{where}: record has {keys}, which fits no recognised shape ({RECOGNISED}); "
                            f"name its columns with {FIELDS_HINT}")


def written(shape: Shape, record: dict) -> Shape:
    """`shape` with each of its keys as `record` writes it (field_key), where the record has it."""
    def key(name: str | None) -> str | None:
        return name and (field_key(record, name) or name)

    return Shape(shape.name, key(shape.prompt), key(shape.answer), key(shape.input))


@dataclass
class Records:
    examples: list[Example]
    skipped: list[str]  # one "file:line: reason" per record left out
    shapes: Counter = field(default_factory=Counter)  # shape name -> records read in it
    as_text: list[tuple[str, str]] = field(default_factory=list)  # ("file:line 'field'", text) per number/boolean

    def report(self) -> str:
        """"142 records (shape: pergunta/resposta); 3 numbers read as text (first: ...); skipped ..."."""
        shapes = ", ".join(f"{name} {n}" for name, n in self.shapes.most_common())
        shape_note = f" (shape: {next(iter(self.shapes))})" if len(self.shapes) == 1 else (
            f" (shapes: {shapes})" if self.shapes else "")
        parts = [f"{len(self.examples)} records{shape_note}"]
        if self.as_text:
            noun = "numbers" if all(text not in ("true", "false") for _, text in self.as_text) else "numbers/booleans"
            where, text = self.as_text[0]
            parts.append(f"{len(self.as_text)} {noun} read as text (first: {where} = {text})")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} with an empty field (first: {self.skipped[0]})")
        return "; ".join(parts)


def read_examples(path: str | Path, fields: dict | str | None = None, require_answer: bool = True,
                  encoding: str | None = None, fields_fallback: bool = False) -> Records:
    """All records of `path`; blank instructions/responses are skipped and listed, anything else wrong fails.

    fields: column names ("instruction=pergunta,response=resposta" or parse_fields' dict) that replace
    the flat shapes, or, with fields_fallback, are tried only for records that fit none of them.
    require_answer=False (eval, generate --file) keeps a record without an answer as a prompt-only
    conversation, for the caller to count; blank answers are still skipped.
    encoding: the file's text encoding (default UTF-8, BOM or not).
    """
    path = Path(path)
    mapping = fields if isinstance(fields, dict) or fields is None else parse_fields(fields)
    converter = Converter(mapping, fields_fallback, require_answer)
    examples, skipped = [], []
    for where, record in raw_records(path, encoding):
        try:
            examples.append(converter.example(record, where))
        except EmptyField as exc:
            skipped.append(str(exc))
    if not examples:
        raise GptminiError(f"{path}: holds no usable records" + (f" ({skipped[0]})" if skipped else ""))
    return Records(examples, skipped, converter.found, converter.as_text)
