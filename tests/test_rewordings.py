"""`gptmini augment`: a teacher's rewordings kept or dropped as documented, answers never touched, output
written as it goes and resumed; against canned replies on real HTTP and against `gptmini serve`."""
import json
import re

import pytest

from gptmini import GptminiError
from gptmini.cli import main
from gptmini.data.records import read_examples
from gptmini.openai_client import ChatClient
from gptmini.rewordings import augment, candidates, loose
from tests.openai_stub import Stub, gptmini_server, stub_server  # noqa: F401  (fixtures)

FAQ = ('pergunta;resposta\n"Que horas vocês abrem?";Das 7h às 19h.\nVocês entregam?;"Sim, pelo app.\nTaxa de R$ 5."\n'
       "Explique como pagar;Pix, cartão ou dinheiro.\n")
ANSWERS = {"Que horas vocês abrem?": "Das 7h às 19h.", "Vocês entregam?": "Sim, pelo app.\nTaxa de R$ 5.",
           "Explique como pagar": "Pix, cartão ou dinheiro."}
REPLIES = {  # what the teacher says for each question; the comments say what happens to each line (n=3)
    "Que horas vocês abrem?": "\n".join([
        "Aqui estão 3 versões:",           # not a question (a preamble)
        "1. Qual o horário de abertura?",  # kept
        "2. que horas voces abrem?",       # same as its own question (accents, case)
        "3. Vocês entregam?",              # another record's question
        "4. Das 7h às 19h.",               # not a question (the answer)
        "- Qual o horário de abertura ?",  # same as one kept before
        "6. ",                             # blank: skipped
        '7. "A que horas a padaria abre?"',  # kept, quotes removed
        "8. Vocês abrem cedo?!",           # kept
        "9. Abrem aos domingos?",          # beyond the 3 asked for: not used
    ]),
    "Vocês entregam?": "",  # 3 missing
    "Explique como pagar": "Explique as formas de pagamento\nQuais são as formas de pagamento?\nSegue a lista:\n"
                           "A que horas a padaria abre?",  # kept, kept (an instruction admits both), preamble, other's
}
KEPT = {"Que horas vocês abrem?": ["Qual o horário de abertura?", "A que horas a padaria abre?", "Vocês abrem cedo?!"],
        "Vocês entregam?": [],
        "Explique como pagar": ["Explique as formas de pagamento", "Quais são as formas de pagamento?"]}
SUMMARY = ("augment: 3 records, 3 asked; 5 rewordings kept, 10 dropped: 2 same as their question or another of its "
           "rewordings, 2 same as another record's question, 3 empty or missing, 3 not questions; wrote {out}")


def teacher_reply(prompt: str) -> str:
    return REPLIES[re.search(r"^Pergunta: (.*)$", prompt, re.M).group(1)]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_rows(data) -> list[dict]:
    lines = {q: 2 + i for i, q in enumerate(ANSWERS)}
    lines["Explique como pagar"] += 1  # the answer before it spans two lines
    return [{"instruction": text, "response": ANSWERS[q], "source": f"{data}:{lines[q]}",
             **({"rewordings": len(KEPT[q])} if text == q else {})} for q in ANSWERS for text in [q, *KEPT[q]]]


@pytest.fixture
def faq(tmp_path):
    (tmp_path / "faq.csv").write_text(FAQ, encoding="utf-8")
    return tmp_path / "faq.csv"


def test_loose_comparison_and_list_markers():
    assert loose("Qual é o horário?!") == loose("qual e o  horario") == "qual e o horario"
    assert candidates('1. "Oi?"\n\n2) Olá?\n- Tchau?\n• Bom dia?\n10. Dez?') == ["Oi?", "Olá?", "Tchau?", "Bom dia?", "Dez?"]


