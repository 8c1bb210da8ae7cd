import subprocess
import sys

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, get_template, save
from gptmini.chat import Conversation


def test_chat_over_stdin_answers_streams_resets_and_quits(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    engine = Engine(tiny_model, char_tokenizer, get_template())
    params = SamplingParams(max_new_tokens=8)
    first = Conversation(engine).reply("Olá", params)
    convo = Conversation(engine)
    convo.reply("Olá", params)
    second = convo.reply("ação", params)
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "chat", "--model", str(tmp_path / "c"), "--max-new-tokens", "8"],
                         input="Olá\nação\n/reset\nOlá\n/quit\nnever read\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{first}\n{second}\n(conversation reset)\n{first}\n"


def test_history_is_trimmed_by_whole_turns_and_reset_starts_fresh(char_tokenizer):
    model = GPTMini(GPTConfig(vocab_size=char_tokenizer.vocab_size, context_size=128, d_model=16, n_heads=2, n_layers=1))
    engine = Engine(model, char_tokenizer, get_template())
    convo = Conversation(engine)
    convo.turns = [("abc " * 5, "x" * 10), ("ab", "y")]
    ids = convo.prompt_ids("oi", max_new_tokens=16)
    assert len(ids) <= engine.prompt_budget(16)
    assert ids == engine.encode_prompt([{"role": "user", "content": "ab"}, {"role": "assistant", "content": "y"},
                                        {"role": "user", "content": "oi"}])  # oldest turn dropped whole
    convo.reset()
    assert convo.prompt_ids("oi", 16) == Conversation(engine).prompt_ids("oi", 16)
