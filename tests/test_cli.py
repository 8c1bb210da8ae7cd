import subprocess
import sys

from gptmini import Engine, SamplingParams, get_template, save
from gptmini.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gptmini.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_verbs():
    out = run_cli("--help")
    assert out.returncode == 0 and "generate" in out.stdout


def test_generate_prints_the_answer(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    engine = Engine(tiny_model, char_tokenizer, get_template())
    prompt = engine.encode_prompt([{"role": "user", "content": "Olá"}])
    expected = engine.generate([prompt], SamplingParams(max_new_tokens=7))[0].text
    assert main(["generate", "--model", str(tmp_path / "c"), "--max-new-tokens", "7", "Olá"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_bad_checkpoint_is_one_clear_line_without_traceback(tmp_path):
    out = run_cli("generate", "--model", str(tmp_path / "nope"), "hi")
    assert out.returncode == 2
    assert out.stderr.strip() == f"gptmini generate: error: {tmp_path / 'nope'}: checkpoint directory not found"
