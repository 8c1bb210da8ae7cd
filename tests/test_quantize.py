"""Weight-only int8: the products, the quantized model, and the CLI's fp32 comparison."""
import json

import pytest
import torch
from torch import nn

from gptmini import Engine, GptminiError, SamplingParams, get_template, save
from gptmini.cli import main
from gptmini.quantize import Int8Linear, quantize


def test_int8_linear_is_the_product_with_the_rounded_weight():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=False)
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (48, 64) and q.scales.shape == (48,)
    assert q.weight.abs().amax(dim=1).eq(127).all()  # each row's largest weight uses the full range
    dequantized = q.weight.float() * q.scales.float()[:, None]
    assert (dequantized - linear.weight).abs().max() <= linear.weight.abs().max() / 127  # half a step, and bf16 scales
    x = torch.randn(3, 5, 64)
    expected = x.bfloat16().float() @ dequantized.t()
    got = q(x)
    assert got.shape == (3, 5, 48) and got.dtype == torch.float32  # back in the model's dtype: the logits, the cache and the residual stay float32
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    assert (got - linear(x)).abs().max() < 0.05 * linear(x).abs().max()


def test_quantize_replaces_every_projection_and_the_head_in_a_copy(tiny_model, char_tokenizer):
    q = quantize(tiny_model, "int8")
    assert quantize(tiny_model, None) is tiny_model
    linears = [name for name, m in q.named_modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 4 * tiny_model.config.n_layers + 1 and "lm_head" in linears
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert isinstance(tiny_model.lm_head, nn.Linear)  # the original is untouched
    assert q.embed.weight.dtype == torch.float32
    idx = torch.tensor([char_tokenizer.encode("Atenção, não é ação?")])
    with torch.inference_mode():
        full, quantized = tiny_model(idx)[0], q(idx)[0]
    assert (quantized - full).abs().max() < 0.02 * full.abs().max()
    with pytest.raises(GptminiError, match="unknown quantization 'int4'"):
        quantize(tiny_model, "int4")


def test_engine_int8_greedy_matches_fp32_on_a_small_model(tiny_model, char_tokenizer):
    prompt = char_tokenizer.encode("modelo")
    params = SamplingParams(max_new_tokens=12)
    full = Engine(tiny_model, char_tokenizer).generate([prompt], params)[0]
    int8 = Engine(tiny_model, char_tokenizer, quantize="int8")
    assert int8.generate([prompt], params)[0] == full
    assert isinstance(int8.model.lm_head, Int8Linear) and isinstance(tiny_model.lm_head, nn.Linear)


def test_eval_quantize_compare_prints_loss_and_agreement(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "response": "x"}) + "\n" for q in ("Olá", "ação", "oi")))
    assert main(["eval", "--model", str(tmp_path / "c"), "--data", str(data), "--quantize", "int8", "--compare",
                 "--max-new-tokens", "6", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path / 'c'} (fp32) |" in out and f"| {tmp_path / 'c'} (int8) |" in out
    assert f"{tmp_path / 'c'} (int8) vs {tmp_path / 'c'} (fp32): held-out loss" in out
    assert "greedy answers identical 3/3 (100.0%)" in out


def test_generate_and_serve_take_quantize(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    engine = Engine(tiny_model, char_tokenizer, get_template(), quantize="int8")
    expected = engine.generate([engine.encode_prompt("Olá")], SamplingParams(max_new_tokens=7))[0].text
    assert main(["generate", "--model", str(tmp_path / "c"), "--max-new-tokens", "7", "--quantize", "int8", "Olá"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    from gptmini.serve import create_app

    server = create_app(tmp_path / "c", quantize="int8").state.server
    try:
        assert isinstance(server.engine.model.lm_head, Int8Linear)
    finally:
        server.close()
