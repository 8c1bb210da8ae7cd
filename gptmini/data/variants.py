"""Questions in the forms people type them: the variety a one-wording FAQ lacks, made offline.

A user's FAQ holds one wording per question; customers type `que horas voces abrem?`, drop accents,
capitals and punctuation, use chat short forms, ask "Explique X" where the FAQ says "O que é X?",
and make typos. A small model trained on the one wording learns its token string; trained also on
these forms it learns which words of a question matter. Answers are never touched.

Each variant draws a few transformations from `TRANSFORMS` with a generator seeded by the run's
seed and the record's position, so a run is reproducible and a record's variants do not depend on
the others. The word lists are written for this package (MIT, like the rest of it).
"""
from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from ..tokenizer import Tokenizer
from .records import Example

# Brazilian chat short forms; each maps a word (lower case, accents kept) to the forms people type.
SHORT_FORMS = {
    "você": ["vc", "voce", "cê"], "vocês": ["vcs", "voces"], "para": ["pra", "p/"], "que": ["q"],
    "também": ["tb", "tbm"], "porque": ["pq"], "por que": ["pq"], "não": ["nao", "n"], "está": ["ta", "tá"],
    "estou": ["to", "tô"], "beleza": ["blz"], "obrigado": ["obg", "vlw"], "obrigada": ["obg"],
    "por favor": ["pfv", "pf", "por fa"], "quando": ["qdo", "qnd"], "quanto": ["qto"], "quantos": ["qts"],
    "qual": ["ql"], "mesmo": ["msm"], "muito": ["mto", "mt"], "comigo": ["cmg"], "hoje": ["hj"],
    "tudo": ["td"], "de": ["d"], "o que": ["oq", "o q"], "sábado": ["sabado", "sab"], "domingo": ["dom"],
    "gente": ["gnt"], "aqui": ["aki"], "isso": ["iss"], "fim de semana": ["fds"], "mais": ["+"],
}
# Words a question still means without (articles, prepositions, auxiliaries).
FUNCTION_WORDS = frozenset(
    "a o as os um uma uns umas de do da dos das em no na nos nas ao aos à às por pelo pela pelos pelas "
    "com para pra e ou que se é são me te lhe vocês você eu nós seu sua seus suas meu minha isso este esta "
    "esse essa isto aquilo qual quais como onde quando quanto sobre".split())
# Question frames that ask the same thing about a topic X ("O que é X?" / "Explique X" / ...).
FRAME_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"^o que (?:é|e|são|sao|significa)(?: (?:o|a|os|as|um|uma))? (?P<x>.+?)\s*\??$",
    r"^(?:me )?(?:explique|explica|defina|define|descreva|descreve)(?: o que (?:é|e|são))?(?: (?:o|a|os|as|um|uma))? (?P<x>.+?)\s*[.?!]?$",
    r"^(?:me )?(?:fale|fala|conte|conta) (?:sobre|de|do|da) (?P<x>.+?)\s*[.?!]?$",
    r"^(?P<x>.+?) (?:é|e|são) o qu[eê]\s*\??$",
    r"^o que (?:você|vc) sabe sobre (?P<x>.+?)\s*\??$",
)]
FRAMES = ["O que é {x}?", "Explique {x}", "{x} é o quê?", "Me fale sobre {x}", "Defina {x}", "O que significa {x}?",
          "me explica {x}", "o que vc sabe sobre {x}?", "{x}?", "Explica {x} pra mim"]
