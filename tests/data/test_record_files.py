"""Records as users have them (tests/data/files/): Excel CSVs, CRLF, multi-line answers, U+2028, numbers,
every recognised shape, Latin-1. Each text must read back exactly as Python's csv/json read it."""
import csv
import json
from pathlib import Path

import pytest

from gptmini import GptminiError
from gptmini.cli import read_prompts
from gptmini.data.records import read_examples

FILES = Path(__file__).parent / "files"
# file -> (shape named in the data report, the delimiter Python's csv needs; None for JSON)
SHAPES = {
    "excel_bom_semicolon.csv": ("pergunta/resposta", ";"),
    "multiline.csv": ("instruction/response", ","),
    "crlf.csv": ("question/answer", ","),
    "tab.tsv": ("pergunta/resposta", "\t"),
    "latin1.csv": ("pergunta/resposta", ";"),
    "crlf.jsonl": ("pergunta/resposta", None),
    "u2028.jsonl": ("instruction/response", None),
    "numbers.jsonl": ("pergunta/resposta", None),
    "shape_instruction_response.jsonl": ("instruction/response", None),
    "shape_alpaca.json": ("alpaca", None),
    "shape_prompt_completion.jsonl": ("prompt/completion", None),
    "shape_prompt_completion_conversational.jsonl": ("prompt/completion (conversational)", None),
    "shape_question_answer.jsonl": ("question/answer", None),
    "shape_pergunta_resposta.jsonl": ("pergunta/resposta", None),
    "shape_messages.jsonl": ("messages", None),
    "shape_sharegpt.json": ("sharegpt", None),
}
ENCODING = {"latin1.csv": "latin-1"}
FLAT_KEYS = {"instruction/response": ("instruction", "input", "response"), "alpaca": ("instruction", "input", "output"),
             "prompt/completion": ("prompt", None, "completion"), "question/answer": ("question", None, "answer"),
             "pergunta/resposta": ("pergunta", None, "resposta")}


def python_reads(path: Path) -> list:
    """The records as Python's own modules read them (csv with newline="", json per "\\n" line)."""
    encoding = ENCODING.get(path.name, "utf-8-sig")
    with open(path, newline="", encoding=encoding) as f:
        if path.suffix in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter=SHAPES[path.name][1]))
        text = f.read()
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.split("\n") if line.strip()]


def python_texts(record: dict, shape: str) -> list:
    """A record's texts in conversation order, as Python read them (numbers stay numbers)."""
    if shape == "messages":
        return [m["content"] for m in record["messages"]]
    if shape == "sharegpt":
        return [m["value"] for m in record["conversations"]]
    if shape.endswith("(conversational)"):
        return [m["content"] for m in record["prompt"] + record["completion"]]
    prompt, extra, answer = FLAT_KEYS[shape]
    return [record[prompt], *([record[extra]] if extra and record.get(extra) else []), record[answer]]


def our_texts(messages: list[dict]) -> list[str]:
    return [text for m in messages for text in (m["content"], m.get("input")) if text is not None]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_text_reads_back_as_python_reads_it(name):
    path, (shape, _) = FILES / name, SHAPES[name]
    records = read_examples(path, encoding=ENCODING.get(name))
    expected = [python_texts(r, shape) for r in python_reads(path)]
    assert len(records.examples) == len(expected) and not records.skipped
    for example, texts in zip(records.examples, expected):
        ours = our_texts(example.messages)
        assert len(ours) == len(texts), example.where
        for mine, theirs in zip(ours, texts):
            # byte for byte; a JSON number or boolean becomes the text that parses back to it
            assert mine == theirs if isinstance(theirs, str) else json.loads(mine) == theirs, example.where
    assert records.report().startswith(f"{len(expected)} records (shape: {shape})")


def test_record_locations_are_first_lines():
    wheres = {name: [e.where.rsplit(":", 1)[1] for e in read_examples(FILES / name).examples]
              for name in ("multiline.csv", "crlf.csv", "excel_bom_semicolon.csv", "u2028.jsonl")}
    assert wheres == {"multiline.csv": ["2", "5", "8"], "crlf.csv": ["2", "4"], "excel_bom_semicolon.csv": ["2", "3", "4"],
                      "u2028.jsonl": ["1", "2"]}


def test_quoted_line_breaks_and_u2028_are_kept():
    planets = read_examples(FILES / "multiline.csv").examples[0].messages[1]["content"]
    assert planets == "1. Terra\n2. Marte\n3. Vênus"
    assert read_examples(FILES / "crlf.csv").examples[1].messages[1]["content"].endswith("propriedade,\r\neu sou um software!")
    first = read_examples(FILES / "u2028.jsonl").examples[0].messages
    assert first[0]["content"] == "Primeira linha\u2028segunda linha" and "\u2029" in first[1]["content"]


def test_excel_bom_and_semicolons_need_no_flags():
    header = python_reads(FILES / "excel_bom_semicolon.csv")[0]
    assert list(header) == ["pergunta", "resposta"]  # the BOM is not part of the first name
    last = read_examples(FILES / "excel_bom_semicolon.csv").examples[2].messages
    assert last[0]["content"] == 'Quais os principais metodos; segundo a "Petrobras"?'


