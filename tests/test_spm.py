"""A SentencePiece-style Llama base (TeenyTinyLlama / Tucano type), built here in miniature: BPE with byte
fallback (<0x00>..<0xFF>), a Metaspace "▁", <s> added in front, </s> ending a text, the config keys those
models' tokenizer_config.json / config.json have. Imported, fine-tuned, served and exported, it must agree
with transformers and llama.cpp token for token."""
import json
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from gptmini import Engine, SamplingParams, get_template, load
from gptmini.data.corpus import ASSETS
from gptmini.gguf_export import export_gguf
from gptmini.hf import export
from gptmini.sft import sft

transformers = pytest.importorskip("transformers")

TEXTS = ["O Brasil é um país enorme e bonito.", "Qual é a capital do Brasil? A capital é Brasília.",
         "Olá, tudo bem? Tudo ótimo, obrigado!", "A água do mar é salgada e o céu é azul.",
         "Responda em português: quanto é dois mais dois? Quatro."]
# Words it knows, accents, an emoji and a "ç" it never saw as one token (byte fallback), a line break,
# runs of spaces: where a SentencePiece tokenizer differs from byte-level BPE.
PROBES = ["Olá, tudo bem?", "O céu 🌵 é azul.\nLinha dois", "  dois  espaços", "Qual é a capital do Brasil?",
          "ação, coração e pão"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as in TeenyTinyLlama
RECORDS = [{"pergunta": "Qual é a capital do Brasil?", "resposta": "A capital é Brasília."},
           {"pergunta": "O mar é salgado?", "resposta": "Sim, a água do mar é salgada."},
           {"pergunta": "Quanto é dois mais dois?", "resposta": "Quatro."},
           {"pergunta": "De que cor é o céu?", "resposta": "O céu é azul."}]


def spm_tokenizer(legacy: bool = False) -> HFTokenizer:
    """Trained as TeenyTinyLlama's was (SentencePiece-style BPE), then laid out as Llama's tokenizer.json:
    specials, the 256 byte tokens, the learned pieces. legacy: Llama 2's Prepend+Replace normalizer instead
    of the Metaspace pre-tokenizer."""
    trainer_side = HFTokenizer(models.BPE())
    trainer_side.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trainer_side.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = json.loads(trainer_side.to_str())["model"]
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = HFTokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def write_base(path, legacy: bool = False):
    tok = spm_tokenizer(legacy)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=3, tie_word_embeddings=False, use_cache=False)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048,
        "padding_side": "right", "tokenizer_class": "LlamaTokenizer"}))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_base(tmp_path_factory.mktemp("ttl") / "TeenyTinyLlama-mini")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "faq.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def hf_logits(model_dir, ids: list[int]) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_tokens_equal_the_models_own_tokenizer(base):
    ours, theirs = load(base).tokenizer, transformers.AutoTokenizer.from_pretrained(base)
    assert (ours.kind, ours.bos_id, ours.eot_id, ours.pad_id, ours.unk_id) == ("spm", 1, 2, 3, 0)
    for text in PROBES:
        ids = ours.encode(text, start=True)
        assert ids == theirs(text).input_ids, text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert any(ours.id_to_token(i).startswith("<0x") for i in ours.encode(PROBES[1]))  # byte fallback was exercised
    # A piece that continues a sequence gets no "▁" in front: "Olá" after a prompt is not " Olá".
    assert ours.id_to_token(ours.encode("Olá")[0]).startswith("▁")
    assert not ours.id_to_token(ours.encode_next("Olá")[0]).startswith("▁")
    ids, labels = get_template().encode(ours, [{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Olá"}])
    assert ids[0] == 1 and ids[-1] == 2 and labels[-1] == 2  # BOS opens it, </s> ends the answer (and is learned)


def test_llama2_normalizer_form_reads_the_same(tmp_path):
    """Llama 2's (and TeenyTinyLlama's) tokenizer.json puts "▁" in front with a normalizer, not Metaspace."""
    raw = spm_tokenizer(legacy=True)
    ours = load(write_base(tmp_path / "legacy", legacy=True)).tokenizer
    for text in PROBES:
        assert ours.encode(text, start=True) == raw.encode(text).ids
    assert not ours.id_to_token(ours.encode_next("Olá")[0]).startswith("▁")


def test_import_hf_gives_transformers_logits(tmp_path, base):
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "import-hf", str(base), "--out", str(tmp_path / "ours")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ckpt = load(tmp_path / "ours")
    ids = ckpt.tokenizer.encode(" ".join(PROBES), start=True)
    with torch.no_grad():
        assert (ckpt.model(torch.tensor([ids]))[0][0] - hf_logits(base, ids)).abs().max() <= 1e-4
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())["tokenizer"]
    assert saved["kind"] == "spm" and saved["specials"] == {"eot": "</s>", "pad": "<pad>", "unk": "<unk>", "bos": "<s>"}


def test_eos_from_generation_config_when_the_tokenizer_config_has_none(tmp_path):
    base = write_base(tmp_path / "b")
    (base / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    tok = load(base).tokenizer
    assert tok.eot_id == 2 and tok.bos_id == 1  # generation_config's eos_token_id; the post-processor's <s>


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, base, data):
    """sft straight from the transformers directory, in full and with LoRA."""
    root = tmp_path_factory.mktemp("runs")
    train = {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "show_progress": False, "eval_every": 100}
    sft(root / "full", data, str(base), template="comando", val_fraction=0, train=train)
    sft(root / "lora", data, str(base), template="comando", val_fraction=0, train=train, lora_rank=4)
    return root


@pytest.mark.parametrize("run", ["full", "lora"])
def test_sft_from_the_hf_dir_trains_and_generates(tuned, base, run):
    ckpt, before = load(tuned / run), load(base)
    assert ckpt.tokenizer.bos_id == 1 and ckpt.tokenizer.kind == "spm"
    changed = (ckpt.model.blocks[0].attn.qkv.weight - before.model.blocks[0].attn.qkv.weight).abs().max()
    assert changed > 0  # trained (LoRA: merged into the saved weights)
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    prompt = engine.encode_prompt(RECORDS[0]["pergunta"])
    assert prompt[0] == 1
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "generate", "--model", str(tuned / run),
                          "--max-new-tokens", "8", RECORDS[0]["pergunta"]], capture_output=True, text=True, timeout=120)
    expected = engine.generate([prompt], SamplingParams(max_new_tokens=8, temperature=0))[0].text
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected.strip()


