import pytest
import torch

from gptmini import Engine, GptminiError, SamplingParams, generate, get_template
from gptmini.data.batches import slide_keep
from gptmini.engine import sample_next


def uncached_greedy(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        logits, _ = model(torch.tensor([ids]))
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
    return out


def no_stop_engine(model, tok):
    tok.eot_id = -1  # never stop early, so both paths run the full length
    return Engine(model, tok)


def test_cached_greedy_equals_uncached_greedy(tiny_model, char_tokenizer):
    engine = no_stop_engine(tiny_model, char_tokenizer)
    prompt = char_tokenizer.encode("Atenção, não é")
    [completion] = engine.generate([prompt], SamplingParams(max_new_tokens=30))
    assert completion.token_ids == uncached_greedy(tiny_model, prompt, 30)
    assert completion.finish_reason == "length"



def test_stops_at_end_of_text(tiny_model, char_tokenizer):
    engine = Engine(tiny_model, char_tokenizer)
    prompt = char_tokenizer.encode("abc")
    first = uncached_greedy(tiny_model, prompt, 1)[0]
    char_tokenizer.eot_id = first  # make the greedy first token the end-of-text
    [c] = engine.generate([prompt], SamplingParams(max_new_tokens=20))
    assert (c.text, c.token_ids, c.finish_reason) == ("", [], "stop")


def test_stop_strings_cut_text_and_streaming_never_leaks_them(tiny_model, char_tokenizer):
    engine = no_stop_engine(tiny_model, char_tokenizer)
    prompt = char_tokenizer.encode("Atenção")
    [full] = engine.generate([prompt], SamplingParams(max_new_tokens=40))
    stop = full.text[10:12]
    deltas = []
    [cut] = engine.generate([prompt], SamplingParams(max_new_tokens=40, stop=[stop]), on_text=lambda r, d: deltas.append(d))
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(deltas) == cut.text


def test_streamed_deltas_join_to_the_full_text(tiny_model, char_tokenizer):
    engine = no_stop_engine(tiny_model, char_tokenizer)
    prompt = char_tokenizer.encode("não")
    deltas = [d for _, d in engine.stream([prompt], SamplingParams(max_new_tokens=25))]
    assert len(deltas) > 1
    assert "".join(deltas) == engine.generate([prompt], SamplingParams(max_new_tokens=25))[0].text


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_model, char_tokenizer):
    engine = no_stop_engine(tiny_model, char_tokenizer)
    prompt = char_tokenizer.encode("a")
    params = SamplingParams(max_new_tokens=30, temperature=1.5, top_k=20, top_p=0.95, seed=7)
    a = engine.generate([prompt], params)[0].token_ids
    assert a == engine.generate([prompt], params)[0].token_ids
    assert a != engine.generate([prompt], SamplingParams(max_new_tokens=30))[0].token_ids


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingParams(temperature=1.0, top_k=2), gen)) for _ in range(200)}
    assert picks == {0, 1}
    picks = {int(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.5), gen)) for _ in range(200)}
    assert picks == {0}


def test_long_prompt_keeps_its_last_tokens(tiny_model, char_tokenizer):
    engine = no_stop_engine(tiny_model, char_tokenizer)
    long = char_tokenizer.encode("abcdefghij" * 20)  # 200 tokens, context 64
    [c] = engine.generate([long], SamplingParams(max_new_tokens=10))
    assert c.prompt_truncated == 200 - 54 and c.prompt_tokens == 54 and len(c.token_ids) == 10
    [same] = engine.generate([long[-54:]], SamplingParams(max_new_tokens=10))
    assert same.token_ids == c.token_ids
    # asking for more tokens than the window holds: half the window is kept for the prompt
    [c] = engine.generate([long], SamplingParams(max_new_tokens=500))
    assert c.prompt_tokens == 32 and len(c.token_ids) == 500 and c.finish_reason == "length"


@pytest.fixture
def lively_model(tiny_model):
    """Large random weights: greedy text that depends on the whole context (a fresh model only
    repeats its last token, which any window would reproduce)."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return tiny_model


def sliding_uncached_greedy(model, prompt, n):
    """The pinned-prompt sliding window, spelled out without a cache: the whole window each step."""
    ctx, answer, window = model.config.context_size, [], []
    for _ in range(n):
        if len(prompt) + len(window) == ctx + 1:  # full: keep the prompt and the answer's tail
            window = window[-slide_keep(len(prompt), ctx + 1):]
        logits, _ = model(torch.tensor([prompt + window]))
        answer.append(int(logits[0, -1].argmax()))
        window.append(answer[-1])
    return answer


def test_an_answer_longer_than_the_window_goes_on_with_the_prompt_pinned(lively_model, char_tokenizer):
    engine = no_stop_engine(lively_model, char_tokenizer)
    prompt = char_tokenizer.encode("Comando: conte\nResposta:\n")  # 25 of the 64-token window
    [c] = engine.generate([prompt], SamplingParams(max_new_tokens=150))
    assert len(c.token_ids) == 150 and c.finish_reason == "length" and c.prompt_truncated == 0
    assert c.token_ids == sliding_uncached_greedy(lively_model, prompt, 150)
    assert len(set(c.token_ids[-60:])) > 10  # a lively text, not one repeated token


@pytest.mark.parametrize("model_name, new_tokens", [("tiny_model", 12), ("lively_model", 120)])
def test_batched_generation_equals_one_by_one(request, char_tokenizer, model_name, new_tokens):
    """Within the window (12 tokens) and sliding past it (120): each row on its own length."""
    model = request.getfixturevalue(model_name)
    engine = no_stop_engine(model, char_tokenizer)
    prompts = [char_tokenizer.encode(t) for t in ["a", "modelo de linguagem", "### Comando:\nação?\n"]]
    params = SamplingParams(max_new_tokens=new_tokens)
    batched = engine.generate(prompts, params)
    for prompt, got in zip(prompts, batched):
        assert got.token_ids == engine.generate([prompt], params)[0].token_ids
        assert got.token_ids == sliding_uncached_greedy(model, prompt, new_tokens)


def test_encode_prompt_applies_the_template_to_a_string_and_raw_only_when_asked(tiny_model, char_tokenizer):
    engine = Engine(tiny_model, char_tokenizer, get_template())
    assert engine.encode_prompt("oi") == engine.encode_prompt([{"role": "user", "content": "oi"}])
    assert char_tokenizer.decode(engine.encode_prompt("oi")) == "### Comando:\noi\n\n### Resposta:\n"
    assert engine.encode_prompt("oi", raw=True) == char_tokenizer.encode("oi")
    with pytest.raises(GptminiError, match="raw=True takes a string"):
        engine.encode_prompt([{"role": "user", "content": "oi"}], raw=True)
    base = Engine(tiny_model, char_tokenizer)  # no template: an instruction cannot be formatted
    with pytest.raises(GptminiError, match="no template: pass raw=True .* or give the Engine a template"):
        base.encode_prompt("oi")
    assert base.encode_prompt("oi", raw=True) == char_tokenizer.encode("oi")


def test_template_prompt_and_generate_helper(tiny_model, char_tokenizer):
    engine = Engine(tiny_model, char_tokenizer, get_template())
    ids = engine.encode_prompt([{"role": "user", "content": "oi"}])
    assert char_tokenizer.decode(ids) == "### Comando:\noi\n\n### Resposta:\n"
    text = generate(tiny_model, char_tokenizer, "abc", max_new_tokens=5)
    assert isinstance(text, str) and len(text) <= 5
