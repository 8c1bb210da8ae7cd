import random

import pytest

from gptmini.data import variants
from gptmini.data.records import Example, read_examples
from gptmini.sft import DEFAULT_INSTRUCTIONS


def record(question: str, answer: str, where: str = "f:1") -> Example:
    return Example([{"role": "user", "content": question}, {"role": "assistant", "content": answer}], where)


FAQ = [record("Qual é o horário de funcionamento?", "Abrimos às 7h.", "faq:1"),
       record("Vocês entregam em casa?", "Sim, entregamos.", "faq:2"),
       record("O que é pão de fermentação natural?", "É um pão feito com levain.", "faq:3")]


def test_variants_never_touch_the_answers_and_keep_the_record_named():
    made = variants.augment(FAQ, 6, seed=0)
    assert len(made) == 18
    for v in made:
        source = next(e for e in FAQ if v.where.startswith(e.where + " "))
        assert v.messages[-1] == source.messages[-1]  # the answer, byte for byte
        assert v.messages[0]["content"] != source.messages[0]["content"]


def test_variants_are_seeded_and_per_record():
    assert [v.messages for v in variants.augment(FAQ, 4, 3)] == [v.messages for v in variants.augment(FAQ, 4, 3)]
    assert [v.messages for v in variants.augment(FAQ, 4, 3)] != [v.messages for v in variants.augment(FAQ, 4, 4)]
    alone = variants.augment(FAQ[:1], 4, 3)  # a record's variants do not depend on the records after it
    assert [v.messages for v in alone] == [v.messages for v in variants.augment(FAQ, 4, 3)[:4]]


def test_forms_people_type_appear():
    made = [v.messages[0]["content"] for v in variants.augment(FAQ * 1, 40, seed=1)]
    assert any(q == q.lower() for q in made)
    assert any("vcs" in q or "voces" in q for q in made)  # chat short forms
    assert any("horario" in q for q in made)  # accents dropped
    assert any(not q.endswith("?") for q in made)  # punctuation dropped
    frames = {"explique", "defina", "me fale sobre", "é o quê"}
    assert any(any(f in q.lower() for f in frames) for q in made)  # "O que é X?" asked other ways


@pytest.mark.parametrize("question, topic", [("O que é Machine Learning?", "Machine Learning"),
                                             ("Explique o que é um modelo de linguagem", "modelo de linguagem"),
                                             ("Defina Inteligencia Artificial", "Inteligencia Artificial"),
                                             ("Me fale sobre atenção", "atenção"), ("Tem estacionamento?", None)])
def test_topic_of_a_question(question, topic):
    assert variants.topic(question) == topic


def test_a_variant_equal_to_another_records_question_is_dropped():
    rng = random.Random(0)
    taken = {variants.normalise("o que e pao de fermentacao natural")}
    for _ in range(20):
        assert all(variants.normalise(q) not in taken
                   for q in variants.question_variants("O que é pão de fermentação natural?", 5, rng, taken))


def test_typo_changes_one_word_by_one_slip():
    rng = random.Random(2)
    for _ in range(50):
        out = variants.typo("estacionamento gratuito", rng)
        changed = [(a, b) for a, b in zip("estacionamento gratuito".split(), out.split()) if a != b]
        assert len(changed) <= 1 and all(abs(len(a) - len(b)) <= 1 for a, b in changed)


def test_embedded_set_variants_keep_every_answer():
    examples = read_examples(DEFAULT_INSTRUCTIONS).examples[:50]
    made = variants.augment(examples, 2, 0)
    answers = {e.messages[-1]["content"] for e in examples}
    assert len(made) >= 95 and {v.messages[-1]["content"] for v in made} <= answers


@pytest.mark.parametrize("records, count", [(4, 32), (25, 32), (50, 16), (100, 8), (142, 8), (300, 4), (882, 2), (5000, 1)])
def test_auto_gives_a_small_faq_more_forms_and_a_large_set_fewer(records, count):
    """About 800 forms an epoch for a FAQ under 100 questions (at most 32 a record), 8 a record up to
    150 records, then about 1,200 forms an epoch, never fewer than one a record."""
    assert variants.variant_count("auto", records) == count
    assert variants.variant_count(3, records) == 3
