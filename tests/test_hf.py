import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from gptmini import GPTConfig, GPTMini, GptminiError, Tokenizer, get_template, load, save
from gptmini.data.corpus import ASSETS
from gptmini.hf import export, export_adapter, import_hf
from gptmini.sft import sft

TEXT = "Atenção, não é ação? O modelo de linguagem prevê a próxima palavra."


@pytest.mark.parametrize("tied,kv_heads", [(True, 4), (False, 2)])
def test_export_gives_the_same_logits_and_token_ids_in_transformers(tmp_path, tied, kv_heads):
    tok = Tokenizer.train_bpe([TEXT] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=64, d_model=64, n_heads=4, n_kv_heads=kv_heads,
                              n_layers=2, tie_embeddings=tied)).eval()
    save(tmp_path / "ours", model, tok, {"template": get_template().to_dict()})
    export(tmp_path / "ours", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok.encode(TEXT)
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - model(x)[0]).abs().max() <= 1e-4
    chat = hf_tok.apply_chat_template([{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Olá!"}], tokenize=False)
    assert chat == "### Comando:\nOi\n\n### Resposta:\nOlá!<|endoftext|>"


def test_import_a_local_llama_gives_the_same_logits(tmp_path):
    tok = Tokenizer.train_bpe([TEXT] * 20, vocab_size=300)
    torch.manual_seed(1)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.backend.save(str(tmp_path / "hf" / "tokenizer.json"))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))
    import_hf(tmp_path / "hf", tmp_path / "ours")
    ckpt = load(tmp_path / "ours")
    x = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        assert (hf(x).logits - ckpt.model(x)[0]).abs().max() <= 1e-4
    assert ckpt.tokenizer.eot_id == tok.eot_id


def test_unsupported_architectures_are_refused_clearly(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(GptminiError, match="model_type 'gpt2' is not supported"):
        import_hf(tmp_path / "gpt2", tmp_path / "out")
    with pytest.raises(GptminiError, match="no such directory"):
        import_hf(tmp_path / "nope", tmp_path / "out")


def test_lora_adapter_in_peft_format_equals_our_merged_checkpoint(tmp_path):
    from peft import PeftModel

    tok = Tokenizer.train_bpe([(ASSETS / "seed.jsonl").read_text(encoding="utf-8")], vocab_size=400)
    torch.manual_seed(0)
    save(tmp_path / "base", GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=128, d_model=32, n_heads=4,
                                              n_kv_heads=2, n_layers=2)), tok)
    sft(tmp_path / "lora", data=ASSETS / "seed.jsonl", base=str(tmp_path / "base"), lora_rank=4, lora_alpha=12,
        train={"max_steps": 3, "batch_size": 4, "lr": 1e-2, "show_progress": False})
    adapter = export_adapter(tmp_path / "lora" / "last", tmp_path / "hf")
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert "chat_template" in json.loads((tmp_path / "hf" / "base" / "tokenizer_config.json").read_text())  # the run's
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "base").eval()
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    assert peft_model.peft_config["default"].lora_alpha / peft_model.peft_config["default"].r == 3.0
    ours = load(tmp_path / "lora" / "last").model  # the merged weights
    x = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        assert (peft_model(x).logits - ours(x)[0]).abs().max() <= 1e-4
        assert (load(tmp_path / "base").model(x)[0] - ours(x)[0]).abs().max() > 1e-3  # the adapter changes it


def test_adapter_export_refuses_what_peft_cannot_hold(tmp_path):
    tok = Tokenizer.train_bpe([TEXT] * 5, vocab_size=300)
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=32, d_model=32, n_heads=4, n_layers=1))
    save(tmp_path / "plain", model, tok)
    with pytest.raises(GptminiError, match="not a LoRA run .* export it without --adapter"):
        export_adapter(tmp_path / "plain", tmp_path / "out")
    save(tmp_path / "emb", model, tok, {"lora": {"rank": 4, "alpha": 8.0, "embeddings": True}, "source": {"base": "x"}})
    with pytest.raises(GptminiError, match="--lora-embeddings.*without --adapter"):
        export_adapter(tmp_path / "emb", tmp_path / "out")
