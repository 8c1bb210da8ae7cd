import json

import pytest
import torch

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer, load, save
from gptmini.chat import answers_at_turn
from gptmini.data.corpus import ASSETS
from gptmini.sft import sft
from gptmini.transfer import load_legacy_state_dict, transfer

from .conftest import run_command

SEED_ARGS = ["--base", "none", "--tokenizer", "char", "--data", str(ASSETS / "seed.jsonl"), "--context-size", "256",
             "--d-model", "128", "--n-heads", "4", "--n-layers", "2", "--lr", "5e-4", "--batch-size", "8",
             "--max-steps", "401"]
SEED = [json.loads(line) for line in (ASSETS / "seed.jsonl").read_text(encoding="utf-8").splitlines()]


def cli(*args):
    return run_command(*args, timeout=300)  # an SFT run of its own, and its answer


def typed(question: str) -> str:
    """As people type it: lower case, no punctuation ("O que e um LLM?" -> "o que e um llm")."""
    return "".join(c for c in question.lower() if c.isalnum() or c == " ")


def answers(run_dir, form=lambda question: question):
    ckpt = load(run_dir)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    prompts = [engine.encode_prompt([{"role": "user", "content": form(r["instruction"])}]) for r in SEED]
    return [c.text for c in engine.generate(prompts, SamplingParams(max_new_tokens=150))]


def test_seed_parity_exact_cli_commands(tmp_path):
    out = cli("sft", *SEED_ARGS, "--seed", "0", "--out", tmp_path / "run", "--no-progress")
    assert out.returncode == 0, out.stderr
    answer = cli("generate", "--model", tmp_path / "run", "Explique Machine Learning")  # the run folder: its last/
    assert answer.stdout == SEED[0]["response"] + "\n"
    assert answers(tmp_path / "run" / "last", typed) == [r["response"] for r in SEED]


@pytest.mark.parametrize("seed", [1, 2])
def test_seed_parity_on_more_seeds(tmp_path, seed):
    sft(tmp_path / "run", ASSETS / "seed.jsonl", base="none", tokenizer="char",
        model={"context_size": 256, "d_model": 128, "n_heads": 4, "n_layers": 2},
        train={"lr": 5e-4, "batch_size": 8, "max_steps": 401, "seed": seed, "show_progress": False})
    assert answers(tmp_path / "run" / "last") == [r["response"] for r in SEED]
    assert answers(tmp_path / "run" / "last", typed) == [r["response"] for r in SEED]  # lower case, no punctuation


def tiny_base(tmp_path, texts):
    tok = Tokenizer.train_char(texts)
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=128, d_model=32, n_heads=4, n_layers=2))
    save(tmp_path / "base", model, tok, {"kind": "base"})
    return model, tok


def test_sft_from_a_base_reuses_every_tensor_and_saves_the_template(tmp_path, capsys):
    texts = [r["instruction"] + r["response"] for r in SEED] + ["### Comando:\nResposta"]
    model, tok = tiny_base(tmp_path, texts)
    summary = sft(tmp_path / "run", ASSETS / "seed.jsonl", base=str(tmp_path / "base"),
                  train={"max_steps": 3, "batch_size": 4, "show_progress": False})
    assert summary["steps"] == 3
    n_tensors = len(list(model.parameters()))
    assert f"weight transfer: {n_tensors} tensors loaded, 0 skipped" in capsys.readouterr().out
    ckpt = load(tmp_path / "run" / "last")
    assert ckpt.template.name == "comando" and ckpt.meta["source"]["base"] == str(tmp_path / "base")
    assert ckpt.tokenizer.vocab() == tok.vocab()
    moved = sum(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), ckpt.model.state_dict().values()))
    assert moved > 0  # trained from the base's weights, with the base's tokenizer


def test_fine_tuning_takes_dropout_but_keeps_the_base_shape(tmp_path, capsys):
    tiny_base(tmp_path, [r["instruction"] + r["response"] for r in SEED] + ["### Comando:\nResposta"])
    sft(tmp_path / "run", ASSETS / "seed.jsonl", base=str(tmp_path / "base"), model={"dropout": 0.2, "d_model": 64},
        train={"max_steps": 1, "batch_size": 4, "show_progress": False})
    config = load(tmp_path / "run" / "last").model.config
    assert config.dropout == 0.2 and config.d_model == 32
    assert "model flags ['d_model'] ignored" in capsys.readouterr().out


def test_vocabulary_change_remaps_embedding_rows_by_token_string(tmp_path):
    model, tok = tiny_base(tmp_path, ["abc"])
    new_tok = Tokenizer.train_char(["abcz"])
    new_model = GPTMini(GPTConfig(**{**model.config.to_dict(), "vocab_size": new_tok.vocab_size}))
    report = transfer(model.state_dict(), new_model, tok, new_tok)
    assert not report.skipped and report.rows_mapped == tok.vocab_size and report.rows_new == 1
    for ch in "abc":
        assert torch.equal(new_model.embed.weight[new_tok.token_to_id(ch)], model.embed.weight[tok.token_to_id(ch)])
    assert torch.allclose(new_model.embed.weight[new_tok.token_to_id("z")], model.embed.weight.mean(0))
    assert "1 new" in str(report)