def test_numbers_and_booleans_become_their_text_and_are_counted():
    records = read_examples(FILES / "numbers.jsonl")
    assert [e.messages[1]["content"] for e in records.examples] == ["1996", "3.50", "true", "FPSO"]
    assert records.report() == (f"4 records (shape: pergunta/resposta); 3 numbers/booleans read as text "
                                f"(first: {FILES / 'numbers.jsonl'}:1 'resposta' = 1996)")


def test_latin1_is_one_error_with_the_line_and_the_fix(tmp_path):
    with pytest.raises(GptminiError, match=r"latin1.csv:2: not UTF-8 text \(byte 0xe9 .*--encoding latin-1.*"
                                           r"iconv -f latin1 -t utf-8 .*latin1.csv > .*latin1.utf8.csv"):
        read_examples(FILES / "latin1.csv")
    utf16 = tmp_path / "excel.tsv"
    utf16.write_bytes("pergunta\tresposta\nA\tB\n".encode("utf-16"))
    with pytest.raises(GptminiError, match="UTF-16 byte-order mark: read it with --encoding utf-16"):
        read_examples(utf16)
    assert read_examples(utf16, encoding="utf-16").examples[0].messages[1]["content"] == "B"
    with pytest.raises(GptminiError, match="--encoding 'klingon': unknown encoding"):
        read_examples(FILES / "latin1.csv", encoding="klingon")


def test_lists_and_objects_still_fail_with_the_field_path(tmp_path):
    cases = {'{"pergunta": "a", "resposta": ["b"]}': r"x.jsonl:1: field 'resposta' must be text, found list",
             '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": {"t": 1}}]}':
                 r"x.jsonl:1: field messages\[1\].content must be text, found dict",
             '{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}':
                 r"x.jsonl:1: conversations\[1\] must be \{'from': one of \['assistant', 'gpt', 'human'"}
    for line, message in cases.items():
        (tmp_path / "x.jsonl").write_text(line + "\n", encoding="utf-8")
        with pytest.raises(GptminiError, match=message):
            read_examples(tmp_path / "x.jsonl")


def test_unrecognised_shape_lists_the_shapes_and_fields(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("q,a\nOi,Olá\n", encoding="utf-8")
    with pytest.raises(GptminiError, match=r"q.csv:2: record has 'q', 'a', which fits no recognised shape "
                                           r"\(instruction/response, alpaca.*ShareGPT conversations\); "
                                           r"name its columns with --fields instruction=COLUMN,response=COLUMN"):
        read_examples(path)
    records = read_examples(path, "instruction=q,response=a")
    assert records.report() == "1 records (shape: --fields q/a)"


def test_fields_override_and_val_data_fallback(tmp_path):
    both = tmp_path / "both.jsonl"
    both.write_text('{"pergunta": "p", "resposta": "curta", "resposta_longa": "longa"}\n', encoding="utf-8")
    assert read_examples(both).examples[0].messages[1]["content"] == "curta"
    chosen = read_examples(both, "instruction=pergunta,response=resposta_longa")
    assert chosen.examples[0].messages[1]["content"] == "longa"  # --fields overrides a recognised shape
    custom = "instruction=q,response=a"
    with pytest.raises(GptminiError, match="lacks field 'q' .*check --fields"):
        read_examples(FILES / "shape_alpaca.json", custom)
    # --val-data: its own shape first, the mapping only where it has none
    assert read_examples(FILES / "shape_alpaca.json", custom, fields_fallback=True).report().startswith("5 records (shape: alpaca)")
    qa = tmp_path / "qa.csv"
    qa.write_text("q,a\nOi,Olá\n", encoding="utf-8")
    assert read_examples(qa, custom, fields_fallback=True).report() == "1 records (shape: --fields q/a)"


def test_malformed_csv_is_an_error_not_a_silent_change(tmp_path):
    cases = {"pergunta,resposta\nOi,Olá\n\"Aberta,sem fim\n": r"bad.csv:3: malformed CSV \(unexpected end of data\)",
             "pergunta,resposta\nOi,Olá, tudo bem?\n": r"bad.csv:2: 3 values but 2 columns .*','.*double quotes",
             "pergunta,pergunta\nOi,Olá\n": r"bad.csv:1: column 'pergunta' appears twice"}
    for text, message in cases.items():
        (tmp_path / "bad.csv").write_text(text, encoding="utf-8")
        with pytest.raises(GptminiError, match=message):
            read_examples(tmp_path / "bad.csv")


def test_generate_file_uses_the_same_reader():
    assert read_prompts(FILES / "prompts.txt") == ["Explique Machine Learning", "O que é um modelo de linguagem?",
                                                   "Primeira\u2028segunda"]
    assert read_prompts(FILES / "excel_bom_semicolon.csv")[0].startswith("Qual é o tipo de unidade")
    assert read_prompts(FILES / "latin1.csv", "latin-1")[0] == "Qual é a função da atenção?"
    conversation = read_prompts(FILES / "shape_sharegpt.json")[0]  # the last answer left out, the rest kept
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user"]
    alpaca = read_prompts(FILES / "shape_alpaca.json")
    assert alpaca[0][0]["input"].startswith("Sentence 1") and isinstance(alpaca[4], str)  # input only where given