def test_rewordings_kept_and_dropped_as_documented_answers_untouched(stub_server, faq, capsys):
    stub = Stub(reply=teacher_reply)
    out = faq.parent / "aug.jsonl"
    assert main(["augment", "--data", str(faq), "--endpoint", stub_server(stub), "--model", "teacher", "--n", "3",
                 "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == SUMMARY.format(out=out)
    assert rows(out) == expected_rows(faq)
    # sft reads it, and every answer is its record's answer, character for character
    examples = read_examples(out).examples
    assert [e.messages[-1]["content"] for e in examples] == [r["response"] for r in expected_rows(faq)]
    assert len(stub.prompts()) == 3 and "Resposta (não a repita" in stub.prompts()[0]
    assert "Reescreva a pergunta abaixo de 3 maneiras" in stub.prompts()[0]


@pytest.mark.parametrize("failure, message", [
    (401, "refused the API key"), (500, "HTTP 500"), ("slow", "no answer within 0.2 s"),
])
def test_a_failing_teacher_keeps_what_was_answered_and_resume_asks_only_the_rest(stub_server, faq, failure, message):
    stub = Stub(reply=teacher_reply, fail_from=2, fail_with=failure, delay=0.5)
    client = ChatClient(stub_server(stub), "teacher", timeout=0.2, retries=1, backoff=0.01)
    out = faq.parent / "aug.jsonl"
    with pytest.raises(GptminiError, match=message):
        augment(faq, out, client, n=3, show_progress=False)
    assert rows(out) == expected_rows(faq)[:4]  # the first record and its rewordings, nothing of the second
    stub.fail_from, stub.requests = None, []
    result = augment(faq, out, client, n=3, resume=True, show_progress=False)
    assert [p.split("Pergunta: ")[1].split("\n")[0] for p in stub.prompts()] == ["Vocês entregam?",
                                                                                "Explique como pagar"]
    assert (result.asked, result.resumed, result.kept) == (2, 1, 2)
    # the rewording of the second answered record that equals a rewording from the first run is still caught
    assert result.dropped["other_question"] == 1
    assert rows(out) == expected_rows(faq)


def test_a_line_cut_off_mid_write_is_asked_again(stub_server, faq):
    client = ChatClient(stub_server(stub := Stub(reply=teacher_reply)), "teacher", backoff=0.01)
    out = faq.parent / "aug.jsonl"
    whole = [json.dumps(r, ensure_ascii=False) + "\n" for r in expected_rows(faq)]
    out.write_text("".join(whole[:4]) + whole[4][:20], encoding="utf-8")  # killed inside the second record
    augment(faq, out, client, n=3, resume=True, show_progress=False)
    assert len(stub.prompts()) == 2 and rows(out) == expected_rows(faq)


def test_an_existing_output_is_never_overwritten_nor_resumed_from_other_data(stub_server, faq, tmp_path, capsys):
    url = stub_server(Stub(reply=teacher_reply))
    out = tmp_path / "aug.jsonl"
    out.write_text('{"instruction": "a", "response": "b", "source": "other.csv:2"}\n', encoding="utf-8")
    argv = ["augment", "--data", str(faq), "--endpoint", url, "--model", "teacher", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"gptmini augment: error: {out} exists: --resume carries on from it, or "
                                               "remove it to start again")
    assert main([*argv, "--resume"]) == 2
    assert "holds records of other.csv:2, which is not a record of this --data" in capsys.readouterr().err
    assert rows(out) == [{"instruction": "a", "response": "b", "source": "other.csv:2"}]


def test_against_gptmini_serve(gptmini_server, faq, capsys):
    """The mechanics with a real model behind a real server: a tiny model's rewordings are nonsense, so only
    what must hold whatever it says is checked."""
    server = gptmini_server(api_key="k")
    out = faq.parent / "aug.jsonl"
    argv = ["augment", "--data", str(faq), "--endpoint", server.url, "--model", "served", "--n", "2", "--out", str(out),
            "--no-progress"]
    assert main([*argv, "--api-key", "wrong"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gptmini augment: error: http://127.0.0.1:") and "refused the API " \
        "key (HTTP 401: missing or wrong API key" in err
    assert main([*argv, "--api-key", "k"]) == 0  # the empty file the refused run left is no output to keep
    summary = capsys.readouterr().out.strip()
    kept = int(re.search(r"; (\d+) rewordings kept, (\d+) dropped", summary).group(1))
    written = rows(out)
    answer_of = {r["source"]: r["response"] for r in expected_rows(faq)}
    assert [r["instruction"] for r in written if "rewordings" in r] == list(ANSWERS)
    assert len(written) == 3 + kept and all(r["response"] == answer_of[r["source"]] for r in written)
    assert len({loose(r["instruction"]) for r in written}) == len(written)
