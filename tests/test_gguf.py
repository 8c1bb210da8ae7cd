"""GGUF export: llama.cpp (through llama-cpp-python) runs the exported file as we run the checkpoint."""
import re
from itertools import islice

import numpy as np
import pytest
import torch

from gptmini import Engine, GPTConfig, GPTMini, GptminiError, SamplingParams, Tokenizer, get_template, save
from gptmini.data.corpus import ASSETS
from gptmini.gguf_export import MODELFILE, export_gguf, modelfile

CORPUS = (ASSETS / "corpus" / "portugues_geral.txt").read_text(encoding="utf-8")
# A page: prose from the corpus, then what splitting rules trip on: digits, currency, ordinals,
# quotes and dashes, contractions, runs of spaces, tabs, blank lines, trailing spaces, a symbol.
PAGE = CORPUS[:2500] + (
    "\n\nEm 2024, o preço subiu 12,5% — de R$ 3.499,90 para R$ 3.937,39!\n\n\tPerguntas: «Você já viu?» "
    "'Sim', disse ela... (ver pág. 42)\n  Ação/Reação: 1º lugar; 2ª vez.   Fim.   \nIt's d'água, we'll see.\n"
    "CAFÉ ☕ às 7h30: pão-de-queijo & suco (R$10)?\n\n\n")
PROMPTS = ["O que é um modelo de linguagem?", "Todos os dias, Mariana", "Em 2024, 12,5%"]


MISSING = ("llama.cpp's Python bindings are missing: pip install -e '.[dev]' (builds llama-cpp-python from source; "
           "needs cmake and a C++ compiler)")


def llama_cpp():
    return pytest.importorskip("llama_cpp", reason=MISSING)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe([(ASSETS / "corpus" / name).read_text(encoding="utf-8")
                                for name in ("portugues_geral.txt", "ia_e_computacao.txt")], vocab_size=1000)


def checkpoint(path, tokenizer, tied=True, kv_heads=4):
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=tokenizer.vocab_size + 24, context_size=128, d_model=64, n_heads=4,
                              n_kv_heads=kv_heads, n_layers=2, tie_embeddings=tied)).eval()
    save(path, model, tokenizer, {"template": get_template().to_dict()})
    return model


def load(path, **kwargs):
    return llama_cpp().Llama(str(path), n_ctx=128, n_threads=torch.get_num_threads(), verbose=False, **kwargs)


def llama_greedy(llm, ids: list[int], n: int, eot: int) -> list[int]:
    """llama.cpp's greedy continuation: up to n tokens, end-of-text ends it (and is left out, as ours does)."""
    llm.reset()
    out = []
    for token in islice(llm.generate(ids, temp=0.0), n):
        if token == eot:
            break
        out.append(token)
    return out


def test_llama_cpp_tokenises_a_portuguese_page_as_we_do(tmp_path, tokenizer):
    checkpoint(tmp_path / "ours", tokenizer)
    export_gguf(tmp_path / "ours", tmp_path / "m.gguf")
    llm = load(tmp_path / "m.gguf", vocab_only=True)
    ours = tokenizer.encode(PAGE)
    assert llm.tokenize(PAGE.encode(), add_bos=False) == ours
    assert llm.detokenize(ours).decode() == PAGE
    # "<|endoftext|>" typed in text stays text for both (only the template code emits the token)
    assert llm.tokenize(b"fim <|endoftext|>", add_bos=False) == tokenizer.encode("fim <|endoftext|>")


@pytest.mark.parametrize("tied,kv_heads", [(True, 4), (False, 2)])
def test_f32_gguf_gives_our_logits_and_greedy_tokens_in_llama_cpp(tmp_path, tokenizer, tied, kv_heads):
    model = checkpoint(tmp_path / "ours", tokenizer, tied, kv_heads)
    export_gguf(tmp_path / "ours", tmp_path / "m.gguf", "f32")
    llm = load(tmp_path / "m.gguf", logits_all=True)
    ids = tokenizer.encode(PAGE)[:128]
    llm.eval(ids)
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(llm.scores[:len(ids)] - expected).max() <= 1e-3
    engine = Engine(model, tokenizer)
    for prompt in PROMPTS:
        prompt_ids = tokenizer.encode(prompt)
        [ours] = engine.generate([prompt_ids], SamplingParams(max_new_tokens=24))
        assert llama_greedy(llm, prompt_ids, 24, tokenizer.eot_id) == ours.token_ids


def test_q8_0_and_f16_files_are_smaller_and_close(tmp_path, tokenizer):
    model = checkpoint(tmp_path / "ours", tokenizer)
    ids = tokenizer.encode(PAGE)[:64]
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0][0].numpy()
    sizes = {}
    for dtype, tolerance in (("f16", 1e-2), ("q8_0", 5e-2)):
        sizes[dtype] = export_gguf(tmp_path / "ours", tmp_path / f"{dtype}.gguf", dtype).stat().st_size
        llm = load(tmp_path / f"{dtype}.gguf", logits_all=True)
        llm.eval(ids)
        assert np.abs(llm.scores[:len(ids)] - expected).max() <= tolerance, dtype
    f32 = export_gguf(tmp_path / "ours", tmp_path / "f32.gguf").stat().st_size
    assert sizes["q8_0"] < 0.6 * sizes["f16"] < 0.6 * f32


