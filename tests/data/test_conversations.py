import random

from gptmini import Tokenizer, get_template
from gptmini.data import conversations
from gptmini.data.records import Example
from gptmini.model import IGNORE_INDEX


def record(i: int) -> Example:
    return Example([{"role": "user", "content": f"pergunta {i}?"}, {"role": "assistant", "content": f"resposta {i}."}],
                   f"f:{i}")


def test_chain_puts_every_example_in_one_conversation_that_fits():
    lengths = [random.Random(i).randint(10, 60) for i in range(200)]
    groups = conversations.chain(lengths, 4, 100, random.Random(0))
    assert sorted(i for g in groups for i in g) == list(range(200))
    assert all(1 <= len(g) <= 4 for g in groups)
    assert all(sum(lengths[i] for i in g) <= 100 for g in groups if len(g) > 1)
    assert {len(g) for g in groups} >= {2, 3, 4}
    for group, following in zip(groups, groups[1:]):  # alone only where the next example did not fit
        assert len(group) > 1 or lengths[group[0]] + lengths[following[0]] > 100
    assert groups != conversations.chain(lengths, 4, 100, random.Random(1))


def test_a_conversation_trains_every_answer_and_is_no_longer_than_its_turns():
    tok = Tokenizer.train_char(["pergunta resposta 0123456789 ?.#:Comandos\n"])
    template = get_template("comando")
    turns = [record(i) for i in range(3)]
    ids, labels = template.encode(tok, [m for t in turns for m in t.messages])
    assert len(ids) <= sum(len(template.encode(tok, t.messages)[0]) for t in turns)
    trained = tok.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained == "resposta 0.resposta 1.resposta 2."  # every assistant turn, each closed by end-of-text
    assert [label for label in labels if label == tok.eot_id] == [tok.eot_id] * 3


def test_only_plain_question_answer_records_are_chained():
    system = Example([{"role": "system", "content": "Seja breve."}, *record(1).messages], "f:1")
    assert conversations.single_turn(record(0)) and not conversations.single_turn(system)
