"""`gptmini augment`: rewordings of each question from a teacher model, the answers untouched.

A small model that memorises token strings answers a question only in the wordings it was trained on;
a user's FAQ has one wording per question. A teacher (any OpenAI-compatible chat endpoint) is asked for N
Portuguese rewordings of each question. Kept are only those that, compared loosely (case, accents,
punctuation and spaces ignored), equal no question of any record, nor the question itself, nor one kept
before: a rewording equal to another record's question would teach that question a second answer.
Empty ones, missing ones and ones that are not questions (an answer, a preamble) are dropped too; every
drop is counted.

The output (JSONL) holds each record, with the count of its "rewordings", and then those rewordings, each
with the record's answer; every line has its "source" ("FILE:LINE" of the record). A record's lines are
written at once and flushed, so a run that stops keeps everything answered so far, and `resume=True` asks
only the records the file lacks.
"""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .data.records import Example, read_examples
from .errors import GptminiError
from .openai_client import ChatClient

REWORD_PROMPT = """\
Reescreva a pergunta abaixo de {n} maneiras diferentes, como clientes a digitariam: com outras palavras, \
mais curta ou mais longa, formal ou informal. Cada versão deve pedir exatamente a mesma coisa, para que a \
mesma resposta sirva. Escreva só as {n} perguntas, uma por linha, sem numeração e sem respondê-las.

Pergunta: {question}
Resposta (não a repita; é só para você saber do que se trata): {answer}"""
TEACHER_TEMPERATURE = 0.8  # variety is the point; 0 would give the teacher's single likeliest wording
LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+\s*[.)-])\s*")
DROPS = ("same", "other_question", "empty", "not_question")


def loose(text: str) -> str:
    """Lower case, accents stripped, punctuation and symbols dropped, spaces collapsed: "Qual é o horário?"
    and "qual e o horario" are the same question."""
    text = unicodedata.normalize("NFKD", text.lower())
    kept = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text if not unicodedata.combining(c))
    return " ".join(kept.split())


def candidates(reply: str) -> list[str]:
    """The teacher's lines, list markers ("1.", "2)", "-") and surrounding quotes removed; blank lines skipped."""
    lines = (LIST_MARKER.sub("", line).strip().strip("\"'“”«»").strip() for line in reply.splitlines())
    return [line for line in lines if line]


def is_question(text: str, original: str) -> bool:
    """Ends with "?" like the original; an original that is an instruction ("Explique X") admits any line but
    a preamble ending with ":" ("Aqui estão as versões:")."""
    text = text.rstrip(" !")  # "Abrem hoje?!" asks too
    return text.endswith("?") if original.rstrip().endswith("?") else not text.endswith(":")


@dataclass
class Augmented:
    """What a run did: records in the data, asked this run, done by an earlier run, rewordings kept, drops by reason."""
    records: int
    asked: int = 0
    resumed: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self, out: Path) -> str:
        reasons = (f"{self.dropped['same']} same as their question or another of its rewordings, "
                   f"{self.dropped['other_question']} same as another record's question, "
                   f"{self.dropped['empty']} empty or missing, {self.dropped['not_question']} not questions")
        before = f" ({self.resumed} done before, in {out})" if self.resumed else ""
        return (f"augment: {self.records} records, {self.asked} asked{before}; {self.kept} rewordings kept, "
                f"{sum(self.dropped.values())} dropped: {reasons}; wrote {out}")


def question_of(messages: list[dict]) -> int:
    """Index of the message to reword: the last user turn (the one the answer answers)."""
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def question(messages: list[dict]) -> str:
    return messages[question_of(messages)]["content"]


def as_record(messages: list[dict], source: str) -> dict:
    """One output line: instruction/response (and input) for a one-turn record, messages otherwise."""
    if [m["role"] for m in messages] == ["user", "assistant"]:
        user, answer = messages
        return {"instruction": user["content"], **({"input": user["input"]} if "input" in user else {}),
                "response": answer["content"], "source": source}
    return {"messages": messages, "source": source}


