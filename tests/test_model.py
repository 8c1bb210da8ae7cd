import pytest
import torch

from gptmini import GPTConfig, GPTMini, GptminiError
from gptmini.kernels import IGNORE_INDEX, SPLIT_ROWS, Linear, LinearCrossEntropy, RotaryQKV, SwiGLU
from gptmini.model import KVCache, counted_rows


def seed_model(vocab_size=50):
    torch.manual_seed(0)
    return GPTMini(GPTConfig(vocab_size=vocab_size, context_size=64, d_model=128, n_heads=4, n_layers=2))


def test_seed_call_shapes_and_loss():
    model = seed_model()
    idx = torch.randint(0, 50, (3, 20))
    logits, loss = model(idx)
    assert logits.shape == (3, 20, 50) and loss is None
    logits, loss = model(idx, idx)
    assert loss.ndim == 0 and 2.0 < loss.item() < 6.0  # about ln(50) at init


def test_loss_ignores_minus_100_and_averages_counted_targets():
    model = seed_model()
    idx = torch.randint(0, 50, (2, 12))
    targets = torch.randint(0, 50, (2, 12))
    masked = targets.clone()
    masked[:, :6] = -100
    logits, loss = model(idx, masked)
    manual = torch.nn.functional.cross_entropy(logits[:, 6:].reshape(-1, 50), targets[:, 6:].reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-6)
    _, total = model(idx, masked, loss_reduction="sum")
    assert torch.allclose(total / 12, loss, atol=1e-6)


def test_targets_are_already_shifted_and_labels_are_shifted_as_in_transformers():
    model = seed_model()
    tokens = torch.randint(0, 50, (2, 13))
    idx = tokens[:, :-1]
    logits, shifted = model(idx, tokens[:, 1:])  # targets[:, t] is the token after idx[:, t]
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), tokens[:, 1:].reshape(-1))
    assert torch.allclose(shifted, manual, atol=1e-6)
    _, from_labels = model(tokens, labels=tokens)  # the last position has no next token: not counted
    assert torch.allclose(from_labels, shifted, atol=1e-5)
    with pytest.raises(GptminiError, match="targets .* or labels .*not both"):
        model(idx, idx, labels=idx)


def test_all_ignored_targets_give_zero_loss_and_zero_gradient():
    model = seed_model()
    model.train()
    _, loss = model(torch.randint(0, 50, (2, 8)), torch.full((2, 8), -100))
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and not g.isnan().any() and g.abs().sum() == 0 for g in grads)


def test_tied_and_untied_embeddings():
    tied = seed_model()
    assert tied.lm_head.weight is tied.embed.weight
    untied = GPTMini(GPTConfig(vocab_size=50, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight
    assert untied.num_parameters() == tied.num_parameters() + 50 * 128


def test_parameter_count_and_flops_estimate():
    model = seed_model()
    c = model.config
    per_layer = c.d_model * 3 * c.d_model + c.d_model**2 + 3 * c.d_model * c.mlp_hidden + 2 * c.d_model
    assert model.num_parameters() == c.vocab_size * c.d_model + c.n_layers * per_layer + c.d_model
    matmul = c.n_layers * (4 * c.d_model**2 + 3 * c.d_model * c.mlp_hidden) + c.vocab_size * c.d_model
    assert model.flops_per_token() == 6 * matmul + 12 * c.n_layers * c.d_model * c.context_size // 2


def test_causality_future_tokens_do_not_change_past_logits():
    model = seed_model().eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-5)
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-3)


def test_cached_prefill_plus_decode_equals_full_forward():
    model = seed_model().eval()
    idx = torch.randint(0, 50, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, "cpu", torch.float32)
    first, _ = model(idx[:, :8], cache=cache)
    steps = [model(idx[:, i:i + 1], cache=cache)[0] for i in range(8, 12)]
    assert torch.allclose(torch.cat([first] + steps, dim=1), full, atol=1e-5)


def test_left_padding_with_positions_and_mask_matches_unpadded():
    model = seed_model().eval()
    idx = torch.randint(1, 50, (1, 6))
    alone, _ = model(idx)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), idx], dim=1)
    positions = (torch.arange(9) - 3).clamp(min=0)[None]
    key_mask = torch.arange(9)[None] >= 3
    out, _ = model(padded, positions=positions, key_mask=key_mask)
    assert torch.allclose(out[:, 3:], alone, atol=1e-5)


def test_too_long_input_and_bad_config_are_clear():
    model = seed_model()
    with pytest.raises(ValueError, match="exceeds context_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(GptminiError, match="divisible by n_heads"):
        GPTConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(GptminiError, match="unknown model config fields"):
        GPTConfig.from_dict({"vocab_size": 10, "colour": "red"})


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=50, dropout=0.5))
    idx = torch.randint(0, 50, (1, 8))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_grouped_query_attention_runs_and_caches():
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=50, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2)).eval()
    idx = torch.randint(0, 50, (1, 10))
    full, _ = model(idx)
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    model(idx[:, :9], cache=cache)
    last, _ = model(idx[:, 9:], cache=cache)
    assert torch.allclose(last[0, -1], full[0, -1], atol=1e-5)


