import torch

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template
from gptmini.data.batches import ExampleBatches, fit_to_context, slide_keep
from gptmini.data.records import read_examples
from gptmini.model import IGNORE_INDEX
from gptmini.sft import encode_examples

from .test_records import SHARED


def test_example_logits_are_the_same_alone_or_batched():
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=40, context_size=32, d_model=32, n_heads=4, n_layers=2)).eval()
    seqs = [(list(range(1, n)), list(range(1, n))) for n in (6, 20, 13)]
    batches = ExampleBatches(seqs, batch_size=3, seed=0, pad_id=0)
    idx, targets = batches.collate([0, 1, 2])
    together, _ = model(idx)
    for row, (ids, _) in enumerate(seqs):
        alone, _ = model(torch.tensor([ids[:-1]]))
        assert torch.allclose(together[row, :len(ids) - 1], alone[0], atol=1e-5)
        assert (targets[row, len(ids) - 1:] == IGNORE_INDEX).all()  # padding is never trained


def test_padding_waste_on_pira_is_under_10_percent():
    records = read_examples(SHARED / "pira_pt_train.jsonl", "instruction=pergunta,response=resposta")
    tok = Tokenizer.train_char(m["content"] for e in records.examples for m in e.messages)
    seqs, outcomes, _ = encode_examples(records.examples, tok, get_template(), 256, policy="truncate")
    batches = ExampleBatches(seqs, batch_size=16, seed=0, pad_id=tok.pad_id)
    assert batches.padding_waste() < 0.10
    assert sum(outcomes.values()) == 2058 and outcomes["truncated"] > 0  # nothing dropped silently


def test_batches_resume_at_the_same_position():
    seqs = [([i] * (2 + i % 5), [i] * (2 + i % 5)) for i in range(50)]
    a = ExampleBatches(seqs, 4, seed=3, pad_id=0)
    for _ in range(17):  # crosses an epoch boundary (13 batches per epoch)
        a.next()
    b = ExampleBatches(seqs, 4, seed=3, pad_id=0)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert all(torch.equal(x, y) for x, y in zip(a.next(), b.next()))


def test_every_example_appears_once_per_epoch():
    seqs = [([i, i], [i, i]) for i in range(1, 30)]
    batches = ExampleBatches(seqs, 4, seed=0, pad_id=0)
    seen = sorted(int(v) for _ in range(batches.batches_per_epoch) for v in batches.next()[0][:, 0] if v)
    assert seen == list(range(1, 30))


def test_truncation_keeps_the_response_and_the_end_of_the_prompt():
    ids = list(range(30))
    labels = [IGNORE_INDEX] * 20 + ids[20:]
    (kept,), outcome = fit_to_context(ids, labels, 16, policy="truncate")
    assert outcome == "truncated" and kept[0] == ids[14:] and kept[1][6:] == ids[20:]


def test_windows_train_every_response_token_exactly_once():
    ids = list(range(100))
    labels = [IGNORE_INDEX] * 10 + ids[10:]
    windows, outcome = fit_to_context(ids, labels, 16, policy="window")
    assert outcome == "windowed" and all(len(w) <= 16 for w, _ in windows)
    trained = [label for w, lab in windows for label in lab[1:] if label != IGNORE_INDEX]
    assert trained == ids[10:]
    for w, lab in windows:  # each label sits on its own token
        assert all(label == tok for tok, label in zip(w, lab) if label != IGNORE_INDEX)


def trained_positions(windows):
    """(label, token it sits on) of every trained position, window after window."""
    return [(label, tok) for w, lab in windows for tok, label in list(zip(w, lab))[1:] if label != IGNORE_INDEX]


def test_pinned_windows_train_every_answer_token_once_each_behind_the_whole_instruction():
    prompt, answer = list(range(1000, 1012)), list(range(100))  # 12 prompt tokens, a 100-token answer
    ids, labels = prompt + answer, [IGNORE_INDEX] * 12 + answer
    windows, outcome = fit_to_context(ids, labels, 32)
    assert outcome == "windowed" and len(windows) > 5
    assert all(len(w) <= 32 and w[:12] == prompt for w, _ in windows)  # the question, always whole
    assert [label for label, _ in trained_positions(windows)] == answer  # each exactly once, in order
    assert all(label == tok for label, tok in trained_positions(windows))
    for w, lab in windows[1:]:  # the answer so far fills the room before the new tokens
        new = next(i for i, label in enumerate(lab) if label != IGNORE_INDEX)
        assert w[12:new] == list(range(w[new] - (new - 12), w[new])) and new - 12 == slide_keep(12, 32)


def test_pinned_windows_cut_only_an_instruction_longer_than_half_the_window():
    ids = list(range(1000, 1040)) + list(range(50))  # a 40-token instruction, window 32
    labels = [IGNORE_INDEX] * 40 + list(range(50))
    windows, outcome = fit_to_context(ids, labels, 32)
    assert outcome == "instruction cut"
    assert all(w[:16] == list(range(1024, 1040)) for w, _ in windows)  # its end, which leads to the answer
    assert [label for label, _ in trained_positions(windows)] == list(range(50))


def test_pinned_is_the_sft_default_and_reports_what_it_did(char_tokenizer):
    from gptmini.data.records import Example

    long = Example([{"role": "user", "content": "Pergunta?"}, {"role": "assistant", "content": "resposta " * 30}], "x:1")
    short = Example([{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "ola"}], "x:2")
    seqs, outcomes, _ = encode_examples([long, short], char_tokenizer, get_template(), 100)
    assert outcomes == {"windowed": 1, "ok": 1} and len(seqs) > 2
    prompt = get_template().encode(char_tokenizer, long.messages[:1])[0]
    assert all(ids[:len(prompt)] == prompt for ids, _ in seqs[:-1])


def test_midtraining_mix_draws_its_share_of_rows_from_the_instruction_tokens():
    import numpy as np

    from gptmini.data.batches import WindowBatches

    corpus, instructions = np.arange(1000, 3000), np.arange(0, 500)
    batches = WindowBatches(corpus, 8, batch_size=50, seed=0, mix=(instructions, 0.25))
    rows = torch.cat([batches.next()[0] for _ in range(40)])
    from_mix = (rows[:, 0] < 1000).float().mean().item()
    assert 0.2 < from_mix < 0.3
    assert all((row < 1000).all() or (row >= 1000).all() for row in rows)  # a row never straddles sources
    assert (rows[:, 1:] - rows[:, :-1] == 1).all()  # contiguous windows
    resumed = WindowBatches(corpus, 8, batch_size=50, seed=0, mix=(instructions, 0.25))
    resumed.load_state_dict(batches.state_dict())
    assert torch.equal(resumed.next()[0], batches.next()[0])
    plain = WindowBatches(corpus, 8, batch_size=50, seed=0)
    assert (plain.next()[0] >= 1000).all()
