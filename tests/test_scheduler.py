"""Continuous batching: every request's answer is the one it gets alone, however others join and leave."""
import pytest
import torch

from gptmini import Engine, SamplingParams
from gptmini.scheduler import Cancelled, Scheduler

TEXTS = ["a", "modelo de linguagem", "### Comando:\nação?\n", "Atenção, não é", "xyz", "O modelo prevê", "ç"]


@pytest.fixture
def lively_engine(tiny_model, char_tokenizer):
    """Large random weights (greedy text that depends on the whole context) and no end-of-text."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    char_tokenizer.eot_id = -1
    return Engine(tiny_model, char_tokenizer)


def alone(engine, prompt, params):
    return engine.generate([prompt], params)[0]


def test_requests_joining_and_leaving_get_their_alone_answers(lively_engine, char_tokenizer):
    """Different lengths, limits (past the 64-token window: each slides on its own), stop strings and
    seeded sampling, more requests than slots; one joins mid-way, one is cancelled mid-way."""
    engine = lively_engine
    prompts = [char_tokenizer.encode(t) for t in TEXTS]
    reference = alone(engine, prompts[1], SamplingParams(max_new_tokens=40)).text
    cases = [SamplingParams(max_new_tokens=n) for n in (5, 90, 17, 3, 130)] + [
        SamplingParams(max_new_tokens=40, stop=(reference[20:22],)),
        SamplingParams(max_new_tokens=30, temperature=1.2, top_k=10, seed=5)]
    scheduler = Scheduler(engine, max_batch=4)
    deltas: dict[int, list[str]] = {i: [] for i in range(len(cases))}
    doomed = scheduler.submit(prompts[0], SamplingParams(max_new_tokens=100))
    requests = [scheduler.submit(p, c, on_text=deltas[i].append) for i, (p, c) in enumerate(zip(prompts, cases))]
    for _ in range(10):
        assert scheduler.step() > 0
    running, waiting = scheduler.counts()
    assert running == 4 and waiting > 0 and doomed in scheduler.running
    late = scheduler.submit(prompts[2], SamplingParams(max_new_tokens=50))  # joins once a slot frees
    doomed.cancel()
    scheduler.run()
    assert scheduler.counts() == (0, 0)
    assert doomed.completion is None and isinstance(doomed.error, Cancelled) and len(doomed.row.ids) == 11
    for i, (request, prompt, params) in enumerate(zip([*requests, late], prompts, [*cases, late.params])):
        assert request.completion == alone(engine, prompt, params), i
    assert requests[5].completion.finish_reason == "stop" and requests[4].completion.finish_reason == "length"
    for i, request in enumerate(requests):
        assert "".join(deltas[i]) == request.completion.text


def test_a_cancelled_running_request_leaves_before_the_next_step(lively_engine, char_tokenizer):
    engine = lively_engine
    scheduler = Scheduler(engine, max_batch=2)
    ended = []
    keep = scheduler.submit(char_tokenizer.encode("a"), SamplingParams(max_new_tokens=20))
    gone = scheduler.submit(char_tokenizer.encode("b"), SamplingParams(max_new_tokens=20),
                            on_done=lambda done, error: ended.append(error))
    scheduler.step(), scheduler.step()
    gone.cancel()
    assert scheduler.step() == 1  # only `keep` decoded
    assert isinstance(ended[0], Cancelled) and len(gone.row.ids) == 3
    scheduler.run()
    assert keep.completion == alone(engine, keep.prompt, keep.params)


def test_zero_tokens_and_an_end_of_text_first(tiny_model, char_tokenizer):
    engine = Engine(tiny_model, char_tokenizer)
    scheduler = Scheduler(engine, max_batch=2)
    prompt = char_tokenizer.encode("abc")
    none = scheduler.submit(prompt, SamplingParams(max_new_tokens=0))
    scheduler.run()
    assert none.completion == alone(engine, prompt, SamplingParams(max_new_tokens=0))
    char_tokenizer.eot_id = alone(engine, prompt, SamplingParams(max_new_tokens=1)).token_ids[0]
    first = scheduler.submit(prompt, SamplingParams(max_new_tokens=9))
    scheduler.run()
    assert (first.completion.text, first.completion.finish_reason) == ("", "stop")


def test_an_error_in_a_step_fails_the_requests_in_flight(tiny_model, char_tokenizer, monkeypatch):
    scheduler = Scheduler(Engine(tiny_model, char_tokenizer), max_batch=2)
    request = scheduler.submit(char_tokenizer.encode("a"), SamplingParams(max_new_tokens=5))
    monkeypatch.setattr(scheduler.engine, "model", None)
    with pytest.raises(AttributeError):
        scheduler.step()
    assert isinstance(request.error, AttributeError) and scheduler.counts() == (0, 0)
