import json
import subprocess
import sys

import pytest
from sacrebleu.metrics import CHRF

from gptmini import Engine, SamplingParams, get_template, save
from gptmini.data.records import Example
from gptmini.evaluate import chrf, exact_match, normalize, rouge_l, run_eval, token_f1


def test_normalisation_keeps_accents_and_drops_portuguese_punctuation():
    assert normalize("«Atenção», não é… ação?! — Sim.") == "atenção não é ação sim"
    assert exact_match("Não!", "não") == 1.0
    assert exact_match("nao", "não") == 0.0  # accents matter


def test_token_f1_by_hand():
    # pred: a atenção é útil (4) ; ref: atenção é muito útil (4) ; common: atenção é útil (3)
    assert token_f1("A atenção é útil.", "atenção é muito útil") == pytest.approx(0.75)
    assert token_f1("", "") == 1.0 and token_f1("algo", "") == 0.0


def test_rouge_l_by_hand():
    # LCS of "o gato comeu o peixe" / "o gato viu o peixe" = o gato o peixe (4 of 5 each side)
    assert rouge_l("O gato comeu o peixe.", "o gato viu o peixe") == pytest.approx(0.8)
    assert rouge_l("atenção", "não") == 0.0


@pytest.mark.parametrize("pred,ref", [("atencao", "atenção"), ("A atenção é útil.", "atenção é muito útil"),
                                      ("não sei", "sim"), ("Ação!", "ação")])
def test_chrf_matches_sacrebleu_on_portuguese(pred, ref):
    assert chrf(pred, ref) == pytest.approx(CHRF().sentence_score(pred, [ref]).score, abs=1e-9)
    assert chrf("atenção", "atenção") == 100.0


def make_ckpt(tmp_path, name, model, tok, template=True):
    save(tmp_path / name, model, tok, {"template": get_template().to_dict()} if template else {})
    return tmp_path / name


def test_eval_report_with_comparison(tmp_path, tiny_model, char_tokenizer):
    sft_dir = make_ckpt(tmp_path, "sft", tiny_model, char_tokenizer)
    base_dir = make_ckpt(tmp_path, "base", tiny_model, char_tokenizer, template=False)
    engine = Engine(tiny_model, char_tokenizer, get_template())
    questions = ["Olá", "modelo", "ação?"]
    params = SamplingParams(max_new_tokens=12)
    own = [engine.generate([engine.encode_prompt([{"role": "user", "content": q}])], params)[0].text for q in questions]
    examples = [Example([{"role": "user", "content": q}, {"role": "assistant", "content": a or "x"}], f"f:{i}")
                for i, (q, a) in enumerate(zip(questions, own))]
    examples.append(Example([{"role": "user", "content": "sem resposta"}], "f:9"))
    reports = run_eval([sft_dir, base_dir], examples, tmp_path / "out", params)
    assert [r.name for r in reports] == [str(sft_dir), str(base_dir)]
    # references are the model's own greedy answers, so it matches them exactly
    expected_em = sum(bool(a) for a in own) / 3
    assert reports[0].metrics["exact_match"] == pytest.approx(expected_em)
    assert reports[0].metrics == reports[1].metrics  # same weights; the base borrows the template
    for name in ("report.md", "report.json", "metrics.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(data["examples"]) == 3 and len(data["models"]) == 2
    assert "| model | loss |" in (tmp_path / "out" / "report.md").read_text()


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gptmini.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_eval_cli_reports_skipped_records(tmp_path, tiny_model, char_tokenizer):
    ckpt = make_ckpt(tmp_path, "c", tiny_model, char_tokenizer)
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Olá", "response": "Oi"}\n{"instruction": "a", "response": ""}\n')
    out = cli("eval", "--model", ckpt, "--data", data, "--out", tmp_path / "r", "--max-new-tokens", "5")
    assert out.returncode == 0, out.stderr
    assert "skipped 1 with an empty field" in out.stdout and "| model |" in out.stdout


def test_generate_file_json(tmp_path, tiny_model, char_tokenizer):
    ckpt = make_ckpt(tmp_path, "c", tiny_model, char_tokenizer)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Olá"}\n{"instruction": "ação"}\n')
    out = cli("generate", "--model", ckpt, "--file", prompts, "--json", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    engine = Engine(tiny_model, char_tokenizer, get_template())
    expected = engine.generate([engine.encode_prompt([{"role": "user", "content": "Olá"}])], SamplingParams(max_new_tokens=6))[0]
    assert [r["prompt"] for r in rows] == ["Olá", "ação"]
    assert rows[0]["text"] == expected.text and rows[0]["completion_tokens"] == len(expected.token_ids)
    assert rows[0]["finish_reason"] in ("stop", "length")
