import io
import subprocess
import sys

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, get_template, load, save
from gptmini.chat import HELP, Conversation, run_chat


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
    assert out.stdout == f"[1]\n{first}\n\n[2]\n{second}\n(conversation reset)\n\n[3]\n{first}\n"  # numbered


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


def test_commands_and_end_of_input_in_process(tiny_model, char_tokenizer):
    engine = Engine(tiny_model, char_tokenizer, get_template())
    params = SamplingParams(max_new_tokens=8)
    deltas = []
    answer = Conversation(engine).reply("Olá", params, on_text=lambda _, d: deltas.append(d))
    assert len(answer) > 1 and deltas == list(answer)  # streamed: one piece per (character) token
    stdin = io.StringIO("/temp abc\n/temp -1\n/temp 0\n/bogus\n\n   \nOlá\n")  # then end of input, no /quit
    stdout = io.StringIO()
    run_chat(Conversation(engine), params, stdin, stdout)
    usage = "(usage: /temp 0.7 — a number >= 0; 0 = greedy)\n"
    unknown = f"(unknown command; {HELP})\n"
    # blank lines are not turns; no prompt marker when stdin is not a terminal
    assert stdout.getvalue() == usage * 2 + "(temperature 0.0)\n" + unknown + "[1]\n" + answer + "\n"


def test_system_message_stays_when_history_is_trimmed(char_tokenizer):
    model = GPTMini(GPTConfig(vocab_size=char_tokenizer.vocab_size, context_size=128, d_model=16, n_heads=2, n_layers=1))
    engine = Engine(model, char_tokenizer, get_template())
    convo = Conversation(engine, system="Seja breve.")
    system = {"role": "system", "content": "Seja breve."}
    assert convo.prompt_ids("oi", 16) == engine.encode_prompt([system, {"role": "user", "content": "oi"}])
    convo.turns = [("abc " * 8, "x" * 10)]
    assert convo.prompt_ids("oi", 16) == engine.encode_prompt([system, {"role": "user", "content": "oi"}])


def test_piped_chat_numbers_multiline_answers_and_says_what_the_vocabulary_folded(ascii_ckpt, capsys):
    ckpt = load(ascii_ckpt)
    convo = Conversation(Engine(ckpt.model, ckpt.tokenizer, ckpt.template), system="Responda já")
    params = SamplingParams(max_new_tokens=16)
    first, second = convo.reply("Olá", params), convo.reply("Tem estacionamento?", params)
    assert "\n" in second  # an answer of several lines: the numbers keep the answers apart
    capsys.readouterr()
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "chat", "--model", str(ascii_ckpt), "--system",
                          "Responda já", "--max-new-tokens", "16"], input="Olá\nTem estacionamento?\n", capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"[1]\n{first}\n\n[2]\n{second}\n"
    # once, for what was new in that prompt: the system message and the first question, then nothing more
    assert out.stderr == "note: prompt 1: 2 characters folded to the vocabulary: á→a\n"
