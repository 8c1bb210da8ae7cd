"""Every command, fed malformed input: one line naming the file, exit 2, no traceback, nothing touched."""
import hashlib
import json
from pathlib import Path

import pytest

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template, save

from ..conftest import run_command

GOOD = '{"instruction": "Olá", "response": "Oi!"}\n'


def snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    tok = Tokenizer.train_char(["Olá Oi! abc ### Comando:\n Resposta"])
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=32, d_model=16, n_heads=2, n_layers=1))
    save(root / "ckpt", model, tok, {"template": get_template().to_dict()})
    for name in ("no_weights", "corrupt_weights", "bad_config", "wrong_shape", "no_tokenizer"):
        save(root / name, model, tok, {"template": get_template().to_dict()})
    (root / "no_weights" / "model.safetensors").unlink()
    (root / "corrupt_weights" / "model.safetensors").write_bytes(b"\x00" * 100)
    (root / "bad_config" / "config.json").write_text("{ not json")
    config = json.loads((root / "wrong_shape" / "config.json").read_text())
    config["model"]["n_layers"] = 3
    (root / "wrong_shape" / "config.json").write_text(json.dumps(config))
    (root / "no_tokenizer" / "tokenizer.json").unlink()
    files = {
        "truncated.json": '[{"instruction": "a", "response": "b"}, {"instr',
        "bad_middle.jsonl": GOOD + '{"instruction": "a" "response": "b"}\n' + GOOD,
        "wrong_fields.jsonl": '{"q": "a", "a": "b"}\n',  # no recognised shape
        "number.jsonl": '{"instruction": [5], "response": "b"}\n',  # a list: numbers alone are read as text
        "empty.jsonl": "",
        "empty.txt": "",
        "huge_line.jsonl": '{"instruction": "' + "a" * 200_000 + '", "response": {"n": 7}}\n',
        "unclosed.csv": 'pergunta,resposta\nOi,Olá\n"Aberta,sem fim\n',
        "extra_values.csv": "pergunta,resposta\nOi,Olá, tudo bem?\n",
        "not_a_list.json": '{"instruction": "a"}',
        "good.jsonl": GOOD,
        # Preference pairs (dpo): each problem names its line.
        "no_rejected.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n',
        "prompt_only.jsonl": '{"prompt": "a"}\n',
        "number_pair.jsonl": '{"prompt": "a", "chosen": [5], "rejected": "c"}\n',
        "same_pair.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "b"}\n',
        "good_pair.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c"}\n',
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("ação e não".encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"instruction": "ação", "response": "b"}\n'.encode("latin-1"))
    (root / "latin1.csv").write_bytes("pergunta;resposta\nQual é a função?;Focar.\n".encode("latin-1"))
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("existing output")
    return root


