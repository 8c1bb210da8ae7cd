"""The embedded instruction data: enough phrasings per answer, and a held-out set never trained on."""
import json
import unicodedata
from collections import defaultdict

import pytest

from gptmini.data.corpus import ASSETS

TRAIN = ASSETS / "instructions.jsonl"
HELD_OUT = ASSETS / "instructions_eval.jsonl"
MIN_PHRASINGS = 3


def normalise(text: str) -> str:
    """Lower case, accents stripped (NFKD), punctuation and symbols removed, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text
                   if not unicodedata.combining(c) and not unicodedata.category(c).startswith(("P", "S")))
    return " ".join(text.split())


def load(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def train():
    return load(TRAIN)


@pytest.fixture(scope="module")
def held_out():
    return load(HELD_OUT)


def test_normalise():
    assert normalise("  O que é   Pré-treinamento?! ") == "o que e pretreinamento"
    assert normalise("Quanto dá 3 × 4?") == normalise("quanto da 3 4")


@pytest.mark.parametrize("path", [TRAIN, HELD_OUT], ids=lambda p: p.name)
def test_every_line_is_a_record_with_text(path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    for n, line in enumerate(text.splitlines(), 1):
        record = json.loads(line)
        assert isinstance(record, dict), f"{path.name}:{n}"
        for field in ("instruction", "response"):
            assert isinstance(record.get(field), str) and record[field].strip(), f"{path.name}:{n}: empty {field}"


def test_every_response_has_several_phrasings(train):
    phrasings = defaultdict(set)
    for record in train:
        phrasings[record["response"]].add(normalise(record["instruction"]))
    few = {response: sorted(p) for response, p in phrasings.items() if len(p) < MIN_PHRASINGS}
    assert not few, f"responses with fewer than {MIN_PHRASINGS} distinct instructions: {few}"


def test_an_instruction_asks_for_one_response_only(train):
    answers = defaultdict(set)
    for record in train:
        answers[normalise(record["instruction"])].add(record["response"])
    assert not {i: a for i, a in answers.items() if len(a) > 1}


def test_held_out_instructions_are_never_trained_on(train, held_out):
    seen = {normalise(record["instruction"]) for record in train}
    leaked = [record["instruction"] for record in held_out if normalise(record["instruction"]) in seen]
    assert not leaked, f"held-out instructions found in {TRAIN.name}: {leaked}"


def test_held_out_responses_are_trained_on(train, held_out):
    responses = {record["response"] for record in train}
    missing = [record["response"] for record in held_out if record["response"] not in responses]
    assert not missing, f"held-out responses absent from {TRAIN.name}: {missing}"