def test_legacy_state_dict_loads_safely_with_shape_matching(tmp_path):
    model, _ = tiny_base(tmp_path, ["abc"])
    state = {**model.state_dict(), "old.head.weight": torch.zeros(3)}
    state["blocks.0.mlp.down.weight"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "gpt_checkpoint.pt")
    target = GPTMini(model.config)
    report = transfer(load_legacy_state_dict(tmp_path / "gpt_checkpoint.pt"), target)
    assert "blocks.0.mlp.down.weight: shape (5, 5) in the base, (32, 96) here" in report.skipped
    assert "old.head.weight: no such tensor in this model" in report.skipped
    assert torch.equal(target.blocks[1].mlp.down.weight, model.blocks[1].mlp.down.weight)


def test_show_masks_marks_the_response_and_eos():
    out = cli("sft", "--show-masks", "1", "--data", ASSETS / "seed.jsonl")
    assert out.returncode == 0
    assert f"### Resposta:\n⟦{SEED[0]['response']}<|endoftext|>⟧" in out.stdout


def test_sft_bad_input_is_one_clear_line(tmp_path, run_main):
    pira = tmp_path / "p.jsonl"
    pira.write_text('{"pergunta_pt": "a", "resposta_pt": "b"}\n')  # pergunta/resposta itself is recognised
    code, stderr = run_main("sft", "--data", pira, "--out", tmp_path / "run")
    assert code == 2 and "--fields" in stderr and "p.jsonl:1" in stderr
    code, stderr = run_main("sft", "--base", tmp_path / "missing", "--out", tmp_path / "run")
    assert code == 2 and "checkpoint directory not found" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "run" / "last").exists()


def conversation_answers(run_dir, turn):
    ckpt = load(run_dir)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    return answers_at_turn(engine, [r["instruction"] for r in SEED], turn, SamplingParams(max_new_tokens=120))


def test_turn_three_is_answered_as_turn_one_only_when_trained_on_conversations(tmp_path):
    """Each of the course's questions asked third in a conversation (after two others and the model's own
    answers): right with the default conversations, not all right without them (so the test can fail)."""
    for turns in (4, 0):
        sft(tmp_path / str(turns), ASSETS / "seed.jsonl", base="none", tokenizer="char", conversations=turns,
            model={"context_size": 512, "d_model": 128, "n_heads": 4, "n_layers": 2},
            train={"lr": 2e-3, "batch_size": 8, "max_steps": 250, "seed": 0, "show_progress": False})
    references = [r["response"] for r in SEED]
    assert conversation_answers(tmp_path / "4" / "last", 1) == references
    assert conversation_answers(tmp_path / "4" / "last", 3) == references
    assert conversation_answers(tmp_path / "0" / "last", 3) != references


def captured_batches(monkeypatch):
    """sft's training batches, as the Trainer is handed them (the run itself is skipped)."""
    import gptmini.sft as sft_module

    seen = {}

    class Capture:
        def __init__(self, net, tok, train_batches, *rest):
            seen.update(batches=train_batches, tokenizer=tok)

        def run(self):
            return {}

    monkeypatch.setattr(sft_module, "Trainer", Capture)
    return seen


def trained_questions(seen, epochs=3):
    """The question of every training sequence of the first epochs, as text."""
    batches, tok = seen["batches"], seen["tokenizer"]
    texts = []
    for epoch in range(epochs):
        batches.load_state_dict({"epoch": epoch, "index": 0})
        texts += [tok.decode(ids) for ids, _ in batches.sequences]
    return texts


def test_variants_and_conversations_come_from_training_records_only(tmp_path, monkeypatch):
    seen = captured_batches(monkeypatch)
    records = [{"instruction": f"Qual é o prazo número {i}?", "response": f"O prazo {i} é de {i} dias."} for i in range(40)]
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    sft(tmp_path / "run", data, base="none", tokenizer="bpe", vocab_size=300, val_fraction=0.25,
        model={"context_size": 128, "d_model": 32, "n_heads": 2, "n_layers": 1}, train={"max_steps": 1, "show_progress": False})
    texts = trained_questions(seen)
    trained = {r["response"] for r in records if any(r["response"] in t for t in texts)}
    assert len(trained) == 30  # the 10 validation answers never appear, neither alone nor in a variant or conversation
    assert sum(t.count("### Comando:") > 1 for t in texts) > 10  # conversations are there
    assert sum(t.count("### Comando:") for t in texts) > 3 * 30 * 20  # 27 variants a record each epoch (auto for 30), not the records alone


def test_augment_none_and_conversations_none_train_the_records_alone(tmp_path, monkeypatch):
    seen = captured_batches(monkeypatch)
    sft(tmp_path / "run", ASSETS / "seed.jsonl", base="none", tokenizer="char", augment=0, conversations=0,
        model={"context_size": 256, "d_model": 32, "n_heads": 2, "n_layers": 1}, train={"max_steps": 1, "show_progress": False})
    texts = trained_questions(seen)
    assert sorted(texts) == sorted(
        f"### Comando:\n{r['instruction']}\n\n### Resposta:\n{r['response']}" for r in SEED for _ in range(3))
