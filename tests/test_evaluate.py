import json
import random
import unicodedata

import pytest
import torch

from gptmini import Engine, GptminiError, SamplingParams, get_template, load, save
from gptmini.cli import read_prompts
from gptmini.data.records import Example
from gptmini.evaluate import (
    chrf,
    exact_match,
    masked_loss,
    normalize,
    plot_runs,
    read_eval_data,
    rouge_l,
    run_eval,
    scorable,
    token_f1,
)

from .conftest import run_command


def test_normalisation_keeps_accents_and_drops_portuguese_punctuation():
    assert normalize("«Atenção», não é… ação?! — Sim.") == "atenção não é ação sim"
    assert exact_match("Não!", "não") == 1.0
    assert exact_match("nao", "não") == 0.0  # accents matter
    decomposed = unicodedata.normalize("NFD", "Não, atenção")  # n + a + combining tilde, as some keyboards send
    assert exact_match(decomposed, "não atenção") == 1.0 and chrf(decomposed, "Não, atenção") == 100.0


def test_token_f1_by_hand():
    # pred: a atenção é útil (4) ; ref: atenção é muito útil (4) ; common: atenção é útil (3)
    assert token_f1("A atenção é útil.", "atenção é muito útil") == pytest.approx(0.75)
    assert token_f1("", "") == 1.0 and token_f1("algo", "") == 0.0


def test_rouge_l_by_hand():
    # LCS of "o gato comeu o peixe" / "o gato viu o peixe" = o gato o peixe (4 of 5 each side)
    assert rouge_l("O gato comeu o peixe.", "o gato viu o peixe") == pytest.approx(0.8)
    assert rouge_l("atenção", "não") == 0.0


def test_chrf_by_hand():
    # "ab" vs "ac": 1-grams a,b / a,c -> P = R = 1/2; 2-grams ab / ac -> 0; orders 3-6 have no n-grams
    # and are left out. P = R = (1/2 + 0) / 2 = 1/4, so F2 = 1/4 -> 25.
    assert chrf("ab", "ac") == pytest.approx(25.0)
    assert chrf("atenção", "atenção") == 100.0 and chrf("Atenção", "atenção") < 100  # case counts in chrF
    assert chrf("", "") == 100.0 and chrf("", "algo") == 0.0


@pytest.mark.parametrize("pred,ref", [("atencao", "atenção"), ("A atenção é útil.", "atenção é muito útil"),
                                      ("não sei", "sim"), ("Ação!", "ação")])
def test_chrf_matches_sacrebleu_on_portuguese(pred, ref):
    chrf_metric = pytest.importorskip("sacrebleu.metrics").CHRF()
    assert chrf(pred, ref) == pytest.approx(chrf_metric.sentence_score(pred, [ref]).score, abs=1e-9)


def test_chrf_matches_sacrebleu_on_random_accented_strings():
    chrf_metric = pytest.importorskip("sacrebleu.metrics").CHRF()
    rng = random.Random(0)
    pieces = list("aãáâbcçeéêio óõuú.,!?«»—") + ["ção", " não", "A", "Ã"]
    for _ in range(300):
        pred, ref = ("".join(rng.choices(pieces, k=rng.randint(1, 14))) for _ in range(2))
        if pred.strip() or ref.strip():  # both empty: sacrebleu says 0, we say 100 (see chrf)
            assert chrf(pred, ref) == pytest.approx(chrf_metric.sentence_score(pred, [ref]).score, abs=1e-9)


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


def test_masked_loss_is_the_per_token_mean_over_responses(tmp_path, tiny_model, char_tokenizer):
    ckpt = load(make_ckpt(tmp_path, "c", tiny_model, char_tokenizer))
    examples = [Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], "f")
                for q, a in [("Olá", "Oi!"), ("Atenção?", "Um foco."), ("a", "b")]]
    total = count = 0
    for e in examples:  # one example at a time, no padding: what the batched, padded version must equal
        ids, labels = get_template().encode(char_tokenizer, e.messages)
        targets = torch.tensor([labels[1:]])
        total += tiny_model(torch.tensor([ids[:-1]]), targets, loss_reduction="sum")[1].item()
        count += int((targets != -100).sum())
    assert count == len("Oi!") + len("Um foco.") + len("b") + 3  # answers + end-of-text each
    assert masked_loss(ckpt, get_template(), examples, batch_size=2) == pytest.approx(total / count, rel=1e-5)


