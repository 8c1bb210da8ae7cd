"""The fixed-shape decode step (static cache) and its compiled form: the eager engine's tokens."""
import shutil

import pytest
import torch

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, get_template, save
from gptmini.cli import main
from gptmini.compiled import CompiledStep, cache_dir
from gptmini.model import KVCache, StaticCache
from gptmini.scheduler import Scheduler

TEXTS = ["a", "modelo de linguagem", "### Comando:\nação?\n", "Atenção, não é", "xyz"]


@pytest.fixture
def lively_model(tiny_model, char_tokenizer):
    """Large random weights (greedy text that depends on the whole context) and no end-of-text."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    char_tokenizer.eot_id = -1
    return tiny_model


@pytest.mark.parametrize("kv_heads", [4, 2])  # the step's own attention groups the heads as SDPA's enable_gqa
@torch.inference_mode()
def test_decode_step_equals_the_growing_cache_forward(lively_model, kv_heads):
    """Eager, rows at different cache positions: the full-window step with its mask is the forward."""
    model = lively_model
    if kv_heads != model.config.n_heads:
        torch.manual_seed(1)
        model = GPTMini(GPTConfig(**{**model.config.to_dict(), "n_kv_heads": kv_heads})).eval()
    ctx = model.config.context_size
    prompts = [torch.randint(0, 40, (1, n)) for n in (5, 11)]
    caches = [KVCache(model.config, 1, "cpu", torch.float32) for _ in prompts]
    for prompt, cache in zip(prompts, caches):
        model(prompt, cache=cache)
    static = KVCache(model.config, 2, "cpu", torch.float32)
    for row, cache in enumerate(caches):  # both rows in one static cache, each at its own length
        static.k[:, row], static.v[:, row] = cache.k[:, 0], cache.v[:, 0]
    tokens = torch.tensor([[7], [9]])
    for _ in range(3):
        index = torch.tensor([c.length for c in caches])
        key_mask = torch.arange(ctx) <= index[:, None]
        logits = model.decode_step(tokens, index[:, None], key_mask, StaticCache(static.k, static.v, index))
        for row, cache in enumerate(caches):
            expected, _ = model(tokens[row:row + 1], cache=cache)
            # fp32 sums in another order (the step's one-row products, AVX-512 kernels): 1.4e-5 seen on a Xeon
            torch.testing.assert_close(logits[row], expected[0, -1], atol=1e-4, rtol=1e-4)
        tokens = logits.argmax(-1, keepdim=True)


def test_compiled_engine_gives_the_eager_tokens_past_the_window_and_compiles_once(lively_model, char_tokenizer,
                                                                                  capfd):
    eager, compiled = Engine(lively_model, char_tokenizer), Engine(lively_model, char_tokenizer, compile=True)
    reports = []
    compiled.decode.report = reports.append
    params = SamplingParams(max_new_tokens=100)  # 64-token window: the answers slide
    prompt = char_tokenizer.encode(TEXTS[2])
    assert compiled.generate([prompt], params) == eager.generate([prompt], params)
    other = char_tokenizer.encode(TEXTS[1])  # the same batch size reuses the compiled step
    assert compiled.generate([other], params) == eager.generate([other], params)
    prompts = [char_tokenizer.encode(t) for t in TEXTS[:2]]  # left-padded rows
    assert compiled.generate(prompts, params) == eager.generate(prompts, params)
    assert sorted(compiled.decode.seconds) == [1, 2]
    assert [r.split(" in ")[0] for r in reports] == [f"compiled the decode step for batch {b}" for b in (1, 2)]
    assert "Warning" not in capfd.readouterr().err  # the compile says its one line, not torch's notices


def test_a_compiled_step_is_kept_on_disk_for_every_model_of_its_shape(lively_model, char_tokenizer):
    """A later engine loads the step compiled above (a later process the same), and the library reads
    the model's own weights: another model of the same shape gets its own eager tokens from it."""
    params, prompt = SamplingParams(max_new_tokens=20), char_tokenizer.encode(TEXTS[0])
    Engine(lively_model, char_tokenizer, compile=True).generate([prompt], params)
    assert len(list(cache_dir().glob("*.pt2"))) >= 1
    torch.manual_seed(3)
    other = GPTMini(lively_model.config).eval()
    reports = []
    compiled = Engine(other, char_tokenizer, compile=True)
    compiled.decode.report = reports.append
    assert compiled.generate([prompt], params) == Engine(other, char_tokenizer).generate([prompt], params)
    assert compiled.generate([prompt], params) != Engine(lively_model, char_tokenizer).generate([prompt], params)
    assert reports and reports[0].startswith("loaded the compiled decode step for batch 1 in ")
    assert reports[0].endswith(f" s from {cache_dir()}")