def test_modelfile_template_renders_conversations_as_our_template(tmp_path, tokenizer):
    checkpoint(tmp_path / "ours", tokenizer)
    export_gguf(tmp_path / "ours", tmp_path / "out" / "m.gguf")
    text = (tmp_path / "out" / MODELFILE).read_text(encoding="utf-8")
    assert text.startswith("FROM ./m.gguf\n") and 'PARAMETER stop "<|endoftext|>"\n' in text
    assert "PARAMETER num_ctx 128\n" in text
    [go] = re.findall(r'TEMPLATE """(.*?)"""', text, re.DOTALL)
    conversations = [
        [{"role": "user", "content": "Oi"}],
        [{"role": "system", "content": "Seja breve."}, {"role": "user", "content": "Oi"}],
        [{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Olá!"},
         {"role": "user", "content": "Tudo bem?\nDiga."}],
    ]
    template = get_template()
    for messages in conversations:
        ids, _ = template.encode(tokenizer, messages)
        assert ollama_render(go, messages) == tokenizer.backend.decode(ids, skip_special_tokens=False)


def ollama_render(go: str, messages: list[dict]) -> str:
    """Ollama's rendering of a template without .Messages (template.Execute, legacy path).

    Past turns are rendered whole with their System/Prompt/Response; the last one up to
    .Response (Ollama cuts the template after it). The template may hold only the five actions
    below, whose Go semantics are what the substitutions do, so this rendering is Go's.
    """
    actions = set(re.findall(r"{{.*?}}", go))
    assert actions <= {"{{ if .System }}", "{{ end }}", "{{ .System }}", "{{ .Prompt }}", "{{ .Response }}"}, actions

    def execute(source: str, values: dict) -> str:
        source = re.sub(r"{{ if \.System }}(.*?){{ end }}", lambda m: m[1] if values["System"] else "", source,
                        flags=re.DOTALL)
        for name, value in values.items():
            source = source.replace(f"{{{{ .{name} }}}}", value)
        return source

    out, turn = "", {"System": "", "Prompt": "", "Response": ""}
    for m in messages:
        role = {"system": "System", "user": "Prompt", "assistant": "Response"}[m["role"]]
        if (role == "Prompt" and turn["Response"]) or (role == "System" and (turn["Prompt"] or turn["Response"])):
            out, turn = out + execute(go, turn), {"System": "", "Prompt": "", "Response": ""}
        turn[role] = m["content"]
    return out + execute(go[:go.index("{{ .Response }}") + len("{{ .Response }}")], turn)


def test_modelfile_without_a_template_passes_the_prompt_through():
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile("m.gguf", None, "<|endoftext|>", 64)


def test_char_tokenizer_checkpoint_is_refused_with_the_reason_and_the_fix(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "char", tiny_model, char_tokenizer)
    with pytest.raises(GptminiError, match=r"character-level tokenizer; GGUF runtimes .* --tokenizer bpe"):
        export_gguf(tmp_path / "char", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_cli_export_gguf_and_the_flags_it_refuses(tmp_path, tokenizer, capsys):
    from gptmini.cli import main

    checkpoint(tmp_path / "ours", tokenizer)
    assert main(["export", "--model", str(tmp_path / "ours"), "--format", "gguf", "--dtype", "q8_0",
                 "--out", str(tmp_path / "g" / "m.gguf")]) == 0
    assert f"wrote {tmp_path / 'g' / 'm.gguf'} (GGUF, q8_0; llama.cpp, Ollama)" in capsys.readouterr().out
    assert (tmp_path / "g" / MODELFILE).is_file()
    assert main(["export", "--model", str(tmp_path / "ours"), "--format", "gguf", "--adapter", "--out", "x"]) == 2
    assert "--adapter writes PEFT files for transformers" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "ours"), "--dtype", "f16", "--out", "x"]) == 2
    assert "--dtype f16 applies to --format gguf" in capsys.readouterr().err


def test_q8_0_keeps_rows_not_in_blocks_of_32_in_f16(tmp_path, tokenizer):
    import gguf

    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=tokenizer.vocab_size, context_size=64, d_model=48, n_heads=4, n_layers=1)).eval()
    save(tmp_path / "ours", model, tokenizer)
    export_gguf(tmp_path / "ours", tmp_path / "m.gguf", "q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 48 / 128
    assert types["blk.0.attn_norm.weight"] == "F32"
    llm = load(tmp_path / "m.gguf", logits_all=True)
    ids = tokenizer.encode(PAGE)[:64]
    llm.eval(ids)
    with torch.no_grad():
        assert np.abs(llm.scores[:len(ids)] - model(torch.tensor([ids]))[0][0].numpy()).max() <= 5e-2