def test_fused_head_loss_and_gradients_match_the_plain_path():
    torch.manual_seed(0)
    plain, fused = seed_model(), seed_model()
    fused.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50, (3, 20))
    targets = torch.randint(0, 50, (3, 20))
    targets[0, :12] = -100
    _, a = plain(idx, targets, loss_reduction="sum")
    logits, b = fused(idx, targets, loss_reduction="sum", return_logits=False)
    assert logits is None and torch.allclose(a, b, rtol=1e-5)
    (a * 0.3).backward()
    (b * 0.3).backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_the_fused_head_runs_only_on_the_rows_whose_loss_counts():
    x, targets = torch.randn(2, 5, 4), torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 0, 7]])
    rows, wanted = counted_rows(x, targets)
    assert wanted.tolist() == [3, 4, 1, 2, 0, 7] and torch.equal(rows, x.flatten(0, 1)[[2, 3, 6, 7, 8, 9]])
    everything = torch.zeros(2, 5, dtype=torch.long)  # pretraining: no copy of the whole batch
    assert counted_rows(x, everything)[0].data_ptr() == x.data_ptr()


def textbook_rope(x, cos, sin):
    """RoPE as Llama writes it: x * cos + rotate_half(x) * sin, angles repeated over both halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * torch.cat((cos, cos), -1) + torch.cat((-x2, x1), -1) * torch.cat((sin, sin), -1)


@pytest.mark.parametrize("angles_shape", [(7, 1, 3), (2, 7, 1, 3)])  # consecutive / per-row positions
def test_rotary_qkv_backward_is_the_gradient_of_textbook_rope(angles_shape):
    torch.manual_seed(0)
    n_heads, n_kv_heads = 4, 2  # grouped-query layout: q, k, v head counts differ
    qkv = torch.randn(2, 7, n_heads + 2 * n_kv_heads, 6, dtype=torch.double, requires_grad=True)
    cos, sin = torch.randn(angles_shape, dtype=torch.double), torch.randn(angles_shape, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda t: RotaryQKV.apply(t, cos, sin, n_heads, n_kv_heads), (qkv,))

    ours = RotaryQKV.apply(qkv, cos, sin, n_heads, n_kv_heads)
    q, k, v = qkv.split((n_heads, n_kv_heads, n_kv_heads), dim=2)
    reference = (textbook_rope(q, cos, sin), textbook_rope(k, cos, sin), v)
    weights = [torch.randn_like(r) for r in reference]
    grads = [torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), qkv)[0]
             for outs in (ours, reference)]
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b)
    assert torch.allclose(grads[0], grads[1])


def test_swiglu_backward_is_the_gradient_of_silu_gate_times_up():
    torch.manual_seed(0)
    gate_up = torch.randn(3, 5, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (gate_up,))
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.allclose(SwiGLU.apply(gate_up), torch.nn.functional.silu(gate) * up)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
BF16 = 1e-2  # relative error of a whole tensor: bfloat16 keeps 8 significant bits, 0.2-0.4 % a rounding


def under_bf16(device, fn, *leaves):
    """fn's outputs under bf16 autocast, and the gradients wrt the fp32 leaves of a fixed weighting of them."""
    with torch.autocast(device, dtype=torch.bfloat16):
        outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.manual_seed(1)
    total = sum((o.float() * torch.randn(o.shape, device=device)).sum() for o in outs)
    return outs, torch.autograd.grad(total, leaves)


def assert_close_bf16(ours, plain):
    (ours_out, ours_grads), (plain_out, plain_grads) = ours, plain
    for a, b in zip(ours_out + ours_grads, plain_out + plain_grads):
        error = torch.linalg.norm(a.float() - b.float()) / torch.linalg.norm(b.float())
        assert a.shape == b.shape and error < BF16, error


