import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptmini import GptminiError
from gptmini.data.preferences import read_pairs
from gptmini.data.records import parse_fields, read_examples

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "sft"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_every_format_gives_the_same_examples(tmp_path):
    rows = [{"instruction": "Olá", "response": "Oi!"}, {"instruction": "Quanto é 2+2?", "response": "4"}]
    files = [
        write(tmp_path / "a.json", json.dumps(rows, ensure_ascii=False)),
        write(tmp_path / "a.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n"),
        write(tmp_path / "a.csv", 'instruction,response\nOlá,Oi!\n"Quanto é 2+2?",4\n'),
        write(tmp_path / "a.tsv", "instruction\tresponse\nOlá\tOi!\nQuanto é 2+2?\t4\n"),
    ]
    expected = [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}] for r in rows]
    for f in files:
        assert [e.messages for e in read_examples(f).examples] == expected, f


def test_alpaca_input_and_chat_messages(tmp_path):
    f = write(tmp_path / "mix.jsonl", "\n".join([
        json.dumps({"instruction": "Traduza", "input": "cat", "output": "gato"}),
        json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                                 {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                                 {"role": "assistant", "content": "d"}]}),
    ]))
    alpaca, chat = read_examples(f).examples
    assert alpaca.messages == [{"role": "user", "content": "Traduza", "input": "cat"}, {"role": "assistant", "content": "gato"}]
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_field_mapping_reads_pira():
    records = read_examples(SHARED / "pira_pt_train.jsonl", "instruction=pergunta,response=resposta")
    assert len(records.examples) == 2058 and not records.skipped
    assert read_examples(SHARED / "pira_pt_train.jsonl").report() == "2058 records (shape: pergunta/resposta)"
    assert records.examples[0].messages[0]["content"].startswith("Qual é o tipo de unidade")