def test_serve_answers_as_the_engine_does(tuned):
    from fastapi.testclient import TestClient

    from gptmini.serve import create_app

    ckpt = load(tuned / "full")
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    expected = engine.generate([engine.encode_prompt(RECORDS[1]["pergunta"])], SamplingParams(max_new_tokens=8, temperature=0))
    with TestClient(create_app(tuned / "full")) as client:
        reply = client.post("/v1/chat/completions", json={"model": "x", "max_tokens": 8, "temperature": 0, "messages": [
            {"role": "user", "content": RECORDS[1]["pergunta"]}]}).json()
    assert reply["choices"][0]["message"]["content"] == expected[0].text
    assert reply["usage"]["prompt_tokens"] == len(engine.encode_prompt(RECORDS[1]["pergunta"]))


def test_export_to_transformers_round_trips(tmp_path, tuned):
    ckpt = load(tuned / "full")
    export(tuned / "full", tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = ckpt.tokenizer.encode(PROBES[3], start=True)
    assert theirs(PROBES[3]).input_ids == ids  # BOS added by the exported tokenizer too
    chat = theirs.apply_chat_template([{"role": "user", "content": "Oi"}], tokenize=False)
    assert chat.startswith("<s>### Comando:")
    with torch.no_grad():
        assert (ckpt.model(torch.tensor([ids]))[0][0] - hf_logits(tmp_path / "hf", ids)).abs().max() <= 1e-4


def test_gguf_in_llama_cpp_gives_our_tokens_and_greedy_answer(tmp_path, tuned):
    llama_cpp = pytest.importorskip("llama_cpp")
    ckpt = load(tuned / "full")
    export_gguf(tuned / "full", tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=128, n_threads=torch.get_num_threads(), verbose=False,
                          logits_all=True)
    tok = ckpt.tokenizer
    # A page of words the tokenizer never saw: their pieces come out right only if llama.cpp merges in BPE's order.
    page = (ASSETS / "corpus" / "portugues_geral.txt").read_text(encoding="utf-8")[:3000]
    for text in PROBES[:2] + PROBES[3:] + [page]:  # llama.cpp keeps runs of spaces that Metaspace's "first" folds
        assert llm.tokenize(text.encode(), add_bos=True) == tok.encode(text, start=True), text
    prompt = Engine(ckpt.model, tok, ckpt.template).encode_prompt(RECORDS[2]["pergunta"])
    # 4 steps of training may answer with end-of-text at once: both sides decode 12 tokens past it
    tok.eot_id = -1  # as bench/generate.py does: the engine then never stops early
    engine = Engine(ckpt.model, tok, ckpt.template)
    ours = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))[0].token_ids
    llm.reset()
    theirs = list(islice(llm.generate(prompt, temp=0.0), 12))
    assert theirs == ours
    llm.reset()
    llm.eval(prompt)
    with torch.no_grad():
        expected = ckpt.model(torch.tensor([prompt]))[0][0].numpy()
    assert np.abs(llm.scores[:len(prompt)] - expected).max() <= 1e-3