def reworded(example: Example, text: str) -> dict:
    messages = [dict(m) for m in example.messages]
    messages[question_of(messages)]["content"] = text
    return as_record(messages, example.where)


def sort_out(lines: list[str], original: str, n: int, owner: dict[str, int], index: int) -> tuple[list[str], Counter]:
    """The first n lines worth keeping, and why the others went. `owner` maps each loose question known so far
    (every record's, every kept rewording) to its record's index; kept lines join it."""
    kept, dropped = [], Counter(empty=max(0, n - len(lines)))
    for line in lines:
        key = loose(line)
        reason = ("empty" if not key else "not_question" if not is_question(line, original)
                  else "same" if owner.get(key) == index else "other_question" if key in owner else None)
        if reason is None and len(kept) < n:
            kept.append(line)
            owner[key] = index
        elif reason:
            dropped[reason] += 1
    return kept, dropped


def done_sources(out: Path, wheres: set[str]) -> tuple[set[str], list[dict]]:
    """The records `out` holds whole, and their lines. A record's first line says how many rewordings follow
    it; a record cut short by a kill (and a last line cut mid-write) is removed from the file, to be asked again."""
    text = out.read_text(encoding="utf-8")
    rows = []
    for n, line in enumerate(text.split("\n")[:-1], 1):  # [:-1]: the text after the last line feed is cut off
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise GptminiError(f"{out}:{n}: not a JSON line, so not augment's output: remove it, or resume "
                               "into another --out") from None
    stray = [r for r in rows if not isinstance(r, dict) or r.get("source") not in wheres]
    if stray:
        source = stray[0].get("source") if isinstance(stray[0], dict) else None
        raise GptminiError(f"{out} holds records of {source or 'no source'}, which is not a record of this --data; "
                           "resume with the same --data as before, or choose another --out")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["source"], []).append(row)
    whole = [g for g in groups.values() if len(g) == g[0].get("rewordings", -1) + 1]
    if len(whole) < len(groups) or not text.endswith("\n") and text:
        rows = [row for g in whole for row in g]
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {g[0]["source"] for g in whole}, rows


def augment(data: str | Path, out: str | Path, client: ChatClient, n: int = 5, fields: dict | str | None = None,
            encoding: str | None = None, resume: bool = False, show_progress: bool = True) -> Augmented:
    """Asks `client` for `n` rewordings of every record's question in `data`; writes them to `out` (JSONL)."""
    records, out = read_examples(data, fields, encoding=encoding), Path(out)
    if records.skipped:
        print(f"note: {data}: {records.report()}", file=sys.stderr)
    examples = records.examples
    owner = {}
    for i, example in enumerate(examples):
        owner.setdefault(loose(question(example.messages)), i)
    done, rows = set(), []
    if out.exists() and out.stat().st_size and not resume:
        raise GptminiError(f"{out} exists: --resume carries on from it, or remove it to start again")
    if out.exists() and resume:
        done, rows = done_sources(out, {e.where for e in examples})
    index = {e.where: i for i, e in enumerate(examples)}
    for row in rows:  # rewordings written before are taken, exactly as if asked in this run
        owner.setdefault(loose(row["instruction"] if "instruction" in row else question(row["messages"])),
                         index[row["source"]])
    result = Augmented(len(examples), resumed=len(done))
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [(i, e) for i, e in enumerate(examples) if e.where not in done]
    with out.open("a", encoding="utf-8") as f:
        for i, example in tqdm(todo, desc="rewording", unit="record", disable=not show_progress):
            asked = question(example.messages)
            prompt = REWORD_PROMPT.format(n=n, question=asked, answer=example.messages[-1]["content"])
            reply = client.chat([{"role": "user", "content": prompt}], temperature=TEACHER_TEMPERATURE)
            kept, dropped = sort_out(candidates(reply), asked, n, owner, i)
            lines = [{**as_record(example.messages, example.where), "rewordings": len(kept)},
                     *(reworded(example, text) for text in kept)]
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
            f.flush()  # a record's lines together: a run that stops keeps every record it finished
            result.asked, result.kept = result.asked + 1, result.kept + len(kept)
            result.dropped.update(dropped)
    return result