def test_errors_name_file_line_and_fix(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"instruction": "a", "response": "b"}\n{"instruction": "a",\n')
    with pytest.raises(GptminiError, match=r"bad.jsonl:2: malformed JSON line"):
        read_examples(bad)
    unknown = write(tmp_path / "p.jsonl", '{"pergunta": "a", "answer_pt": "b"}\n')
    with pytest.raises(GptminiError, match=r"p.jsonl:1: record has 'pergunta', 'answer_pt', which fits no recognised "
                                           r"shape .*--fields instruction=COLUMN"):
        read_examples(unknown)
    nested = write(tmp_path / "n.jsonl", '{"instruction": "a", "response": {"text": "b"}}\n')
    with pytest.raises(GptminiError, match=r"n.jsonl:1: field 'response' must be text, found dict"):
        read_examples(nested)
    with pytest.raises(GptminiError, match="unsupported format '.xml'"):
        read_examples(write(tmp_path / "x.xml", "<a/>"))
    with pytest.raises(GptminiError, match="expected NAME=COLUMN"):
        parse_fields("pergunta")


def test_empty_fields_are_skipped_and_counted_never_silently(tmp_path):
    f = write(tmp_path / "e.jsonl", '{"instruction": "a", "response": "b"}\n{"instruction": "a", "response": "  "}\n')
    records = read_examples(f)
    assert len(records.examples) == 1 and len(records.skipped) == 1
    assert "skipped 1 with an empty field (first: " in records.report() and "e.jsonl:2" in records.report()
    only_empty = write(tmp_path / "o.jsonl", '{"instruction": "", "response": "b"}\n')
    with pytest.raises(GptminiError, match="holds no usable records"):
        read_examples(only_empty)


ASK, ANSWER = "Tem estacionamento?", "Sim, gratuito."


@pytest.mark.parametrize("name, text, shape", [
    ("excel.csv", f"\ufeffPergunta;Resposta\n{ASK};{ANSWER}\n", "pergunta/resposta"),  # Excel users capitalise
    ("spaced.csv", f" Pergunta ; RESPOSTA \n{ASK};{ANSWER}\n", "pergunta/resposta"),
    ("instrucao.csv", f'Instrução,Resposta\n{ASK},"{ANSWER}"\n', "instrução/resposta"),
    ("instrucao.tsv", f"INSTRUCAO\tresposta\n{ASK}\t{ANSWER}\n", "instrução/resposta"),
    ("keys.jsonl", json.dumps({"Pergunta": ASK, " RESPOSTA ": ANSWER}) + "\n", "pergunta/resposta"),
    ("alpaca.json", json.dumps([{"Instruction": ASK, "INPUT": "", "Output": ANSWER}]), "alpaca"),
    ("qa.jsonl", json.dumps({"Question": ASK, "Answer": ANSWER}) + "\n", "question/answer"),
    ("prompt.jsonl", json.dumps({"Prompt": ASK, "Completion": ANSWER}) + "\n", "prompt/completion"),
    ("messages.jsonl", json.dumps({"Messages": [{"Role": "user", "Content": ASK},
                                                {"ROLE": "assistant", "content ": ANSWER}]}) + "\n", "messages"),
    ("sharegpt.json", json.dumps([{"Conversations": [{"From": "human", "Value": ASK},
                                                     {"from": "gpt", "VALUE": ANSWER}]}]), "sharegpt"),
])
def test_names_are_matched_as_people_write_them(tmp_path, name, text, shape):
    records = read_examples(write(tmp_path / name, text))
    assert records.report() == f"1 records (shape: {shape})"
    assert [m["content"] for m in records.examples[0].messages] == [ASK, ANSWER]


def test_an_input_column_and_fields_names_are_matched_the_same_way(tmp_path):
    f = write(tmp_path / "i.csv", "Instrução;Entrada;Resposta\nTraduza;cat;gato\n")
    assert read_examples(f).examples[0].messages == [{"role": "user", "content": "Traduza", "input": "cat"},
                                                     {"role": "assistant", "content": "gato"}]
    g = write(tmp_path / "g.csv", "Título;TEXTO\nOlá;Oi\n")
    records = read_examples(g, "instruction=titulo,response= Texto")
    assert records.report() == "1 records (shape: --fields titulo/Texto)"
    assert [m["content"] for m in records.examples[0].messages] == ["Olá", "Oi"]


def test_two_names_that_are_one_name_are_an_error_naming_both(tmp_path):
    f = write(tmp_path / "two.csv", "Pergunta;pergunta ;Resposta\na;b;c\n")
    with pytest.raises(GptminiError, match=r"two.csv:1: columns 'Pergunta' and 'pergunta ' are one name once case, "
                                           r"accents and surrounding spaces are set aside; rename one"):
        read_examples(f)
    g = write(tmp_path / "two.jsonl", json.dumps({"Pergunta": "a", "pergunta": "b", "resposta": "c"}) + "\n")
    with pytest.raises(GptminiError, match=r"two.jsonl:1: fields 'Pergunta' and 'pergunta' are one name"):
        read_examples(g)


def test_preference_pairs_read_their_names_the_same_way(tmp_path):
    f = write(tmp_path / "p.csv", "Prompt;CHOSEN; Rejected\nOlá?;Oi!;Vá embora.\n")
    [pair] = read_pairs(f).pairs
    assert (pair.prompt[0]["content"], pair.chosen[0]["content"], pair.rejected[0]["content"]) == (
        "Olá?", "Oi!", "Vá embora.")


def test_sft_reads_an_excel_header_as_typed(tmp_path):
    data = write(tmp_path / "faq.csv", f"\ufeffPergunta;Resposta\n{ASK};{ANSWER}\n")
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "sft", "--show-masks", "1", "--data", str(data),
                          "--tokenizer", "char"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"### Comando:\n{ASK}\n\n### Resposta:\n⟦{ANSWER}<|endoftext|>⟧\n" in out.stdout