def projection_leaves(device, n_out):
    """x (2, 7, 32) and a projection weight, fp32 leaves as the model's are: autocast makes the product bf16."""
    torch.manual_seed(0)
    return (torch.randn(2, 7, 32, device=device, requires_grad=True),
            (torch.randn(n_out, 32, device=device) / 4).requires_grad_())


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_qkv_under_bf16_autocast_equals_textbook_rope_gradients_included(device):
    n_heads, n_kv_heads, head_dim = 4, 2, 8
    leaves = projection_leaves(device, (n_heads + 2 * n_kv_heads) * head_dim)
    angles = torch.rand(7, 1, head_dim // 2, device=device) * 7
    cos, sin = angles.cos(), angles.sin()

    def ours(x, w):
        qkv = torch.nn.functional.linear(x, w).view(2, 7, -1, head_dim)
        return RotaryQKV.apply(qkv, cos, sin, n_heads, n_kv_heads)

    def plain(x, w):
        q, k, v = torch.nn.functional.linear(x, w).view(2, 7, -1, head_dim).split((n_heads, n_kv_heads, n_kv_heads), 2)
        return textbook_rope(q, cos, sin), textbook_rope(k, cos, sin), v

    result = under_bf16(device, ours, *leaves)
    assert [t.dtype for t in result[0]] == [torch.bfloat16] * 3  # autocast's dtype, the one attention takes
    assert_close_bf16(result, under_bf16(device, plain, *leaves))


@pytest.mark.parametrize("device", DEVICES)
def test_swiglu_under_bf16_autocast_equals_silu_gate_times_up_gradients_included(device):
    leaves = projection_leaves(device, 2 * 24)

    def plain(x, w):
        gate, up = torch.nn.functional.linear(x, w).chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up

    result = under_bf16(device, lambda x, w: SwiGLU.apply(torch.nn.functional.linear(x, w)), *leaves)
    assert result[0][0].dtype == torch.bfloat16
    assert_close_bf16(result, under_bf16(device, plain, *leaves))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_head_loss_under_bf16_autocast_equals_cross_entropy_of_the_logits_gradients_included(device):
    torch.manual_seed(0)
    x = torch.randn(40, 32, device=device, requires_grad=True)
    weight = (torch.randn(50, 32, device=device) / 4).requires_grad_()
    targets = torch.randint(0, 50, (40,), device=device)
    targets[:9] = IGNORE_INDEX

    def plain(x, w):
        return torch.nn.functional.cross_entropy((x @ w.t()).float(), targets, ignore_index=IGNORE_INDEX,
                                                 reduction="sum")

    ours = under_bf16(device, lambda x, w: LinearCrossEntropy.apply(x, w, targets, 16), x, weight)  # 3 chunks
    assert_close_bf16(ours, under_bf16(device, plain, x, weight))
    fp32 = LinearCrossEntropy.apply(x, weight, targets, 16)
    # It computed in bf16, as autocast would, not in fp32 beside it: the loss and the gradients show the rounding.
    assert not torch.allclose(ours[0][0], fp32, rtol=1e-5, atol=0)
    assert ours[1][1].dtype == torch.float32  # the weight's gradient summed in fp32 over the chunks


def test_training_and_inference_paths_give_the_same_logits():
    torch.manual_seed(0)
    model = seed_model()
    idx = torch.randint(0, 50, (2, 16))
    trained_path, _ = model(idx)  # parameters require grad: the hand-written autograd functions
    with torch.inference_mode():
        inference_path, _ = model(idx)  # plain functions
    assert torch.equal(trained_path, inference_path)


def test_engine_stores_weights_transposed_for_decoding_without_changing_the_model():
    from gptmini import Engine, Tokenizer

    torch.manual_seed(0)
    model = seed_model().eval()
    idx = torch.randint(0, 50, (2, 12))
    before_logits, _ = model(idx)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    Engine(model, Tokenizer.train_char(["abc"]))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in linears)
    assert model.lm_head.weight is model.embed.weight  # still tied
    after_state = model.state_dict()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    after_logits, _ = model(idx)
    assert torch.allclose(before_logits, after_logits, atol=1e-5)
    model.train()
    _, loss = model(idx, idx)
    loss.backward()  # the model still trains in this layout
    assert all(torch.isfinite(m.weight.grad).all() for m in linears)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_decode_products_split_over_threads_equal_the_plain_product(threads, monkeypatch):
    torch.manual_seed(0)
    layer = Linear(64, 96)
    one, few, many = torch.randn(1, 1, 64), torch.randn(3, 5, 64), torch.randn(SPLIT_ROWS + 1, 64)
    expected = [torch.nn.functional.linear(x, layer.weight) for x in (one, few, many)]
    layer.weight.data = layer.weight.data.t().contiguous().t()  # the decode layout
    bmm_shapes = []
    monkeypatch.setattr(torch, "bmm", lambda a, b: bmm_shapes.append(tuple(b.shape)) or torch.matmul(a, b))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outputs = [layer(x) for x in (one, few, many)]
    finally:
        torch.set_num_threads(previous)
    # one row: split along in (blocks of 64 // threads inputs); a few rows: along out; many: the plain product
    assert bmm_shapes == ([(threads, 64 // threads, 96), (threads, 64, 96 // threads)] if threads > 1 else [])
    for output, plain in zip(outputs, expected):
        assert output.shape == plain.shape and torch.allclose(output, plain, atol=1e-6)
