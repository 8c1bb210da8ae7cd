"""`gptmini eval --judge`: a bigger model scores each answer 0-100 against the reference.

String overlap (exact match, F1, chrF) calls a right answer in other words wrong; a judge reads it.
As in rasbt/LLMs-from-scratch's chapter 7, any OpenAI-compatible endpoint (Ollama, llama.cpp, vLLM, a
hosted API) is asked, at temperature 0, for one integer. The reply is parsed strictly: the number alone
(optionally "Nota: 85", "85/100", a final "." or markdown bold), 0 to 100; anything else is counted as
unparsed, never guessed from a number somewhere in a sentence. Replies are cached by a hash of the judge's
model and the whole prompt, in a JSONL file beside the report, appended as they come: a rerun (or a run
after an interruption) asks only about answers that changed.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from tqdm import tqdm

from .openai_client import ChatClient

JUDGE_PROMPT = """\
Você é um avaliador rigoroso. Compare a resposta do modelo com a resposta de referência, que é a correta.

Pergunta: {instruction}

Resposta de referência: {reference}

Resposta do modelo: {answer}

Dê uma nota de 0 a 100 à resposta do modelo: 100 se diz o mesmo que a referência (mesmo com outras \
palavras), 0 se está errada, vazia ou não responde à pergunta. Responda apenas com o número inteiro."""
CACHE_FILE = "judge_cache.jsonl"
SCORE = re.compile(r"(?:nota\s*:?\s*)?(\d{1,3})(?:\s*/\s*100)?\.?", re.IGNORECASE)
BINS = [(lo, lo + 9) for lo in range(0, 90, 10)] + [(90, 100)]


def parse_score(reply: str) -> int | None:
    """The score in a reply that is the number alone (see the module's docstring), else None."""
    match = SCORE.fullmatch(reply.strip().strip("*").strip())
    return int(match.group(1)) if match and int(match.group(1)) <= 100 else None


def distribution(scores: list[int | None]) -> dict[str, int]:
    """Parsed scores per band of ten ("0-9" ... "90-100")."""
    return {f"{lo}-{hi}": sum(s is not None and lo <= s <= hi for s in scores) for lo, hi in BINS}


def judge_metrics(scores: list[int | None]) -> dict:
    """judge_mean (over the parsed scores; NaN when none parsed) and judge_unparsed (a count)."""
    parsed = [s for s in scores if s is not None]
    return {"judge_mean": sum(parsed) / len(parsed) if parsed else math.nan, "judge_unparsed": len(scores) - len(parsed)}


class Judge:
    """Scores answers through `client`; `cache` is the JSONL file of earlier replies (created when missing)."""

    def __init__(self, client: ChatClient, cache: str | Path) -> None:
        self.client, self.cache = client, Path(cache)
        self.replies: dict[str, str] = {}
        if self.cache.is_file():
            for line in self.cache.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.replies[entry["key"]] = entry["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):  # a line cut off by a kill: asked again
                    continue
        self.asked = 0  # requests sent by this judge (not answered from the cache)

    def key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.client.model, prompt], ensure_ascii=False).encode()).hexdigest()

    def reply(self, prompt: str) -> str:
        key = self.key(prompt)
        if key not in self.replies:
            self.replies[key] = self.client.chat([{"role": "user", "content": prompt}], temperature=0.0)
            self.asked += 1
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            with self.cache.open("a", encoding="utf-8") as f:  # at once: an interrupted run keeps what it paid for
                f.write(json.dumps({"key": key, "model": self.client.model, "reply": self.replies[key]},
                                   ensure_ascii=False) + "\n")
        return self.replies[key]

    def score(self, instructions: list[str], references: list[str], answers: list[str], name: str = "",
              show_progress: bool = True) -> tuple[list[int | None], list[str]]:
        """A score (None: unparsed) and the judge's reply for each answer."""
        replies = [self.reply(JUDGE_PROMPT.format(instruction=q, reference=r, answer=a))
                   for q, r, a in tqdm(list(zip(instructions, references, answers)), unit="answer",
                                       desc=f"judging ({Path(name).name})", leave=False, disable=not show_progress)]
        return [parse_score(r) for r in replies], replies