def case_args(root: Path) -> dict[str, tuple[list, str]]:
    """name -> (arguments, text the error line must contain)."""
    data = lambda name: ["sft", "--data", str(root / name), "--out", str(root / "out" / "sft")]  # noqa: E731
    c = lambda name: str(root / name)  # noqa: E731
    cases = {f"sft:{n}": (data(n), n) for n in ("truncated.json", "bad_middle.jsonl", "wrong_fields.jsonl",
                                               "number.jsonl", "empty.jsonl", "huge_line.jsonl", "binary.jsonl",
                                               "latin1.jsonl", "not_a_list.json", "missing.jsonl")}
    cases["sft:bad_middle.jsonl"] = (data("bad_middle.jsonl"), "bad_middle.jsonl:2")
    cases["sft:wrong_fields.jsonl"] = (data("wrong_fields.jsonl"), "--fields")
    for name in ("empty.txt", "latin1.txt", "missing.txt", "binary.jsonl"):
        cases[f"pretrain:{name}"] = (["pretrain", "--data", c(name), "--out", c("out/pre"), "--tokenizer", "char"], name)
    for name in ("no_weights", "corrupt_weights", "bad_config", "wrong_shape", "no_tokenizer", "missing_ckpt"):
        cases[f"generate:{name}"] = (["generate", "--model", c(name), "hi"], name)
        cases[f"export:{name}"] = (["export", "--model", c(name), "--out", c("out/hf")], name)
        cases[f"sft-base:{name}"] = (["sft", "--base", c(name), "--data", c("bad_middle.jsonl"), "--out", c("out/s2")], "")
    for name in ("no_weights", "corrupt_weights", "wrong_shape", "missing_ckpt"):
        cases[f"chat:{name}"] = (["chat", "--model", c(name)], name)
        cases[f"serve:{name}"] = (["serve", "--model", c(name), "--port", "1"], name)
        cases[f"eval-model:{name}"] = (["eval", "--model", c(name), "--data", c("number.jsonl").replace("number", "good")], name)
    for name in ("truncated.json", "bad_middle.jsonl", "number.jsonl", "binary.jsonl", "latin1.jsonl", "missing.jsonl"):
        cases[f"eval:{name}"] = (["eval", "--model", c("ckpt"), "--data", c(name), "--out", c("out/eval")], name)
    cases["eval-compare:corrupt"] = (["eval", "--model", c("ckpt"), "--compare", c("corrupt_weights"), "--data",
                                      c("good.jsonl"), "--out", c("out/eval")], "corrupt_weights")
    cases["generate:bad_file"] = (["generate", "--model", c("ckpt"), "--file", c("wrong_fields.jsonl")], "wrong_fields.jsonl:1")
    cases["import-hf:not_hf"] = (["import-hf", c("ckpt"), "--out", c("out/imp")], "ckpt")
    cases["generate:bad_template"] = (["generate", "--model", c("ckpt"), "--template", c("empty.txt"), "hi"], "empty.txt")
    # Data as users have it (issue 16): each reading verb names the line and the fix.
    new_data = {"latin1.csv": "latin1.csv:2: not UTF-8 text", "wrong_fields.jsonl": "fits no recognised shape",
                "unclosed.csv": "unclosed.csv:3: malformed CSV", "extra_values.csv": "extra_values.csv:2: 3 values"}
    for name, expected in new_data.items():
        cases[f"sft:{name}"] = (data(name), expected)
        cases[f"eval:{name}"] = (["eval", "--model", c("ckpt"), "--data", c(name), "--out", c("out/eval")], expected)
        cases[f"generate-file:{name}"] = (["generate", "--model", c("ckpt"), "--file", c(name)], expected)
    cases["sft:latin1.csv"] = (data("latin1.csv"), "--encoding latin-1")
    cases["sft:unknown_encoding"] = ([*data("good.jsonl"), "--encoding", "klingon"], "--encoding 'klingon'")
    # Numeric flags out of range stop at parsing, before any data or model is read.
    cases["sft:val_fraction_20"] = ([*data("good.jsonl"), "--val-fraction", "20"], "--val-fraction: must be a number in [0, 1)")
    cases["sft:epochs_and_max_steps"] = ([*data("good.jsonl"), "--epochs", "3", "--max-steps", "50"], "give one of them")
    dpo = lambda name: ["dpo", "--base", c("ckpt"), "--data", c(name), "--out", c("out/dpo")]  # noqa: E731
    pair_errors = {"no_rejected.jsonl": "no_rejected.jsonl:2: record lacks field 'rejected'",
                   "prompt_only.jsonl": "prompt_only.jsonl:1: record lacks field 'chosen'",
                   "number_pair.jsonl": "number_pair.jsonl:1: field 'chosen' must be text",
                   "same_pair.jsonl": "same_pair.jsonl:1: chosen equals rejected", "empty.jsonl": "empty.jsonl",
                   "binary.jsonl": "binary.jsonl:2: not UTF-8", "truncated.json": "truncated.json:1"}
    for name, expected in pair_errors.items():
        cases[f"dpo:{name}"] = (dpo(name), expected)
    cases["dpo:no_base"] = (["dpo", "--data", c("good.jsonl"), "--out", c("out/dpo")], "--base is required")
    cases["dpo:corrupt_base"] = (["dpo", "--base", c("corrupt_weights"), "--data", c("good_pair.jsonl"), "--out",
                                  c("out/dpo")], "corrupt_weights")
    for name in ("binary.jsonl", "wrong_fields.jsonl"):
        cases[f"pairs:{name}"] = (["pairs", "--model", c("ckpt"), "--data", c(name), "--out", c("out/p.jsonl")], name)
    cases["pairs:corrupt"] = (["pairs", "--model", c("corrupt_weights"), "--data", c("good.jsonl"), "--out",
                               c("out/p.jsonl")], "corrupt_weights")
    cases["sft:lr_negative"] = ([*data("good.jsonl"), "--lr", "-0.001"], "--lr: must be a number > 0")
    cases["pretrain:batch_size_0"] = (["pretrain", "--out", c("out/pre"), "--batch-size", "0"], "--batch-size: must be an integer > 0")
    cases["generate:top_p_2"] = (["generate", "--model", c("ckpt"), "--top-p", "2", "hi"], "--top-p: must be a number in (0, 1]")
    cases["eval:temperature_nan"] = (["eval", "--model", c("ckpt"), "--data", c("good.jsonl"), "--temperature", "nan"],
                                     "--temperature: must be a number")
    return cases


CASES = sorted(case_args(Path("/x")))
# The installed command itself, in a process of its own, for a sample; the rest through run_main.
IN_A_PROCESS = ["sft:bad_middle.jsonl", "generate:corrupt_weights", "sft:val_fraction_20", "dpo:same_pair.jsonl"]


def assert_one_clear_line(code: int, stderr: str, expected: str) -> None:
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2, stderr
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    assert expected in errors[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_clear_line(world, case, run_main):
    args, expected = case_args(world)[case]
    before = snapshot(world)
    assert_one_clear_line(*run_main(*args), expected)
    assert snapshot(world) == before  # no existing file was modified (nor any new output kept)


@pytest.mark.parametrize("case", IN_A_PROCESS)
def test_the_installed_command_says_the_same_in_its_own_process(world, case):
    args, expected = case_args(world)[case]
    before = snapshot(world)
    out = run_command(*args)
    assert_one_clear_line(out.returncode, out.stderr, expected)
    assert snapshot(world) == before
