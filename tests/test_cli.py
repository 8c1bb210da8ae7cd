import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptmini import Engine, SamplingParams, get_template, load, save
from gptmini.cli import build_parser, main

from .conftest import run_command


def test_help_lists_the_verbs():
    out = run_command("--help")
    assert out.returncode == 0 and "generate" in out.stdout


def test_generate_prints_the_answer(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    engine = Engine(tiny_model, char_tokenizer, get_template())
    prompt = engine.encode_prompt([{"role": "user", "content": "Olá"}])
    expected = engine.generate([prompt], SamplingParams(max_new_tokens=7))[0].text
    assert main(["generate", "--model", str(tmp_path / "c"), "--max-new-tokens", "7", "Olá"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_bad_checkpoint_is_one_clear_line_without_traceback(tmp_path):
    out = run_command("generate", "--model", str(tmp_path / "nope"), "hi")
    assert out.returncode == 2
    assert out.stderr.strip() == f"gptmini generate: error: {tmp_path / 'nope'}: checkpoint directory not found"


def test_numeric_flags_out_of_range_are_usage_errors(capsys):
    for args, message in [(["sft", "--val-fraction", "20"], "argument --val-fraction: must be a number in [0, 1), got 20 "
                                                            "(a fraction: 0.05 is 5%)"),
                          (["sft", "--max-steps", "0"], "argument --max-steps: must be an integer > 0, got 0"),
                          (["generate", "--model", "m", "--top-k", "x"], "argument --top-k: expected an integer, got 'x'"),
                          (["serve", "--model", "m", "--queue-size", "-1"], "argument --queue-size: must be an integer ≥ 0")]:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_epochs_with_max_steps_is_refused(tmp_path, capsys):
    assert main(["sft", "--epochs", "3", "--max-steps", "50", "--out", str(tmp_path / "run")]) == 2
    assert "--epochs and --max-steps both set the length of the run; give one of them" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_without_validation_says_best_will_not_exist(tmp_path, capsys):
    data = tmp_path / "ten.csv"  # Excel's pt-BR CSV: BOM and semicolons, no flags needed
    data.write_text("\ufeffpergunta;resposta\n" + "".join(f"Quanto é {i}+1?;{i + 1}\n" for i in range(10)), encoding="utf-8")
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "run"), "--tokenizer", "char", "--context-size", "32",
                 "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--max-steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "data: 10 records (shape: pergunta/resposta)" in out
    assert ("note: no validation (--val-fraction 0.05 of 10 records is under one example), so no best/ checkpoint "
            "will be written: last/ is the final model") in out
    assert (tmp_path / "run" / "last").is_dir() and not (tmp_path / "run" / "best").exists()
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text(encoding="utf-8"))
    assert config["data"]["first_question"] == "Quanto é 0+1?"  # serve's page shows it as an example


def test_generate_file_reads_text_lines_and_conversations(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    (tmp_path / "p.txt").write_text("Olá\r\n\r\nOi\r\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"conversations": [
        {"from": "human", "value": "Olá"}, {"from": "gpt", "value": "Oi"}, {"from": "human", "value": "Oi"}]}) + "\n")
    engine = Engine(tiny_model, char_tokenizer, get_template())
    for name, prompt in [("p.txt", [{"role": "user", "content": "Olá"}]), ("c.jsonl", [
            {"role": "user", "content": "Olá"}, {"role": "assistant", "content": "Oi"}, {"role": "user", "content": "Oi"}])]:
        expected = engine.generate([engine.encode_prompt(prompt)], SamplingParams(max_new_tokens=5))[0].text
        assert main(["generate", "--model", str(tmp_path / "c"), "--max-new-tokens", "5", "--json", "--file",
                     str(tmp_path / name)]) == 0
        answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert answers[0]["text"] == expected and len(answers) == (2 if name == "p.txt" else 1)
    assert main(["generate", "--model", str(tmp_path / "c"), "--raw", "--file", str(tmp_path / "c.jsonl")]) == 2
    assert "holds conversations" in capsys.readouterr().err