OPENERS = ["oi, ", "olá, ", "bom dia, ", "uma dúvida: ", "me diz uma coisa, ", "oi! ", "por favor, ", "ei, "]
CLOSERS = [" por favor", " pfv", "?", "??", " obrigado", "?!"]
KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
WORD = re.compile(r"\w+|[^\w\s]+|\s+")


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def normalise(text: str) -> str:
    """A question's identity for comparisons: no case, accents, punctuation or extra spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", strip_accents(text).lower()).split())


def topic(question: str) -> str | None:
    """X of a question that asks about a topic ("O que é X?", "Explique X", ...), or None."""
    for pattern in FRAME_PATTERNS:
        match = pattern.match(question.strip())
        if match and len(match["x"].split()) <= 8:
            return match["x"]
    return None


def reframe(question: str, rng: random.Random) -> str:
    x = topic(question)
    if x is None:  # no frame to swap: people still greet, ask politely, or add a second question mark
        return rng.choice(OPENERS) + lower_first(question) if rng.random() < 0.6 else question.rstrip("?!. ") + rng.choice(CLOSERS)
    return rng.choice([f for f in FRAMES if f.format(x=x).lower() != question.lower()]).format(x=x)


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


SHORT_FORM = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, sorted(SHORT_FORMS, key=len, reverse=True)))
                        + r")(?!\w)", re.IGNORECASE)  # longest first: "o que" before "que"


def short_forms(question: str, rng: random.Random) -> str:
    def shorten(match: re.Match) -> str:
        return rng.choice(SHORT_FORMS[match[0].lower()]) if rng.random() < 0.8 else match[0]
    return SHORT_FORM.sub(shorten, question)


def drop_function_words(question: str, rng: random.Random) -> str:
    words = question.split()
    kept = [w for w in words if normalise(w) not in FUNCTION_WORDS or rng.random() < 0.4]
    return " ".join(kept) if kept else question


def typo(question: str, rng: random.Random) -> str:
    """One slip of the fingers in a word of four letters or more: a swap, a dropped, doubled or near key."""
    pieces = WORD.findall(question)
    candidates = [i for i, p in enumerate(pieces) if p.isalpha() and len(p) >= 4]
    if not candidates:
        return question
    i = rng.choice(candidates)
    word, j = pieces[i], rng.randrange(1, len(pieces[i]) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        word = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    elif kind == 1:
        word = word[:j] + word[j + 1:]
    elif kind == 2:
        word = word[:j] + word[j] + word[j:]
    else:
        word = word[:j] + rng.choice(KEYBOARD) + word[j + 1:]
    pieces[i] = word
    return "".join(pieces)


def lower_case(question: str, rng: random.Random) -> str:
    return question.lower()


def no_accents(question: str, rng: random.Random) -> str:
    return strip_accents(question)


def punctuation(question: str, rng: random.Random) -> str:
    bare = re.sub(r"[^\w\s]", "", question).strip()
    return rng.choice([bare, bare + "?", bare + "??", bare + " ?", bare + "?!"])


@dataclass(frozen=True)
class Transform:
    name: str
    apply: Callable[[str, random.Random], str]
    probability: float  # of being drawn for one variant


TRANSFORMS = (
    Transform("question form", reframe, 0.5),
    Transform("short forms", short_forms, 0.5),
    Transform("function words dropped", drop_function_words, 0.3),
    Transform("typo", typo, 0.3),
    Transform("lower case", lower_case, 0.6),
    Transform("accents dropped", no_accents, 0.5),
    Transform("punctuation", punctuation, 0.5),
)
NAMES = tuple(t.name for t in TRANSFORMS)


def variant(question: str, rng: random.Random, transforms: tuple[Transform, ...] = TRANSFORMS) -> str:
    """One form of `question`: each transformation drawn with its probability, at least one applied."""
    chosen = [t for t in transforms if rng.random() < t.probability] or [rng.choice(transforms)]
    for t in chosen:  # in TRANSFORMS' order: reframing first, since it parses the question as written
        question = t.apply(question, rng)
    return " ".join(question.split())


def question_variants(question: str, n: int, rng: random.Random, taken: set[str]) -> list[str]:
    """Up to n distinct forms of `question`, none equal (normalised) to a question in `taken`: another
    record's question would then mean two answers."""
    out, seen = [], {question}
    for _ in range(4 * n):
        if len(out) == n:
            break
        text = variant(question, rng)
        if text and text not in seen and normalise(text) not in taken:
            seen.add(text)
            out.append(text)
    return out


def variant_count(spec: int | str, records: int) -> int:
    """--augment's number of variants per record. "auto": 8 for a FAQ (one wording per question is where
    the variety is missing), fewer as the records themselves bring variety and each variant costs a
    training sequence (about 1,200 question forms an epoch, at least one variant per record), and more for
    a FAQ under 100 questions, so that an epoch still holds about 800 forms (at most 32 a record): a
    25-question FAQ trained 8 forms a record over 12 epochs is 72 steps, too few to tell its questions
    apart behind a conversation (README, "Seu próprio FAQ": turn 3 at 54-62 % against 64-68 % alone)."""
    if spec != "auto":
        return int(spec)
    records = max(records, 1)
    return max(min(8, math.ceil(1200 / records)), min(32, math.ceil(800 / records)))  # both at least 1


def readable_forms(examples: list[Example], n: int, seed: int, tokenizer: Tokenizer) -> list[Example]:
    """`augment`'s variants, less those with a character the vocabulary lacks (a char tokenizer lacks what
    the data lacked): an unreadable form would teach <|unk|>. None for n = 0."""
    forms = augment(examples, n, seed) if n else []
    return [f for f in forms if not any(tokenizer.count_unknown(m["content"]) for m in f.messages)]


def augment(examples: list[Example], n: int, seed: int) -> list[Example]:
    """`n` variants of each example's user turns (the answers as they are): the variants only, in
    record order; a record's variants depend only on the seed and its position."""
    questions = {}
    for e in examples:
        for m in e.messages:
            if m["role"] == "user":
                questions.setdefault(normalise(m["content"]), set()).add(e.messages[-1]["content"])
    variants = []
    for index, example in enumerate(examples):
        rng = random.Random(f"{seed}:{index}")
        users = [i for i, m in enumerate(example.messages) if m["role"] == "user"]
        others = {q for q, answers in questions.items() if answers != {example.messages[-1]["content"]}}
        forms = {i: question_variants(example.messages[i]["content"], n, rng, others) for i in users}
        for k in range(min(len(f) for f in forms.values()) if forms else 0):
            messages = [dict(m, content=forms[i][k]) if i in forms else m for i, m in enumerate(example.messages)]
            variants.append(Example(messages, f"{example.where} (variant {k + 1})"))
    return variants