def test_records_without_a_reference_are_counted_not_fatal(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([
        '{"instruction": "Olá", "response": "Oi"}',
        '{"instruction": "sem resposta"}',  # no response field
        '{"instruction": "vazia", "response": " "}',  # empty: skipped like sft does
        '{"messages": [{"role": "user", "content": "só pergunta"}]}',
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},'
         ' {"role": "user", "content": "e agora?"}]}'),  # ends with the user: nothing to compare with
    ]) + "\n")
    records = read_eval_data(data)
    assert len(records.skipped) == 1 and "d.jsonl:3" in records.skipped[0]
    keep, unscored = scorable(records.examples)
    assert [e.where for e in keep] == [f"{data}:1"]
    assert unscored == [f"{data}:{n}" for n in (2, 4, 5)]
    csv = tmp_path / "d.csv"
    csv.write_text("pergunta,resposta\nOlá,Oi\nsó a pergunta\n")  # a short row: no answer column
    records = read_eval_data(csv, "instruction=pergunta,response=resposta")
    assert scorable(records.examples)[1] == [f"{csv}:3"]
    data.write_text('{"pergunta_pt": "a", "resposta_pt": "b"}\n')  # unknown column names stay an error
    with pytest.raises(GptminiError, match="--fields"):
        read_eval_data(data)


def test_read_prompts_rejects_non_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Olá"}\n\n{"instruction": "ação"}\n')
    assert read_prompts(path) == ["Olá", "ação"]
    path.write_text('{"prompt": "Olá"}\n{"prompt": [5]}\n')
    with pytest.raises(GptminiError, match="p.jsonl:2"):
        read_prompts(path)


def test_eval_cli_compares_counts_and_plots_the_runs(tmp_path, tiny_model, char_tokenizer):
    sft_dir = make_ckpt(tmp_path / "run", "last", tiny_model, char_tokenizer)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0, "val_loss": null}\n'
                                                    '{"step": 2, "train_loss": 2.5, "val_loss": 2.7}\n')
    base_dir = make_ckpt(tmp_path, "base", tiny_model, char_tokenizer, template=False)
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Olá", "response": "Oi"}\n{"instruction": "a", "response": ""}\n'
                    '{"instruction": "sem resposta"}\n')
    out = run_command("eval", "--model", sft_dir, "--compare", base_dir, "--data", data, "--out", tmp_path / "r",
              "--max-new-tokens", "5")
    assert out.returncode == 0, out.stderr
    assert "skipped 1 with an empty field" in out.stdout
    assert f"note: 1 record without a reference answer, not scored (first: {data}:3)" in out.stdout
    assert f"| {sft_dir} |" in out.stdout and f"| {base_dir} |" in out.stdout  # one row per model
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["data"]["scored"] == 1 and len(report["data"]["skipped"]) == 1
    assert report["data"]["no_reference"] == [f"{data}:3"]
    assert [m["model"] for m in report["models"]] == [str(sft_dir), str(base_dir)]
    assert (tmp_path / "r" / "loss_curves.png").stat().st_size > 0  # from run/metrics.jsonl
    assert not plot_runs(tmp_path / "none.png", [base_dir])  # no metrics.jsonl beside it: no chart
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train_lo')  # a run killed mid-write
    assert not plot_runs(tmp_path / "cut.png", [sft_dir]) and not (tmp_path / "cut.png").exists()
    assert "1 example scored; 1 record skipped (empty field); 1 without a reference answer." in (
        tmp_path / "r" / "report.md").read_text()


def test_generate_file_json(tmp_path, tiny_model, char_tokenizer):
    ckpt = make_ckpt(tmp_path, "c", tiny_model, char_tokenizer)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Olá"}\n{"instruction": "ação"}\n')
    out = run_command("generate", "--model", ckpt, "--file", prompts, "--json", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    engine = Engine(tiny_model, char_tokenizer, get_template())
    expected = engine.generate([engine.encode_prompt([{"role": "user", "content": "Olá"}])], SamplingParams(max_new_tokens=6))[0]
    assert [r["prompt"] for r in rows] == ["Olá", "ação"]
    assert rows[0]["text"] == expected.text and rows[0]["completion_tokens"] == len(expected.token_ids)
    assert rows[0]["finish_reason"] in ("stop", "length")