def test_fields_reach_val_data_only_where_it_has_no_shape_of_its_own(tmp_path, capsys):
    data = tmp_path / "qa.csv"
    data.write_text("q,a\n" + "".join(f"Quanto é {i}+1?,{i + 1}\n" for i in range(10)), encoding="utf-8")
    alpaca = Path(__file__).parent / "data" / "files" / "shape_alpaca.json"
    assert main(["sft", "--data", str(data), "--fields", "instruction=q,response=a", "--val-data", str(alpaca),
                 "--out", str(tmp_path / "run"), "--tokenizer", "char", "--context-size", "32", "--d-model", "16",
                 "--n-heads", "2", "--n-layers", "1", "--max-steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "data: 10 records (shape: --fields q/a)" in out and "validation data: 5 records (shape: alpaca)" in out


def test_version():
    import gptmini

    out = run_command("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"gptmini {gptmini.__version__}"


def test_serve_without_its_extra_is_one_line_saying_what_to_install(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; from gptmini.cli import main; "
            f"sys.exit(main(['serve', '--model', {str(tmp_path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("gptmini serve: error: serving needs the 'serve' extra (fastapi is not installed): "
                                  "pip install 'gptmini[serve]'")


def test_eval_writes_its_report_beside_the_checkpoint_not_inside(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "run" / "last", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Olá", "response": "oi"}\n', encoding="utf-8")
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(data), "--max-new-tokens", "4"]) == 0
    assert (tmp_path / "run" / "eval" / "last" / "report.md").is_file()
    assert not (tmp_path / "run" / "last" / "eval").exists()


def option_entries(help_text: str) -> dict[str, str]:
    """Each option's entry in a --help ("--opt METAVAR  its help, wrapped"), whitespace collapsed."""
    entries, current = {}, None
    for line in help_text.splitlines():
        start = re.match(r"  (-[\w-]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {name: " ".join(entry.split()) for name, entry in entries.items()}


def test_every_option_of_every_verb_has_help_and_shows_its_default(capsys):
    [verbs] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    shown = {}
    for verb, parser in verbs.choices.items():
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        shown[verb] = option_entries(capsys.readouterr().out)
        for action in parser._actions:
            assert action.help, f"{verb} {action.option_strings or action.dest}: no help text"
            if action.option_strings and action.option_strings[0] != "-h":
                entry = shown[verb][action.option_strings[0]]
                assert "default" in entry or "(required" in entry, f"{verb}: {entry}"
    assert len(shown) == 12 and all("--no-progress" in shown[v] for v in ("pretrain", "sft", "dpo", "pairs", "eval", "demo",
                                                                          "augment"))
    assert "(default: 1e-05)" in shown["dpo"]["--lr"] and "(default: 0.1)" in shown["dpo"]["--beta"]
    assert shown["sft"]["--base"].endswith("(default: none)") and "(default: 1000)" in shown["sft"]["--max-steps"]


def test_generate_reads_prompts_from_stdin_a_prompt_a_line(tmp_path, tiny_model, char_tokenizer, capsys, monkeypatch):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    engine = Engine(tiny_model, char_tokenizer, get_template())
    params = SamplingParams(max_new_tokens=5)
    expected = [engine.generate([engine.encode_prompt(p)], params)[0].text for p in ("Olá", "Oi")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("Olá\r\n\nOi\n"))  # piped: not a terminal
    assert main(["generate", "--model", str(tmp_path / "c"), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == f"[1]\n{expected[0]}\n\n[2]\n{expected[1]}\n"  # each under its number
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["generate", "--model", str(tmp_path / "c")]) == 2
    assert "give prompts as arguments, with --file prompts.jsonl, or on stdin" in capsys.readouterr().err


def test_sft_from_scratch_says_so_and_no_progress_logs_a_line_every_log_every_steps(tmp_path, capsys):
    data = tmp_path / "ten.csv"
    data.write_text("pergunta;resposta\n" + "".join(f"Quanto é {i}+1?;{i + 1}\n" for i in range(10)), encoding="utf-8")
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "run"), "--tokenizer", "char", "--context-size", "32",
                 "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--max-steps", "4", "--log-every", "2",
                 "--no-progress", "--augment", "none", "--conversations", "none"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"note: no --base: training a new [\d,]+-parameter model from scratch \(--d-model 16, --n-layers 1, "
                     r"--n-heads 2, --context-size 32, \d+ tokens\); --base DIR fine-tunes a pretrained one", captured.out)
    assert "plan: " in captured.err and "steps, so the run is 4.0 epochs" in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert all(re.fullmatch(r"step \d/4 \| loss \d+\.\d{4} \| lr \S+ \| [\d,]+ tokens/s", line) for line in lines)


def answers_of(ckpt_dir, prompts, max_new_tokens=16):
    """The greedy answers, in-process, with the messages given exactly as they are (no folding asked for)."""
    ckpt = load(ckpt_dir)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    ids = [ckpt.template.encode(ckpt.tokenizer, [{"role": "user", "content": p}])[0] for p in prompts]
    return [c.text for c in engine.generate(ids, SamplingParams(max_new_tokens=max_new_tokens))]


def test_generate_file_puts_each_answer_under_its_number(ascii_ckpt, tmp_path):
    (tmp_path / "p.txt").write_text("Ola\nTudo bem?\n", encoding="utf-8")
    first, second = answers_of(ascii_ckpt, ["Ola", "Tudo bem?"])
    assert "\n" in second  # an answer of several lines
    out = run_command("generate", "--model", str(ascii_ckpt), "--file", str(tmp_path / "p.txt"), "--max-new-tokens", "16")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout == f"[1]\n{first}\n\n[2]\n{second}\n"


def test_generate_folds_what_a_char_vocabulary_lacks_and_says_so(ascii_ckpt, tmp_path, capsys):
    typed = "O que é atenção? “ok” €"
    [folded, as_unknown] = answers_of(ascii_ckpt, ['O que e atencao? "ok" €', typed])
    assert folded != as_unknown  # the folding changes what the model answers
    out = run_command("generate", "--model", str(ascii_ckpt), "--max-new-tokens", "16", typed)
    assert out.returncode == 0 and out.stdout == folded + "\n"
    note = "5 characters folded to the vocabulary: é→e, ç→c, ã→a, “→\", ”→\"; 1 unreadable: '€'"
    assert out.stderr == f"note: {note}\n"
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Tudo bem?"}) + "\n" + json.dumps({"prompt": typed}) + "\n")
    assert main(["generate", "--model", str(ascii_ckpt), "--max-new-tokens", "16", "--json", "--file",
                 str(tmp_path / "p.jsonl")]) == 0
    captured = capsys.readouterr()
    plain, accented = map(json.loads, captured.out.splitlines())
    assert "input_folding" not in plain and accented["text"] == folded
    assert accented["input_folding"]["note"] == note and accented["input_folding"]["unreadable"] == [
        {"character": "€", "count": 1}]
    assert captured.err == f"note: prompt 2: {note}\n"
