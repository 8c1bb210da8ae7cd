import pytest

from gptmini import GptminiError, Tokenizer
from gptmini.tokenizer import EOT

from .conftest import ASCII_TEXT, PT_TEXT

ACCENTS = "Atenção, não é ação?"


def test_char_round_trip_with_accents(char_tokenizer):
    ids = char_tokenizer.encode(ACCENTS)
    assert len(ids) == len(ACCENTS)
    assert char_tokenizer.decode(ids) == ACCENTS


def test_char_unknown_characters_map_to_unk_and_are_counted(char_tokenizer):
    ids = char_tokenizer.encode("ação€✓")
    assert ids[-2:] == [char_tokenizer.unk_id] * 2  # kept as <|unk|>, never dropped
    assert char_tokenizer.count_unknown("ação€✓") == 2
    assert len(ids) == 6


def test_special_token_text_in_user_input_stays_text(char_tokenizer):
    ids = char_tokenizer.encode(f"fim{EOT}")
    assert char_tokenizer.eot_id not in ids
    assert len(ids) == 3 + len(EOT)


@pytest.mark.parametrize("text", [ACCENTS, PT_TEXT, "emoji 🤖 e 中文 e \t tabs\n\nlinhas", "  espaços  "])
def test_bpe_round_trip_is_lossless(text):
    tok = Tokenizer.train_bpe([PT_TEXT] * 20, vocab_size=300)
    assert tok.decode(tok.encode(text)) == text
    assert tok.count_unknown(text) == 0


def test_bpe_learns_merges_and_keeps_special_tokens_first():
    tok = Tokenizer.train_bpe([PT_TEXT] * 50, vocab_size=320)
    assert 259 < tok.vocab_size <= 320
    assert (tok.eot_id, tok.pad_id, tok.unk_id) == (0, 1, 2)
    assert len(tok.encode("O modelo de linguagem")) < len("O modelo de linguagem".encode())


def test_bpe_vocab_too_small_is_a_clear_error():
    with pytest.raises(GptminiError, match="at least 259"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_round_trip(tmp_path, kind):
    tok = Tokenizer.train_char([PT_TEXT]) if kind == "char" else Tokenizer.train_bpe([PT_TEXT] * 10, 300)
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.kind == kind and again.vocab() == tok.vocab()
    assert again.encode(ACCENTS) == tok.encode(ACCENTS)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(GptminiError, match="tokenizer file not found"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(GptminiError, match=f"{bad}: not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_stream_decoder_waits_for_complete_utf8():
    tok = Tokenizer.train_bpe(["abc"], vocab_size=260)
    dec = tok.stream_decoder()
    text = "".join(dec.push(i) for i in tok.encode("não 🤖"))
    assert text == "não 🤖"


def test_fold_gives_a_char_vocabulary_plain_forms_it_has_and_names_what_it_cannot_read():
    tok = Tokenizer.train_char([ASCII_TEXT])  # no accents, no curly quotes
    text, folding = tok.fold("O que é atenção? “ok” — ﬁm… 5€ a\u0301")  # the last accent typed apart (NFD)
    assert text == 'O que e atencao? "ok" - fim... 5€ a'
    assert folding.note() == ("9 characters folded to the vocabulary: é→e, ç→c, ã→a, “→\", ”→\", —→-, ﬁ→fi, …→..., "
                              "'\\u0301'→''; 1 unreadable: '€'")
    assert tok.count_unknown(text) == 1  # only what has no plain form reaches the model as <|unk|>
    assert tok.fold("5€")[1].note() == "1 character unreadable by the vocabulary (read as <|unk|>): '€'"
    assert not tok.fold("Tudo bem?")[1]
    with_accents = Tokenizer.train_char(["a\u0301 e"])  # a vocabulary that has the accent as a mark: kept exactly
    assert with_accents.fold("á")[0] == "a\u0301"
    bpe = Tokenizer.train_bpe([ASCII_TEXT], vocab_size=260)  # reads every text: untouched
    assert bpe.fold("atenção “€”") == ("atenção “€”", bpe.fold("")[1]) and not bpe.fold("atenção")[1]
