import pytest
import torch

from gptmini import GPTConfig, GPTMini, Tokenizer, load, save
from gptmini.data.corpus import ASSETS
from gptmini.lora import add_lora, merged
from gptmini.sft import sft


def tiny(tmp_path):
    tok = Tokenizer.train_char((ASSETS / "seed.jsonl").read_text(encoding="utf-8") + "#:\n")
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=256, d_model=32, n_heads=4, n_layers=2))
    save(tmp_path / "base", model, tok)
    return model


def test_adapters_start_at_the_base_and_merge_exactly():
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=30, context_size=16, d_model=32, n_heads=4, n_layers=2)).eval()
    idx = torch.randint(0, 30, (2, 10))
    before = model(idx)[0]
    report = add_lora(model, rank=4)
    assert "LoRA rank 4:" in report and "trainable parameters" in report
    assert torch.allclose(model(idx)[0], before, atol=1e-6)  # B = 0 at start
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(std=0.02)
    assert torch.allclose(merged(model)(idx)[0], model(idx)[0], atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


@pytest.mark.parametrize("embeddings", [False, True])
def test_lora_sft_trains_only_adapters_and_resumes_exactly(tmp_path, interrupt_at, capsys, embeddings):
    base = tiny(tmp_path)
    args = dict(data=ASSETS / "seed.jsonl", base=str(tmp_path / "base"), lora_rank=4, lora_embeddings=embeddings,
                train={"max_steps": 6, "batch_size": 4, "lr": 1e-2, "save_every": 3, "show_progress": False})
    sft(tmp_path / "straight", **args)
    assert "LoRA rank 4:" in capsys.readouterr().out
    out = load(tmp_path / "straight" / "last")
    assert out.meta["lora"] == {"rank": 4, "alpha": 8.0, "embeddings": embeddings}
    assert torch.equal(out.model.embed.weight, base.embed.weight) != embeddings  # frozen unless asked
    assert not torch.equal(out.model.blocks[0].attn.qkv.weight, base.blocks[0].attn.qkv.weight)  # merged adapters
    interrupt_at(4)
    assert sft(tmp_path / "resumed", **args)["stopped"] == "interrupted"
    interrupt_at(None)
    sft(tmp_path / "resumed", data=ASSETS / "seed.jsonl", resume=True)
    a, b = load(tmp_path / "straight" / "last").model.state_dict(), load(tmp_path / "resumed" / "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
