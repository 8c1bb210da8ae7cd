"""`gptmini eval --judge`: strict parsing, the mean and distribution in the report, the cache, failures;
against canned replies on real HTTP and against `gptmini serve`."""
import json
import re

import pytest

from gptmini.cli import main
from gptmini.judge import CACHE_FILE, parse_score
from tests.openai_stub import Stub, gptmini_server, stub_server  # noqa: F401  (fixtures)
from tests.test_serve import ckpt_dir, free_port  # noqa: F401  (ckpt_dir: a fixture)

VERDICTS = {"Ótimo": "85", "Bom": "**Nota: 40/100**", "Médio": "Acho que uns 70", "Ruim": "150", "Péssimo": "10."}


@pytest.mark.parametrize("reply, score", [
    ("85", 85), (" 100\n", 100), ("0", 0), ("Nota: 40/100", 40), ("**72**", 72), ("nota 9.", 9),
    ("150", None), ("85.5", None), ("Acho que uns 70", None), ("70 ou 80", None), ("", None), ("-5", None),
    ("A resposta merece 90.", None),
])
def test_a_score_is_the_number_alone_never_guessed(reply, score):
    assert parse_score(reply) == score


def verdict(prompt: str) -> str:
    reference = re.search(r"^Resposta de referência: (.*)$", prompt, re.M)
    return VERDICTS[reference.group(1)] if reference else "ok"  # "ok": eval's first, tiny request


@pytest.fixture
def judged(tmp_path, ckpt_dir, stub_server):
    """run(references) -> (exit status, report.json) of `eval --judge` on the stub, whose verdict follows each
    reference; `stub` is the stub."""
    stub = Stub(reply=verdict)
    url, out = stub_server(stub), tmp_path / "report"

    def run(references, model="teacher"):
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"instruction": f"Pergunta {i}", "response": r}) + "\n"
                                for i, r in enumerate(references)), encoding="utf-8")
        code = main(["eval", "--model", str(ckpt_dir), "--data", str(data), "--max-new-tokens", "4", "--no-progress",
                     "--out", str(out), "--judge", url, "--judge-model", model])
        report = out / "report.json"
        return code, json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None

    run.stub, run.out = stub, out
    return run


def test_mean_and_distribution_reach_the_report_and_a_rerun_asks_only_what_changed(judged, capsys):
    code, report = judged(["Ótimo", "Bom", "Médio", "Ruim"])
    assert code == 0
    [model] = report["models"]
    assert model["metrics"]["judge_mean"] == 62.5 and model["metrics"]["judge_unparsed"] == 2
    assert model["judge_distribution"] == {**dict.fromkeys(["0-9", "10-19", "20-29", "30-39", "50-59", "60-69",
                                                            "70-79", "90-100"], 0), "40-49": 1, "80-89": 1}
    name = model["model"]
    assert [e["judge"][name] for e in report["examples"]] == [
        {"score": 85, "reply": "85"}, {"score": 40, "reply": "**Nota: 40/100**"},
        {"score": None, "reply": "Acho que uns 70"}, {"score": None, "reply": "150"}]
    # the judge saw the model's own answer beside the reference
    answers = [e["answers"][name] for e in report["examples"]]
    assert [p.split("Resposta do modelo: ")[1].split("\n\nDê uma nota")[0] for p in judged.stub.prompts()] == answers
    printed = capsys.readouterr().out
    assert " 62.5 (2 unparsed) |" in printed
    assert f"note: {name}: the judge's reply about 2 of 4 answers is not a number from 0 to 100 (first: 'Acho que uns " \
           "70'); counted as unparsed, left out of the mean" in printed
    markdown = (judged.out / "report.md").read_text(encoding="utf-8")
    assert "## Judge" in markdown and f"| {name} | 62.5 | 2 | 0 | 0 | 0 | 0 | 1 | 0 | 0 | 0 | 1 | 0 |" in markdown
    assert (judged.out / "judge.png").is_file() and len((judged.out / CACHE_FILE).read_text().splitlines()) == 4

    judged.stub.requests.clear()
    code, report = judged(["Ótimo", "Bom", "Médio", "Péssimo"])  # one reference changed: one question asked
    assert code == 0 and len(judged.stub.prompts()) == 1 and report["data"]["judge"]["asked"] == 1
    assert report["models"][0]["metrics"]["judge_mean"] == pytest.approx((85 + 40 + 10) / 3)
    judged.stub.requests.clear()
    assert judged(["Ótimo", "Bom", "Médio", "Péssimo"])[0] == 0 and judged.stub.prompts() == []


def test_a_judge_that_fails_midway_keeps_the_report_and_what_it_answered(judged, capsys):
    judged.stub.fail_from, judged.stub.fail_with = 3, 401  # the check, one verdict, then a refused key
    code, report = judged(["Ótimo", "Bom", "Médio"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "refused the API key (HTTP 401" in err
    assert "judge" not in report["data"] and "## Judge" not in (judged.out / "report.md").read_text()
    assert len((judged.out / CACHE_FILE).read_text().splitlines()) == 1
    judged.stub.fail_from, judged.stub.requests = None, []
    code, report = judged(["Ótimo", "Bom", "Médio"])
    assert code == 0 and len(judged.stub.prompts()) == 2 and report["models"][0]["metrics"]["judge_mean"] == 62.5


def test_a_judge_that_is_down_or_lacks_the_model_fails_before_any_answer(judged, tmp_path, ckpt_dir, capsys):
    code, report = judged(["Ótimo"], model="llama3:70b")
    err = capsys.readouterr().err.strip()
    assert code == 2 and report is None and "model 'llama3:70b' not found" in err and "it has: teacher" in err
    argv = ["eval", "--model", str(ckpt_dir), "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "r2")]
    assert main([*argv, "--judge", f"http://127.0.0.1:{free_port()}", "--judge-model", "m"]) == 2
    assert "cannot connect to http://127.0.0.1:" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    assert main([*argv, "--judge-model", "m"]) == 2
    assert "give its endpoint too, --judge URL" in capsys.readouterr().err


def test_gptmini_serve_as_the_judge(gptmini_server, ckpt_dir, tmp_path):
    """The mechanics with a real model behind a real server: whatever a tiny model replies is parsed strictly."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Olá", "response": "Oi!"}\n{"instruction": "ação", "response": "atenção"}\n',
                    encoding="utf-8")
    out = tmp_path / "report"
    assert main(["eval", "--model", str(ckpt_dir), "--data", str(data), "--max-new-tokens", "4", "--no-progress",
                 "--out", str(out), "--judge", gptmini_server().url, "--judge-model", "served"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    [name] = [m["model"] for m in report["models"]]
    replies = [e["judge"][name]["reply"] for e in report["examples"]]
    assert all(isinstance(r, str) for r in replies) and report["data"]["judge"]["asked"] == 2
    unparsed = sum(parse_score(r) is None for r in replies)
    assert report["models"][0]["metrics"]["judge_unparsed"] == unparsed
