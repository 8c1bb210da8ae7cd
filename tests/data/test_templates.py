import pytest

from gptmini import GptminiError, Tokenizer, get_template
from gptmini.model import IGNORE_INDEX


@pytest.fixture
def bpe():
    return Tokenizer.train_bpe(["### Comando:\nExplique\n\n### Resposta:\nMachine Learning é ótimo."] * 30, vocab_size=300)


def trained_text(tok, ids, labels):
    return tok.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX]), [
        i for i, label in zip(ids, labels) if label != IGNORE_INDEX]


@pytest.mark.parametrize("name", ["comando", "alpaca", "chat"])
def test_trained_positions_are_exactly_the_response_and_eos(bpe, name):
    template = get_template(name)
    messages = [{"role": "user", "content": "Explique ML"}, {"role": "assistant", "content": "Machine Learning é ótimo."}]
    ids, labels = template.encode(bpe, messages)
    text, trained = trained_text(bpe, ids, labels)
    assert text == "Machine Learning é ótimo."
    assert trained == bpe.encode("Machine Learning é ótimo.") + [bpe.eot_id]
    prompt = ids[:len(ids) - len(trained)]
    assert bpe.decode(prompt) == template.prompt_text("Explique ML")
    assert all(label == IGNORE_INDEX for label in labels[:len(prompt)])


def test_seed_template_text_is_the_seeds():
    assert get_template().prompt_text("Oi") == "### Comando:\nOi\n\n### Resposta:\n"
    assert "### Entrada:\nx" in get_template().prompt_text("Oi", "x")


def test_multi_turn_trains_every_assistant_turn_only(bpe):
    messages = [{"role": "system", "content": "Seja breve."}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "um"}, {"role": "user", "content": "b"},
                {"role": "assistant", "content": "dois"}]
    ids, labels = get_template("chat").encode(bpe, messages)
    trained = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert trained == bpe.encode("um") + [bpe.eot_id] + bpe.encode("dois") + [bpe.eot_id]
    assert bpe.decode(ids).startswith("<|system|>\nSeja breve.\n<|user|>\na\n<|assistant|>\num")


def test_custom_template_files(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("Pergunta: {instruction}\nResposta: {response}")
    assert get_template(str(good)).prompt_text("x") == "Pergunta: x\nResposta: "
    bad = tmp_path / "bad.txt"
    bad.write_text("Pergunta: {instruction}\nResposta:")
    with pytest.raises(GptminiError, match="lacks the {response} placeholder"):
        get_template(str(bad))
    with pytest.raises(GptminiError, match="neither a built-in"):
        get_template("nope")
