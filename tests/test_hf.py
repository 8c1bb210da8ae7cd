import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from gptmini import GPTConfig, GPTMini, GptminiError, Tokenizer, get_template, load, save
from gptmini.hf import export, import_hf

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