def test_a_damaged_compiled_step_on_disk_is_compiled_again(lively_model, char_tokenizer, tmp_path, monkeypatch):
    if cache_dir().exists():  # the steps this run compiled already: the first engine below loads its own
        shutil.copytree(cache_dir(), tmp_path / "decode")
    monkeypatch.setenv("GPTMINI_CACHE", str(tmp_path))
    params, prompt = SamplingParams(max_new_tokens=20), char_tokenizer.encode(TEXTS[0])
    first = Engine(lively_model, char_tokenizer, compile=True)
    first.generate([prompt], params)
    [package] = first.decode.paths
    package.write_bytes(b"not a package")
    reports = []
    compiled = Engine(lively_model, char_tokenizer, compile=True)
    compiled.decode.report = reports.append
    assert compiled.generate([prompt], params) == Engine(lively_model, char_tokenizer).generate([prompt], params)
    assert reports[0] == f"could not load {package} (RuntimeError); compiling it again"
    assert reports[1].startswith("compiled the decode step for batch 1 in ")
    assert package.stat().st_size > 1000 and not list(cache_dir().glob("tmp*"))  # replaced, nothing left over


def test_compiled_int8_and_scheduler_buckets_give_the_eager_tokens(lively_model, char_tokenizer):
    """int8's products inside the compiled step; the scheduler's rows in buckets: three requests padded
    to 4 rows (a free slot beside them), then two, then one."""
    params = [SamplingParams(max_new_tokens=n) for n in (90, 7, 30)]
    prompts = [char_tokenizer.encode(t) for t in TEXTS]
    int8, int8_compiled = (Engine(lively_model, char_tokenizer, quantize="int8", compile=c) for c in (False, True))
    int8_compiled.decode.report = lambda line: None
    assert int8_compiled.generate(prompts[:1], params[0]) == int8.generate(prompts[:1], params[0])
    eager = Engine(lively_model, char_tokenizer)
    compiled = Engine(lively_model, char_tokenizer, compile=True)
    compiled.decode.report = lambda line: None
    scheduler = Scheduler(compiled, max_batch=4)
    requests = [scheduler.submit(p, c) for p, c in zip(prompts, params)]
    scheduler.run()
    for request, prompt, p in zip(requests, prompts, params):
        assert request.completion == eager.generate([prompt], p)[0]
    assert sorted(compiled.decode.seconds) == [1, 2, 4]


def test_generate_and_serve_take_compile(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "c", tiny_model, char_tokenizer, {"template": get_template().to_dict()})
    engine = Engine(tiny_model, char_tokenizer, get_template())
    expected = engine.generate([engine.encode_prompt("Olá")], SamplingParams(max_new_tokens=70))[0].text
    assert main(["generate", "--model", str(tmp_path / "c"), "--max-new-tokens", "70", "--compile", "Olá"]) == 0
    out, err = capsys.readouterr()
    assert out == expected + "\n" and " decode step for batch 1 in " in err
    from gptmini.serve import create_app

    server = create_app(tmp_path / "c", max_batch=2, compile=True).state.server
    try:  # every bucket compiled before the server takes a request
        assert isinstance(server.engine.decode, CompiledStep) and sorted(server.engine.decode.seconds) == [1, 2]
    finally:
        server.close()
